use super::*;
use crate::crds::cilium_node::{CiliumNodeSpec, HealthAddressing, IpamSpec, NodeAddress};
use crate::datapath::tables::{from_be, ipcache_prefix, union_ip};

fn node(name: &str, internal: &str, router: &str, cidrs: &[&str]) -> CiliumNode {
    let mut addresses = Vec::new();
    for (t, ip) in [(ADDRESS_INTERNAL_IP, internal), (ADDRESS_CILIUM_INTERNAL_IP, router)] {
        if !ip.is_empty() {
            addresses.push(NodeAddress { address_type: t.into(), ip: ip.into() });
        }
    }
    let mut n = CiliumNode::new(
        name,
        CiliumNodeSpec {
            addresses,
            ipam: Some(IpamSpec { pod_cidrs: cidrs.iter().map(|s| s.to_string()).collect(), ..Default::default() }),
            ..Default::default()
        },
    );
    n.metadata.name = Some(name.into());
    n
}

fn with_health(mut n: CiliumNode, ip: &str) -> CiliumNode {
    n.spec.health = Some(HealthAddressing { ipv4: Some(ip.into()), ipv6: None });
    n
}

fn own() -> CiliumNode {
    node("a", "192.168.0.1", "10.0.0.1", &["10.0.0.0/24"])
}

fn b() -> CiliumNode {
    node("b", "192.168.0.2", "10.0.1.1", &["10.0.1.0/24"])
}

fn c() -> CiliumNode {
    node("c", "192.168.0.3", "10.0.2.1", &["10.0.2.0/24"])
}

/// A dual-stack node: IPv4 and IPv6 underlay, router and pod CIDR of each family.
fn dual(name: &str, host: u8) -> CiliumNode {
    let mut n = node(
        name,
        &format!("192.168.0.{host}"),
        &format!("10.0.{}.1", host - 1),
        &[&format!("10.0.{}.0/24", host - 1), &format!("fd00:10:0:{}::/64", host - 1)],
    );
    for (t, ip) in [
        (ADDRESS_INTERNAL_IP, format!("fc00::{host}")),
        (ADDRESS_CILIUM_INTERNAL_IP, format!("fd00:10:0:{}::1", host - 1)),
    ] {
        n.spec.addresses.push(NodeAddress { address_type: t.into(), ip });
    }
    n
}

/// An IPv6-only node.
fn v6_only(name: &str, host: u8) -> CiliumNode {
    node(
        name,
        &format!("fc00::{host}"),
        &format!("fd00:10:0:{}::1", host - 1),
        &[&format!("fd00:10:0:{}::/64", host - 1)],
    )
}

fn tunnel_cfg() -> RemoteNodesConfig {
    RemoteNodesConfig {
        tunnel: Some(TunnelProtocol::Vxlan),
        auto_direct_node_routes: false,
        native_routing_cidr: None,
        native_routing_cidr6: None,
        pod_mtu: 1450,
    }
}

fn native_cfg(auto_direct: bool) -> RemoteNodesConfig {
    RemoteNodesConfig {
        tunnel: None,
        auto_direct_node_routes: auto_direct,
        native_routing_cidr: Some("10.0.0.0/16".parse().unwrap()),
        native_routing_cidr6: Some("fd00:10::/48".parse().unwrap()),
        pod_mtu: 1500,
    }
}

/// The desired state as readable lines, sorted.
fn lines(d: &DesiredRemote) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (k, v) in &d.tunnel {
        out.push(format!(
            "tunnel {} -> {}",
            union_ip(k.family, k.ip4, k.ip6_rest),
            union_ip(v.family, v.ip4, v.ip6_rest)
        ));
    }
    for (k, v) in &d.ipcache {
        let tunnel = if v.tunnel_endpoint == 0 { "-".to_string() } else { from_be(v.tunnel_endpoint).to_string() };
        out.push(format!("ipcache {} id={} tun={tunnel}", ipcache_prefix(k), v.sec_identity));
    }
    for r in &d.routes {
        out.push(format!("route {}", r.args().join(" ")));
    }
    out.sort();
    out
}

const B_ROWS: &[&str] = &[
    "ipcache 10.0.1.0/24 id=2 tun=192.168.0.2",
    "ipcache 10.0.1.1/32 id=6 tun=192.168.0.2",
    "ipcache 192.168.0.2/32 id=6 tun=-",
    "route 10.0.1.0/24 via 10.0.0.1 dev cilium_host src 10.0.0.1 mtu 1450 proto 196",
    "tunnel 10.0.1.0 -> 192.168.0.2",
];

const C_ROWS: &[&str] = &[
    "ipcache 10.0.2.0/24 id=2 tun=192.168.0.3",
    "ipcache 10.0.2.1/32 id=6 tun=192.168.0.3",
    "ipcache 192.168.0.3/32 id=6 tun=-",
    "route 10.0.2.0/24 via 10.0.0.1 dev cilium_host src 10.0.0.1 mtu 1450 proto 196",
    "tunnel 10.0.2.0 -> 192.168.0.3",
];

fn sorted(parts: &[&[&str]]) -> Vec<String> {
    let mut v: Vec<String> = parts.iter().flat_map(|p| p.iter().map(|s| s.to_string())).collect();
    v.sort();
    v
}

#[test]
fn desired_rows_and_routes_per_cluster_state() {
    struct Case {
        name: &'static str,
        nodes: Vec<CiliumNode>,
        cfg: RemoteNodesConfig,
        want: Vec<String>,
        notes: usize,
    }
    let cases = vec![
        Case { name: "only our own node", nodes: vec![own()], cfg: tunnel_cfg(), want: vec![], notes: 0 },
        Case {
            name: "one remote node, tunnel",
            nodes: vec![own(), b()],
            cfg: tunnel_cfg(),
            want: sorted(&[B_ROWS]),
            notes: 0,
        },
        Case {
            name: "node added later",
            nodes: vec![c(), own(), b()],
            cfg: tunnel_cfg(),
            want: sorted(&[B_ROWS, C_ROWS]),
            notes: 0,
        },
        Case { name: "node removed", nodes: vec![own(), c()], cfg: tunnel_cfg(), want: sorted(&[C_ROWS]), notes: 0 },
        Case {
            name: "health IP",
            nodes: vec![own(), with_health(b(), "10.0.1.77")],
            cfg: tunnel_cfg(),
            want: sorted(&[B_ROWS, &["ipcache 10.0.1.77/32 id=4 tun=192.168.0.2"]]),
            notes: 0,
        },
        Case {
            name: "native with auto-direct-node-routes",
            nodes: vec![own(), b()],
            cfg: native_cfg(true),
            want: sorted(&[&[
                "ipcache 10.0.1.1/32 id=6 tun=192.168.0.2",
                "ipcache 192.168.0.2/32 id=6 tun=-",
                "route 10.0.1.0/24 via 192.168.0.2 proto 196",
            ]]),
            notes: 0,
        },
        Case {
            name: "native without auto-direct-node-routes: no routes",
            nodes: vec![own(), b()],
            cfg: native_cfg(false),
            want: sorted(&[&["ipcache 10.0.1.1/32 id=6 tun=192.168.0.2", "ipcache 192.168.0.2/32 id=6 tun=-"]]),
            notes: 0,
        },
        Case {
            name: "our router IP unknown yet: rows but no route",
            nodes: vec![node("a", "192.168.0.1", "", &[]), b()],
            cfg: tunnel_cfg(),
            want: B_ROWS.iter().filter(|l| !l.starts_with("route")).map(|s| s.to_string()).collect(),
            notes: 1,
        },
        Case {
            name: "a node without addresses is skipped",
            nodes: vec![own(), node("d", "", "", &["10.0.3.0/24"])],
            cfg: tunnel_cfg(),
            want: vec![],
            notes: 1,
        },
        Case {
            name: "two nodes claim one pod CIDR: the first by name keeps it",
            nodes: vec![own(), node("z", "192.168.0.9", "", &["10.0.1.0/24"]), b()],
            cfg: tunnel_cfg(),
            want: sorted(&[B_ROWS, &["ipcache 192.168.0.9/32 id=6 tun=-"]]),
            notes: 1,
        },
        Case {
            name: "malformed CIDR; an IPv6 CIDR while we have no IPv6 router IP gets rows but no route",
            nodes: vec![own(), node("b", "192.168.0.2", "10.0.1.1", &["10.0.1.0/24", "fd00::/120", "nope"])],
            cfg: tunnel_cfg(),
            want: sorted(&[B_ROWS, &["ipcache fd00::/120 id=2 tun=192.168.0.2", "tunnel fd00:: -> 192.168.0.2"]]),
            notes: 2,
        },
        Case {
            name: "dual stack over a tunnel: IPv6 CIDRs tunnel to the IPv4 underlay, route via cilium_host",
            nodes: vec![dual("a", 1), dual("b", 2)],
            cfg: tunnel_cfg(),
            want: sorted(&[
                B_ROWS,
                &[
                    "ipcache fc00::2/128 id=6 tun=-",
                    "ipcache fd00:10:0:1::/64 id=2 tun=192.168.0.2",
                    "ipcache fd00:10:0:1::1/128 id=6 tun=192.168.0.2",
                    "route fd00:10:0:1::/64 dev cilium_host src fd00:10::1 mtu 1450 proto 196",
                    "tunnel fd00:10:0:1:: -> 192.168.0.2",
                ],
            ]),
            notes: 0,
        },
        Case {
            name: "dual stack, native: each family's CIDR via the node address of that family",
            nodes: vec![dual("a", 1), dual("b", 2)],
            cfg: native_cfg(true),
            want: sorted(&[&[
                "ipcache 10.0.1.1/32 id=6 tun=192.168.0.2",
                "ipcache 192.168.0.2/32 id=6 tun=-",
                "ipcache fc00::2/128 id=6 tun=-",
                "ipcache fd00:10:0:1::1/128 id=6 tun=192.168.0.2",
                "route 10.0.1.0/24 via 192.168.0.2 proto 196",
                "route fd00:10:0:1::/64 via fc00::2 proto 196",
            ]]),
            notes: 0,
        },
        Case {
            name: "IPv6 only, native",
            nodes: vec![v6_only("a", 1), v6_only("b", 2)],
            cfg: native_cfg(true),
            want: sorted(&[&[
                "ipcache fc00::2/128 id=6 tun=-",
                "ipcache fd00:10:0:1::1/128 id=6 tun=-",
                "route fd00:10:0:1::/64 via fc00::2 proto 196",
            ]]),
            notes: 0,
        },
        Case {
            name: "IPv6 only over a tunnel: no IPv4 underlay to tunnel to",
            nodes: vec![v6_only("a", 1), v6_only("b", 2)],
            cfg: tunnel_cfg(),
            want: sorted(&[&["ipcache fc00::2/128 id=6 tun=-", "ipcache fd00:10:0:1::1/128 id=6 tun=-"]]),
            notes: 1,
        },
        Case {
            name: "an IPv6 pod CIDR outside ipv6-native-routing-cidr is reported",
            nodes: vec![v6_only("a", 1), node("b", "fc00::2", "", &["fd00:99::/64"])],
            cfg: native_cfg(true),
            want: sorted(&[&["ipcache fc00::2/128 id=6 tun=-", "route fd00:99::/64 via fc00::2 proto 196"]]),
            notes: 1,
        },
    ];
    for case in cases {
        let d = desired(&case.nodes, "a", &case.cfg);
        assert_eq!(lines(&d), case.want, "{}", case.name);
        assert_eq!(d.notes.len(), case.notes, "{}: {:?}", case.name, d.notes);
    }
}

#[test]
fn config_maps_routing_mode_and_mtu() {
    let raw = |pairs: &[(&str, &str)]| -> Config {
        Config::from_raw(&pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()).unwrap()
    };
    let c = RemoteNodesConfig::from_config(&raw(&[]));
    assert_eq!((c.tunnel, c.pod_mtu), (Some(TunnelProtocol::Vxlan), 1450));
    let c = RemoteNodesConfig::from_config(&raw(&[("tunnel-protocol", "geneve"), ("mtu", "9000")]));
    assert_eq!((c.tunnel, c.pod_mtu), (Some(TunnelProtocol::Geneve), 8950));
    let c = RemoteNodesConfig::from_config(&raw(&[
        ("routing-mode", "native"),
        ("ipv4-native-routing-cidr", "10.0.0.0/8"),
        ("auto-direct-node-routes", "true"),
    ]));
    assert_eq!((c.tunnel, c.auto_direct_node_routes, c.pod_mtu), (None, true, 1500));
}

#[test]
fn multi_pool_nodes_get_a_native_route_for_every_allocated_pool_cidr() {
    use crate::crds::cilium_node::{IpamPoolAllocation, IpamPoolSpec};
    let mut b = node("b", "192.168.0.2", "10.0.1.1", &[]);
    let allocated = [("default", &["10.0.1.0/27"][..]), ("tenant-a", &["10.10.0.0/27", "10.10.0.64/27"][..])];
    b.spec.ipam.as_mut().unwrap().pools = Some(IpamPoolSpec {
        allocated: allocated
            .iter()
            .map(|(pool, cidrs)| IpamPoolAllocation {
                pool: pool.to_string(),
                cidrs: cidrs.iter().map(|c| c.to_string()).collect(),
            })
            .collect(),
        ..Default::default()
    });
    let mut cfg = native_cfg(true);
    cfg.native_routing_cidr = Some("10.0.0.0/8".parse().unwrap());
    let routes: Vec<String> =
        lines(&desired(&[own(), b], "a", &cfg)).into_iter().filter(|l| l.starts_with("route")).collect();
    assert_eq!(
        routes,
        [
            "route 10.0.1.0/27 via 192.168.0.2 proto 196",
            "route 10.10.0.0/27 via 192.168.0.2 proto 196",
            "route 10.10.0.64/27 via 192.168.0.2 proto 196",
        ]
    );
}
