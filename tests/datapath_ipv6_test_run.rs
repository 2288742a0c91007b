//! The IPv6 half of `from_container` under `BPF_PROG_TEST_RUN`: the NDP responder, the source
//! check, local delivery, tunnelling decisions and policy. Root, no namespaces.
//!
//! As in `datapath_connectivity_test_run.rs`: test_run runs the program as if the frame arrived on
//! loopback (ifindex 1), so the sending pod A is registered on ifindex 1; redirect targets are
//! arbitrary numbers (test_run only reports the verdict). The IPv6 rows are written straight into
//! the pinned maps (the agent's IPv6 rows are another change).

mod integration;

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::maps::{HashMap, Map, MapData};
use beeline::datapath::{
    loader::programs::{FROM_CONTAINER, FROM_NETDEV},
    pins::PinLayout,
    tables,
    testing::{packet::FrameBuilder, test_run::run_tc},
};
use beeline_common::{
    datapath::{drop_reason, DatapathConfig, TUNNEL_VXLAN},
    endpoint::{EndpointInfo, ENDPOINT_KEY_IPV4},
    ipcache::{RemoteEndpointInfo, FLAG_SKIP_TUNNEL},
    mask_ipv6,
    policy::{PolicyEntry, PolicyKey, DIR_EGRESS, DIR_INGRESS, EP_F_EGRESS_ENFORCE, EP_F_INGRESS_ENFORCE},
    tunnel::{self, TunnelKey, TunnelValue},
};
use integration::{
    two_pods::{self, EP_A, LOOPBACK, LXC_A, MAC_A},
    LoadedDatapath,
};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const POD_B_MAC: [u8; 6] = two_pods::MAC_B;
const LXC_B_MAC: [u8; 6] = two_pods::LXC_B;
const B_IFINDEX: u32 = two_pods::B_IFINDEX;
const VXLAN_IFINDEX: u32 = 77;
const ID_A: u32 = two_pods::ID_A;

const ICMPV6: u8 = 58;
const ICMP: u8 = 1;
const UDP: u8 = 17;
const NS: u8 = 135;
const NA: u8 = 136;

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}
fn router6() -> Ipv6Addr {
    v6("fd00:10::1")
}
fn pod_a6() -> Ipv6Addr {
    v6("fd00:10::2")
}
fn pod_b6() -> Ipv6Addr {
    v6("fd00:10::3")
}

struct Fixture {
    dp: LoadedDatapath,
}

impl Fixture {
    /// Pods A (loopback) and B (ifindex 4242) with both an IPv4 and an IPv6 address.
    fn new(label: &str) -> Fixture {
        let dp = LoadedDatapath::new(label);
        two_pods::register(&dp);
        let f = Fixture { dp };
        let info = |ifindex, lxc_id: u32, mac, node_mac, sec_id| EndpointInfo {
            ifindex,
            lxc_id: lxc_id as u16,
            mac,
            node_mac,
            sec_id,
            ..Default::default()
        };
        f.endpoint6(pod_a6(), &info(LOOPBACK, EP_A, MAC_A, LXC_A, ID_A));
        f.endpoint6(pod_b6(), &info(B_IFINDEX, two_pods::EP_B, POD_B_MAC, LXC_B_MAC, two_pods::ID_B));
        f.config(DatapathConfig { router_ip6: router6().octets(), ..Default::default() });
        f
    }

    fn map(&self, name: &str) -> MapData {
        MapData::from_pin(PinLayout::new(self.dp.bpffs.pin_dir()).map(name)).unwrap()
    }

    fn endpoint6(&self, addr: Ipv6Addr, info: &EndpointInfo) {
        integration::upsert_endpoint6(&self.dp.bpffs.pin_dir(), addr, info);
    }

    fn ipcache6(&self, addr: Ipv6Addr, prefix_len: u32, info: &RemoteEndpointInfo) {
        integration::upsert_ipcache6(&self.dp.bpffs.pin_dir(), addr, prefix_len, info);
    }

    fn tunnel6(&self, cidr: Ipv6Addr, prefix_len: u32, node: Ipv4Addr) {
        let mut map: HashMap<_, TunnelKey, TunnelValue> =
            HashMap::try_from(Map::HashMap(self.map(tunnel::MAP_NAME))).unwrap();
        let value = TunnelValue { ip4: tables::be(node), family: ENDPOINT_KEY_IPV4, ..Default::default() };
        map.insert(TunnelKey::ipv6(mask_ipv6(cidr.octets(), prefix_len)), value, 0).unwrap();
    }

    fn config(&self, config: DatapathConfig) {
        tables::write_config(&self.dp.bpffs.pin_dir(), &config).unwrap();
    }
}

/// The solicited-node multicast address of `target` (RFC 4291 §2.7.1) and its MAC.
fn solicited_node(target: Ipv6Addr) -> (Ipv6Addr, [u8; 6]) {
    let t = target.octets();
    let mut addr = v6("ff02::1:ff00:0").octets();
    addr[13..].copy_from_slice(&t[13..]);
    (Ipv6Addr::from(addr), [0x33, 0x33, 0xff, t[13], t[14], t[15]])
}

/// A Neighbor Solicitation from (`mac`, `src`) for `target`, multicast to its solicited-node
/// group, with a source link-layer address option unless `src` is `::` (DAD, RFC 4861 §4.3).
fn solicitation(mac: [u8; 6], src: Ipv6Addr, target: Ipv6Addr) -> FrameBuilder {
    let (group, group_mac) = solicited_node(target);
    let mut body = target.octets().to_vec();
    if !src.is_unspecified() {
        body.extend_from_slice(&[1, 1]);
        body.extend_from_slice(&mac);
    }
    FrameBuilder::new(mac, group_mac).ipv6(src, group).ttl(255).icmp(NS, 0, [0; 4]).payload(&body)
}

/// RFC 4443 §2.3 checksum over the IPv6 pseudo-header and the message, computed here from the
/// bytes (not with the crate's packet helpers, which the program's tests also use).
fn icmpv6_checksum(src: &[u8], dst: &[u8], message: &[u8]) -> u16 {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(src);
    bytes.extend_from_slice(dst);
    bytes.extend_from_slice(&(message.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&[0, 0, 0, ICMPV6]);
    bytes.extend_from_slice(message);
    if bytes.len() % 2 == 1 {
        bytes.push(0);
    }
    let mut sum: u32 = bytes.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Checks `out` is a Neighbor Advertisement for `target` from `our_mac` to (`to_mac`, `to`) with
/// `flags`, a target link-layer option of `our_mac`, and a correct checksum.
fn assert_advert(name: &str, out: &[u8], our_mac: [u8; 6], to_mac: [u8; 6], to: Ipv6Addr, target: Ipv6Addr, flags: u8) {
    assert_eq!(out.len(), 14 + 40 + 32, "{name}: Ethernet + IPv6 + NA with one option");
    assert_eq!(&out[0..6], &to_mac, "{name}: back to the soliciting pod");
    assert_eq!(&out[6..12], &our_mac, "{name}: from the host-side veth");
    assert_eq!(&out[12..14], &[0x86, 0xdd], "{name}: ethertype");
    let ip = &out[14..54];
    assert_eq!(ip[0] >> 4, 6, "{name}: version");
    assert_eq!(u16::from_be_bytes([ip[4], ip[5]]), 32, "{name}: payload length");
    assert_eq!((ip[6], ip[7]), (ICMPV6, 255), "{name}: ICMPv6 with hop limit 255 (RFC 4861 §7.1.2)");
    assert_eq!(&ip[8..24], &target.octets(), "{name}: sent from the target address");
    assert_eq!(&ip[24..40], &to.octets(), "{name}: to the solicitation's source");
    let na = &out[54..];
    assert_eq!((na[0], na[1]), (NA, 0), "{name}: type/code");
    assert_eq!(na[4], flags, "{name}: R/S/O flags");
    assert_eq!(&na[5..8], &[0, 0, 0], "{name}: reserved");
    assert_eq!(&na[8..24], &target.octets(), "{name}: target");
    assert_eq!(&na[24..26], &[2, 1], "{name}: target link-layer address option, 8 bytes");
    assert_eq!(&na[26..32], &our_mac, "{name}: the option carries the host-side veth's MAC");
    let mut zeroed = na.to_vec();
    zeroed[2..4].copy_from_slice(&[0, 0]);
    let want = icmpv6_checksum(&ip[8..24], &ip[24..40], &zeroed);
    assert_eq!(u16::from_be_bytes([na[2], na[3]]), want, "{name}: ICMPv6 checksum");
}

const R_S: u8 = 0x80 | 0x40;
const S_O: u8 = 0x40 | 0x20;

#[test]
fn neighbor_solicitations_for_the_gateway_are_answered_with_the_host_veth_mac() {
    let f = Fixture::new("v6-ndp");
    // The router IPv6: Router + Solicited (Cilium's flags for its router address).
    let (verdict, out) = f.dp.run(FROM_CONTAINER, &solicitation(MAC_A, pod_a6(), router6()).build());
    assert_eq!(verdict, TC_ACT_REDIRECT, "the answer goes back out of the same veth");
    assert_advert("router", &out, LXC_A, MAC_A, pod_a6(), router6(), R_S);

    // Any other target but the pod's own: Solicited + Override (Cilium's flags for non-router
    // targets), like the ARP responder answering for every address.
    for target in [v6("fd00:10::fe"), pod_b6(), v6("fd00:99::7")] {
        let (verdict, out) = f.dp.run(FROM_CONTAINER, &solicitation(MAC_A, pod_a6(), target).build());
        assert_eq!(verdict, TC_ACT_REDIRECT, "{target}");
        assert_advert(&target.to_string(), &out, LXC_A, MAC_A, pod_a6(), target, S_O);
    }

    // A solicitation without the source link-layer option (allowed for unicast probes) comes out
    // the same size: the frame is resized, not patched.
    let lla = v6("fe80::a:ff:fe00:a");
    let probe = FrameBuilder::new(MAC_A, LXC_A)
        .ipv6(lla, router6())
        .ttl(255)
        .icmp(NS, 0, [0; 4])
        .payload(&router6().octets())
        .build();
    let (verdict, out) = f.dp.run(FROM_CONTAINER, &probe);
    assert_eq!(verdict, TC_ACT_REDIRECT, "unicast probe from the link-local address");
    assert_advert("link-local probe", &out, LXC_A, MAC_A, lla, router6(), R_S);
    assert!(f.dp.drops().is_empty(), "{:?}", f.dp.drops());
}

#[test]
fn dad_own_address_and_other_neighbour_discovery_go_to_the_stack() {
    let f = Fixture::new("v6-ndp-pass");
    let (group, group_mac) = solicited_node(router6());
    let cases = [
        ("DAD from ::", solicitation(MAC_A, Ipv6Addr::UNSPECIFIED, pod_a6()).build()),
        ("the pod's own address", solicitation(MAC_A, pod_a6(), pod_a6()).build()),
        // Pod B's address arriving on pod A's veth: not vouched for.
        ("source of another veth", solicitation(MAC_A, pod_b6(), router6()).build()),
        ("unregistered source", solicitation(MAC_A, v6("fd00:10::77"), router6()).build()),
        // A link-local multicast solicitation says nothing about which MAC is ours.
        ("link-local multicast", solicitation(MAC_A, v6("fe80::1"), router6()).build()),
        ("hop limit not 255", solicitation(MAC_A, pod_a6(), router6()).ttl(64).build()),
        (
            "router solicitation",
            FrameBuilder::new(MAC_A, [0x33, 0x33, 0, 0, 0, 2])
                .ipv6(v6("fe80::1"), v6("ff02::2"))
                .ttl(255)
                .icmp(133, 0, [0; 4])
                .build(),
        ),
        (
            "neighbor advertisement",
            FrameBuilder::new(MAC_A, group_mac).ipv6(pod_a6(), group).ttl(255).icmp(NA, 0, [0; 4]).build(),
        ),
        ("link-local unicast", FrameBuilder::new(MAC_A, LXC_A).ipv6(v6("fe80::1"), v6("fe80::2")).udp(1, 2).build()),
        ("multicast", FrameBuilder::new(MAC_A, group_mac).ipv6(pod_a6(), v6("ff02::16")).udp(1, 2).build()),
    ];
    for (name, frame) in cases {
        let (verdict, out) = f.dp.run(FROM_CONTAINER, &frame);
        assert_eq!((verdict, &out), (TC_ACT_OK, &frame), "{name}");
    }
    assert!(f.dp.drops().is_empty(), "{:?}", f.dp.drops());
}

#[test]
fn spoofed_ipv6_sources_are_dropped_as_invalid_source_ip() {
    let f = Fixture::new("v6-spoof");
    for (i, src) in [pod_b6(), v6("fd00:10::77"), Ipv6Addr::UNSPECIFIED].into_iter().enumerate() {
        let frame = FrameBuilder::new(MAC_A, LXC_A).ipv6(src, pod_b6()).udp(1, 2).build();
        assert_eq!(f.dp.run(FROM_CONTAINER, &frame).0, TC_ACT_SHOT, "{src}");
        assert_eq!(f.dp.drops(), vec![(drop_reason::INVALID_SIP, i as u64 + 1)], "{src}");
    }
}

#[test]
fn ipv6_to_a_local_pod_is_redirected_with_hop_limit_decremented_and_macs_rewritten() {
    let f = Fixture::new("v6-local");
    let base = || FrameBuilder::new(MAC_A, LXC_A).ipv6(pod_a6(), pod_b6());
    let frames = [
        ("udp", base().udp(5353, 53).payload(b"query")),
        ("icmpv6 echo", base().icmp_echo_request(9, 1).payload(&[1; 56])),
    ];
    for (name, builder) in frames {
        let frame = builder.build();
        let (verdict, out) = f.dp.run(FROM_CONTAINER, &frame);
        assert_eq!(verdict, TC_ACT_REDIRECT, "{name}");
        assert_eq!((&out[0..6], &out[6..12]), (&POD_B_MAC[..], &LXC_B_MAC[..]), "{name}: gateway -> pod B");
        assert_eq!(out[14 + 7], 63, "{name}: hop limit - 1");
        // Nothing else changes: IPv6 has no header checksum, and the hop limit is not in the
        // pseudo-header, so the L4 checksum stays valid.
        for (at, (a, b)) in frame.iter().zip(&out).enumerate() {
            assert!(at < 12 || at == 14 + 7 || a == b, "{name}: byte {at} changed {a:#x} -> {b:#x}");
        }
        assert_eq!(out.len(), frame.len());
    }
    // Hop limit 1: the kernel answers with time exceeded.
    let expiring = base().ttl(1).udp(1, 2).build();
    assert_eq!(f.dp.run(FROM_CONTAINER, &expiring), (TC_ACT_OK, expiring.clone()));
    assert!(f.dp.drops().is_empty(), "{:?}", f.dp.drops());
}

#[test]
fn ipv6_to_a_remote_pod_in_vxlan_mode_goes_into_the_tunnel_over_the_ipv4_underlay() {
    let f = Fixture::new("v6-remote");
    let config = |tunnel_ifindex| DatapathConfig {
        router_ip6: router6().octets(),
        node_ip: tables::be("192.168.0.1".parse().unwrap()),
        tunnel_ifindex,
        tunnel_proto: TUNNEL_VXLAN,
        pod_cidr_prefix_len: 24,
        pod_cidr6_prefix_len: 120,
        ..Default::default()
    };
    let remote = |node: &str, flags| RemoteEndpointInfo {
        sec_identity: 777,
        tunnel_endpoint: tables::be(node.parse().unwrap()),
        flags,
        ..Default::default()
    };
    f.ipcache6(v6("fd00:20::"), 120, &remote("192.168.0.2", 0));
    f.ipcache6(v6("fd00:40::"), 120, &remote("192.168.0.4", FLAG_SKIP_TUNNEL));
    f.tunnel6(v6("fd00:30::"), 120, "192.168.0.3".parse().unwrap());
    f.config(config(VXLAN_IFINDEX));
    let to = |dst: &str| FrameBuilder::new(MAC_A, LXC_A).ipv6(pod_a6(), v6(dst)).udp(1, 2).build();
    let cases = [
        ("ipcache tunnel endpoint", "fd00:20::5", TC_ACT_REDIRECT),
        ("tunnel map, destination masked to /120", "fd00:30::5", TC_ACT_REDIRECT),
        ("the tunnel map's neighbour /120 has no node", "fd00:30::105", TC_ACT_OK),
        ("ipcache says skip the tunnel", "fd00:40::5", TC_ACT_OK),
        ("outside the cluster", "2001:db8::1", TC_ACT_OK),
    ];
    for (name, dst, want) in cases {
        let frame = to(dst);
        let (verdict, out) = f.dp.run(FROM_CONTAINER, &frame);
        assert_eq!(verdict, want, "{name}");
        assert_eq!(out, frame, "{name}: the inner packet is not rewritten");
    }
    assert!(f.dp.drops().is_empty(), "{:?}", f.dp.drops());
    // A tunnel endpoint but no tunnel device: a configuration error, never a silent pass.
    f.config(config(0));
    assert_eq!(f.dp.run(FROM_CONTAINER, &to("fd00:30::5")).0, TC_ACT_SHOT);
    assert_eq!(f.dp.drops(), vec![(drop_reason::NO_TUNNEL_ENDPOINT, 1)]);
}

#[test]
fn policy_applies_to_ipv6_with_icmpv6_as_protocol_58_and_leaves_ipv4_alone() {
    let f = Fixture::new("v6-policy");
    let pin = f.dp.bpffs.pin_dir();
    tables::set_policy_enforcement(&pin, EP_A, EP_F_EGRESS_ENFORCE).unwrap();
    // A may ping B over IPv4 (ICMP echo request, type 8) — nothing allows ICMPv6 yet.
    let allow = |proto, ty| {
        let key = PolicyKey::l4(EP_A, two_pods::ID_B, DIR_EGRESS, proto, ty, 16);
        tables::upsert_policy(&pin, &key, &PolicyEntry::ALLOW).unwrap();
    };
    allow(ICMP, 8);
    let ping4 = FrameBuilder::new(MAC_A, LXC_A)
        .ipv4(two_pods::A.parse().unwrap(), two_pods::B.parse().unwrap())
        .icmp_echo_request(1, 1)
        .build();
    let ping6 = FrameBuilder::new(MAC_A, LXC_A).ipv6(pod_a6(), pod_b6()).icmp_echo_request(1, 1).build();
    assert_eq!(f.dp.run(FROM_CONTAINER, &ping4).0, TC_ACT_REDIRECT, "IPv4 ping allowed");
    assert_eq!(f.dp.run(FROM_CONTAINER, &ping6).0, TC_ACT_SHOT, "IPv6 ping: no rule allows it");
    assert_eq!(f.dp.drops(), vec![(drop_reason::POLICY, 1)]);
    assert_eq!(f.dp.run(FROM_CONTAINER, &ping4).0, TC_ACT_REDIRECT, "IPv4 still passes after the IPv6 drop");

    // ICMPv6 echo request (type 128) as protocol 58.
    allow(ICMPV6, 128);
    assert_eq!(f.dp.run(FROM_CONTAINER, &ping6).0, TC_ACT_REDIRECT, "IPv6 ping allowed by the ICMPv6 rule");
    let udp6 = FrameBuilder::new(MAC_A, LXC_A).ipv6(pod_a6(), pod_b6()).udp(1, 53).build();
    assert_eq!(f.dp.run(FROM_CONTAINER, &udp6).0, TC_ACT_SHOT, "other IPv6 traffic still denied");
    assert_eq!(f.dp.drops(), vec![(drop_reason::POLICY, 2)]);
}

#[test]
fn native_routing_hands_ipv6_to_the_kernel_fib() {
    let f = Fixture::new("v6-native");
    // A tunnel-map row for the destination: native routing must ignore it.
    f.tunnel6(v6("fd00:20::"), 120, "192.168.0.2".parse().unwrap());
    f.config(DatapathConfig { router_ip6: router6().octets(), pod_cidr6_prefix_len: 120, ..Default::default() });
    // A node namespace whose FIB routes the peer's pod CIDR via the peer on eth0.
    let mut topo = integration::Topology::new("v6-native");
    let ns = topo.namespace("node").unwrap();
    let peer = topo.namespace("peer").unwrap();
    topo.veth((&ns, "eth0"), (&peer, "eth0")).unwrap();
    topo.address(&ns, "eth0", "fd00:70::1/64").unwrap();
    topo.address(&peer, "eth0", "fd00:70::2/64").unwrap();
    topo.sysctl(&ns, "net.ipv6.conf.all.forwarding", "1").unwrap();
    topo.route(&ns, &["fd00:20::/120", "via", "fd00:70::2"]).unwrap();
    let program = f.dp.datapath.program(FROM_CONTAINER).unwrap();
    let run = |frame: &[u8]| ns.run(|| run_tc(program, frame).expect("test_run")).unwrap();
    let to = |dst: &str| FrameBuilder::new(MAC_A, LXC_A).ipv6(pod_a6(), v6(dst)).udp(7, 9).build();

    // Route known, next hop's MAC unknown: bpf_redirect_neigh resolves it (NDP); we route (hop limit).
    let frame = to("fd00:20::5");
    let out = run(&frame);
    assert_eq!(out.retval, TC_ACT_REDIRECT, "via bpf_redirect_neigh");
    assert_eq!(out.data.len(), frame.len(), "no encapsulation");
    assert_eq!(out.data[14 + 7], 63, "hop limit - 1");
    assert_eq!(&out.data[14 + 24..14 + 40], &v6("fd00:20::5").octets());

    // Next hop's MAC known: the FIB result's MACs are written.
    let peer_mac = [0x02, 0, 0, 0, 0x70, 0x02];
    let neigh = ["-n", ns.name(), "neigh", "replace", "fd00:70::2", "lladdr", "02:00:00:00:70:02", "dev", "eth0"];
    beeline::datapath::netns::run_ip(&neigh).unwrap();
    let node_mac = topo.mac(&ns, "eth0").unwrap();
    let out = run(&to("fd00:20::5"));
    assert_eq!(out.retval, TC_ACT_REDIRECT, "via bpf_redirect");
    assert_eq!((&out.data[0..6], &out.data[6..12]), (&peer_mac[..], &node_mac[..]), "next hop MACs from the FIB");
    assert_eq!(out.data[14 + 7], 63);

    // What the FIB cannot forward goes to the stack untouched.
    let cases = [
        ("no route", to("2001:db8::1")),
        ("the node's own address", to("fd00:70::1")),
        ("hop limit 1", FrameBuilder::new(MAC_A, LXC_A).ipv6(pod_a6(), v6("fd00:20::5")).ttl(1).udp(7, 9).build()),
    ];
    for (name, frame) in cases {
        let out = run(&frame);
        assert_eq!((out.retval, &out.data), (TC_ACT_OK, &frame), "{name}");
    }
    assert!(f.dp.drops().is_empty(), "{:?}", f.dp.drops());
}

#[test]
fn ipv6_from_the_uplink_is_delivered_to_a_local_pod_after_its_ingress_policy() {
    let f = Fixture::new("v6-netdev");
    let pin = f.dp.bpffs.pin_dir();
    let from_peer = |src: &str| FrameBuilder::new([2, 0, 0, 0, 0, 9], [2, 0, 0, 0, 0, 1]).ipv6(v6(src), pod_b6());
    let frame = from_peer("fd00:20::5").udp(5353, 53).build();
    let (verdict, out) = f.dp.run(FROM_NETDEV, &frame);
    assert_eq!(verdict, TC_ACT_REDIRECT, "to pod B");
    assert_eq!((&out[0..6], &out[6..12]), (&POD_B_MAC[..], &LXC_B_MAC[..]));
    assert_eq!(out[14 + 7], 63, "hop limit - 1");

    // B enforces ingress; the sender's identity comes from the ipcache (its IPv6 row), else world.
    tables::set_policy_enforcement(&pin, two_pods::EP_B, EP_F_INGRESS_ENFORCE).unwrap();
    f.ipcache6(v6("fd00:20::"), 120, &RemoteEndpointInfo { sec_identity: 777, ..Default::default() });
    let key = PolicyKey::l4(two_pods::EP_B, 777, DIR_INGRESS, UDP, 53, 16);
    tables::upsert_policy(&pin, &key, &PolicyEntry::ALLOW).unwrap();
    assert_eq!(f.dp.run(FROM_NETDEV, &frame).0, TC_ACT_REDIRECT, "allowed from identity 777");
    assert_eq!(f.dp.run(FROM_NETDEV, &from_peer("2001:db8::1").udp(5353, 53).build()).0, TC_ACT_SHOT, "world");
    assert_eq!(f.dp.drops(), vec![(drop_reason::POLICY, 1)]);

    // Not for a local pod, or link-scope: the node's own traffic.
    let cases = [
        (
            "another address",
            FrameBuilder::new(MAC_A, LXC_A).ipv6(v6("fd00:20::5"), v6("fd00:10::99")).udp(1, 2).build(),
        ),
        ("link-local", FrameBuilder::new(MAC_A, LXC_A).ipv6(v6("fe80::1"), pod_b6()).udp(1, 2).build()),
    ];
    for (name, frame) in cases {
        assert_eq!(f.dp.run(FROM_NETDEV, &frame), (TC_ACT_OK, frame.clone()), "{name}");
    }
}

/// A ClusterIP `fd00:10:96::a` port 80/TCP whose only backend is pod B's port 8080 (rev-NAT 7),
/// or, with `backends: false`, a frontend without backends.
fn service6(f: &Fixture, backends: bool) {
    use beeline_common::lb::{
        Lb6Backend, Lb6BackendKey, Lb6Key, Lb6RevNatKey, Lb6ReverseNat, Lb6Service, LB_LOOKUP_SCOPE_EXT,
    };
    let key = |slot| Lb6Key {
        address: vip6().octets(),
        dport: 80u16.to_be(),
        backend_slot: slot,
        proto: 6,
        scope: LB_LOOKUP_SCOPE_EXT,
        pad: [0; 2],
    };
    let mut services: HashMap<_, Lb6Key, Lb6Service> =
        HashMap::try_from(Map::HashMap(f.map("beeline_lb6_services"))).unwrap();
    let count = u16::from(backends);
    services.insert(key(0), Lb6Service { count, rev_nat_index: 7, ..Default::default() }, 0).unwrap();
    if !backends {
        return;
    }
    services.insert(key(1), Lb6Service { backend_id: 1, rev_nat_index: 7, ..Default::default() }, 0).unwrap();
    let mut b: HashMap<_, Lb6BackendKey, Lb6Backend> =
        HashMap::try_from(Map::HashMap(f.map("beeline_lb6_backends"))).unwrap();
    let backend = Lb6Backend { address: pod_b6().octets(), port: 8080u16.to_be(), proto: 6, ..Default::default() };
    b.insert(Lb6BackendKey { backend_id: 1 }, backend, 0).unwrap();
    let mut r: HashMap<_, Lb6RevNatKey, Lb6ReverseNat> =
        HashMap::try_from(Map::HashMap(f.map("beeline_lb6_reverse_nat"))).unwrap();
    r.insert(Lb6RevNatKey { rev_nat_index: 7 }, Lb6ReverseNat { address: vip6().octets(), port: 80u16.to_be() }, 0)
        .unwrap();
}

fn vip6() -> Ipv6Addr {
    v6("fd00:10:96::a")
}

fn addr_at(frame: &[u8], offset: usize) -> Ipv6Addr {
    Ipv6Addr::from(<[u8; 16]>::try_from(&frame[offset..offset + 16]).unwrap())
}

fn ports(frame: &[u8]) -> (u16, u16) {
    let l4 = 14 + 40;
    (u16::from_be_bytes([frame[l4], frame[l4 + 1]]), u16::from_be_bytes([frame[l4 + 2], frame[l4 + 3]]))
}

#[test]
fn a_clusterip_is_translated_to_its_backend_and_the_reply_back_with_valid_checksums() {
    use beeline::datapath::testing::packet::{tcp_flags, verify_checksums};
    let f = Fixture::new("v6-lb");
    service6(&f, true);
    let request =
        |flags| FrameBuilder::new(MAC_A, LXC_A).ipv6(pod_a6(), vip6()).tcp(40000, 80, flags).payload(b"GET /").build();
    for flags in [tcp_flags::SYN, tcp_flags::ACK | tcp_flags::PSH] {
        let frame = request(flags);
        verify_checksums(&frame).expect("the test's own frame is valid");
        let (verdict, out) = f.dp.run(FROM_CONTAINER, &frame);
        assert_eq!(verdict, TC_ACT_REDIRECT, "to pod B");
        assert_eq!((addr_at(&out, 14 + 8), addr_at(&out, 14 + 24)), (pod_a6(), pod_b6()), "DNAT to the backend");
        assert_eq!(ports(&out), (40000, 8080));
        // The independent check: the TCP checksum over the new pseudo-header and segment.
        verify_checksums(&out).unwrap_or_else(|e| panic!("after DNAT: {e:?}"));
    }
    // B's answer, arriving from another node on the uplink, gets the frontend back as source.
    let reply = FrameBuilder::new([2, 0, 0, 0, 0, 9], [2, 0, 0, 0, 0, 1])
        .ipv6(pod_b6(), pod_a6())
        .tcp(8080, 40000, tcp_flags::SYN | tcp_flags::ACK)
        .build();
    let (verdict, out) = f.dp.run(FROM_NETDEV, &reply);
    assert_eq!(verdict, TC_ACT_REDIRECT, "to pod A");
    assert_eq!((addr_at(&out, 14 + 8), addr_at(&out, 14 + 24)), (vip6(), pod_a6()), "reverse NAT");
    assert_eq!(ports(&out), (80, 40000));
    verify_checksums(&out).unwrap_or_else(|e| panic!("after reverse NAT: {e:?}"));
    // Not a reply of a balanced connection (another client port): left alone.
    let other = FrameBuilder::new([2, 0, 0, 0, 0, 9], [2, 0, 0, 0, 0, 1])
        .ipv6(pod_b6(), pod_a6())
        .tcp(8080, 40001, tcp_flags::ACK)
        .build();
    let (_, out) = f.dp.run(FROM_NETDEV, &other);
    assert_eq!(addr_at(&out, 14 + 8), pod_b6());
    assert!(f.dp.drops().is_empty(), "{:?}", f.dp.drops());
}

#[test]
fn a_clusterip_without_backends_drops_with_no_service() {
    let f = Fixture::new("v6-lb-none");
    service6(&f, false);
    let frame = FrameBuilder::new(MAC_A, LXC_A).ipv6(pod_a6(), vip6()).tcp(40000, 80, 0x02).build();
    assert_eq!(f.dp.run(FROM_CONTAINER, &frame).0, TC_ACT_SHOT);
    assert_eq!(f.dp.drops(), vec![(drop_reason::NO_SERVICE, 1)]);
}
