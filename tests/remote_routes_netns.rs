//! The route reconciler on a real kernel, in a namespace of its own with node devices: routes to
//! remote pod CIDRs are added (tunnel and direct), found in place on the next pass (nothing
//! rewritten), removed when no longer wanted — and a route someone else created is never replaced
//! or deleted. Cleaned up on drop (the namespace by `Topology`).

mod integration;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use beeline::datapath::devices::{self, NodeDevicesSpec};
use beeline::datapath::routes::{self, IpRouteTable, RouteReport, RouteSpec, RouteVia};
use integration::{require_root, NetNs, Topology};

fn show(ns: &NetNs, prefix: &str) -> String {
    let family = if prefix.contains(':') { "-6" } else { "-4" };
    let out = ns.command("ip").unwrap().args([family, "route", "show", prefix]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn routes_are_reconciled_and_foreign_routes_left_alone() {
    require_root();
    let mut topo = Topology::new("routes");
    let ns = topo.namespace("node").unwrap();
    topo.connect_to_underlay(&ns, "eth0", &["192.168.64.1/24", "fc64::1/64"]).unwrap();
    let router: Ipv4Addr = "10.64.1.1".parse().unwrap();
    let router6: Ipv6Addr = "fd64:1::1".parse().unwrap();
    ns.run(|| devices::ensure(&NodeDevicesSpec { router_ip: Some(router), router_ip6: Some(router6), tunnel: None }))
        .unwrap()
        .expect("node devices");
    let out = ns
        .command("ip")
        .unwrap()
        .args(["route", "add", "10.64.7.0/24", "via", "192.168.64.254", "proto", "static"])
        .status()
        .unwrap();
    assert!(out.success(), "foreign route");

    let tunnel = RouteSpec {
        prefix: "10.64.3.0/24".parse().unwrap(),
        via: RouteVia::CiliumHost { router_ip: router.into(), mtu: 1450 },
    };
    let direct = RouteSpec {
        prefix: "10.64.2.0/24".parse().unwrap(),
        via: RouteVia::Node { node_ip: "192.168.64.2".parse().unwrap() },
    };
    let over_foreign = RouteSpec {
        prefix: "10.64.7.0/24".parse().unwrap(),
        via: RouteVia::Node { node_ip: "192.168.64.3".parse().unwrap() },
    };
    // IPv6 peers: on-link via cilium_host (tunnel mode), via the peer's IPv6 underlay address.
    let tunnel6 = RouteSpec {
        prefix: "fd64:3::/64".parse().unwrap(),
        via: RouteVia::CiliumHost { router_ip: router6.into(), mtu: 1450 },
    };
    let direct6 = RouteSpec {
        prefix: "fd64:2::/64".parse().unwrap(),
        via: RouteVia::Node { node_ip: "fc64::2".parse().unwrap() },
    };
    let desired: BTreeSet<RouteSpec> = [tunnel, direct, over_foreign, tunnel6, direct6].into_iter().collect();
    let reconcile = |desired: &BTreeSet<RouteSpec>| ns.run(|| routes::reconcile(&mut IpRouteTable, desired)).unwrap();

    let report = reconcile(&desired);
    assert_eq!(report, RouteReport { replaced: 4, foreign: 1, ..Default::default() });
    assert_eq!(
        show(&ns, "10.64.3.0/24"),
        "10.64.3.0/24 via 10.64.1.1 dev cilium_host proto 196 src 10.64.1.1 mtu 1450"
    );
    assert_eq!(show(&ns, "10.64.2.0/24"), "10.64.2.0/24 via 192.168.64.2 dev eth0 proto 196");
    assert_eq!(show(&ns, "10.64.7.0/24"), "10.64.7.0/24 via 192.168.64.254 dev eth0 proto static");
    assert_eq!(
        show(&ns, "fd64:3::/64"),
        "fd64:3::/64 dev cilium_host proto 196 src fd64:1::1 metric 1024 mtu 1450 pref medium"
    );
    assert_eq!(show(&ns, "fd64:2::/64"), "fd64:2::/64 via fc64::2 dev eth0 proto 196 metric 1024 pref medium");

    // The next pass finds everything in place (the kernel's view parses back to the same routes).
    assert_eq!(reconcile(&desired), RouteReport { foreign: 1, ..Default::default() });

    // Nothing wanted any more: ours go, the foreign one stays.
    assert_eq!(reconcile(&BTreeSet::new()), RouteReport { deleted: 4, ..Default::default() });
    assert_eq!(show(&ns, "fd64:3::/64"), "");
    assert_eq!(show(&ns, "fd64:2::/64"), "");
    assert_eq!(show(&ns, "10.64.3.0/24"), "");
    assert_eq!(show(&ns, "10.64.2.0/24"), "");
    assert_eq!(show(&ns, "10.64.7.0/24"), "10.64.7.0/24 via 192.168.64.254 dev eth0 proto static");
}
