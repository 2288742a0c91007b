//! IPAM modes in a whole lab (root), as the seeds walk through them.
//!
//! Multi-pool with native routing and autoDirectNodeRoutes (`examples/lab/multi-pool.yaml`): two
//! tenant namespaces annotated with two `CiliumPodIPPool`s get addresses from their own pools on
//! both nodes, each node routes every peer pool CIDR via the peer's underlay address, pods ping
//! and reach each other over HTTP across nodes, and an agent killed and restarted by the
//! supervisor keeps every address it had handed out (its state file), so a new pod gets a fresh one.
//! One lab for the whole scenario: bringing a lab up costs seconds.

mod integration;

use std::{collections::BTreeMap, net::IpAddr, process::Command, time::Duration};

use beeline::lab::{plan::LabPlan, probe};
use integration::{
    lab::{down_and_assert_gone, in_netns, ping_from_pod, pod_netns, poll, run, stdout, LabDir, BIN},
    require_root,
};
use ipnet::IpNet;

const NODES: [&str; 2] = ["kind-control-plane", "kind-worker"];

/// Two pools, two namespaces choosing them by annotation, one pod per namespace and node.
fn tenants() -> String {
    let mut yaml = String::new();
    for (tenant, cidr) in [("a", "10.20.0.0/16"), ("b", "10.30.0.0/16")] {
        yaml += &format!(
            "apiVersion: cilium.io/v2alpha1
kind: CiliumPodIPPool
metadata: {{name: tenant-{tenant}}}
spec:
  ipv4: {{cidrs: [{cidr}], maskSize: 27}}
---
apiVersion: v1
kind: Namespace
metadata:
  name: team-{tenant}
  annotations: {{ipam.cilium.io/ip-pool: tenant-{tenant}}}
---
"
        );
        for node in NODES {
            yaml += &pod(tenant, node, "1");
        }
    }
    yaml
}

fn pod(tenant: &str, node: &str, generation: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: web-{node}-{generation}
  namespace: team-{tenant}
  labels: {{app: mp-web, tenant: {tenant}, generation: \"{generation}\"}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {node}}}
  containers: [{{name: web, image: echo, ports: [{{name: http, containerPort: 8080}}]}}]
---
"
    )
}

fn pod_ip(pod: &serde_json::Value) -> IpAddr {
    pod["status"]["podIP"].as_str().unwrap().parse().unwrap()
}

fn pod_name(pod: &serde_json::Value) -> String {
    let m = &pod["metadata"];
    format!("{}/{}", m["namespace"].as_str().unwrap(), m["name"].as_str().unwrap())
}

/// The node's pool CIDRs from its CiliumNode (`spec.ipam.pools.allocated`), by pool.
fn allocated(lab: &LabDir, node: &str) -> BTreeMap<String, Vec<IpNet>> {
    let cn = lab.kubectl_json(&["get", "ciliumnode", node]);
    let mut out = BTreeMap::new();
    for entry in cn["spec"]["ipam"]["pools"]["allocated"].as_array().cloned().unwrap_or_default() {
        let cidrs = entry["cidrs"].as_array().cloned().unwrap_or_default();
        out.insert(
            entry["pool"].as_str().unwrap().to_string(),
            cidrs.iter().map(|c| c.as_str().unwrap().parse().unwrap()).collect(),
        );
    }
    out
}

/// The agent's own view of its allocations (`beeline ipam -o json` on its socket): address → owner.
fn agent_allocations(plan: &LabPlan, node: &str) -> BTreeMap<IpAddr, String> {
    let socket = plan.nodes.iter().find(|n| n.name == node).unwrap().agent_socket();
    let out = run(Command::new(BIN).args(["ipam", "-o", "json", "--socket"]).arg(socket));
    let listing: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    listing["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["ip"].as_str().unwrap().parse().unwrap(), a["owner"].to_string()))
        .collect()
}

fn http(from: &serde_json::Value, to: &serde_json::Value) {
    let addr = std::net::SocketAddr::new(pod_ip(to), 8080);
    let (code, body) = probe::http_get_in(&pod_netns(from), addr, "/")
        .unwrap_or_else(|e| panic!("{} -> {} ({addr}): {e}", pod_name(from), pod_name(to)));
    assert_eq!(code, 200, "{} -> {}: {body}", pod_name(from), pod_name(to));
    let name = to["metadata"]["name"].as_str().unwrap();
    assert!(body.contains(&format!("\"pod\":\"{name}\"")), "{} -> {}: {body}", pod_name(from), pod_name(to));
}

#[test]
fn multi_pool_tenants_get_their_pools_routes_reach_every_peer_cidr_and_a_restarted_agent_keeps_addresses() {
    require_root();
    let lab = LabDir::new();
    lab.up(2, "multi-pool.yaml");
    let plan = lab.plan();
    lab.apply("tenants.yaml", &tenants());

    // 1. Each tenant's pods get addresses from their own pool, inside a CIDR allocated to their node.
    let pods = lab.running_pods("app=mp-web", 4, Duration::from_secs(90));
    for p in &pods {
        let tenant = p["metadata"]["labels"]["tenant"].as_str().unwrap();
        let node = p["spec"]["nodeName"].as_str().unwrap();
        let pool: IpNet = if tenant == "a" { "10.20.0.0/16" } else { "10.30.0.0/16" }.parse().unwrap();
        let ip = pod_ip(p);
        assert!(pool.contains(&ip), "{}: {ip} is not from tenant-{tenant}'s pool {pool}", pod_name(p));
        let cidrs = poll(&format!("{node}'s tenant-{tenant} CIDR"), Duration::from_secs(10), || {
            allocated(&lab, node).remove(&format!("tenant-{tenant}"))
        });
        assert!(cidrs.iter().any(|c| c.contains(&ip)), "{}: {ip} outside {node}'s {cidrs:?}", pod_name(p));
        assert!(cidrs.iter().all(|c| c.prefix_len() == 27), "{node}: maskSize 27: {cidrs:?}");
    }

    // 2. Every node routes each CIDR of every peer (all pools) via the peer's underlay address.
    for node in &plan.nodes {
        let want: Vec<(IpNet, std::net::Ipv4Addr)> = plan
            .nodes
            .iter()
            .filter(|peer| peer.name != node.name)
            .flat_map(|peer| {
                let cidrs: Vec<IpNet> = allocated(&lab, &peer.name).into_values().flatten().collect();
                assert!(cidrs.len() >= 3, "{}: default + two tenant pools: {cidrs:?}", peer.name);
                cidrs.into_iter().map(move |c| (c, peer.ipv4))
            })
            .collect();
        poll(&format!("{}'s routes to {want:?}", node.name), Duration::from_secs(20), || {
            let routes = stdout(&in_netns(&node.netns, &["ip", "-4", "route", "show"]));
            want.iter()
                .all(|(cidr, via)| routes.lines().any(|l| l.starts_with(&format!("{cidr} via {via} "))))
                .then_some(())
        });
    }

    // 3. Pods reach each other across nodes and tenants (ping and HTTP).
    for from in &pods {
        for to in pods.iter().filter(|t| t["spec"]["nodeName"] != from["spec"]["nodeName"]) {
            ping_from_pod(from, pod_ip(to));
            http(from, to);
        }
    }

    // 4. The worker's agent is killed; the supervisor restarts it, and it still holds every
    //    address it handed out (router, health and the two pods), so a new pod gets another one.
    let worker = "kind-worker";
    let before = agent_allocations(&plan, worker);
    let on_worker: Vec<IpAddr> =
        pods.iter().filter(|p| p["spec"]["nodeName"] == worker).map(pod_ip).collect::<Vec<_>>();
    assert!(on_worker.iter().all(|ip| before.contains_key(ip)), "{on_worker:?} in {before:?}");
    let agent = format!("agent-{worker}");
    let pid = probe::read_pid(&plan.pid_file(&agent)).expect("the worker agent's pid");
    probe::signal(pid, libc::SIGKILL);
    poll("the worker agent restarted and answering", Duration::from_secs(60), || {
        let new_pid = probe::read_pid(&plan.pid_file(&agent)).filter(|p| *p != pid)?;
        let out = Command::new(BIN)
            .args(["ipam", "-o", "json", "--socket"])
            .arg(plan.nodes.iter().find(|n| n.name == worker)?.agent_socket())
            .output()
            .ok()?;
        let ready =
            out.status.success() && serde_json::from_slice::<serde_json::Value>(&out.stdout).ok()?["ready"] == true;
        (ready && probe::is_alive(new_pid)).then_some(())
    });
    assert_eq!(agent_allocations(&plan, worker), before, "the restarted agent restored every allocation");
    lab.apply("second.yaml", &pod("a", worker, "2"));
    let second = lab.running_pods("generation=2", 1, Duration::from_secs(60));
    let fresh = pod_ip(&second[0]);
    assert!(!before.contains_key(&fresh), "the new pod got {fresh}, already held before the restart: {before:?}");
    assert!("10.20.0.0/16".parse::<IpNet>().unwrap().contains(&fresh), "tenant-a pool: {fresh}");
    // The old pods still answer across nodes after the restart, and the new one is reachable.
    for from in pods.iter().filter(|p| p["spec"]["nodeName"] != worker) {
        for to in pods.iter().filter(|t| t["spec"]["nodeName"] == worker).chain(&second) {
            ping_from_pod(from, pod_ip(to));
            http(from, to);
        }
    }

    down_and_assert_gone(&lab);
}
