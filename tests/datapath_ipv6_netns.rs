//! The IPv6 datapath on the real kernel: two dual-stack pods on one node, plugged in like
//! Cilium's CNI does (veth, /32 and /128, default routes via the router IPv4 and IPv6), with
//! `from_container` attached to their host-side veths and the endpoint rows written directly. The
//! pods resolve the IPv6 gateway through the NDP responder (no address on the node answers for
//! it) and ping each other over IPv6 through the loaded programs; IPv4 keeps working beside it.
//! Across two nodes, IPv6 goes through VXLAN over the IPv4 underlay (`from_container` into the
//! tunnel by the ipcache's IPv6 row, `from_overlay` delivering on the other side).
//!
//! Bounded (ping counts and deadlines) and cleaned up on drop (namespaces by `Topology`, pins and
//! links by `BpffsDir`).

mod integration;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use beeline::{
    datapath::{
        devices::{self, NodeDevicesSpec, TunnelProtocol},
        loader::programs::{FROM_CONTAINER, FROM_OVERLAY},
        tables, AttachMode,
    },
    lab::topology::RoutedPod,
};
use beeline_common::{
    datapath::{DatapathConfig, TUNNEL_VXLAN},
    endpoint::EndpointInfo,
    ipcache::RemoteEndpointInfo,
};
use integration::{ifindex_in, require_root, traffic, BpffsDir, Datapath, Direction, Topology};

#[test]
fn two_pods_on_one_node_ping_each_other_over_ipv6_via_the_ndp_responder() {
    require_root();
    let mut topo = Topology::new("v6ns");
    let node = topo.namespace("node").unwrap();
    let bpffs = BpffsDir::new("v6ns");
    let pin = bpffs.pin_dir();
    let mut datapath = Datapath::load(&pin).unwrap();
    let router4 = Ipv4Addr::new(10, 61, 0, 1);
    let router6: Ipv6Addr = "fd00:61::1".parse().unwrap();
    let config = DatapathConfig {
        router_ip: tables::be(router4),
        pod_cidr_prefix_len: 24,
        router_ip6: router6.octets(),
        pod_cidr6_prefix_len: 120,
        ..Default::default()
    };
    tables::write_config(&pin, &config).unwrap();

    let mut pods = Vec::new();
    for p in 1..=2u8 {
        let addr4 = Ipv4Addr::new(10, 61, 0, 10 + p);
        let addr6 = Ipv6Addr::new(0xfd00, 0x61, 0, 0, 0, 0, 0, 0x10 + u16::from(p));
        let host_if = format!("lxc6{p}");
        let pod = topo.routed_pod(&node, &format!("p{p}"), &host_if, addr4, router4, 1500).unwrap();
        topo.address(&pod.ns, "eth0", &format!("{addr6}/128")).unwrap();
        topo.route(&pod.ns, &[&router6.to_string(), "dev", "eth0"]).unwrap();
        topo.route(&pod.ns, &["default", "via", &router6.to_string(), "dev", "eth0"]).unwrap();
        let node_mac = topo.mac(&node, &host_if).unwrap();
        let info = EndpointInfo {
            ifindex: ifindex_in(&node, &host_if),
            lxc_id: u16::from(p),
            mac: topo.mac(&pod.ns, "eth0").unwrap(),
            node_mac,
            sec_id: 6100 + u32::from(p),
            ..Default::default()
        };
        tables::upsert_endpoint(&pin, addr4.into(), &info).unwrap();
        integration::upsert_endpoint6(&pin, addr6, &info);
        node.run(|| datapath.attach(FROM_CONTAINER, &host_if, Direction::Ingress, AttachMode::Tcx))
            .unwrap()
            .expect("attach from_container");
        pods.push((pod, addr6, node_mac));
    }

    for (from, to) in [(0, 1), (1, 0)] {
        let (pod, _, _) = &pods[from];
        let dst = pods[to].1;
        let (tx, rx) = traffic::ping(&pod.ns, IpAddr::V6(dst), 3).unwrap();
        assert_eq!((tx, rx), (3, 3), "ping {} -> {dst}", pods[from].1);
        let (tx, rx) = traffic::ping(&pod.ns, IpAddr::V4(pods[to].0.addr), 2).unwrap();
        assert_eq!((tx, rx), (2, 2), "IPv4 beside it: {} -> {}", pod.addr, pods[to].0.addr);
    }

    // The gateway was resolved by the responder, to the pod's own host-side veth.
    for (pod, _, node_mac) in &pods {
        let out = pod.ns.command("ip").unwrap().args(["-6", "neigh", "show", &router6.to_string()]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
        let mac = node_mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        assert!(text.contains(&mac), "{}: neighbour entry for {router6}: {text:?}, want {mac}", pod.ns.name());
    }
    // Nothing was dropped on the way.
    let drops = tables::read_drops(&pin).unwrap();
    assert!(drops.values().all(|d| d.packets == 0), "{drops:?}");
    drop(datapath);
}

/// One node of the VXLAN test: its pod (dual-stack) and what must outlive the traffic.
struct VxlanNode {
    ip: Ipv4Addr,
    pod: RoutedPod,
    addr6: Ipv6Addr,
    identity: u32,
    bpffs: BpffsDir,
    _datapath: Datapath,
}

#[test]
fn dual_stack_pods_on_two_nodes_ping_over_ipv6_through_vxlan_on_the_ipv4_underlay() {
    require_root();
    let mut topo = Topology::new("v6vx");
    let mtu = devices::pod_mtu(1500, Some(TunnelProtocol::Vxlan));
    let mut nodes = Vec::new();
    for n in 1..=2u8 {
        let ns = topo.namespace(&format!("node{n}")).unwrap();
        let ip = Ipv4Addr::new(192, 168, 62, n);
        topo.connect_to_underlay(&ns, "eth0", &[&format!("{ip}/24")]).unwrap();
        let router4 = Ipv4Addr::new(10, 62, n, 1);
        let router6 = Ipv6Addr::new(0xfd00, 0x62, u16::from(n), 0, 0, 0, 0, 1);
        let spec = NodeDevicesSpec { router_ip: Some(router4), router_ip6: None, tunnel: Some(TunnelProtocol::Vxlan) };
        let (devs, _) = ns.run(|| devices::ensure(&spec)).unwrap().expect("node devices");
        let bpffs = BpffsDir::new(&format!("v6vx-n{n}"));
        let pin = bpffs.pin_dir();
        let mut datapath = Datapath::load(&pin).unwrap();
        let config = DatapathConfig {
            router_ip: tables::be(router4),
            node_ip: tables::be(ip),
            tunnel_ifindex: devs.tunnel.unwrap(),
            tunnel_proto: TUNNEL_VXLAN,
            pod_cidr_prefix_len: 24,
            router_ip6: router6.octets(),
            pod_cidr6_prefix_len: 120,
            ..Default::default()
        };
        tables::write_config(&pin, &config).unwrap();
        ns.run(|| datapath.attach(FROM_OVERLAY, TunnelProtocol::Vxlan.device(), Direction::Ingress, AttachMode::Tcx))
            .unwrap()
            .expect("attach from_overlay");

        let addr4 = Ipv4Addr::new(10, 62, n, 11);
        let addr6 = Ipv6Addr::new(0xfd00, 0x62, u16::from(n), 0, 0, 0, 0, 0x11);
        let host_if = format!("lxc{n}");
        let pod = topo.routed_pod(&ns, &format!("n{n}p"), &host_if, addr4, router4, mtu).unwrap();
        topo.address(&pod.ns, "eth0", &format!("{addr6}/128")).unwrap();
        topo.route(&pod.ns, &[&router6.to_string(), "dev", "eth0"]).unwrap();
        topo.route(&pod.ns, &["default", "via", &router6.to_string(), "dev", "eth0"]).unwrap();
        let identity = 6200 + u32::from(n);
        let info = EndpointInfo {
            ifindex: ifindex_in(&ns, &host_if),
            lxc_id: 1,
            mac: topo.mac(&pod.ns, "eth0").unwrap(),
            node_mac: topo.mac(&ns, &host_if).unwrap(),
            sec_id: identity,
            ..Default::default()
        };
        tables::upsert_endpoint(&pin, addr4.into(), &info).unwrap();
        integration::upsert_endpoint6(&pin, addr6, &info);
        ns.run(|| datapath.attach(FROM_CONTAINER, &host_if, Direction::Ingress, AttachMode::Tcx))
            .unwrap()
            .expect("attach from_container");
        nodes.push(VxlanNode { ip, pod, addr6, identity, bpffs, _datapath: datapath });
    }
    // Each node learns the peer's pod: its IPv6 /128 with identity and the peer's IPv4 node IP as
    // tunnel endpoint (what the CiliumEndpoint controller writes for IPv4).
    for (i, node) in nodes.iter().enumerate() {
        let peer = &nodes[1 - i];
        let info = RemoteEndpointInfo {
            sec_identity: peer.identity,
            tunnel_endpoint: tables::be(peer.ip),
            ..Default::default()
        };
        integration::upsert_ipcache6(&node.bpffs.pin_dir(), peer.addr6, 128, &info);
    }
    for (from, to) in [(0, 1), (1, 0)] {
        let dst = nodes[to].addr6;
        let (tx, rx) = traffic::ping(&nodes[from].pod.ns, IpAddr::V6(dst), 3).unwrap();
        assert_eq!((tx, rx), (3, 3), "ping {} -> {dst} across nodes", nodes[from].addr6);
    }
    for node in &nodes {
        let drops = tables::read_drops(&node.bpffs.pin_dir()).unwrap();
        assert!(drops.values().all(|d| d.packets == 0), "{drops:?}");
    }
    // Pins and links before the namespaces.
    drop(nodes);
    drop(topo);
}
