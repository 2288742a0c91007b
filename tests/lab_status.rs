//! `beeline status` and the agent's datapath metrics against a whole lab (one lab for every
//! assertion): each node's status shows its endpoints (one per running pod on that node), map
//! pressure and controller health with real numbers; `--all-nodes` has a section per node; the
//! forward counters on `/metrics` move by at least the packets of a ping exchange sent between
//! pods; `bpf_map_pressure` of `beeline_lxc` is its entries over its size.

mod integration;

use std::{process::Command, time::Duration};

use beeline::agent::api::StatusResponse;
use beeline::lab::plan::NodePlan;
use integration::{
    lab::{down_and_assert_gone, poll, run, stdout, LabDir, BIN},
    require_root,
};

const AGENT_HEALTH: &str = "127.0.0.1:9879";

fn status(node: &NodePlan) -> StatusResponse {
    let out = run(Command::new(BIN)
        .args(["status", "-o", "json", "--socket"])
        .arg(node.agent_socket())
        .env_remove("KUBECONFIG"));
    serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)))
}

fn metrics(node: &NodePlan) -> String {
    let (_, text) = beeline::lab::probe::http_get_in(&node.netns, AGENT_HEALTH.parse().unwrap(), "/metrics")
        .expect("agent metrics");
    text
}

/// The value of the sample `name{labels}` (exact label text) in `text`.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
        .parse()
        .unwrap()
}

/// (packets, bytes) forwarded in `direction` on `node`.
fn forwards(node: &NodePlan, direction: &str) -> (u64, u64) {
    let text = metrics(node);
    let label = format!("{{direction=\"{direction}\"}}");
    (
        sample(&text, &format!("beeline_agent_forward_count_total{label}")) as u64,
        sample(&text, &format!("beeline_agent_forward_bytes_total{label}")) as u64,
    )
}

/// `count` ICMP echo requests from the pod namespace `netns` to `ip`; all must be answered.
fn ping(netns: &str, ip: &str, count: u32) {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{netns}"))
        .args(["ping", "-n", "-q", "-c", &count.to_string(), "-i", "0.2", "-W", "2", ip])
        .output()
        .unwrap();
    assert!(out.status.success(), "ping {ip}: {}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn status_metrics_and_all_nodes_show_real_numbers() {
    require_root();
    let lab = LabDir::new();
    lab.up(2, "vxlan.yaml");
    lab.connectivity_test();
    let plan = lab.plan();

    // Endpoints: one per running pod (with its own network) on the node.
    for node in &plan.nodes {
        let s = poll(&format!("{}'s endpoints to match its running pods", node.name), Duration::from_secs(20), || {
            let pods = lab.kubectl_json(&["get", "pods", "-A"]);
            let running = pods["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["spec"]["nodeName"] == node.name.as_str())
                .filter(|p| p["status"]["phase"] == "Running" && p["spec"]["hostNetwork"] != true)
                .count();
            let s = status(node);
            (running > 0 && s.endpoints.len() == running).then_some(s)
        });
        assert!(s.endpoints.iter().all(|e| e.state == "ready" && e.identity > 0 && !e.ips.is_empty()), "{s:?}");
        assert!(!s.versions.kernel.is_empty() && s.versions.kubernetes.starts_with('v'), "{:?}", s.versions);
        // Controllers: the agent's watch loops ran and are healthy.
        for name in ["services", "policy", "node-ipam"] {
            let c = s.controllers.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("{name}: {s:?}"));
            assert!(c.success_count > 0 && c.healthy(), "{c:?}");
        }
        // Map pressure: beeline_lxc holds this node's endpoints (the host's own rows too).
        let lxc = s.bpf_maps.iter().find(|m| m.name == "beeline_lxc").unwrap_or_else(|| panic!("{s:?}"));
        assert!(lxc.entries >= s.endpoints.len() as u64 && lxc.max_entries > lxc.entries, "{lxc:?}");
        // The gauge is entries / max of the same map (rows do not change without pod churn).
        let gauge = sample(&metrics(node), "beeline_agent_bpf_map_pressure{map_name=\"beeline_lxc\"}");
        assert!((gauge - lxc.pressure()).abs() < 1e-9, "gauge {gauge} vs {lxc:?}");
        let text = run(Command::new(BIN)
            .args(["status", "--verbose", "--socket"])
            .arg(node.agent_socket())
            .env_remove("KUBECONFIG"));
        let text = stdout(&text);
        assert!(text.contains(&format!("Endpoints:              {}", s.endpoints.len())), "{text}");
        assert!(text.contains("Controller Status:") && text.contains("beeline_lxc"), "{text}");
        let reconciles = metrics(node);
        // The connectivity test's services are programmed on every node, each with a backend.
        let services = sample(&reconciles, "beeline_agent_services{family=\"ipv4\"}");
        let backends = sample(&reconciles, "beeline_agent_service_backends{family=\"ipv4\"}");
        assert!(services >= 1.0 && backends >= 1.0, "services {services}, backends {backends}");
        // IPAM per pool: the gauges say what the status line says (`IPv4: 6/254 allocated from ...`),
        // and every endpoint holds one of the used addresses.
        let line = s.ipam_status.iter().find(|l| l.starts_with("IPv4: ")).unwrap_or_else(|| panic!("{s:?}"));
        let (used, capacity) = line["IPv4: ".len()..].split_once(' ').unwrap().0.split_once('/').unwrap();
        let (used, capacity): (f64, f64) = (used.parse().unwrap(), capacity.parse().unwrap());
        let series =
            |state: &str| format!("beeline_agent_ipam_addresses{{pool=\"default\",family=\"ipv4\",state=\"{state}\"}}");
        assert_eq!(sample(&reconciles, &series("used")), used, "{line}");
        assert_eq!(sample(&reconciles, &series("available")), capacity - used, "{line}");
        assert!(used >= s.endpoints.len() as f64, "{line} vs {} endpoints", s.endpoints.len());
        assert!(
            reconciles.contains(
                "beeline_agent_controller_runtime_reconcile_total{controller=\"services\",result=\"success\"}"
            ),
            "{reconciles}"
        );
    }

    // --all-nodes: a section per node, success while every agent is ready.
    let out = run(Command::new(BIN).args(["status", "--all-nodes", "--state-dir", lab.arg()]).env_remove("KUBECONFIG"));
    let text = stdout(&out);
    for node in &plan.nodes {
        assert!(text.contains(&format!("=== {} ===", node.name)), "{text}");
    }
    assert_eq!(text.matches("Controller Status:").count(), plan.nodes.len(), "{text}");

    // Forward counters: 5 pings client → same-node echo are 10 deliveries into a pod (requests
    // and replies) on that node; 5 pings to the other node's echo leave the client's node.
    let client = &lab.running_pods("name=client", 1, Duration::from_secs(10))[0];
    let same = &lab.running_pods("name=echo-same-node", 1, Duration::from_secs(10))[0];
    let other = &lab.running_pods("name=echo-other-node", 1, Duration::from_secs(10))[0];
    let node_of = |pod: &serde_json::Value| {
        plan.nodes.iter().find(|n| pod["spec"]["nodeName"] == n.name.as_str()).expect("the pod's node").clone()
    };
    let node = node_of(client);
    let netns = integration::lab::pod_netns(client);
    let ip = |pod: &serde_json::Value| pod["status"]["podIP"].as_str().unwrap().to_string();
    let (in_before, in_bytes_before) = forwards(&node, "INGRESS");
    let (out_before, _) = forwards(&node, "EGRESS");
    ping(&netns, &ip(same), 5);
    ping(&netns, &ip(other), 5);
    let (in_after, in_bytes_after) = forwards(&node, "INGRESS");
    let (out_after, _) = forwards(&node, "EGRESS");
    // Every ping is 98 bytes on the wire (14 Ethernet + 20 IPv4 + 8 ICMP + 56 data).
    assert!(in_after - in_before >= 10 + 5, "ingress {in_before} -> {in_after}");
    assert!(in_bytes_after - in_bytes_before >= 15 * 98, "ingress bytes {in_bytes_before} -> {in_bytes_after}");
    assert!(out_after - out_before >= 5, "egress {out_before} -> {out_after}");

    down_and_assert_gone(&lab);
}
