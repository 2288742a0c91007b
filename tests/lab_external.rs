//! Services reached from outside the cluster (kube-proxy replacement on the uplink, issue 10; the
//! datapath part of LB-IPAM, issue 11), in one two-node VXLAN lab with kube-proxy replacement:
//! real TCP from the lab's "outside" namespace (a host on the underlay that is not a node) to
//! each node's IP:nodePort, the eTP=Local health-check node port, a ClusterIP from outside, and a
//! LoadBalancer Service that gets its address from a pool created after it.
//!
//! The echo pods answer with the client address they saw, which tells SNAT (node IP) from a
//! preserved source (the outside host).

mod integration;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use beeline::lab::{plan::OUTSIDE_IPV4, podserver::EchoReply, probe};
use beeline_common::datapath::drop_reason;
use integration::{
    lab::{down_and_assert_gone, poll, LabDir},
    require_root,
};

const NODE_PORT: u16 = 30080;
const HEALTH_PORT: u16 = 32100;
const WAIT: Duration = Duration::from_secs(60);

/// The echo Deployment (one replica, on the worker) and a LoadBalancer Service over it with the
/// given `externalTrafficPolicy`.
fn manifests(etp: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: ext}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: echo, namespace: ext}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: echo}}}}
  template:
    metadata: {{labels: {{app: echo}}}}
    spec:
      nodeSelector: {{kubernetes.io/hostname: kind-worker}}
      containers: [{{name: echo, image: beeline-lab/echo, ports: [{{name: http, containerPort: 8080}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: ext}}
spec:
  type: LoadBalancer
  externalTrafficPolicy: {etp}
  healthCheckNodePort: {hc}
  selector: {{app: echo}}
  ports: [{{name: http, port: 80, targetPort: http, nodePort: {np}, protocol: TCP}}]
"#,
        hc = if etp == "Local" { HEALTH_PORT.to_string() } else { "null".into() },
        np = NODE_PORT,
    )
}

const POOL: &str = r#"apiVersion: cilium.io/v2
kind: CiliumLoadBalancerIPPool
metadata: {name: outside-pool}
spec:
  blocks: [{start: 172.20.250.10, stop: 172.20.250.20}]
"#;

/// `GET /` from the outside namespace: `Ok(status, body)` or the error.
fn from_outside(lab: &LabDir, ip: Ipv4Addr, port: u16) -> Result<(u16, String), String> {
    let addr = SocketAddr::new(IpAddr::V4(ip), port);
    probe::http_get_in(&lab.plan().outside_netns, addr, "/").map_err(|e| e.to_string())
}

/// Polls until the echo pod answers on `ip:port` and returns the client address it saw.
fn client_seen(lab: &LabDir, ip: Ipv4Addr, port: u16) -> IpAddr {
    poll(&format!("the echo pod answering on {ip}:{port} from outside"), WAIT, || {
        let (code, body) = from_outside(lab, ip, port).ok()?;
        let reply: EchoReply = serde_json::from_str(body.trim()).ok()?;
        (code == 200).then_some(reply.client.ip())
    })
}

/// Asserts (a few tries, each with the probe's 2 s timeout) that nothing answers on `ip:port`.
fn silent(lab: &LabDir, ip: Ipv4Addr, port: u16, what: &str) {
    for _ in 0..3 {
        if let Ok(answer) = from_outside(lab, ip, port) {
            panic!("{what}: {ip}:{port} answered from outside: {answer:?}");
        }
    }
}

/// Packets `node` dropped with `reason` so far (its pinned drop counters).
fn drops(lab: &LabDir, node: &str, reason: u32) -> u64 {
    let plan = lab.plan();
    let node = plan.nodes.iter().find(|n| n.name == node).unwrap();
    let all = beeline::datapath::tables::read_drops(&node.bpf_root.join("beeline")).unwrap();
    all.get(&reason).map_or(0, |s| s.packets)
}

fn route_in_outside(lab: &LabDir, prefix: &str, via: Ipv4Addr) {
    let ns = lab.plan().outside_netns;
    beeline::datapath::netns::run_ip(&["-n", &ns, "route", "replace", prefix, "via", &via.to_string()]).unwrap();
}

#[test]
fn node_ports_health_checks_and_pool_addressed_load_balancers_answer_from_outside() {
    require_root();
    let lab = LabDir::new();
    lab.up(2, "vxlan-kpr.yaml");
    let plan = lab.plan();
    let node_ip = |name: &str| plan.nodes.iter().find(|n| n.name == name).unwrap().ipv4;
    let (control_plane, worker) = (node_ip("kind-control-plane"), node_ip("kind-worker"));
    let outside = IpAddr::V4(OUTSIDE_IPV4);

    // externalTrafficPolicy: Cluster — both nodes answer; through the node without the backend the
    // pod sees that node's IP (SNAT), through the backend's node the outside client.
    lab.apply("cluster.yaml", &manifests("Cluster"));
    lab.running_pods("app=echo", 1, WAIT);
    assert_eq!(client_seen(&lab, worker, NODE_PORT), outside, "local backend: source preserved");
    assert_eq!(client_seen(&lab, control_plane, NODE_PORT), IpAddr::V4(control_plane), "remote backend: SNAT");

    // No pool yet: the LoadBalancer Service is <pending> (no ingress address).
    let svc = lab.kubectl_json(&["get", "service", "-n", "ext", "echo"]);
    assert!(svc["status"]["loadBalancer"]["ingress"].as_array().is_none_or(Vec::is_empty), "{svc}");

    // A ClusterIP is not reachable from outside, even when routed to a node (Cilium drops it).
    let cluster_ip: Ipv4Addr = svc["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
    route_in_outside(&lab, &format!("{cluster_ip}/32"), worker);
    silent(&lab, cluster_ip, 80, "ClusterIP");
    assert!(drops(&lab, "kind-worker", drop_reason::IS_CLUSTER_IP) > 0, "dropped as a ClusterIP by the uplink");

    // externalTrafficPolicy: Local — only the backend's node answers, with the client's address;
    // the health-check node port tells a load balancer which node that is.
    lab.apply("local.yaml", &manifests("Local"));
    poll("the control plane to stop answering on the node port", WAIT, || {
        from_outside(&lab, control_plane, NODE_PORT).is_err().then_some(())
    });
    silent(&lab, control_plane, NODE_PORT, "eTP=Local without a local backend");
    assert!(drops(&lab, "kind-control-plane", drop_reason::NO_SERVICE) > 0, "dropped for want of a local backend");
    assert_eq!(client_seen(&lab, worker, NODE_PORT), outside);
    let health =
        |ip| poll(&format!("health check on {ip}:{HEALTH_PORT}"), WAIT, || from_outside(&lab, ip, HEALTH_PORT).ok());
    let (code, body) = health(worker);
    assert_eq!(code, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
    assert_eq!(body, serde_json::json!({"service": {"namespace": "ext", "name": "echo"}, "localEndpoints": 1}));
    let (code, body) = health(control_plane);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains(r#""localEndpoints":0"#), "{body}");

    // LB-IPAM: a pool created now gives the pending Service an address; routed to the backend's
    // node (as an upstream router would), it answers from outside with the client's address.
    lab.apply("pool.yaml", POOL);
    let lb_ip: Ipv4Addr = poll("an ingress address from the pool", WAIT, || {
        let svc = lab.kubectl_json(&["get", "service", "-n", "ext", "echo"]);
        svc["status"]["loadBalancer"]["ingress"][0]["ip"].as_str().and_then(|ip| ip.parse().ok())
    });
    assert_eq!(lb_ip, Ipv4Addr::new(172, 20, 250, 10), "the pool's first address");
    route_in_outside(&lab, "172.20.250.0/24", worker);
    assert_eq!(client_seen(&lab, lb_ip, 80), outside);
    // A port the Service does not have is not answered on its address.
    silent(&lab, lb_ip, 81, "unknown port on the LB address");

    down_and_assert_gone(&lab);
}
