//! Table-driven scenarios for the services core, ID stability/restore, and a randomized invariant test.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use beeline_common::lb::{Lb4Key, Lb4Service};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{json, Value};

use super::model::{backend_flags, flags, flags2, FrontendKind, Scope};
use super::*;
use crate::config::LbAlgorithm;

const NODE: &str = "node-a";

fn cfg() -> ServicesConfig {
    ServicesConfig {
        node_name: NODE.into(),
        extra_node_addresses: Vec::new(),
        kube_proxy_replacement: true,
        node_port_range: (30000, 32767),
        lb_algorithm: LbAlgorithm::Random,
        service_proxy_name: None,
        maglev_table_size: 251,
    }
}

fn svc(name: &str, meta: Value, spec: Value, status: Value) -> Service {
    let mut metadata = json!({"namespace": "default", "name": name});
    if let Value::Object(extra) = meta {
        metadata.as_object_mut().unwrap().extend(extra);
    }
    serde_json::from_value(json!({"metadata": metadata, "spec": spec, "status": status})).unwrap()
}

fn slice(service: &str, name: &str, ports: Value, endpoints: Value) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {"namespace": "default", "name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4", "ports": ports, "endpoints": endpoints,
    }))
    .unwrap()
}

/// An endpoint: (ready, serving, terminating).
fn ep(ip: &str, node: &str, c: (bool, bool, bool)) -> Value {
    json!({"addresses": [ip], "nodeName": node, "conditions": {"ready": c.0, "serving": c.1, "terminating": c.2}})
}

const READY: (bool, bool, bool) = (true, true, false);
const TERMINATING: (bool, bool, bool) = (false, true, true);
const GONE: (bool, bool, bool) = (false, false, true);
const NOT_READY: (bool, bool, bool) = (false, false, false);

fn node(name: &str, addrs: &[(&str, &str)]) -> Node {
    let addresses: Vec<Value> = addrs.iter().map(|(t, a)| json!({"type": t, "address": a})).collect();
    serde_json::from_value(json!({"metadata": {"name": name}, "status": {"addresses": addresses}})).unwrap()
}

fn pod(name: &str, node: &str, ip: &str, ports: Value, host_network: bool) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"namespace": "default", "name": name},
        "spec": {"nodeName": node, "hostNetwork": host_network, "containers": [{"name": "c", "ports": ports}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }))
    .unwrap()
}

/// The standard two-node picture: this node has 192.168.1.10 (internal) and 203.0.113.10 (external).
fn nodes() -> Vec<Node> {
    vec![
        node(NODE, &[("InternalIP", "192.168.1.10"), ("ExternalIP", "203.0.113.10"), ("Hostname", "node-a")]),
        node("node-b", &[("InternalIP", "192.168.1.11")]),
    ]
}

/// Three web backends: 10.0.1.1 on this node, 10.0.2.1 and 10.0.2.2 on node-b, port "http" = 8080.
fn web_slice(service: &str) -> EndpointSlice {
    slice(
        service,
        &format!("{service}-abc"),
        json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
        json!([ep("10.0.1.1", NODE, READY), ep("10.0.2.1", "node-b", READY), ep("10.0.2.2", "node-b", READY)]),
    )
}

fn web_spec(extra: Value) -> Value {
    let mut spec = json!({
        "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
        "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP", "nodePort": 30080}],
        "selector": {"app": "web"},
    });
    if let Value::Object(extra) = extra {
        spec.as_object_mut().unwrap().extend(extra);
    }
    spec
}

/// One line per frontend: `Kind addr count=N [backend(state) ...]`, sorted.
fn lines(d: &DesiredLb) -> Vec<String> {
    let mut out: Vec<String> = d
        .frontends
        .iter()
        .map(|f| {
            let bes: Vec<String> =
                f.backends.iter().map(|(_, a, s)| format!("{}:{}({})", a.ip, a.port, s.name())).collect();
            format!("{} {} count={} [{}]", f.kind, f.addr, f.count, bes.join(" "))
        })
        .collect();
    out.sort();
    out
}

struct World {
    services: Vec<Service>,
    slices: Vec<EndpointSlice>,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
}

impl World {
    fn new(services: Vec<Service>, slices: Vec<EndpointSlice>) -> Self {
        Self { services, slices, nodes: nodes(), pods: Vec::new() }
    }

    fn inputs(&self) -> Inputs<'_> {
        Inputs { services: &self.services, endpoint_slices: &self.slices, nodes: &self.nodes, pods: &self.pods }
    }

    fn desired(&self, cfg: &ServicesConfig) -> DesiredLb {
        desired_state(&self.inputs(), cfg, &mut LbIds::new())
    }
}

fn master(d: &DesiredLb, ip: [u8; 4], port: u16, scope: Scope) -> &Lb4Service {
    d.services
        .get(&master_key(ip, port, scope))
        .unwrap_or_else(|| panic!("no master entry for {ip:?}:{port} {scope:?}"))
}

#[test]
fn frontends_per_service_type_and_policy() {
    struct Case {
        name: &'static str,
        world: World,
        cfg: ServicesConfig,
        want: &'static [&'static str],
        notes: &'static [&'static str],
    }
    let web = |extra: Value, status: Value| svc("web", json!({}), web_spec(extra), status);
    let lb_status =
        json!({"loadBalancer": {"ingress": [{"ip": "172.16.0.1"}, {"ip": "172.16.0.2", "ipMode": "Proxy"}]}});
    let all3 = "[10.0.1.1:8080(active) 10.0.2.1:8080(active) 10.0.2.2:8080(active)]";
    let _ = all3;
    let cases = vec![
        Case {
            name: "ClusterIP: one frontend per port, all ready backends",
            world: World::new(vec![web(json!({}), json!({}))], vec![web_slice("web")]),
            cfg: cfg(),
            want: &["ClusterIP 10.96.0.10:80/TCP count=3 [10.0.1.1:8080(active) 10.0.2.1:8080(active) 10.0.2.2:8080(active)]"],
            notes: &[],
        },
        Case {
            name: "NodePort: surrogate 0.0.0.0 plus every address of this node (not other nodes')",
            world: World::new(vec![web(json!({"type": "NodePort"}), json!({}))], vec![web_slice("web")]),
            cfg: cfg(),
            want: &[
                "ClusterIP 10.96.0.10:80/TCP count=3 [10.0.1.1:8080(active) 10.0.2.1:8080(active) 10.0.2.2:8080(active)]",
                "NodePort 0.0.0.0:30080/TCP count=3 [10.0.1.1:8080(active) 10.0.2.1:8080(active) 10.0.2.2:8080(active)]",
                "NodePort 192.168.1.10:30080/TCP count=3 [10.0.1.1:8080(active) 10.0.2.1:8080(active) 10.0.2.2:8080(active)]",
                "NodePort 203.0.113.10:30080/TCP count=3 [10.0.1.1:8080(active) 10.0.2.1:8080(active) 10.0.2.2:8080(active)]",
            ],
            notes: &[],
        },
        Case {
            name: "without kube-proxy-replacement only ClusterIP (and externalIPs) are programmed",
            world: World::new(
                vec![web(json!({"type": "LoadBalancer", "externalIPs": ["198.51.100.7"]}), lb_status.clone())],
                vec![web_slice("web")],
            ),
            cfg: ServicesConfig { kube_proxy_replacement: false, ..cfg() },
            want: &[
                "ClusterIP 10.96.0.10:80/TCP count=3 [10.0.1.1:8080(active) 10.0.2.1:8080(active) 10.0.2.2:8080(active)]",
                "ExternalIPs 198.51.100.7:80/TCP count=3 [10.0.1.1:8080(active) 10.0.2.1:8080(active) 10.0.2.2:8080(active)]",
            ],
            notes: &[],
        },
        Case {
            name: "nodePort outside node-port-range is skipped with a note",
            world: World::new(vec![web(json!({"type": "NodePort"}), json!({}))], vec![web_slice("web")]),
            cfg: ServicesConfig { node_port_range: (31000, 32000), ..cfg() },
            want: &["ClusterIP 10.96.0.10:80/TCP count=3 [10.0.1.1:8080(active) 10.0.2.1:8080(active) 10.0.2.2:8080(active)]"],
            notes: &["nodePort 30080 is outside node-port-range 31000-32000; skipped"],
        },
        Case {
            name: "LoadBalancer: VIP-mode ingress IPs only, plus NodePorts",
            world: World::new(vec![web(json!({"type": "LoadBalancer"}), lb_status.clone())], vec![web_slice("web")]),
            cfg: cfg(),
            want: &[
                "ClusterIP 10.96.0.10:80/TCP count=3 [10.0.1.1:8080(active) 10.0.2.1:8080(active) 10.0.2.2:8080(active)]",
                "LoadBalancer 172.16.0.1:80/TCP count=3 [10.0.1.1:8080(active) 10.0.2.1:8080(active) 10.0.2.2:8080(active)]",
                "NodePort 0.0.0.0:30080/TCP count=3 [10.0.1.1:8080(active) 10.0.2.1:8080(active) 10.0.2.2:8080(active)]",
                "NodePort 192.168.1.10:30080/TCP count=3 [10.0.1.1:8080(active) 10.0.2.1:8080(active) 10.0.2.2:8080(active)]",
                "NodePort 203.0.113.10:30080/TCP count=3 [10.0.1.1:8080(active) 10.0.2.1:8080(active) 10.0.2.2:8080(active)]",
            ],
            notes: &[],
        },
        Case {
            name: "eTP=Local, iTP=Cluster: external scope local only, internal scope all, ClusterIP all",
            world: World::new(
                vec![web(json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local"}), lb_status.clone())],
                vec![web_slice("web")],
            ),
            cfg: ServicesConfig { extra_node_addresses: vec![], ..cfg() },
            want: &[
                "ClusterIP 10.96.0.10:80/TCP count=3 [10.0.1.1:8080(active) 10.0.2.1:8080(active) 10.0.2.2:8080(active)]",
                "LoadBalancer 172.16.0.1:80/TCP count=1 [10.0.1.1:8080(active)]",
                "LoadBalancer 172.16.0.1:80/TCP/i count=3 [10.0.1.1:8080(active) 10.0.2.1:8080(active) 10.0.2.2:8080(active)]",
                "NodePort 0.0.0.0:30080/TCP count=1 [10.0.1.1:8080(active)]",
                "NodePort 0.0.0.0:30080/TCP/i count=3 [10.0.1.1:8080(active) 10.0.2.1:8080(active) 10.0.2.2:8080(active)]",
                "NodePort 192.168.1.10:30080/TCP count=1 [10.0.1.1:8080(active)]",
                "NodePort 192.168.1.10:30080/TCP/i count=3 [10.0.1.1:8080(active) 10.0.2.1:8080(active) 10.0.2.2:8080(active)]",
                "NodePort 203.0.113.10:30080/TCP count=1 [10.0.1.1:8080(active)]",
                "NodePort 203.0.113.10:30080/TCP/i count=3 [10.0.1.1:8080(active) 10.0.2.1:8080(active) 10.0.2.2:8080(active)]",
            ],
            notes: &[],
        },
        Case {
            name: "iTP=Local: ClusterIP and the internal scope get local backends only",
            world: World::new(
                vec![web(
                    json!({"type": "NodePort", "internalTrafficPolicy": "Local", "externalIPs": ["198.51.100.7"]}),
                    json!({}),
                )],
                vec![web_slice("web")],
            ),
            cfg: ServicesConfig { node_name: "node-a".into(), ..cfg() },
            want: &[
                "ClusterIP 10.96.0.10:80/TCP count=1 [10.0.1.1:8080(active)]",
                "ExternalIPs 198.51.100.7:80/TCP count=3 [10.0.1.1:8080(active) 10.0.2.1:8080(active) 10.0.2.2:8080(active)]",
                "ExternalIPs 198.51.100.7:80/TCP/i count=1 [10.0.1.1:8080(active)]",
                "NodePort 0.0.0.0:30080/TCP count=3 [10.0.1.1:8080(active) 10.0.2.1:8080(active) 10.0.2.2:8080(active)]",
                "NodePort 0.0.0.0:30080/TCP/i count=1 [10.0.1.1:8080(active)]",
                "NodePort 192.168.1.10:30080/TCP count=3 [10.0.1.1:8080(active) 10.0.2.1:8080(active) 10.0.2.2:8080(active)]",
                "NodePort 192.168.1.10:30080/TCP/i count=1 [10.0.1.1:8080(active)]",
                "NodePort 203.0.113.10:30080/TCP count=3 [10.0.1.1:8080(active) 10.0.2.1:8080(active) 10.0.2.2:8080(active)]",
                "NodePort 203.0.113.10:30080/TCP/i count=1 [10.0.1.1:8080(active)]",
            ],
            notes: &[],
        },
        Case {
            name: "iTP=Local on a node without local backends: frontend with no backends",
            world: World::new(vec![web(json!({"internalTrafficPolicy": "Local"}), json!({}))], vec![web_slice("web")]),
            cfg: ServicesConfig { node_name: "node-c".into(), ..cfg() },
            want: &["ClusterIP 10.96.0.10:80/TCP count=0 []"],
            notes: &[],
        },
        Case {
            name: "both policies Local: one scope, local backends everywhere",
            world: World::new(
                vec![web(json!({"type": "NodePort", "internalTrafficPolicy": "Local", "externalTrafficPolicy": "Local"}), json!({}))],
                vec![web_slice("web")],
            ),
            cfg: ServicesConfig { extra_node_addresses: vec![], ..cfg() },
            want: &[
                "ClusterIP 10.96.0.10:80/TCP count=1 [10.0.1.1:8080(active)]",
                "NodePort 0.0.0.0:30080/TCP count=1 [10.0.1.1:8080(active)]",
                "NodePort 192.168.1.10:30080/TCP count=1 [10.0.1.1:8080(active)]",
                "NodePort 203.0.113.10:30080/TCP count=1 [10.0.1.1:8080(active)]",
            ],
            notes: &[],
        },
        Case {
            name: "backend states: active first; terminating kept for existing flows; maintenance gets no slot",
            world: World::new(
                vec![web(json!({}), json!({}))],
                vec![slice(
                    "web",
                    "web-x",
                    json!([{"name": "http", "port": 8080}]),
                    json!([
                        ep("10.0.9.4", NODE, NOT_READY),
                        ep("10.0.9.3", NODE, GONE),
                        ep("10.0.9.2", NODE, TERMINATING),
                        ep("10.0.9.1", NODE, READY),
                    ]),
                )],
            ),
            cfg: cfg(),
            want: &["ClusterIP 10.96.0.10:80/TCP count=1 [10.0.9.1:8080(active) 10.0.9.2:8080(terminating) 10.0.9.3:8080(terminating-not-serving)]"],
            notes: &[],
        },
        Case {
            name: "no active backend: serving terminating ones take new connections, not-serving never",
            world: World::new(
                vec![web(json!({}), json!({}))],
                vec![slice(
                    "web",
                    "web-x",
                    json!([{"name": "http", "port": 8080}]),
                    json!([ep("10.0.9.3", NODE, GONE), ep("10.0.9.2", NODE, TERMINATING), ep("10.0.9.5", NODE, TERMINATING)]),
                )],
            ),
            cfg: cfg(),
            want: &["ClusterIP 10.96.0.10:80/TCP count=2 [10.0.9.2:8080(terminating) 10.0.9.5:8080(terminating) 10.0.9.3:8080(terminating-not-serving)]"],
            notes: &[],
        },
        Case {
            name: "named targetPort resolves per EndpointSlice; protocols stay apart",
            world: World::new(
                vec![svc(
                    "dns",
                    json!({}),
                    json!({"clusterIP": "10.96.0.53", "ports": [
                        {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns"},
                        {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": "dns-tcp"},
                        {"name": "sig", "port": 7000, "protocol": "SCTP"},
                    ]}),
                    json!({}),
                )],
                vec![
                    slice("dns", "dns-1", json!([{"name": "dns", "port": 5353, "protocol": "UDP"}, {"name": "dns-tcp", "port": 5353, "protocol": "TCP"}, {"name": "sig", "port": 7001, "protocol": "SCTP"}]),
                        json!([ep("10.0.1.5", NODE, READY)])),
                    // A newer pod version listens elsewhere: its own slice, its own numbers.
                    slice("dns", "dns-2", json!([{"name": "dns", "port": 1053, "protocol": "UDP"}, {"name": "dns-tcp", "port": 1054, "protocol": "TCP"}]),
                        json!([ep("10.0.2.5", "node-b", READY)])),
                ],
            ),
            cfg: cfg(),
            want: &[
                "ClusterIP 10.96.0.53:53/TCP count=2 [10.0.1.5:5353(active) 10.0.2.5:1054(active)]",
                "ClusterIP 10.96.0.53:53/UDP count=2 [10.0.1.5:5353(active) 10.0.2.5:1053(active)]",
                "ClusterIP 10.96.0.53:7000/SCTP count=1 [10.0.1.5:7001(active)]",
            ],
            notes: &[],
        },
        Case {
            name: "selectorless Service with a manual EndpointSlice",
            world: World::new(
                vec![svc("ext-db", json!({}), json!({"clusterIP": "10.96.3.3", "ports": [{"port": 5432}]}), json!({}))],
                vec![slice("ext-db", "ext-db-manual", json!([{"port": 5432}]), json!([{"addresses": ["192.0.2.50"]}]))],
            ),
            cfg: cfg(),
            want: &["ClusterIP 10.96.3.3:5432/TCP count=1 [192.0.2.50:5432(active)]"],
            notes: &[],
        },
        Case {
            name: "ignored: service-proxy-name label, headless (spec and label), ExternalName",
            world: World::new(
                vec![
                    svc("other-proxy", json!({"labels": {"service.kubernetes.io/service-proxy-name": "foo"}}), web_spec(json!({})), json!({})),
                    svc("headless", json!({}), json!({"clusterIP": "None", "ports": [{"port": 80}]}), json!({})),
                    svc("headless-label", json!({"labels": {"service.kubernetes.io/headless": ""}}), web_spec(json!({"clusterIP": "10.96.0.11", "clusterIPs": ["10.96.0.11"]})), json!({})),
                    svc("alias", json!({}), json!({"type": "ExternalName", "externalName": "example.com"}), json!({})),
                ],
                vec![web_slice("other-proxy"), web_slice("headless"), web_slice("headless-label")],
            ),
            cfg: cfg(),
            want: &[],
            notes: &[],
        },
        Case {
            name: "dual-stack without IPv6 slices: the IPv6 ClusterIP exists with no IPv4 backends",
            world: World::new(
                vec![web(json!({"clusterIPs": ["10.96.0.10", "fd00::10"], "ipFamilies": ["IPv4", "IPv6"]}), json!({}))],
                vec![web_slice("web")],
            ),
            cfg: cfg(),
            want: &[
                "ClusterIP 10.96.0.10:80/TCP count=3 [10.0.1.1:8080(active) 10.0.2.1:8080(active) 10.0.2.2:8080(active)]",
                "ClusterIP [fd00::10]:80/TCP count=0 []",
            ],
            notes: &[],
        },
        Case {
            name: "two Services claiming one externalIP:port: the first by name keeps it",
            world: World::new(
                vec![
                    svc("b", json!({}), json!({"clusterIP": "10.96.0.2", "externalIPs": ["198.51.100.9"], "ports": [{"port": 80}]}), json!({})),
                    svc("a", json!({}), json!({"clusterIP": "10.96.0.1", "externalIPs": ["198.51.100.9"], "ports": [{"port": 80}]}), json!({})),
                ],
                vec![
                    slice("a", "a-1", json!([{"port": 80}]), json!([ep("10.0.1.1", NODE, READY)])),
                    slice("b", "b-1", json!([{"port": 80}]), json!([ep("10.0.1.2", NODE, READY)])),
                ],
            ),
            cfg: cfg(),
            want: &[
                "ClusterIP 10.96.0.1:80/TCP count=1 [10.0.1.1:80(active)]",
                "ClusterIP 10.96.0.2:80/TCP count=1 [10.0.1.2:80(active)]",
                "ExternalIPs 198.51.100.9:80/TCP count=1 [10.0.1.1:80(active)]",
            ],
            notes: &["ExternalIPs frontend 198.51.100.9:80/TCP is already used by default/a; skipped"],
        },
    ];
    for case in cases {
        let d = case.world.desired(&case.cfg);
        assert_eq!(lines(&d), case.want, "{}", case.name);
        let notes: Vec<&str> = d.notes.iter().map(|n| n.message.as_str()).collect();
        assert_eq!(notes, case.notes, "{}", case.name);
        assert_invariants(&d, case.name);
    }
}

#[test]
fn flags_tell_the_datapath_what_a_frontend_is() {
    let world = World::new(
        vec![svc(
            "web",
            json!({}),
            web_spec(
                json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "externalIPs": ["198.51.100.7"]}),
            ),
            json!({"loadBalancer": {"ingress": [{"ip": "172.16.0.1"}]}}),
        )],
        vec![web_slice("web")],
    );
    let d = world.desired(&cfg());
    let two = flags2::TWO_SCOPES;
    struct Case {
        ip: [u8; 4],
        port: u16,
        scope: Scope,
        flags: u8,
        flags2: u8,
    }
    let ext_local = flags::EXT_LOCAL_SCOPE;
    let cases = [
        // ClusterIP: no type bit, not routable, but still marks the service's eTP.
        Case { ip: [10, 96, 0, 10], port: 80, scope: Scope::External, flags: ext_local, flags2: 0 },
        Case { ip: [0, 0, 0, 0], port: 30080, scope: Scope::External, flags: flags::NODEPORT | ext_local, flags2: two },
        Case { ip: [0, 0, 0, 0], port: 30080, scope: Scope::Internal, flags: flags::NODEPORT | ext_local, flags2: two },
        Case {
            ip: [192, 168, 1, 10],
            port: 30080,
            scope: Scope::External,
            flags: flags::NODEPORT | flags::ROUTABLE | ext_local,
            flags2: two,
        },
        Case {
            ip: [172, 16, 0, 1],
            port: 80,
            scope: Scope::Internal,
            flags: flags::LOADBALANCER | flags::ROUTABLE | ext_local,
            flags2: two,
        },
        Case {
            ip: [198, 51, 100, 7],
            port: 80,
            scope: Scope::External,
            flags: flags::EXTERNAL_IP | flags::ROUTABLE | ext_local,
            flags2: two,
        },
    ];
    for c in cases {
        let m = master(&d, c.ip, c.port, c.scope);
        assert_eq!((m.flags, m.flags2), (c.flags, c.flags2), "{:?}:{} {:?}", c.ip, c.port, c.scope);
        // Slots carry the same flags as their master.
        let slot1 = Lb4Key { backend_slot: 1, ..master_key(c.ip, c.port, c.scope) };
        assert_eq!(d.services[&slot1].flags, c.flags);
    }
}

fn master_key(ip: [u8; 4], port: u16, scope: Scope) -> Lb4Key {
    Lb4Key {
        address: u32::from(Ipv4Addr::from(ip)).to_be(),
        dport: port.to_be(),
        backend_slot: 0,
        proto: 6,
        scope: scope.number(),
        pad: [0; 2],
    }
}

#[test]
fn session_affinity_timeout_lives_in_the_master_and_affinity_match_lists_active_backends() {
    struct Case {
        name: &'static str,
        spec: Value,
        timeout: Option<u32>,
    }
    let cases = [
        Case { name: "None", spec: json!({"sessionAffinity": "None"}), timeout: None },
        Case { name: "ClientIP default", spec: json!({"sessionAffinity": "ClientIP"}), timeout: Some(10_800) },
        Case {
            name: "ClientIP 30s",
            spec: json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 30}}}),
            timeout: Some(30),
        },
    ];
    for case in cases {
        let mut backends = web_slice("web");
        backends.endpoints.push(serde_json::from_value(ep("10.0.1.9", NODE, TERMINATING)).unwrap());
        let world = World::new(vec![svc("web", json!({}), web_spec(case.spec), json!({}))], vec![backends]);
        let d = world.desired(&cfg());
        let m = master(&d, [10, 96, 0, 10], 80, Scope::External);
        assert_eq!(m.flags & flags::AFFINITY != 0, case.timeout.is_some(), "{}", case.name);
        assert_eq!(m.backend_id, case.timeout.unwrap_or(0), "{}", case.name);
        let fe = &d.frontends[0];
        let want: BTreeSet<AffinityMatch> = if case.timeout.is_some() {
            fe.backends
                .iter()
                .filter(|b| b.2 == model::BackendState::Active)
                .map(|b| AffinityMatch { backend_id: b.0, rev_nat_id: fe.id })
                .collect()
        } else {
            BTreeSet::new()
        };
        assert_eq!(d.affinity_match, want, "{}", case.name);
        if case.timeout.is_some() {
            assert_eq!(d.affinity_match.len(), 3, "the terminating backend is no affinity target");
        }
    }
}

#[test]
fn hostports_of_pods_on_this_node() {
    let mut world = World::new(vec![], vec![]);
    world.pods = vec![
        pod("any", NODE, "10.0.1.20", json!([{"containerPort": 80, "hostPort": 8081}]), false),
        pod(
            "bound",
            NODE,
            "10.0.1.21",
            json!([{"containerPort": 53, "hostPort": 5353, "hostIP": "192.168.1.10", "protocol": "UDP"}]),
            false,
        ),
        pod(
            "loop",
            NODE,
            "10.0.1.22",
            json!([{"containerPort": 9000, "hostPort": 9000, "hostIP": "127.0.0.1"}]),
            false,
        ),
        pod("elsewhere", "node-b", "10.0.2.20", json!([{"containerPort": 80, "hostPort": 8082}]), false),
        pod("hostnet", NODE, "192.168.1.10", json!([{"containerPort": 80, "hostPort": 8083}]), true),
        pod("plain", NODE, "10.0.1.23", json!([{"containerPort": 80}]), false),
    ];
    let d = world.desired(&cfg());
    assert_eq!(
        lines(&d),
        vec![
            "HostPort 0.0.0.0:8081/TCP count=1 [10.0.1.20:80(active)]",
            "HostPort 127.0.0.1:9000/TCP count=1 [10.0.1.22:9000(active)]",
            "HostPort 192.168.1.10:5353/UDP count=1 [10.0.1.21:53(active)]",
            "HostPort 192.168.1.10:8081/TCP count=1 [10.0.1.20:80(active)]",
            "HostPort 203.0.113.10:8081/TCP count=1 [10.0.1.20:80(active)]",
        ]
    );
    assert!(d.frontends.iter().all(|f| f.kind == FrontendKind::HostPort));
    let lo = master(&d, [127, 0, 0, 1], 9000, Scope::External);
    assert_eq!(lo.flags2 & flags2::LOOPBACK, flags2::LOOPBACK);
    assert_eq!(lo.flags & flags::HOSTPORT, flags::HOSTPORT);
    assert_eq!(master(&d, [0, 0, 0, 0], 8081, Scope::External).flags & flags::ROUTABLE, 0, "surrogate is not routable");
    // No kube-proxy replacement, no HostPort.
    let off = world.desired(&ServicesConfig { kube_proxy_replacement: false, ..cfg() });
    assert!(off.frontends.is_empty());
}

#[test]
fn maglev_tables_for_external_frontends_and_the_algorithm_annotation() {
    let spec = web_spec(json!({"type": "NodePort"}));
    let world = World::new(
        vec![
            svc("web", json!({}), spec.clone(), json!({})),
            svc(
                "rnd",
                json!({"annotations": {"service.cilium.io/lb-algorithm": "random"}}),
                web_spec(json!({"type": "NodePort", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                    "ports": [{"name": "http", "port": 80, "nodePort": 30090}]})),
                json!({}),
            ),
        ],
        vec![web_slice("web"), web_slice("rnd")],
    );
    let d = world.desired(&ServicesConfig { lb_algorithm: LbAlgorithm::Maglev, ..cfg() });
    let with_tables: BTreeSet<String> =
        d.frontends.iter().filter(|f| d.maglev.contains_key(&f.id)).map(|f| format!("{} {}", f.kind, f.addr)).collect();
    let want: BTreeSet<String> =
        ["NodePort 192.168.1.10:30080/TCP", "NodePort 203.0.113.10:30080/TCP"].iter().map(|s| s.to_string()).collect();
    assert_eq!(with_tables, want, "no table for ClusterIP, the surrogate, or random-annotated services");
    for table in d.maglev.values() {
        assert_eq!(table.len(), 251);
        let ids: BTreeSet<u32> = table.iter().copied().collect();
        assert_eq!(ids.len(), 3);
        assert!(ids.iter().all(|id| d.backends.contains_key(&beeline_common::lb::Lb4BackendKey { backend_id: *id })));
    }
    let rnd = master(&d, [192, 168, 1, 10], 30090, Scope::External);
    assert_eq!(rnd.backend_id >> model::LB_ALG_SHIFT, model::LB_ALG_RANDOM);
    assert_eq!(master(&d, [192, 168, 1, 10], 30080, Scope::External).backend_id, 0, "default algorithm: no override");
}

#[test]
fn source_ranges_apply_to_loadbalancer_frontends() {
    let world = World::new(
        vec![svc(
            "web",
            json!({"annotations": {"service.cilium.io/src-ranges-policy": "deny"}}),
            web_spec(
                json!({"type": "LoadBalancer", "loadBalancerSourceRanges": ["10.10.0.0/16", "192.0.2.7/32", "2001:db8::/32"]}),
            ),
            json!({"loadBalancer": {"ingress": [{"ip": "172.16.0.1"}]}}),
        )],
        vec![web_slice("web")],
    );
    let d = world.desired(&cfg());
    let lb = master(&d, [172, 16, 0, 1], 80, Scope::External);
    assert_eq!(lb.flags & flags::SOURCE_RANGE, flags::SOURCE_RANGE);
    assert_eq!(lb.flags2 & flags2::SOURCE_RANGE_DENY, flags2::SOURCE_RANGE_DENY);
    let slot = Lb4Key { backend_slot: 1, ..master_key([172, 16, 0, 1], 80, Scope::External) };
    assert_eq!(d.services[&slot].flags & flags::SOURCE_RANGE, 0, "slots never carry source-range bits");
    assert_eq!(master(&d, [10, 96, 0, 10], 80, Scope::External).flags & flags::SOURCE_RANGE, 0);
    let ranges: Vec<String> = d.source_ranges.iter().map(|r| format!("{}:{}", r.rev_nat_id, r.cidr)).collect();
    assert_eq!(
        ranges,
        vec![format!("{}:10.10.0.0/16", lb.rev_nat_index), format!("{}:192.0.2.7/32", lb.rev_nat_index)]
    );
}

#[test]
fn ids_are_stable_across_updates_and_restored_after_restart() {
    let first = World::new(
        vec![svc("web", json!({}), web_spec(json!({"type": "NodePort"})), json!({}))],
        vec![web_slice("web")],
    );
    let mut ids = LbIds::new();
    let d1 = desired_state(&first.inputs(), &cfg(), &mut ids);
    let ids_of =
        |d: &DesiredLb| -> BTreeMap<String, u16> { d.frontends.iter().map(|f| (f.addr.to_string(), f.id)).collect() };
    let backend_ids = |d: &DesiredLb| -> BTreeMap<String, u32> {
        d.frontends.iter().flat_map(|f| f.backends.iter().map(|(id, a, _)| (a.to_string(), *id))).collect()
    };

    // A new service whose addresses sort first, and a scaled-down web: existing IDs do not move.
    let mut second = World::new(
        vec![
            svc("aaa", json!({}), json!({"clusterIP": "10.0.0.1", "ports": [{"port": 1}]}), json!({})),
            svc("web", json!({}), web_spec(json!({"type": "NodePort"})), json!({})),
        ],
        vec![slice("aaa", "aaa-1", json!([{"port": 1}]), json!([ep("10.0.0.9", NODE, READY)])), web_slice("web")],
    );
    second.slices[1].endpoints.pop();
    let d2 = desired_state(&second.inputs(), &cfg(), &mut ids);
    for (addr, id) in ids_of(&d1) {
        assert_eq!(ids_of(&d2)[&addr], id, "rev-NAT ID of {addr} moved");
    }
    for (addr, id) in backend_ids(&d2) {
        if let Some(old) = backend_ids(&d1).get(&addr) {
            assert_eq!(*old, id, "backend ID of {addr} moved");
        }
    }

    // Restart: a fresh allocator restored from the rows (as the pinned maps hold them), inputs listed
    // in another order — every ID comes back.
    let mut restored = LbIds::new();
    let services: Vec<_> = d2.services.iter().map(|(k, v)| (*k, *v)).collect();
    let backends: Vec<_> = d2.backends.iter().map(|(k, v)| (*k, *v)).collect();
    assert!(restored.restore(&services, &backends).is_empty());
    let mut shuffled = World::new(second.services.clone(), second.slices.clone());
    shuffled.services.reverse();
    shuffled.slices.reverse();
    let d3 = desired_state(&shuffled.inputs(), &cfg(), &mut restored);
    assert_eq!(d3, d2, "same inputs after a restart → identical rows");

    // A service deleted while the agent was down: its restored IDs are released on the first pass.
    let mut after_delete = LbIds::new();
    after_delete.restore(&services, &backends);
    let only_web = World::new(vec![second.services[1].clone()], vec![second.slices[1].clone()]);
    desired_state(&only_web.inputs(), &cfg(), &mut after_delete);
    let frontends_left = d2.frontends.len() - 1;
    assert_eq!(after_delete.len(), (frontends_left, 2));
}

/// Structural invariants every desired state must satisfy.
fn assert_invariants(d: &DesiredLb, ctx: &str) {
    use beeline_common::lb::Lb4BackendKey;
    let mut slots: BTreeMap<Lb4Key, Vec<(u16, &Lb4Service)>> = BTreeMap::new();
    // Wildcard entries of LoadBalancer addresses: master only, no ID, and only for an address
    // some LoadBalancer frontend has.
    let (wildcards, services): (Vec<_>, Vec<_>) = d.services.iter().partition(|(k, _)| k.dport == 0 && k.proto == 0);
    for (k, v) in &wildcards {
        assert_eq!((k.backend_slot, v.rev_nat_index, v.count), (0, 0, 0), "{ctx}: wildcard {k:?}");
        let ip = std::net::IpAddr::from(Ipv4Addr::from(u32::from_be(k.address)));
        assert!(
            d.frontends.iter().any(|f| f.kind == FrontendKind::LoadBalancer && f.addr.ip == ip),
            "{ctx}: wildcard for {ip} without a LoadBalancer frontend"
        );
    }
    for (k, v) in services {
        slots.entry(Lb4Key { backend_slot: 0, ..*k }).or_default().push((k.backend_slot, v));
    }
    let mut referenced = BTreeSet::new();
    let mut rev_nat_ids = BTreeSet::new();
    for (master_key, entries) in &slots {
        let master = d.services.get(master_key).unwrap_or_else(|| panic!("{ctx}: slots without master {master_key:?}"));
        let n = usize::from(master.count) + usize::from(master.qcount);
        let mut numbers: Vec<u16> = entries.iter().map(|e| e.0).collect();
        numbers.sort();
        assert_eq!(numbers, (0..=n as u16).collect::<Vec<_>>(), "{ctx}: slots of {master_key:?} are 0..=count+qcount");
        assert!(rev_nat_ids.insert(master.rev_nat_index), "{ctx}: rev-NAT ID {} used twice", master.rev_nat_index);
        let rn = d
            .rev_nat
            .get(&beeline_common::lb::Lb4RevNatKey { rev_nat_index: master.rev_nat_index })
            .unwrap_or_else(|| panic!("{ctx}: no rev-NAT entry for {master_key:?}"));
        assert_eq!((rn.address, rn.port), (master_key.address, master_key.dport), "{ctx}");
        for (slot, v) in entries.iter().filter(|e| e.0 != 0) {
            assert_eq!(v.rev_nat_index, master.rev_nat_index, "{ctx}: slot {slot}");
            let be = d.backends.get(&Lb4BackendKey { backend_id: v.backend_id });
            let be = be.unwrap_or_else(|| {
                panic!("{ctx}: slot {slot} of {master_key:?} names missing backend {}", v.backend_id)
            });
            assert_eq!(be.proto, master_key.proto, "{ctx}: backend protocol matches the frontend's");
            referenced.insert(v.backend_id);
        }
    }
    assert_eq!(rev_nat_ids.len(), d.rev_nat.len(), "{ctx}: no orphan rev-NAT entries");
    // Within `count`: active backends, or — only when none is active — serving terminating ones.
    for f in &d.frontends {
        let any_active = f.backends.iter().any(|b| b.2 == model::BackendState::Active);
        let want = if any_active { model::BackendState::Active } else { model::BackendState::Terminating };
        let pickable = &f.backends[..usize::from(f.count)];
        assert!(pickable.iter().all(|b| b.2 == want), "{ctx}: {} picks {:?}", f.addr, pickable);
        assert!(
            f.backends[usize::from(f.count)..].iter().all(|b| b.2 != want),
            "{ctx}: {} leaves a {want:?} out",
            f.addr
        );
        let master_count = match f.addr.ip {
            std::net::IpAddr::V4(_) => d.services[&frontend_key(f)].count,
            std::net::IpAddr::V6(ip) => {
                let key = beeline_common::lb::Lb6Key {
                    address: ip.octets(),
                    dport: f.addr.port.to_be(),
                    backend_slot: 0,
                    proto: f.addr.proto.number(),
                    scope: f.addr.scope.number(),
                    pad: [0; 2],
                };
                d.services6[&key].count
            }
        };
        assert_eq!(master_count, f.count, "{ctx}");
    }
    for (k, v) in &d.backends {
        assert!(
            referenced.contains(&k.backend_id) || v.flags == backend_flags::MAINTENANCE,
            "{ctx}: backend {} is referenced by no slot",
            k.backend_id
        );
    }
    for a in &d.affinity_match {
        assert!(referenced.contains(&a.backend_id) && rev_nat_ids.contains(&a.rev_nat_id), "{ctx}: {a:?}");
    }
}

fn frontend_key(f: &FrontendStatus) -> Lb4Key {
    let std::net::IpAddr::V4(ip) = f.addr.ip else { panic!("IPv4 frontend expected: {}", f.addr) };
    Lb4Key {
        address: u32::from(ip).to_be(),
        dport: f.addr.port.to_be(),
        backend_slot: 0,
        proto: f.addr.proto.number(),
        scope: f.addr.scope.number(),
        pad: [0; 2],
    }
}

struct SplitMix(u64);
impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// A random cluster: services of every type and policy, slices with mixed states sharing backend
/// addresses across services, some colliding frontends.
fn random_world(rng: &mut SplitMix) -> World {
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for s in 0..(1 + rng.below(12)) {
        let name = format!("svc-{s}");
        let ty = *rng.pick(&["ClusterIP", "NodePort", "LoadBalancer"]);
        let protos = ["TCP", "UDP", "SCTP"];
        let ports: Vec<Value> = (0..1 + rng.below(3))
            .map(|p| {
                json!({"name": format!("p{p}"), "port": 80 + rng.below(3), "protocol": rng.pick(&protos),
                       "nodePort": 30000 + rng.below(20)})
            })
            .collect();
        let spec = json!({
            "type": ty, "clusterIP": format!("10.96.0.{}", 1 + rng.below(20)), "ports": ports,
            "externalTrafficPolicy": rng.pick(&["Cluster", "Local"]),
            "internalTrafficPolicy": rng.pick(&["Cluster", "Local"]),
            "sessionAffinity": rng.pick(&["None", "ClientIP"]),
            "externalIPs": if rng.below(3) == 0 { json!(["198.51.100.1"]) } else { json!([]) },
        });
        let status = json!({"loadBalancer": {"ingress": [{"ip": format!("172.16.0.{}", rng.below(4))}]}});
        let ann = if rng.below(4) == 0 { json!({"service.cilium.io/lb-algorithm": "maglev"}) } else { json!({}) };
        services.push(svc(&name, json!({"annotations": ann}), spec, status));
        for k in 0..rng.below(3) {
            let slice_ports: Vec<Value> = (0..3)
                .map(|p| json!({"name": format!("p{p}"), "port": 8000 + rng.below(3), "protocol": rng.pick(&protos)}))
                .collect();
            let states = [READY, READY, TERMINATING, GONE, NOT_READY];
            let endpoints: Vec<Value> = (0..rng.below(6))
                .map(|_| {
                    let ip = format!("10.0.{}.{}", rng.below(2), 1 + rng.below(8));
                    let node = *rng.pick(&[NODE, "node-b"]);
                    ep(&ip, node, *rng.pick(&states))
                })
                .collect();
            slices.push(slice(&name, &format!("{name}-{k}"), json!(slice_ports), json!(endpoints)));
        }
    }
    World::new(services, slices)
}

#[test]
fn random_clusters_always_give_consistent_rows() {
    // (internal-scope frontends, frontends without backends, terminating fallbacks, kept-only slots,
    // maglev tables, affinity rows, skipped conflicts): the generator must reach every shape.
    let mut seen = [0usize; 7];
    for seed in 0..200u64 {
        let mut rng = SplitMix(seed);
        let mut ids = LbIds::new();
        let c = ServicesConfig { lb_algorithm: *rng.pick(&[LbAlgorithm::Random, LbAlgorithm::Maglev]), ..cfg() };
        let mut previous: Option<DesiredLb> = None;
        // A few successive cluster states through one allocator, as the controller sees them.
        for step in 0..4 {
            let world = random_world(&mut rng);
            let d = desired_state(&world.inputs(), &c, &mut ids);
            let ctx = format!("seed {seed} step {step}");
            assert_invariants(&d, &ctx);
            seen[0] += d.frontends.iter().filter(|f| f.addr.scope == Scope::Internal).count();
            seen[1] += d.frontends.iter().filter(|f| f.backends.is_empty()).count();
            seen[2] += d
                .frontends
                .iter()
                .filter(|f| f.count > 0 && f.backends[0].2 == model::BackendState::Terminating)
                .count();
            seen[3] += d.frontends.iter().filter(|f| f.backends.len() > usize::from(f.count)).count();
            seen[4] += d.maglev.len();
            seen[5] += d.affinity_match.len();
            seen[6] += d.notes.iter().filter(|n| n.message.contains("already used")).count();
            assert_eq!(desired_state(&world.inputs(), &c, &mut ids), d, "{ctx}: recomputation is a fixed point");
            for (id, table) in &d.maglev {
                assert!(table
                    .iter()
                    .all(|b| d.backends.contains_key(&beeline_common::lb::Lb4BackendKey { backend_id: *b })));
                assert!(d.rev_nat.contains_key(&beeline_common::lb::Lb4RevNatKey { rev_nat_index: *id }), "{ctx}");
            }
            if let Some(prev) = &previous {
                // Frontends present in both states keep their rev-NAT ID.
                let before: BTreeMap<_, _> = prev.frontends.iter().map(|f| (f.addr, f.id)).collect();
                for f in &d.frontends {
                    if let Some(id) = before.get(&f.addr) {
                        assert_eq!(*id, f.id, "{ctx}: {} changed ID", f.addr);
                    }
                }
            }
            previous = Some(d);
        }
        assert_eq!(ids.len().0, previous.as_ref().unwrap().frontends.len(), "seed {seed}: no leaked rev-NAT IDs");
    }
    assert!(seen.iter().all(|n| *n > 0), "generator coverage: {seen:?}");
}

#[test]
fn each_load_balancer_address_gets_one_wildcard_entry_and_nothing_else_does() {
    let wildcards = |world: &World| -> Vec<Ipv4Addr> {
        let d = desired_state(&world.inputs(), &cfg(), &mut LbIds::new());
        assert_invariants(&d, "wildcards");
        d.services
            .iter()
            .filter(|(k, _)| k.dport == 0 && k.proto == 0)
            .map(|(k, v)| {
                assert_eq!(v.flags, flags::LOADBALANCER | flags::ROUTABLE, "{k:?}");
                assert_eq!(k.scope, beeline_common::lb::LB_LOOKUP_SCOPE_EXT, "outside traffic only");
                Ipv4Addr::from(u32::from_be(k.address))
            })
            .collect()
    };
    let two_ports = json!({"type": "LoadBalancer", "ports": [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP", "nodePort": 30080},
        {"name": "dns", "port": 53, "targetPort": 53, "protocol": "UDP", "nodePort": 30053}]});
    let ingress = json!({"loadBalancer": {"ingress": [{"ip": "172.16.0.1"}, {"ip": "172.16.0.2", "ipMode": "Proxy"}]}});
    let lb = World::new(vec![svc("web", json!({}), web_spec(two_ports), ingress)], vec![web_slice("web")]);
    // One entry per address however many ports; a Proxy-mode address is not served, so no entry.
    assert_eq!(wildcards(&lb), [Ipv4Addr::new(172, 16, 0, 1)]);
    let others = World::new(
        vec![svc("web", json!({}), web_spec(json!({"type": "NodePort", "externalIPs": ["198.51.100.7"]})), json!({}))],
        vec![web_slice("web")],
    );
    assert!(wildcards(&others).is_empty(), "ClusterIP, NodePort and externalIPs get none");
}

fn slice6(service: &str, name: &str, endpoints: Value) -> EndpointSlice {
    let mut s = slice(service, name, json!([{"name": "http", "port": 8080, "protocol": "TCP"}]), endpoints);
    s.address_type = "IPv6".into();
    s
}

#[test]
fn ipv6_and_dual_stack_frontends_balance_to_backends_of_their_own_family() {
    let v6_slice =
        || slice6("web", "web-v6", json!([ep("fd00:10:1::1", NODE, READY), ep("fd00:10:2::1", "node-b", READY)]));
    let dual_nodes = || {
        vec![
            node(NODE, &[("InternalIP", "192.168.1.10"), ("InternalIP", "fd00:192::10")]),
            node("node-b", &[("InternalIP", "192.168.1.11"), ("InternalIP", "fd00:192::11")]),
        ]
    };
    let web = |spec: Value| svc("web", json!({}), spec, json!({}));
    let ports = json!([{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP", "nodePort": 30080}]);
    let v4 = "[10.0.1.1:8080(active) 10.0.2.1:8080(active) 10.0.2.2:8080(active)]";
    let v6 = "[fd00:10:1::1:8080(active) fd00:10:2::1:8080(active)]";
    struct Case {
        name: &'static str,
        spec: Value,
        want: Vec<String>,
    }
    let cases = vec![
        Case {
            name: "SingleStack IPv6 ClusterIP: IPv6 backends only, although an IPv4 slice exists",
            spec: json!({"clusterIP": "fd00:10:96::a", "clusterIPs": ["fd00:10:96::a"], "ipFamilies": ["IPv6"],
                         "ipFamilyPolicy": "SingleStack", "ports": ports}),
            want: vec![format!("ClusterIP [fd00:10:96::a]:80/TCP count=2 {v6}")],
        },
        Case {
            name: "dual-stack ClusterIP: one frontend per family",
            spec: json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00:10:96::a"],
                         "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "PreferDualStack", "ports": ports}),
            want: vec![
                format!("ClusterIP 10.96.0.10:80/TCP count=3 {v4}"),
                format!("ClusterIP [fd00:10:96::a]:80/TCP count=2 {v6}"),
            ],
        },
        Case {
            name: "IPv6-only NodePort: the :: surrogate and this node's IPv6 address, no IPv4 NodePort",
            spec: json!({"type": "NodePort", "clusterIP": "fd00:10:96::a", "clusterIPs": ["fd00:10:96::a"],
                         "ipFamilies": ["IPv6"], "ipFamilyPolicy": "SingleStack", "ports": ports}),
            want: vec![
                format!("ClusterIP [fd00:10:96::a]:80/TCP count=2 {v6}"),
                format!("NodePort [::]:30080/TCP count=2 {v6}"),
                format!("NodePort [fd00:192::10]:30080/TCP count=2 {v6}"),
            ],
        },
        Case {
            name: "dual-stack NodePort: surrogates and node addresses of both families",
            spec: json!({"type": "NodePort", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00:10:96::a"],
                         "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack", "ports": ports}),
            want: vec![
                format!("ClusterIP 10.96.0.10:80/TCP count=3 {v4}"),
                format!("ClusterIP [fd00:10:96::a]:80/TCP count=2 {v6}"),
                format!("NodePort 0.0.0.0:30080/TCP count=3 {v4}"),
                format!("NodePort 192.168.1.10:30080/TCP count=3 {v4}"),
                format!("NodePort [::]:30080/TCP count=2 {v6}"),
                format!("NodePort [fd00:192::10]:30080/TCP count=2 {v6}"),
            ],
        },
    ];
    for c in cases {
        let mut world = World::new(vec![web(c.spec)], vec![web_slice("web"), v6_slice()]);
        world.nodes = dual_nodes();
        let d = world.desired(&cfg());
        let mut want = c.want.clone();
        want.sort();
        assert_eq!(lines(&d), want, "{}", c.name);
        assert!(d.notes.is_empty(), "{}: {:?}", c.name, d.notes);
        assert_invariants(&d, c.name);
        // Each family's rows sit in its own maps: one rev-NAT entry per frontend, no ID shared.
        let v6_frontends = d.frontends.iter().filter(|f| f.addr.ip.is_ipv6()).count();
        assert_eq!(d.rev_nat6.len(), v6_frontends, "{}", c.name);
        assert!(d.rev_nat6.keys().all(|k| !d.rev_nat.contains_key(k)), "{}: one rev-NAT ID space", c.name);
        assert!(d.backends6.keys().all(|k| !d.backends.contains_key(k)), "{}: one backend ID space", c.name);
    }
}

#[test]
fn ipv6_rows_carry_the_clusterip_slots_backends_and_rev_nat() {
    let spec = json!({"clusterIP": "fd00:10:96::a", "clusterIPs": ["fd00:10:96::a"],
        "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]});
    let world = World::new(
        vec![svc("web", json!({}), spec, json!({}))],
        vec![slice6(
            "web",
            "web-v6",
            json!([ep("fd00:10:1::1", NODE, READY), ep("fd00:10:2::1", "node-b", TERMINATING)]),
        )],
    );
    let d = world.desired(&cfg());
    let vip: std::net::Ipv6Addr = "fd00:10:96::a".parse().unwrap();
    let key = |slot| beeline_common::lb::Lb6Key {
        address: vip.octets(),
        dport: 80u16.to_be(),
        backend_slot: slot,
        proto: 6,
        scope: Scope::External.number(),
        pad: [0; 2],
    };
    let master = d.services6[&key(0)];
    assert_eq!((master.count, master.qcount), (1, 1), "the terminating backend is kept for existing flows");
    let slot1 = d.services6[&key(1)];
    let backend = d.backends6[&beeline_common::lb::Lb4BackendKey { backend_id: slot1.backend_id }];
    assert_eq!(std::net::Ipv6Addr::from(backend.address), "fd00:10:1::1".parse::<std::net::Ipv6Addr>().unwrap());
    assert_eq!((u16::from_be(backend.port), backend.proto, backend.flags), (8080, 6, backend_flags::ACTIVE));
    let rev = d.rev_nat6[&beeline_common::lb::Lb4RevNatKey { rev_nat_index: master.rev_nat_index }];
    assert_eq!((rev.address, u16::from_be(rev.port)), (vip.octets(), 80));
    assert!(d.services.is_empty() && d.backends.is_empty() && d.rev_nat.is_empty(), "nothing in the IPv4 maps");

    // IDs of IPv6 frontends and backends are restored from the IPv6 maps after a restart.
    let mut ids = LbIds::new();
    let services6: Vec<_> = d.services6.iter().map(|(k, v)| (*k, *v)).collect();
    let backends6: Vec<_> = d.backends6.iter().map(|(k, v)| (*k, *v)).collect();
    assert!(ids.restore_families(&[], &[], &services6, &backends6).is_empty());
    assert_eq!(ids.len(), (1, 2));
    let again = desired_state(&world.inputs(), &cfg(), &mut ids);
    assert_eq!((again.services6, again.backends6), (d.services6.clone(), d.backends6.clone()), "same IDs");
}
