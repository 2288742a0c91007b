//! `beeline observe` against a whole lab (one lab for every assertion): the real connectivity
//! test's traffic (pod to pod, pod to a ClusterIP service) shows up as flows merged from every
//! node, enriched with pod names, namespaces and identities, and the `--from-pod` / `--verdict`
//! filters select exactly the matching flows; a policy that admits nobody shows a denied policy
//! verdict and a drop with the policy reason, counted in the agent's metrics.

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
    lab.connectivity_test();

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

    // --follow merges new flows from every node as they happen (the relay, live): a new
    // connection to the other node's echo pod shows up from the client's node (to-overlay) and
    // from the echo pod's node (to-endpoint). `--last 0`: nothing from before.
    let ns = delivered.source.namespace.clone();
    let client_pod = &lab.running_pods("name=client", 1, Duration::from_secs(10))[0];
    let netns = integration::lab::pod_netns(client_pod);
    let other = &lab.running_pods("name=echo-other-node", 1, Duration::from_secs(10))[0];
    let other_addr = format!("{}:8080", other["status"]["podIP"].as_str().unwrap()).parse().unwrap();
    let other_pod = format!("{ns}/{}", other["metadata"]["name"].as_str().unwrap());
    let mut follow = integration::Proc(
        Command::new(BIN)
            .args([
                "observe",
                "--state-dir",
                lab.arg(),
                "--follow",
                "--last",
                "0",
                "-o",
                "json",
                "--to-pod",
                &other_pod,
            ])
            .env_remove("KUBECONFIG")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = follow.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(lines)).map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen: std::collections::BTreeMap<String, String> = Default::default();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < 2 && std::time::Instant::now() < deadline {
        let _ = beeline::lab::probe::http_get_in(&netns, other_addr, "/");
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
            let f: Flow = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
            assert_eq!(
                format!("{}/{}", f.destination.namespace, f.destination.pod_name),
                other_pod,
                "--to-pod: {line}"
            );
            seen.insert(f.node_name.clone(), f.observation_point.clone());
        }
    }
    assert_eq!(seen.len(), 2, "live flows from both nodes: {seen:?}");
    assert!(seen.values().any(|p| p == "to-overlay") && seen.values().any(|p| p == "to-endpoint"), "{seen:?}");
    drop(follow);

    // A policy that admits nobody the test runs: the client's connection to the same-node echo
    // pod shows a `policy-verdict:none INGRESS DENIED` and a drop with the policy reason.
    lab.apply(
        "deny.yaml",
        &format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: deny-echo, namespace: {ns}}}\n\
             spec:\n  endpointSelector: {{matchLabels: {{name: echo-same-node}}}}\n  ingress:\n  \
             - fromEndpoints: [{{matchLabels: {{name: nobody}}}}]\n"
        ),
    );
    let echo = &lab.running_pods("name=echo-same-node", 1, Duration::from_secs(10))[0];
    let echo_addr = format!("{}:8080", echo["status"]["podIP"].as_str().unwrap()).parse().unwrap();
    let echo_name = echo["metadata"]["name"].as_str().unwrap().to_string();
    let denied = poll("a denied policy verdict for the echo pod", Duration::from_secs(30), || {
        let _ = beeline::lab::probe::http_get_in(&netns, echo_addr, "/");
        let flows =
            observe(&lab, &["-t", "policy-verdict", "--verdict", "DROPPED", "--to-pod", &format!("{ns}/{echo_name}")]);
        flows.into_iter().find(|f| f.policy_verdict == "DENIED")
    });
    assert_eq!(
        (denied.traffic_direction.as_str(), denied.observation_point.as_str()),
        ("INGRESS", "policy-verdict:none")
    );
    assert_eq!(denied.source.pod_name, client_pod["metadata"]["name"].as_str().unwrap());
    assert!(beeline::observe::format::line(&denied).contains("policy-verdict:none INGRESS DENIED"));
    let drops = observe(&lab, &["-t", "drop", "--to-pod", &format!("{ns}/{echo_name}")]);
    assert!(
        drops.iter().any(|f| f.drop_reason == 133 && f.drop_reason_desc == "Policy denied" && f.verdict == "DROPPED"),
        "a policy drop: {drops:?}"
    );

    // The node's `hubble_drop` counter moves with every policy drop the flows show.
    let node = lab.plan().nodes.into_iter().find(|n| n.name == denied.node_name).expect("the verdict's node");
    let policy_drops = || -> (u64, usize) {
        let addr = "127.0.0.1:9879".parse().unwrap();
        let (_, metrics) = beeline::lab::probe::http_get_in(&node.netns, addr, "/metrics").expect("agent metrics");
        let counter = metrics
            .lines()
            .filter(|l| l.starts_with("beeline_agent_hubble_drop_total{") && l.contains("reason=\"Policy denied\""))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        let flows = observe(&lab, &["-t", "drop"]);
        (counter, flows.iter().filter(|f| f.node_name == node.name && f.drop_reason == 133).count())
    };
    let (before, flows_before) = policy_drops();
    let _ = beeline::lab::probe::http_get_in(&netns, echo_addr, "/");
    // Counter and ring are read one after the other: poll until both saw the same drops.
    poll("the drop counter to move with the drop flows, one count each", Duration::from_secs(10), || {
        let (after, flows_after) = policy_drops();
        (after > before && after - before == (flows_after - flows_before) as u64).then_some(())
    });

    down_and_assert_gone(&lab);
}
