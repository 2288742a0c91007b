//! Network policy with real traffic in a two-node VXLAN lab (root), one lab for every scenario:
//!
//! - the seeds' walkthrough: nginx selected by an ingress rule from `app=netshoot-client` on TCP 80 —
//!   the labelled client gets a 200 (across nodes, directly and through the ClusterIP, i.e. policy
//!   applies to the backend after service translation), an unlabelled client times out;
//! - a Kubernetes NetworkPolicy restricted to another namespace (`namespaceSelector`);
//! - an ingress deny that wins over an allow of the whole namespace (same node);
//! - egress to a CIDR (the lab's outside server) and to a CIDR whose `except` removes it;
//! - the policies are applied while every pod already runs and talks: the change reaches the running
//!   endpoints (polled, bounded), and the CiliumEndpoints report what they enforce.
//!
//! A second, smaller lab runs the walkthrough with native routing: there the packets from the other
//! node arrive on the uplink (`from_netdev`), and the source identity comes from the ipcache.
//!
//! "Times out" is a TCP connect that gets no answer within the probe's 2 s timeout; each check is a
//! bounded poll, so a slow policy pass only costs time, never a false result.

mod integration;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use beeline::lab::{
    plan::{OUTSIDE_IPV4, OUTSIDE_PORT},
    probe,
};
use integration::{
    lab::{down_and_assert_gone, pod_netns, poll, LabDir},
    require_root,
};

const CP: &str = "kind-control-plane";
const WORKER: &str = "kind-worker";

/// `(namespace, name, app label, node)` of every pod.
const PODS: &[(&str, &str, &str, &str)] = &[
    ("pol-a", "nginx", "nginx", WORKER),
    ("pol-a", "client", "netshoot-client", CP),
    ("pol-a", "stranger", "stranger", CP),
    ("pol-a", "db", "db", CP),
    ("pol-a", "egress-in", "egress-in", WORKER),
    ("pol-a", "egress-except", "egress-except", WORKER),
    ("pol-b", "web", "web", WORKER),
    ("pol-b", "neighbour", "neighbour", WORKER),
];

fn workloads(pods: &[(&str, &str, &str, &str)]) -> String {
    let mut docs = vec![
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: pol-a, labels: {team: a}}\n".to_string(),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: pol-b, labels: {team: b}}\n".to_string(),
        "apiVersion: v1\nkind: Service\nmetadata: {name: nginx, namespace: pol-a}\nspec:\n  selector: {app: nginx}\n  ports: [{port: 80, targetPort: 80, protocol: TCP}]\n".to_string(),
    ];
    for (ns, name, app, node) in pods {
        docs.push(format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {app}}}}}\nspec:\n  nodeName: {node}\n  containers: [{{name: c, image: beeline-lab/echo, ports: [{{name: http, containerPort: 80}}]}}]\n"
        ));
    }
    docs.join("---\n")
}

/// The seeds' walkthrough.
const WALKTHROUGH: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: allow-netshoot-to-nginx, namespace: pol-a}
spec:
  endpointSelector: {matchLabels: {app: nginx}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: netshoot-client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"#;

const POLICIES: &str = r#"
# Only pods of namespaces labelled team=a reach web.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-team-a, namespace: pol-b}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: a}}}]
---
# Everyone in the namespace may reach db, except the stranger: the deny wins.
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db, namespace: pol-a}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: stranger}}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: egress-in, namespace: pol-a}
spec:
  endpointSelector: {matchLabels: {app: egress-in}}
  egress:
  - toCIDR: [172.18.255.254/32]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: egress-except, namespace: pol-a}
spec:
  endpointSelector: {matchLabels: {app: egress-except}}
  egress:
  - toCIDRSet: [{cidr: 172.18.0.0/16, except: [172.18.255.254/32]}]
"#;

struct Pod {
    netns: String,
    ip: IpAddr,
}

fn pod_named(items: &[serde_json::Value], name: &str) -> Pod {
    let p = items.iter().find(|p| p["metadata"]["name"] == name).unwrap_or_else(|| panic!("no pod {name}"));
    Pod { netns: pod_netns(p), ip: p["status"]["podIP"].as_str().unwrap().parse().unwrap() }
}

/// One GET from `from`'s namespace: `Ok(status)` or the error (a timeout when policy drops it).
fn get(from: &Pod, to: SocketAddr) -> Result<u16, String> {
    probe::http_get_in(&from.netns, to, "/").map(|(code, _)| code).map_err(|e| e.to_string())
}

/// Polls until a GET from `from` to `to` answers 200 (bounded).
fn reaches(what: &str, from: &Pod, to: SocketAddr) {
    poll(&format!("{what}: 200 from {to}"), Duration::from_secs(30), || (get(from, to) == Ok(200)).then_some(()));
}

/// Polls until a GET from `from` to `to` gets no answer (bounded), then checks once more that it
/// stays that way.
fn blocked(what: &str, from: &Pod, to: SocketAddr) {
    poll(&format!("{what}: no answer from {to}"), Duration::from_secs(30), || get(from, to).is_err().then_some(()));
    let again = get(from, to);
    assert!(again.is_err(), "{what}: {to} answered {again:?} after being blocked");
}

#[test]
fn policies_allow_deny_and_reach_running_endpoints_in_a_two_node_vxlan_lab() {
    require_root();
    let lab = LabDir::new();
    lab.up(2, "vxlan.yaml");
    lab.apply("workloads.yaml", &workloads(PODS));
    let items = lab.running_pods("app", PODS.len(), Duration::from_secs(90));
    let pod = |name: &str| pod_named(&items, name);
    let (nginx, client, stranger, db) = (pod("nginx"), pod("client"), pod("stranger"), pod("db"));
    let (egress_in, egress_except, web, neighbour) =
        (pod("egress-in"), pod("egress-except"), pod("web"), pod("neighbour"));
    let at = |p: &Pod| SocketAddr::new(p.ip, 80);
    let outside = SocketAddr::new(IpAddr::V4(OUTSIDE_IPV4), OUTSIDE_PORT);
    let cluster_ip: Ipv4Addr = poll("the nginx ClusterIP", Duration::from_secs(10), || {
        lab.kubectl_json(&["get", "service", "-n", "pol-a", "nginx"])["spec"]["clusterIP"].as_str()?.parse().ok()
    });
    let service = SocketAddr::new(IpAddr::V4(cluster_ip), 80);

    // Before any policy everything answers: what is blocked later is blocked by policy.
    reaches("no policy: stranger -> nginx", &stranger, at(&nginx));
    reaches("no policy: stranger -> nginx via its ClusterIP", &stranger, service);
    reaches("no policy: stranger -> db", &stranger, at(&db));
    reaches("no policy: neighbour -> web", &neighbour, at(&web));
    reaches("no policy: egress-except -> outside", &egress_except, outside);

    // The policies arrive while the endpoints run: the change reaches them (bounded poll).
    lab.apply("walkthrough.yaml", WALKTHROUGH);
    lab.apply("policies.yaml", POLICIES);
    blocked("walkthrough: the unlabelled client", &stranger, at(&nginx));
    reaches("walkthrough: the app=netshoot-client client, across nodes", &client, at(&nginx));
    // Policy sees the backend after service translation: allowed for the client, not the stranger.
    reaches("walkthrough via the ClusterIP", &client, service);
    blocked("walkthrough via the ClusterIP: the unlabelled client", &stranger, service);

    reaches("NetworkPolicy: a pod of a team=a namespace", &client, at(&web));
    blocked("NetworkPolicy: a pod of web's own (team=b) namespace", &neighbour, at(&web));

    reaches("deny over allow: allowed by the namespace-wide rule", &client, at(&db));
    blocked("deny over allow: the denied stranger", &stranger, at(&db));

    reaches("egress to the allowed CIDR", &egress_in, outside);
    blocked("egress to a CIDR whose except removes the address", &egress_except, outside);

    // The CiliumEndpoints say what each endpoint enforces (Cilium's status.policy shape).
    let enforcing = |ns: &str, name: &str| {
        let cep = lab.kubectl_json(&["get", "ciliumendpoints", "-n", ns, name]);
        let policy = &cep["status"]["policy"];
        Some((policy["ingress"]["enforcing"].as_bool()?, policy["egress"]["enforcing"].as_bool()?))
    };
    for (ns, name, want) in [
        ("pol-a", "nginx", (true, false)),
        ("pol-a", "client", (false, false)),
        ("pol-b", "web", (true, false)),
        ("pol-a", "egress-in", (false, true)),
    ] {
        poll(&format!("CiliumEndpoint {ns}/{name} enforcing {want:?}"), Duration::from_secs(15), || {
            (enforcing(ns, name) == Some(want)).then_some(())
        });
    }

    down_and_assert_gone(&lab);
}

#[test]
fn the_walkthrough_holds_for_traffic_arriving_on_the_uplink_with_native_routing() {
    require_root();
    let lab = LabDir::new();
    lab.up(2, "native.yaml");
    let pods = &PODS[..3];
    lab.apply("workloads.yaml", &workloads(pods));
    let items = lab.running_pods("app", pods.len(), Duration::from_secs(90));
    let (nginx, client, stranger) =
        (pod_named(&items, "nginx"), pod_named(&items, "client"), pod_named(&items, "stranger"));
    let to_nginx = SocketAddr::new(nginx.ip, 80);
    reaches("no policy: stranger -> nginx on the other node", &stranger, to_nginx);
    lab.apply("walkthrough.yaml", WALKTHROUGH);
    blocked("native routing: the unlabelled client", &stranger, to_nginx);
    reaches("native routing: the app=netshoot-client client", &client, to_nginx);
    down_and_assert_gone(&lab);
}
