//! `beeline lab up | status | down` as a user runs them (root): a two-node lab whose nodes kubectl
//! lists, whose operator installed the CRDs and whose agents are ready through the API on the
//! control-plane's underlay address; `down` leaves no namespace, pin, process or state — also
//! after the supervisor was killed, and when `up` finds such a crashed lab in its way.
//!
//! Each test uses its own state directory, so the lab's names (derived from it) never collide
//! with another test's or a user's lab. A guard runs `lab down` if a test fails midway.

mod integration;

use std::{path::Path, process::Command, time::Duration};

use beeline::lab::{cluster::read_plan, probe};
use integration::{
    lab::{assert_no_process_mentions, down_and_assert_gone, poll, run, stdout, values, LabDir, Made, BIN},
    require_root,
};

#[test]
fn lab_up_serves_kubectl_runs_ready_agents_and_down_leaves_nothing() {
    require_root();
    let lab = LabDir::new();
    let up = stdout(&lab.up(2, "vxlan.yaml"));
    assert!(up.contains(&format!("export KUBECONFIG={}/kubeconfig", lab.arg())), "up prints the kubeconfig: {up}");
    let plan = read_plan(&lab.path).unwrap();
    assert_eq!(plan.nodes.len(), 2);
    assert!(plan.pin_root.is_dir(), "per-lab bpffs directory {}", plan.pin_root.display());
    for node in &plan.nodes {
        assert!(node.bpf_root.is_dir(), "node bpf-root {}", node.bpf_root.display());
    }

    // kubectl on the host, through the written kubeconfig.
    let nodes: serde_json::Value = serde_json::from_str(&lab.kubectl(&["get", "nodes", "-o", "json"])).unwrap();
    let listed: Vec<(String, String)> = nodes["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let ip = n["status"]["addresses"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["type"] == "InternalIP")
                .map(|a| a["address"].as_str().unwrap().to_string())
                .unwrap();
            (n["metadata"]["name"].as_str().unwrap().to_string(), ip)
        })
        .collect();
    assert_eq!(
        listed,
        [("kind-control-plane".to_string(), "172.18.0.2".to_string()), ("kind-worker".into(), "172.18.0.3".into())]
    );
    // The operator (a real process in the control-plane namespace) installed every CRD.
    let crds = lab.kubectl(&["get", "crd", "-o", "name"]);
    for crd in beeline::crds::all() {
        let name = crd.metadata.name.unwrap();
        assert!(crds.contains(&name), "CRD {name} not installed: {crds}");
    }
    assert!(lab.kubectl(&["get", "lease", "-n", "kube-system", "-o", "name"]).contains("beeline-operator"));

    // Every agent and the operator is ready, which includes reaching the API over the underlay
    // (their kubeconfig names the control-plane node's address, not loopback).
    for p in &plan.processes {
        assert!(std::fs::read_to_string(plan.nodes.iter().find(|n| n.name == p.node).unwrap().kubeconfig())
            .unwrap()
            .contains("server: http://172.18.0.2:6443"));
        let (code, body) = probe::http_get_in(&p.netns, p.health, "/readyz?verbose").unwrap();
        assert_eq!(code, 200, "{} not ready: {body}", p.name);
        assert!(body.contains("[+]kubernetes ok"), "{}: {body}", p.name);
    }
    let status = stdout(&run(&mut lab.beeline("status")));
    for p in &plan.processes {
        let line =
            status.lines().find(|l| l.starts_with(&p.name)).unwrap_or_else(|| panic!("{} missing: {status}", p.name));
        assert!(line.contains(" ready "), "{line}");
    }

    // With the lab's per-node directories, each agent installs its CNI plugin and conflist once
    // the operator's cluster-pool IPAM gave its CiliumNode a pod CIDR.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for node in &plan.nodes {
        while !beeline::lab::cluster::conflist_present(&node.cni_conf_dir()) {
            let log = probe::tail(&plan.log(&format!("agent-{}", node.name)), 20);
            assert!(std::time::Instant::now() < deadline, "no CNI conflist for {}: {log}", node.name);
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(node.cni_bin_dir().join("beeline-cni").is_file(), "CNI plugin installed for {}", node.name);
    }
    let ciliumnodes: serde_json::Value =
        serde_json::from_str(&lab.kubectl(&["get", "ciliumnodes", "-o", "json"])).unwrap();
    let mut cidrs: Vec<String> = ciliumnodes["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["spec"]["ipam"]["podCIDRs"][0].as_str().unwrap().to_string())
        .collect();
    cidrs.sort();
    assert_eq!(cidrs, ["10.0.0.0/24", "10.0.1.0/24"], "vxlan.yaml: /24s out of 10.0.0.0/8");

    let made = Made::of(&plan);
    assert!(made.pids.len() >= 4, "supervisor, operator and two agents: {:?}", made.pids);
    let down = stdout(&run(&mut lab.beeline("down")));
    assert!(down.contains("stopped the supervisor") && !down.contains("killed"), "graceful stop: {down}");
    made.assert_gone();
    let again = stdout(&run(&mut lab.beeline("down")));
    assert!(again.contains("nothing to remove"), "down is idempotent: {again}");
}

#[test]
fn lab_down_and_up_clean_up_after_a_killed_supervisor() {
    require_root();
    let lab = LabDir::new();
    lab.up(1, "kubernetes-ipam.yaml");
    let plan = read_plan(&lab.path).unwrap();
    // ipam: kubernetes — the lab plays kube-controller-manager and sets spec.podCIDRs.
    let cidrs = lab.kubectl(&["get", "node", "kind-control-plane", "-o", "jsonpath={.spec.podCIDRs}"]);
    assert_eq!(cidrs, r#"["10.244.0.0/24"]"#);

    // A crash: the supervisor dies without stopping its children, which keep running orphaned.
    let supervisor = probe::read_pid(&plan.pid_file("supervisor")).unwrap();
    probe::signal(supervisor, libc::SIGKILL);
    assert!(probe::wait_gone(supervisor, &lab.path.to_string_lossy(), Duration::from_secs(5)));
    let failing = lab.beeline("status").output().unwrap();
    assert!(!failing.status.success(), "status must fail without the supervisor");
    assert!(stdout(&failing).contains("NOT RUNNING"), "{}", stdout(&failing));

    // `up` again over the crashed lab: it removes the leftovers first, then starts afresh.
    let orphans = probe::netns_pids(&plan.nodes[0].netns);
    assert!(orphans.len() >= 2, "the orphaned agent and operator keep running in the node namespace: {orphans:?}");
    let made_first = Made::of(&plan);
    let again = stdout(&lab.up(1, "kubernetes-ipam.yaml"));
    assert!(again.contains("cleaned up a previous lab"), "{again}");
    for pid in &made_first.pids {
        assert!(!probe::is_ours(*pid, &made_first.marker), "orphan {pid} of the crashed lab survived `up`");
    }

    // Crash again, then `down` alone must find and remove everything.
    let plan = read_plan(&lab.path).unwrap();
    let made = Made::of(&plan);
    probe::signal(probe::read_pid(&plan.pid_file("supervisor")).unwrap(), libc::SIGKILL);
    let down = stdout(&run(&mut lab.beeline("down")));
    assert!(down.contains("killed pid") || down.contains("stopped"), "{down}");
    made.assert_gone();
}

#[test]
fn a_failed_up_removes_what_it_made() {
    require_root();
    let lab = LabDir::new();
    // A zero readiness timeout fails right after the namespaces exist and the supervisor started.
    let out = lab
        .beeline("up")
        .args(["--nodes", "2", "--values", &values("geneve.yaml"), "--timeout", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "up with --timeout 0 must fail: {}", stdout(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("lab up failed"), "{}", String::from_utf8_lossy(&out.stderr));
    let prefix = format!("bl-{}-", beeline::lab::plan::lab_id(&lab.path));
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert!(left.iter().all(|n| !n.starts_with(&prefix)), "namespaces left: {left:?}");
    let pins = Path::new("/sys/fs/bpf/beeline-lab").join(beeline::lab::plan::lab_id(&lab.path));
    assert!(!pins.exists(), "pins left at {}", pins.display());
    assert!(!lab.path.exists(), "state left at {}", lab.path.display());
    assert_no_process_mentions(lab.arg());
}

const WEB: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      nodeSelector: {kubernetes.io/hostname: kind-worker}
      containers: [{name: web, image: echo, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
";

/// The seeds' walkthrough on the control plane side: a Deployment pinned to a worker gets Running
/// pods whose addresses come from that node's CIDR (allocated by the real CNI plugin through the
/// node's agent), each pod's workload answers in its own namespace, the Service's EndpointSlice
/// lists the pods, a deleted pod's sandbox goes and a replacement comes, and `down` leaves
/// nothing — no pod namespace either.
#[test]
fn deployment_pods_get_addresses_from_their_node_and_endpointslices_list_them() {
    require_root();
    let lab = LabDir::new();
    lab.up(2, "vxlan.yaml");
    let plan = read_plan(&lab.path).unwrap();
    lab.apply("web.yaml", WEB);

    let worker_cidr: ipnet::IpNet = poll("the worker's CiliumNode CIDR", Duration::from_secs(30), || {
        let cn = lab.kubectl_json(&["get", "ciliumnode", "kind-worker"]);
        cn["spec"]["ipam"]["podCIDRs"][0].as_str()?.parse().ok()
    });
    let pods = poll("two Running pods with addresses", Duration::from_secs(60), || {
        let pods = lab.kubectl_json(&["get", "pods", "-l", "app=web"]);
        let items = pods["items"].as_array().cloned().unwrap_or_default();
        let running =
            items.iter().filter(|p| p["status"]["phase"] == "Running" && p["status"]["podIP"].is_string()).count();
        (items.len() == 2 && running == 2).then_some(items)
    });
    let mut ips = Vec::new();
    for p in &pods {
        let name = p["metadata"]["name"].as_str().unwrap();
        assert_eq!(p["spec"]["nodeName"], "kind-worker", "{name} pinned by nodeSelector");
        assert_eq!(p["status"]["hostIP"], "172.18.0.3", "{name}: the worker's underlay address");
        let ip: std::net::IpAddr = p["status"]["podIP"].as_str().unwrap().parse().unwrap();
        assert!(worker_cidr.contains(&ip), "{name}: {ip} outside the worker's {worker_cidr}");
        let ready =
            p["status"]["conditions"].as_array().unwrap().iter().any(|c| c["type"] == "Ready" && c["status"] == "True");
        assert!(ready, "{name} Ready");
        // The pod's workload answers inside the pod's own namespace with its name.
        let netns = p["metadata"]["annotations"]["beeline.io/lab-netns"].as_str().unwrap();
        let (code, body) = probe::http_get_in(netns, "127.0.0.1:8080".parse().unwrap(), "/").unwrap();
        assert_eq!(code, 200);
        assert!(body.contains(&format!("\"pod\":\"{name}\"")), "{body}");
        ips.push(ip.to_string());
    }
    ips.sort();

    let endpoints = poll("the Service's EndpointSlice listing both pods", Duration::from_secs(10), || {
        let slices = lab.kubectl_json(&["get", "endpointslices", "-l", "kubernetes.io/service-name=web"]);
        let mut ready: Vec<(String, String)> = slices["items"]
            .as_array()?
            .iter()
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["conditions"]["ready"] == true)
            .map(|e| (e["addresses"][0].as_str().unwrap().to_string(), e["nodeName"].as_str().unwrap().to_string()))
            .collect();
        ready.sort();
        (ready.len() == 2).then_some(ready)
    });
    assert_eq!(endpoints, ips.iter().map(|ip| (ip.clone(), "kind-worker".to_string())).collect::<Vec<_>>());

    // A deleted pod: its sandbox goes, the ReplicaSet makes a replacement that runs.
    let victim = pods[0]["metadata"]["name"].as_str().unwrap();
    let victim_netns = pods[0]["metadata"]["annotations"]["beeline.io/lab-netns"].as_str().unwrap().to_string();
    lab.kubectl(&["delete", "pod", victim]);
    assert!(!Path::new("/run/netns").join(&victim_netns).exists(), "{victim_netns} removed before the delete returned");
    poll("a replacement pod running", Duration::from_secs(30), || {
        let pods = lab.kubectl_json(&["get", "pods", "-l", "app=web"]);
        let names: Vec<String> = pods["items"]
            .as_array()?
            .iter()
            .filter(|p| p["status"]["phase"] == "Running")
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        (names.len() == 2 && !names.iter().any(|n| n == victim)).then_some(())
    });

    let made = Made::of(&plan);
    assert!(made.namespaces.iter().filter(|n| n.contains("-pod-")).count() == 2, "{:?}", made.namespaces);
    run(&mut lab.beeline("down"));
    made.assert_gone();
}

/// The checks `beeline connectivity test` runs in a lab today; each must be in its table.
const CONNECTIVITY_CHECKS: &[&str] = &[
    "pods ready",
    "service endpoints (EndpointSlice)",
    "pod-to-pod (same node)",
    "pod-to-pod (across nodes)",
    "pod-to-service (ClusterIP)",
    "pod-to-service (session affinity)",
    "pod-to-outside",
];

/// Two nodes in the routing mode of `values_file`, the real `beeline connectivity test` against
/// them (its own pods, real CNI, real datapath), every check passing; `down` leaves nothing.
fn connectivity_test_passes(values_file: &str) {
    require_root();
    let lab = LabDir::new();
    lab.up(2, values_file);
    let plan = read_plan(&lab.path).unwrap();

    let out = Command::new(BIN)
        .args(["connectivity", "test", "--state-dir", lab.arg(), "--keep"])
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    let table = stdout(&out);
    let report = format!("{values_file}:\n{table}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr));
    for check in CONNECTIVITY_CHECKS {
        let row = table.lines().find(|l| l.starts_with(check)).unwrap_or_else(|| panic!("no row {check:?}\n{report}"));
        let result = row[check.len()..].split_whitespace().next();
        assert_eq!(result, Some("pass"), "{check}\n{report}");
    }
    assert!(table.contains(&format!("{n} checks, {n} passed, 0 failed", n = CONNECTIVITY_CHECKS.len())), "{report}");
    assert!(out.status.success(), "connectivity test exited {}\n{report}", out.status);

    let made = Made::of(&plan);
    assert!(
        made.namespaces.iter().any(|n| n.contains("-pod-")),
        "the test's pods have sandboxes: {:?}",
        made.namespaces
    );
    // Every lab link lives inside the lab's namespaces: none may be left in the host's.
    down_and_assert_gone(&lab);
}

#[test]
fn connectivity_test_passes_in_a_two_node_vxlan_lab() {
    connectivity_test_passes("vxlan.yaml");
}

#[test]
fn connectivity_test_passes_with_native_routing_and_direct_node_routes() {
    connectivity_test_passes("native.yaml");
}
