//! `beeline observe` against a whole lab (one lab for every assertion): the real connectivity
//! test's traffic (pod to pod, pod to a ClusterIP service) shows up as flows merged from every
//! node, enriched with pod names, namespaces and identities, and the `--from-pod` / `--verdict`
//! filters select exactly the matching flows.

mod integration;

use std::{process::Command, time::Duration};

use beeline::observe::flow::Flow;
use integration::{
    lab::{down_and_assert_gone, poll, run, stdout, LabDir, BIN},
    require_root,
};

fn observe(lab: &LabDir, args: &[&str]) -> Vec<Flow> {
    let out = run(Command::new(BIN)
        .args(["observe", "--state-dir", lab.arg(), "-o", "json", "--last", "100000"])
        .args(args)
        .env_remove("KUBECONFIG"));
    stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

#[test]
fn connectivity_traffic_shows_up_as_enriched_flows_and_filters_select_exactly() {
    require_root();
    let lab = LabDir::new();
    lab.up(2, "vxlan.yaml");
    let out = Command::new(BIN)
        .args(["connectivity", "test", "--state-dir", lab.arg(), "--keep"])
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "connectivity test:\n{}\n{}", stdout(&out), String::from_utf8_lossy(&out.stderr));

    // The service check's translation, with the client pod and the service named.
    let flows = poll("a service translation from a named pod", Duration::from_secs(20), || {
        let flows = observe(&lab, &[]);
        flows
            .iter()
            .any(|f| {
                f.observation_point == "service-translation"
                    && !f.source.pod_name.is_empty()
                    && f.source.identity > 255
                    && f.destination_service.is_some()
            })
            .then_some(flows)
    });
    let report = flows.iter().map(beeline::observe::format::line).collect::<Vec<_>>().join("\n");
    // Both nodes contribute (the relay), and delivery into a pod is seen with both pods named.
    let nodes: std::collections::BTreeSet<&str> = flows.iter().map(|f| f.node_name.as_str()).collect();
    assert_eq!(nodes.len(), 2, "flows from both nodes:\n{report}");
    let delivered = flows
        .iter()
        .find(|f| {
            f.observation_point == "to-endpoint" && !f.source.pod_name.is_empty() && !f.destination.pod_name.is_empty()
        })
        .unwrap_or_else(|| panic!("a to-endpoint flow between two named pods:\n{report}"));
    assert!(delivered.destination.identity > 255, "a pod's identity: {delivered:?}");
    assert_eq!(delivered.verdict, "FORWARDED");
    let merged: Vec<i128> = flows.iter().map(|f| f.time_ns).collect();
    assert!(merged.windows(2).all(|w| w[0] <= w[1]), "merged by time");

    // --from-pod selects exactly the flows whose source is that pod.
    let client = format!("{}/{}", delivered.source.namespace, delivered.source.pod_name);
    let from = observe(&lab, &["--from-pod", &client]);
    assert!(!from.is_empty());
    assert!(from
        .iter()
        .all(|f| f.source.pod_name == delivered.source.pod_name && f.source.namespace == delivered.source.namespace));
    let all_now = observe(&lab, &[]);
    let expected = all_now
        .iter()
        .filter(|f| f.source.pod_name == delivered.source.pod_name && f.source.namespace == delivered.source.namespace)
        .filter(|f| f.time_ns <= from.last().unwrap().time_ns)
        .count();
    assert_eq!(from.len(), expected, "--from-pod {client}");
    // --verdict splits the flows.
    let forwarded = observe(&lab, &["--verdict", "FORWARDED"]);
    assert!(!forwarded.is_empty() && forwarded.iter().all(|f| f.verdict == "FORWARDED"));
    let dropped = observe(&lab, &["--verdict", "DROPPED"]);
    assert!(dropped.iter().all(|f| f.verdict == "DROPPED"));
    // The text format carries names, identities and the point.
    let text = stdout(&run(Command::new(BIN)
        .args(["observe", "--state-dir", lab.arg(), "--from-pod", &client, "--last", "5"])
        .env_remove("KUBECONFIG")));
    assert!(text.lines().count() <= 5 && text.contains(&format!("{client}:")) && text.contains("(ID:"), "{text}");

    down_and_assert_gone(&lab);
}
