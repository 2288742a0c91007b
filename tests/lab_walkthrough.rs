//! The seeds' getting-started walkthrough, literally, in a three-node lab (kind's control-plane
//! and two workers): `examples/walkthrough/` — an nginx Deployment pinned to `kind-worker2`, a
//! netshoot client pod on `kind-worker`, a ClusterIP Service over nginx. The client curls the
//! nginx pod by its IP (across nodes) and by the ClusterIP; both pods get addresses from their
//! node's CiliumNode CIDR (also after scaling nginx to two pods on one node); kubectl lists
//! nodes, pods with IPs and nodes, CiliumNodes with CIDRs; `lab down` leaves nothing. Once in
//! VXLAN (the walkthrough's mode) and once with native routing + autoDirectNodeRoutes.

mod integration;

use std::{net::IpAddr, path::Path, time::Duration};

use integration::{
    lab::{down_and_assert_gone, poll, run, stdout, LabDir},
    require_root,
};

fn walkthrough_dir() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/walkthrough").to_string_lossy().into_owned()
}

/// `beeline lab exec netshoot-client -- curl ...` (the walkthrough's `kubectl exec`); bounded
/// by curl's own timeouts and a few attempts.
fn curl_from_client(lab: &LabDir, args: &[&str]) -> String {
    let mut last = String::new();
    for _ in 0..3 {
        let out = lab
            .beeline("exec")
            .args(["netshoot-client", "--", "curl", "-s", "--connect-timeout", "3", "--max-time", "5"])
            .args(args)
            .output()
            .unwrap();
        if out.status.success() {
            return stdout(&out);
        }
        last = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("curl {args:?} from netshoot-client failed 3 times: {last}");
}

/// The rows of a kubectl table: header → cell, per row.
fn table(text: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap_or_default().split_whitespace().map(str::to_string).collect();
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| header.iter().cloned().zip(l.split_whitespace().map(str::to_string)).collect())
        .collect()
}

fn walkthrough(values_file: &str) {
    require_root();
    let lab = LabDir::new();
    lab.up(3, values_file);

    // kubectl get nodes: kind's three nodes.
    let nodes = table(&lab.kubectl(&["get", "nodes"]));
    let names: Vec<&str> = nodes.iter().map(|r| r["NAME"].as_str()).collect();
    assert_eq!(names, ["kind-control-plane", "kind-worker", "kind-worker2"], "{values_file}");

    run(lab.beeline("apply").arg("-f").arg(walkthrough_dir()));
    let nginx = lab.running_pods("app=nginx", 1, Duration::from_secs(60));
    let client = lab.running_pods("app=netshoot-client", 1, Duration::from_secs(60));
    assert_eq!(nginx[0]["spec"]["nodeName"], "kind-worker2", "nginx pinned by nodeSelector");
    assert_eq!(client[0]["spec"]["nodeName"], "kind-worker", "netshoot-client pinned by nodeSelector");

    // kubectl get ciliumnodes with their CIDRs: one per node, disjoint.
    let cidr_rows = table(&lab.kubectl(&[
        "get",
        "ciliumnodes",
        "-o",
        "custom-columns=NAME:.metadata.name,PODCIDRS:.spec.ipam.podCIDRs[0]",
    ]));
    let cidr_of = |node: &str| -> ipnet::IpNet {
        let row = cidr_rows.iter().find(|r| r["NAME"] == node).unwrap_or_else(|| panic!("no CiliumNode {node}"));
        row["PODCIDRS"].parse().unwrap_or_else(|e| panic!("{node}: {:?}: {e}", row["PODCIDRS"]))
    };
    let (worker, worker2) = (cidr_of("kind-worker"), cidr_of("kind-worker2"));
    assert_eq!(cidr_rows.len(), 3, "{cidr_rows:?}");
    assert!(!worker.contains(&worker2.network()) && !worker2.contains(&worker.network()), "{worker} vs {worker2}");

    // Scaling (the walkthrough's `kubectl scale`; the lab's API has no `scale` subresource, so the
    // same change as a patch): both nginx pods on kind-worker2 share its CIDR.
    lab.kubectl(&["patch", "deployment", "nginx-deployment", "--type=merge", "-p", r#"{"spec":{"replicas":2}}"#]);
    lab.running_pods("app=nginx", 2, Duration::from_secs(60));

    // kubectl get pods -o wide: every pod with its IP and node, each IP in its node's CIDR.
    let wide = lab.kubectl(&["get", "pods", "-o", "wide"]);
    let rows = table(&wide);
    assert_eq!(rows.len(), 3, "two nginx pods and the client:\n{wide}");
    for row in &rows {
        let (name, node) = (&row["NAME"], &row["NODE"]);
        let ip: IpAddr = row["IP"].parse().unwrap_or_else(|e| panic!("{name}: IP {:?}: {e}\n{wide}", row["IP"]));
        assert_eq!(row["STATUS"], "Running", "{wide}");
        let expected_node = if name.starts_with("nginx-deployment-") { "kind-worker2" } else { "kind-worker" };
        assert_eq!(node, expected_node, "{wide}");
        assert!(cidr_of(node).contains(&ip), "{name}: {ip} outside {node}'s {}", cidr_of(node));
    }
    let nginx_pods: Vec<(String, String)> = rows
        .iter()
        .filter(|r| r["NAME"].starts_with("nginx-deployment-"))
        .map(|r| (r["NAME"].clone(), r["IP"].clone()))
        .collect();

    // curl by pod IP, across nodes: HTTP 200 from that very pod, which saw the client's pod IP.
    let client_ip = client[0]["status"]["podIP"].as_str().unwrap().to_string();
    for (name, ip) in &nginx_pods {
        let code = curl_from_client(&lab, &["-o", "/dev/null", "-w", "%{http_code}", &format!("http://{ip}")]);
        assert_eq!(code, "200", "{values_file}: curl http://{ip}");
        let body = curl_from_client(&lab, &[&format!("http://{ip}")]);
        assert!(body.contains(&format!("\"pod\":\"{name}\"")), "{ip} answered by another pod: {body}");
        assert!(body.contains(&format!("\"client\":\"{client_ip}:")), "the pod saw the client's own address: {body}");
    }

    // curl by ClusterIP: one of the nginx pods answers; the EndpointSlice lists both.
    let cluster_ip = lab.kubectl(&["get", "svc", "nginx-service", "-o", "jsonpath={.spec.clusterIP}"]);
    assert!(cluster_ip.parse::<IpAddr>().is_ok(), "ClusterIP {cluster_ip:?}");
    let body = curl_from_client(&lab, &[&format!("http://{cluster_ip}")]);
    assert!(nginx_pods.iter().any(|(name, _)| body.contains(&format!("\"pod\":\"{name}\""))), "{body}");
    let mut want: Vec<String> = nginx_pods.iter().map(|(_, ip)| ip.clone()).collect();
    want.sort();
    poll("the EndpointSlice listing both nginx pods", Duration::from_secs(10), || {
        let slices = lab.kubectl(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=nginx-service",
            "-o",
            "jsonpath={.items[*].endpoints[*].addresses[0]}",
        ]);
        let mut got: Vec<String> = slices.split_whitespace().map(str::to_string).collect();
        got.sort();
        (got == want).then_some(())
    });

    down_and_assert_gone(&lab);
}

#[test]
fn seeds_walkthrough_in_a_three_node_vxlan_lab() {
    walkthrough("vxlan.yaml");
}

#[test]
fn seeds_walkthrough_with_native_routing_and_direct_node_routes() {
    walkthrough("native.yaml");
}

/// The node agent's address allocations (`beeline ipam -o json` on its socket), as text.
fn ipam_listing(plan: &beeline::lab::plan::LabPlan) -> String {
    let socket = plan.nodes[0].agent_socket();
    stdout(&run(std::process::Command::new(integration::lab::BIN).args(["ipam", "-o", "json", "--socket"]).arg(socket)))
}

/// A supervisor crash leaves pod sandboxes (namespace, veth, address) behind. A pod that is gone
/// from the API when the lab comes back — here: created after the last API snapshot, which a
/// crash loses (modelled by removing it from the snapshot) — must have its sandbox released with
/// a CNI DEL, so the agent frees its address, instead of leaking it until `lab down`; a pod that
/// is still there runs again with its address.
#[test]
fn a_crashed_supervisors_leftover_sandboxes_are_released_with_cni_del() {
    require_root();
    let lab = LabDir::new();
    lab.up(1, "vxlan.yaml");
    let pod = |name: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{app: crash}}}}\nspec:\n  containers: [{{name: c, image: echo}}]\n---\n")
    };
    lab.apply("pods.yaml", &(pod("kept") + &pod("lost")));
    let pods = lab.running_pods("app=crash", 2, Duration::from_secs(60));
    let by_name = |name: &str| pods.iter().find(|p| p["metadata"]["name"] == name).unwrap().clone();
    let (kept, lost) = (by_name("kept"), by_name("lost"));
    let container = |p: &serde_json::Value| -> String {
        p["metadata"]["uid"].as_str().unwrap().chars().filter(|c| c.is_ascii_alphanumeric()).collect()
    };
    let lost_ip = lost["status"]["podIP"].as_str().unwrap().to_string();
    let lost_netns = integration::lab::pod_netns(&lost);
    let plan = lab.plan();
    let listing = ipam_listing(&plan);
    assert!(listing.contains(&container(&lost)) && listing.contains(&lost_ip), "{listing}");

    // Crash once the periodic snapshot holds both pods, then lose `lost` with the crash.
    let snapshot = plan.state_dir.join("api-snapshot.json");
    poll("both pods in the API snapshot", Duration::from_secs(15), || {
        let text = std::fs::read_to_string(&snapshot).ok()?;
        (text.contains("\"kept\"") && text.contains("\"lost\"")).then_some(())
    });
    let supervisor = beeline::lab::probe::read_pid(&plan.pid_file("supervisor")).unwrap();
    beeline::lab::probe::signal(supervisor, libc::SIGKILL);
    assert!(beeline::lab::probe::wait_gone(supervisor, lab.arg(), Duration::from_secs(5)));
    let mut snap: serde_json::Value = serde_json::from_slice(&std::fs::read(&snapshot).unwrap()).unwrap();
    for t in snap["types"].as_array_mut().unwrap() {
        if t["plural"] == "pods" {
            t["objects"].as_array_mut().unwrap().retain(|o| o["metadata"]["name"] != "lost");
        }
    }
    std::fs::write(&snapshot, serde_json::to_vec(&snap).unwrap()).unwrap();
    assert!(std::path::Path::new("/run/netns").join(&lost_netns).exists(), "the crash left the sandbox");

    run(&mut lab.beeline("restart"));
    let again = lab.running_pods("app=crash", 1, Duration::from_secs(60));
    assert_eq!(again[0]["status"]["podIP"], kept["status"]["podIP"], "kept runs again with its address");
    poll("the leftover sandbox released (CNI DEL) and its namespace gone", Duration::from_secs(30), || {
        let listing = ipam_listing(&plan);
        (!listing.contains(&container(&lost))
            && !listing.contains(&format!("\"{lost_ip}\""))
            && listing.contains(&container(&kept))
            && !std::path::Path::new("/run/netns").join(&lost_netns).exists())
        .then_some(())
    });
    down_and_assert_gone(&lab);
}
