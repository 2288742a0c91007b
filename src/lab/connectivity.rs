//! `beeline connectivity test`, like `cilium connectivity test`, against a lab.
//!
//! Deploys its own namespace: a `client` Deployment and an `echo-same-node` Deployment pinned to
//! one node, an `echo-other-node` Deployment pinned to another (the lab's pods are the kubelet
//! emulation's HTTP echo servers), a Service `echo` over both echo Deployments and the same with
//! ClientIP session affinity (`echo-affinity`: repeated connections must reach one pod). It waits
//! (bounded) for the pods, then runs each check from inside the client pod's network namespace,
//! each with a bounded number of attempts, and verifies who answered and which client address
//! the server saw. Results are a table with the reason for every failure; any failure makes the
//! command exit non-zero. The namespace is deleted afterwards (unless `--keep`).
//!
//! Checks whose feature is not there yet fail with the error the traffic got — nothing is
//! reported as passing without a reply from the expected server.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::cluster::StateArgs;
use super::controllers::HOSTNAME_LABEL;
use super::endpointslices::SERVICE_NAME_LABEL;
use super::podserver::EchoReply;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const ECHO_PORT: u16 = 8080;
const ATTEMPTS: usize = 3;
/// Requests of the session-affinity check: without affinity, all of them landing on one of the two
/// echo pods has probability 2·2^-16.
const AFFINITY_REQUESTS: usize = 16;
const AFFINITY_SERVICE: &str = "echo-affinity";

#[derive(Debug, clap::Args)]
pub struct ConnectivityArgs {
    #[command(subcommand)]
    pub command: ConnectivityCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ConnectivityCommand {
    /// Deploy test workloads into a lab and check pod-to-pod, pod-to-service and pod-to-outside.
    Test(TestArgs),
}

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// The namespace the test deploys into (deleted before and after).
    #[arg(long, default_value = "beeline-connectivity-test")]
    pub namespace: String,
    /// Seconds to wait for the test pods to be ready.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Leave the namespace in place afterwards (for debugging).
    #[arg(long)]
    pub keep: bool,
}

/// One check's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub name: String,
    /// `None` passed; `Some(reason)` failed.
    pub failure: Option<String>,
    pub detail: String,
}

/// The result table as printed.
pub fn table(outcomes: &[Outcome]) -> String {
    // As wide as the longest check name ("pod-to-pod (across nodes) over IPv6" in dual stack).
    let width = outcomes.iter().map(|o| o.name.len()).max().unwrap_or(0).max(34);
    let mut out = format!("{:<width$} {:<6} DETAIL\n", "CHECK", "RESULT");
    for o in outcomes {
        let (result, text) = match &o.failure {
            None => ("pass", o.detail.clone()),
            Some(reason) => ("FAIL", reason.clone()),
        };
        out.push_str(&format!("{:<width$} {:<6} {text}\n", o.name, result));
    }
    let failed = outcomes.iter().filter(|o| o.failure.is_some()).count();
    out.push_str(&format!("\n{} checks, {} passed, {failed} failed\n", outcomes.len(), outcomes.len() - failed));
    out
}

/// Judges an HTTP answer: it must come from one of `expected` servers and report `client_ip`
/// as the client (pod-to-pod and pod-to-service keep the source address; `None` skips that).
pub fn judge(
    answer: Result<(u16, String), String>,
    expected: &[String],
    client_ip: Option<IpAddr>,
) -> Result<String, String> {
    let (code, body) = answer?;
    if code != 200 {
        return Err(format!("HTTP {code}: {}", body.trim()));
    }
    let reply: EchoReply =
        serde_json::from_str(body.trim()).map_err(|e| format!("not an echo server's answer ({e}): {}", body.trim()))?;
    if !expected.contains(&reply.pod) {
        return Err(format!("answered by {:?}, expected one of {expected:?}", reply.pod));
    }
    if let Some(ip) = client_ip {
        if reply.client.ip() != ip {
            return Err(format!("{} saw client {}, expected the client pod's {ip}", reply.pod, reply.client.ip()));
        }
    }
    Ok(format!("{} answered, saw client {}", reply.pod, reply.client.ip()))
}

fn deployment(namespace: &str, name: &str, node: &str, labels: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"name": name}},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"nodeSelector": {HOSTNAME_LABEL: node},
                                       "containers": [{"name": name, "image": "beeline-lab/echo",
                                                       "ports": [{"name": "http", "containerPort": ECHO_PORT}]}]}}}
    })
}

/// The test's objects: (client node, other node or `None` on a one-node lab).
pub fn manifests(namespace: &str, client_node: &str, other_node: Option<&str>) -> Vec<serde_json::Value> {
    let mut objects = vec![
        deployment(namespace, "client", client_node, json!({"name": "client", "kind": "client"})),
        deployment(namespace, "echo-same-node", client_node, json!({"name": "echo-same-node", "kind": "echo"})),
    ];
    if let Some(other) = other_node {
        objects.push(deployment(
            namespace,
            "echo-other-node",
            other,
            json!({"name": "echo-other-node", "kind": "echo"}),
        ));
    }
    objects.push(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "echo", "namespace": namespace},
        "spec": {"selector": {"kind": "echo"}, "ports": [{"name": "http", "port": ECHO_PORT, "targetPort": "http"}]}
    }));
    objects.push(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": AFFINITY_SERVICE, "namespace": namespace},
        "spec": {"selector": {"kind": "echo"}, "ports": [{"name": "http", "port": ECHO_PORT, "targetPort": "http"}],
                 "sessionAffinity": "ClientIP"}
    }));
    objects
}

/// "pod-to-service (session affinity)": [`AFFINITY_REQUESTS`] new connections from the client to a
/// ClientIP-affinity Service, every one answered (by an expected pod), all by the same pod.
fn affinity_check(
    netns: &str,
    addr: SocketAddr,
    expected: &[String],
    client_ip: Option<IpAddr>,
) -> Result<String, String> {
    let mut answered = std::collections::BTreeSet::new();
    for i in 0..AFFINITY_REQUESTS {
        let detail = judge(get_from(netns, addr), expected, client_ip).map_err(|e| format!("request {i}: {e}"))?;
        answered.insert(detail.split_whitespace().next().unwrap_or_default().to_string());
    }
    match answered.len() {
        1 => {
            Ok(format!("{addr}: {AFFINITY_REQUESTS} connections, all to {}", answered.pop_first().unwrap_or_default()))
        }
        _ => Err(format!("{AFFINITY_REQUESTS} connections spread over {answered:?}")),
    }
}

fn pod_ip(pod: &Pod) -> Option<IpAddr> {
    pod.status.as_ref()?.pod_ip.as_ref()?.parse().ok()
}

/// A dual-stack pod's address of the other family than its `podIP` (from `status.podIPs`):
/// what the second round of pod-to-pod checks uses.
fn secondary_ip(pod: &Pod) -> Option<IpAddr> {
    let primary = pod_ip(pod)?;
    super::endpointslices::pod_ips(pod).into_iter().find(|ip| ip.is_ipv4() != primary.is_ipv4())
}

/// The name of a pod-to-pod check over the pods' secondary family.
fn over_family(check: &str, ip: IpAddr) -> String {
    format!("{check} over {}", if ip.is_ipv4() { "IPv4" } else { "IPv6" })
}

/// Why a pod is not ready: its latest Event or its status.
async fn not_ready_reason(client: &Client, pod: &Pod) -> String {
    let ns = pod.namespace().unwrap_or_default();
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let uid = pod.metadata.uid.clone();
    if let Some(e) = events.iter().rev().find(|e| e.involved_object.uid == uid) {
        return format!("{}: {}", e.reason.clone().unwrap_or_default(), e.message.clone().unwrap_or_default());
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_else(|| "Pending".into());
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_else(|| "no node".into());
    format!("{phase} on {node}")
}

/// GET `addr/` from inside `netns`, up to [`ATTEMPTS`] times.
fn get_from(netns: &str, addr: SocketAddr) -> Result<(u16, String), String> {
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        match super::probe::http_get_in(netns, addr, "/") {
            Ok(answer) => return Ok(answer),
            Err(e) => last = format!("GET http://{addr}/: {e}"),
        }
        if attempt + 1 < ATTEMPTS {
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    Err(format!("{last} ({ATTEMPTS} attempts)"))
}

pub async fn run(args: ConnectivityArgs) -> Result<(), BoxError> {
    let ConnectivityCommand::Test(args) = args.command;
    super::require_root("`beeline connectivity test`")?;
    let client = super::apply::lab_client(&args.state).await?;
    let namespaces = Api::<Namespace>::all(client.clone());
    delete_namespace(&client, &args.namespace).await;
    namespaces
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": args.namespace}}))?)
        .await?;

    let mut nodes: Vec<String> = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|n| n.name_any())
        .collect();
    nodes.sort();
    // Workers first, like cilium's test (the control-plane node is the last resort).
    nodes.sort_by_key(|n| n.ends_with("control-plane"));
    let client_node = nodes.first().cloned().ok_or("the lab has no nodes")?;
    let other_node = nodes.get(1).cloned();
    println!(
        "deploying into namespace {} (client and echo-same-node on {client_node}, echo-other-node on {})",
        args.namespace,
        other_node.as_deref().unwrap_or("-")
    );
    for obj in manifests(&args.namespace, &client_node, other_node.as_deref()) {
        super::apply::apply_object(&client, &obj).await?;
    }
    let outcomes = run_checks(&client, &args, other_node.is_some()).await;
    print!("{}", table(&outcomes));
    if !args.keep {
        delete_namespace(&client, &args.namespace).await;
    }
    let failed = outcomes.iter().filter(|o| o.failure.is_some()).count();
    if failed > 0 {
        return Err(format!("{failed} connectivity check(s) failed").into());
    }
    Ok(())
}

/// One traffic check: where to send, who may answer, which client address the server must see.
struct Target {
    name: String,
    addr: Option<SocketAddr>,
    expected: Vec<String>,
    client_ip: Option<IpAddr>,
}

async fn run_checks(client: &Client, args: &TestArgs, two_nodes: bool) -> Vec<Outcome> {
    let pods_api = Api::<Pod>::namespaced(client.clone(), &args.namespace);
    let wanted = if two_nodes { 3 } else { 2 };
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let pods = loop {
        let pods = pods_api.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default();
        let ready = pods.iter().filter(|p| super::workloads::is_ready(p) && pod_ip(p).is_some()).count();
        if (pods.len() >= wanted && ready == pods.len()) || Instant::now() >= deadline {
            break pods;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let find = |prefix: &str| pods.iter().find(|p| p.name_any().starts_with(&format!("{prefix}-"))).cloned();
    let mut outcomes = Vec::new();
    let mut pending = Vec::new();
    for p in &pods {
        if !super::workloads::is_ready(p) {
            pending.push(format!("{}: {}", p.name_any(), not_ready_reason(client, p).await));
        }
    }
    outcomes.push(Outcome {
        name: "pods ready".into(),
        failure: (!pending.is_empty() || pods.len() < wanted).then(|| {
            format!(
                "{} of {wanted} pods ready after {}s; {}",
                pods.len() - pending.len(),
                args.timeout,
                pending.join("; ")
            )
        }),
        detail: pods
            .iter()
            .map(|p| format!("{} {}", p.name_any(), pod_ip(p).map_or("-".into(), |i| i.to_string())))
            .collect::<Vec<_>>()
            .join(", "),
    });
    // The Service's EndpointSlices list every echo pod (control plane only; no traffic). They
    // follow the pods' readiness by a controller pass: waited for within the same deadline.
    let echo_count = if two_nodes { 2 } else { 1 };
    let slice_deadline = deadline.max(Instant::now() + Duration::from_secs(5));
    let ready_endpoints: Vec<String> = loop {
        let slices = Api::<EndpointSlice>::namespaced(client.clone(), &args.namespace)
            .list(&ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}=echo")))
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        let ready: Vec<String> = slices
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
            .flat_map(|e| e.addresses.clone())
            .collect();
        if ready.len() == echo_count || Instant::now() >= slice_deadline {
            break ready;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    outcomes.push(Outcome {
        name: "service endpoints (EndpointSlice)".into(),
        failure: (ready_endpoints.len() != echo_count)
            .then(|| format!("Service echo has {} ready endpoints, expected {echo_count}", ready_endpoints.len())),
        detail: format!("echo -> {}", ready_endpoints.join(", ")),
    });

    let client_pod = find("client");
    let netns = client_pod.as_ref().and_then(|p| p.annotations().get(super::kubelet::NETNS_ANNOTATION).cloned());
    let client_ip = client_pod.as_ref().and_then(pod_ip);
    let port = ECHO_PORT;
    let mut targets: Vec<Target> = Vec::new();
    for (check, prefix) in
        [("pod-to-pod (same node)", "echo-same-node"), ("pod-to-pod (across nodes)", "echo-other-node")]
    {
        if prefix == "echo-other-node" && !two_nodes {
            outcomes.push(Outcome {
                name: check.into(),
                failure: Some("the lab has one node".into()),
                detail: String::new(),
            });
            continue;
        }
        let pod = find(prefix);
        let addr = pod.as_ref().and_then(pod_ip).map(|ip| SocketAddr::new(ip, port));
        let expected: Vec<String> = pod.as_ref().map(|p| p.name_any()).into_iter().collect();
        targets.push(Target { name: check.into(), addr, expected: expected.clone(), client_ip });
        // Dual stack: the same check over the other family (IPv6 when IPv4 is the primary).
        if let Some(client_ip) = client_pod.as_ref().and_then(secondary_ip) {
            let addr = pod.as_ref().and_then(secondary_ip).map(|ip| SocketAddr::new(ip, port));
            targets.push(Target { name: over_family(check, client_ip), addr, expected, client_ip: Some(client_ip) });
        }
    }
    let service = Api::<Service>::namespaced(client.clone(), &args.namespace).get("echo").await.ok();
    let cluster_ip = service.and_then(|s| s.spec?.cluster_ip?.parse::<IpAddr>().ok());
    let echo_pods: Vec<String> =
        pods.iter().filter(|p| p.name_any().starts_with("echo-")).map(|p| p.name_any()).collect();
    targets.push(Target {
        name: "pod-to-service (ClusterIP)".into(),
        addr: cluster_ip.map(|ip| SocketAddr::new(ip, port)),
        expected: echo_pods.clone(),
        client_ip,
    });
    let outside = SocketAddr::new(IpAddr::V4(super::plan::OUTSIDE_IPV4), super::plan::OUTSIDE_PORT);
    // Leaving the cluster is masqueraded to the node's address: the client address is not checked.
    targets.push(Target {
        name: "pod-to-outside".into(),
        addr: Some(outside),
        expected: vec!["outside".into()],
        client_ip: None,
    });

    for Target { name, addr, expected, client_ip: expect_client } in targets {
        let failure = match (&netns, addr) {
            (None, _) => Some("the client pod has no sandbox (not running)".to_string()),
            (_, None) => Some("the target has no address (its pod is not running)".to_string()),
            (Some(ns), Some(addr)) => {
                let ns = ns.clone();
                let answer = tokio::task::spawn_blocking(move || get_from(&ns, addr))
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()));
                match judge(answer, &expected, expect_client) {
                    Ok(detail) => {
                        outcomes.push(Outcome { name, failure: None, detail: format!("{addr}: {detail}") });
                        continue;
                    }
                    Err(reason) => Some(reason),
                }
            }
        };
        outcomes.push(Outcome { name, failure, detail: String::new() });
    }
    let sticky = Api::<Service>::namespaced(client.clone(), &args.namespace).get(AFFINITY_SERVICE).await.ok();
    let sticky = sticky.and_then(|s| s.spec?.cluster_ip?.parse::<IpAddr>().ok()).map(|ip| SocketAddr::new(ip, port));
    let failure = match (&netns, sticky) {
        (Some(ns), Some(addr)) => {
            let (ns, expected) = (ns.clone(), echo_pods.clone());
            tokio::task::spawn_blocking(move || affinity_check(&ns, addr, &expected, client_ip))
                .await
                .unwrap_or_else(|e| Err(e.to_string()))
        }
        _ => Err("the client pod or the Service has no address".to_string()),
    };
    outcomes.push(Outcome {
        name: "pod-to-service (session affinity)".into(),
        detail: failure.clone().unwrap_or_default(),
        failure: failure.err(),
    });
    outcomes
}

/// Deletes the namespace and waits (bounded) until its pods are gone (their sandboxes removed).
async fn delete_namespace(client: &Client, namespace: &str) {
    let namespaces = Api::<Namespace>::all(client.clone());
    if namespaces.delete(namespace, &DeleteParams::default()).await.is_err() {
        return;
    }
    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if pods.list(&ListParams::default()).await.map(|l| l.items.is_empty()).unwrap_or(true) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("warning: pods of namespace {namespace} still terminating after 30s");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(pod: &str, client: &str) -> String {
        format!(r#"{{"pod":"{pod}","namespace":"t","node":"n","client":"{client}:5000","path":"/"}}"#)
    }

    #[test]
    fn dual_stack_pods_get_a_check_per_family() {
        let pod = |ips: &[&str]| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p"},
                "status": {"podIP": ips.first(), "podIPs": ips.iter().map(|ip| serde_json::json!({"ip": ip})).collect::<Vec<_>>()},
            }))
            .unwrap()
        };
        type Case = (&'static [&'static str], Option<&'static str>);
        let cases: &[Case] = &[
            (&["10.0.1.5"], None),
            (&["10.0.1.5", "fd00::5"], Some("fd00::5")),
            (&["fd00::5", "10.0.1.5"], Some("10.0.1.5")),
            (&["fd00::5"], None),
        ];
        for (ips, want) in cases {
            assert_eq!(secondary_ip(&pod(ips)), want.map(|s| s.parse().unwrap()), "{ips:?}");
        }
        assert_eq!(
            over_family("pod-to-pod (across nodes)", "fd00::5".parse().unwrap()),
            "pod-to-pod (across nodes) over IPv6"
        );
    }

    #[test]
    fn judging_answers() {
        let expected = vec!["echo-a".to_string()];
        let ip: IpAddr = "10.0.1.5".parse().unwrap();
        assert!(judge(Ok((200, reply("echo-a", "10.0.1.5"))), &expected, Some(ip)).is_ok());
        let wrong_server = judge(Ok((200, reply("echo-b", "10.0.1.5"))), &expected, Some(ip)).unwrap_err();
        assert!(wrong_server.contains("answered by"), "{wrong_server}");
        let snat = judge(Ok((200, reply("echo-a", "172.18.0.3"))), &expected, Some(ip)).unwrap_err();
        assert!(snat.contains("saw client 172.18.0.3"), "{snat}");
        assert!(judge(Ok((200, reply("echo-a", "172.18.0.3"))), &expected, None).is_ok());
        assert!(judge(Ok((503, "x".into())), &expected, None).unwrap_err().contains("HTTP 503"));
        assert_eq!(judge(Err("Network is unreachable".into()), &expected, None).unwrap_err(), "Network is unreachable");
        assert!(judge(Ok((200, "<html>".into())), &expected, None).unwrap_err().contains("not an echo server"));
    }

    #[test]
    fn manifests_spread_echo_servers_and_the_table_reports_failures() {
        let objects = manifests("t", "kind-worker", Some("kind-worker2"));
        let nodes: Vec<&str> = objects
            .iter()
            .filter_map(|o| o["spec"]["template"]["spec"]["nodeSelector"][HOSTNAME_LABEL].as_str())
            .collect();
        assert_eq!(nodes, ["kind-worker", "kind-worker", "kind-worker2"]);
        assert_eq!(manifests("t", "a", None).len(), 4, "no other-node server on one node");
        let text = table(&[
            Outcome { name: "a".into(), failure: None, detail: "ok detail".into() },
            Outcome { name: "b".into(), failure: Some("why".into()), detail: String::new() },
        ]);
        assert!(text.contains("pass") && text.contains("FAIL") && text.contains("why"), "{text}");
        assert!(text.contains("2 checks, 1 passed, 1 failed"), "{text}");
    }
}
