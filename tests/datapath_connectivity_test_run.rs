//! Layer 2: the forwarding decisions of `from_container` and `from_overlay` under
//! `BPF_PROG_TEST_RUN` — ARP replies, local delivery (verdict, rewritten MACs, TTL, checksums),
//! tunnelling decisions and drops with their reason. Root, no namespaces.
//!
//! Without a context the kernel runs the program as if the packet arrived on the loopback device
//! (ifindex 1), so the sending endpoint is registered on ifindex 1. Redirect targets are never
//! dereferenced by test_run (only the verdict is returned), so they are arbitrary numbers.

mod integration;

use std::net::Ipv4Addr;

use beeline::datapath::{
    loader::programs::{FROM_CONTAINER, FROM_NETDEV, FROM_OVERLAY, TO_NETDEV},
    tables,
    testing::{
        packet::{parse, tcp_flags, verify_checksums, FrameBuilder, ParsedL3, ParsedL4},
        test_run::run_tc,
    },
};
use beeline_common::{
    datapath::{drop_reason, DatapathConfig, CONFIG_F_MASQUERADE, TUNNEL_NONE, TUNNEL_VXLAN},
    endpoint::{EndpointInfo, ENDPOINT_F_HOST},
    ipcache::{RemoteEndpointInfo, FLAG_SKIP_TUNNEL},
    nat::{NatEntry, NatTuple, NAT_DIR_INGRESS},
};
use integration::{LoadedDatapath, Topology};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
const LOOPBACK: u32 = 1;

const POD_A_MAC: [u8; 6] = [0x0a, 0, 0, 0, 0, 0x0a];
const LXC_A_MAC: [u8; 6] = [0x1a, 0, 0, 0, 0, 0x0a];
const POD_B_MAC: [u8; 6] = [0x0a, 0, 0, 0, 0, 0x0b];
const LXC_B_MAC: [u8; 6] = [0x1a, 0, 0, 0, 0, 0x0b];
const LXC_B_IFINDEX: u32 = 4242;
const VXLAN_IFINDEX: u32 = 77;
const IDENTITY_A: u32 = 51234;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn router() -> Ipv4Addr {
    ip("10.0.1.1")
}
fn pod_a() -> Ipv4Addr {
    ip("10.0.1.2")
}
fn pod_b() -> Ipv4Addr {
    ip("10.0.1.3")
}

struct Fixture {
    dp: LoadedDatapath,
}

impl std::ops::Deref for Fixture {
    type Target = LoadedDatapath;
    fn deref(&self) -> &LoadedDatapath {
        &self.dp
    }
}

impl Fixture {
    /// A loaded datapath with pod A (on loopback, the test_run ingress device) and pod B (local,
    /// behind ifindex 4242) registered.
    fn new(label: &str) -> Fixture {
        let f = Fixture { dp: LoadedDatapath::new(label) };
        f.endpoint(pod_a(), LOOPBACK, POD_A_MAC, LXC_A_MAC, IDENTITY_A, 0);
        f.endpoint(pod_b(), LXC_B_IFINDEX, POD_B_MAC, LXC_B_MAC, 40000, 0);
        f
    }

    fn endpoint(&self, addr: Ipv4Addr, ifindex: u32, mac: [u8; 6], node_mac: [u8; 6], identity: u32, flags: u32) {
        let info = EndpointInfo { ifindex, lxc_id: 100, flags, mac, node_mac, sec_id: identity, ..Default::default() };
        tables::upsert_endpoint(&self.bpffs.pin_dir(), addr.into(), &info).unwrap();
    }

    fn config(&self, config: DatapathConfig) {
        tables::write_config(&self.bpffs.pin_dir(), &config).unwrap();
    }
}

#[test]
fn arp_for_the_gateway_is_answered_with_the_host_veth_mac() {
    let f = Fixture::new("conn-arp");
    // Cilium answers for any address but the pod's own: the router IP, and an old gateway an
    // earlier agent may have configured.
    for target in [router(), ip("10.0.1.254")] {
        let request = FrameBuilder::arp_request(POD_A_MAC, pod_a(), target).build();
        let (verdict, out) = f.run(FROM_CONTAINER, &request);
        assert_eq!(verdict, TC_ACT_REDIRECT, "{target}: the reply goes back out of the same veth");
        let want = FrameBuilder::arp_reply(LXC_A_MAC, target, POD_A_MAC, pod_a()).build();
        assert_eq!(out, want, "{target}: reply bytes");
    }
    assert!(f.drops().is_empty());
}

#[test]
fn arp_that_is_not_a_gateway_request_from_this_veth_goes_to_the_stack() {
    let f = Fixture::new("conn-arp-pass");
    let cases = [
        ("own address (DAD)", FrameBuilder::arp_request(POD_A_MAC, pod_a(), pod_a()).build()),
        ("unknown sender", FrameBuilder::arp_request(POD_A_MAC, ip("10.0.1.99"), router()).build()),
        // Pod B lives behind another veth: a request claiming its address here is not answered.
        ("sender of another veth", FrameBuilder::arp_request(POD_A_MAC, pod_b(), router()).build()),
        ("a reply", FrameBuilder::arp_reply(POD_A_MAC, pod_a(), LXC_A_MAC, router()).build()),
        ("probe from 0.0.0.0", FrameBuilder::arp_request(POD_A_MAC, ip("0.0.0.0"), pod_a()).build()),
    ];
    for (name, frame) in cases {
        let (verdict, out) = f.run(FROM_CONTAINER, &frame);
        assert_eq!((verdict, &out), (TC_ACT_OK, &frame), "{name}");
    }
}

/// The bytes of `out` that may differ from `input` after local delivery: MACs, TTL, IP checksum.
fn assert_only_l2_and_ttl_changed(name: &str, input: &[u8], out: &[u8]) {
    assert_eq!(out.len(), input.len(), "{name}: length");
    for (at, (a, b)) in input.iter().zip(out).enumerate() {
        let allowed = at < 12 || at == 14 + 8 || at == 14 + 10 || at == 14 + 11;
        assert!(allowed || a == b, "{name}: byte {at} changed {a:#x} -> {b:#x}");
    }
}

#[test]
fn a_local_destination_is_redirected_with_rewritten_macs_and_valid_checksums() {
    let f = Fixture::new("conn-local");
    let frames = [
        ("tcp syn", FrameBuilder::new(POD_A_MAC, LXC_A_MAC).ipv4(pod_a(), pod_b()).tcp(40000, 80, tcp_flags::SYN)),
        ("udp", FrameBuilder::new(POD_A_MAC, LXC_A_MAC).ipv4(pod_a(), pod_b()).udp(5353, 53).payload(b"query")),
        (
            "icmp echo",
            FrameBuilder::new(POD_A_MAC, LXC_A_MAC).ipv4(pod_a(), pod_b()).icmp_echo_request(9, 1).payload(&[1; 56]),
        ),
    ];
    for (name, builder) in frames {
        let frame = builder.build();
        let (verdict, out) = f.run(FROM_CONTAINER, &frame);
        assert_eq!(verdict, TC_ACT_REDIRECT, "{name}");
        verify_checksums(&out).unwrap_or_else(|e| panic!("{name}: {e}"));
        let parsed = parse(&out).unwrap();
        assert_eq!((parsed.dst_mac, parsed.src_mac), (POD_B_MAC, LXC_B_MAC), "{name}: gateway -> pod B");
        assert!(matches!(parsed.l3, ParsedL3::Ipv4 { ttl: 63, .. }), "{name}: TTL decremented: {:?}", parsed.l3);
        assert_only_l2_and_ttl_changed(name, &frame, &out);
    }
    assert!(f.drops().is_empty());
}

#[test]
fn ttl_expiring_unknown_and_host_destinations_go_to_the_stack_unchanged() {
    let f = Fixture::new("conn-pass");
    f.endpoint(router(), 0, [0; 6], [0; 6], 1, ENDPOINT_F_HOST);
    let base = || FrameBuilder::new(POD_A_MAC, LXC_A_MAC);
    let cases = [
        ("ttl 1", base().ipv4(pod_a(), pod_b()).ttl(1).udp(1, 2).build()),
        ("outside the cluster", base().ipv4(pod_a(), ip("1.1.1.1")).udp(1, 53).build()),
        ("the node itself", base().ipv4(pod_a(), router()).tcp(1, 4240, tcp_flags::SYN).build()),
    ];
    for (name, frame) in cases {
        let (verdict, out) = f.run(FROM_CONTAINER, &frame);
        assert_eq!((verdict, &out), (TC_ACT_OK, &frame), "{name}");
    }
    assert!(f.drops().is_empty());
}

#[test]
fn spoofed_and_unregistered_sources_are_dropped_as_invalid_source_ip() {
    let f = Fixture::new("conn-spoof");
    let cases = [
        // Pod B's address arriving on pod A's veth.
        ("another endpoint's address", pod_b()),
        // An address no endpoint has (Cilium compiles the endpoint's own IP into its program and
        // drops anything else with the same reason).
        ("unregistered address", ip("10.0.1.77")),
        ("unspecified address", ip("0.0.0.0")),
    ];
    for (i, (name, src)) in cases.iter().enumerate() {
        let frame = FrameBuilder::new(POD_A_MAC, LXC_A_MAC).ipv4(*src, pod_a()).udp(1, 2).build();
        let (verdict, _) = f.run(FROM_CONTAINER, &frame);
        assert_eq!(verdict, TC_ACT_SHOT, "{name}");
        assert_eq!(f.drops(), vec![(drop_reason::INVALID_SIP, i as u64 + 1)], "{name}");
    }
    assert_eq!(drop_reason::name(drop_reason::INVALID_SIP), "Invalid source ip");

    // `beeline bpf drops list` reads the same counters from the pin, with Cilium's names.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_beeline"))
        .args(["bpf", "drops", "list", "-o", "json", "--pin-dir"])
        .arg(f.bpffs.pin_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["reason"], 132, "{rows}");
    assert_eq!(rows[0]["description"], "Invalid source ip");
    assert_eq!(rows[0]["packets"], 3);
}

#[test]
fn malformed_frames_are_dropped_and_counted_as_invalid() {
    let f = Fixture::new("conn-malformed");
    let good = FrameBuilder::new(POD_A_MAC, LXC_A_MAC).ipv4(pod_a(), pod_b()).udp(1, 2).payload(b"abcd").build();
    let arp = FrameBuilder::arp_request(POD_A_MAC, pod_a(), router()).build();
    let mutate = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut frame = good.clone();
        f(&mut frame);
        frame
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // (BPF_PROG_TEST_RUN itself refuses IPv4 frames shorter than an IPv4 header with EINVAL,
        // so truncation is exercised through ARP; both go through the same bounded load.)
        ("version 6 in an IPv4 frame", mutate(&|f| f[14] = 0x65)),
        ("IHL below 5", mutate(&|f| f[14] = 0x44)),
        ("total length beyond the frame", mutate(&|f| f[16..18].copy_from_slice(&200u16.to_be_bytes()))),
        ("total length below the header", mutate(&|f| f[16..18].copy_from_slice(&10u16.to_be_bytes()))),
        ("arp cut short", arp[..14 + 20].to_vec()),
    ];
    for (i, (name, frame)) in cases.iter().enumerate() {
        let out = run_tc(f.datapath.program(FROM_CONTAINER).unwrap(), frame);
        let verdict = out.unwrap_or_else(|e| panic!("{name}: {e:?}")).retval;
        assert_eq!(verdict, TC_ACT_SHOT, "{name}");
        assert_eq!(f.drops(), vec![(drop_reason::INVALID, i as u64 + 1)], "{name}");
    }
    // Ethernet padding after a complete IPv4 packet is fine.
    let mut padded = good.clone();
    padded.extend_from_slice(&[0; 8]);
    assert_eq!(f.run(FROM_CONTAINER, &padded).0, TC_ACT_REDIRECT);
}

fn vxlan_config(tunnel_ifindex: u32) -> DatapathConfig {
    DatapathConfig {
        router_ip: tables::be(router()),
        node_ip: tables::be(ip("192.168.0.1")),
        tunnel_ifindex,
        tunnel_proto: TUNNEL_VXLAN,
        pod_cidr_prefix_len: 24,
        ..Default::default()
    }
}

#[test]
fn remote_destinations_are_tunnelled_by_ipcache_or_tunnel_map() {
    let f = Fixture::new("conn-remote");
    let pin = f.bpffs.pin_dir();
    let remote = |tunnel_endpoint: &str, flags| RemoteEndpointInfo {
        sec_identity: 777,
        tunnel_endpoint: tables::be(ip(tunnel_endpoint)),
        flags,
        ..Default::default()
    };
    tables::upsert_ipcache(&pin, "10.0.2.0/24".parse().unwrap(), &remote("192.168.0.2", 0)).unwrap();
    tables::upsert_ipcache(&pin, "10.0.4.0/24".parse().unwrap(), &remote("192.168.0.4", FLAG_SKIP_TUNNEL)).unwrap();
    tables::upsert_ipcache(
        &pin,
        "0.0.0.0/0".parse().unwrap(),
        &RemoteEndpointInfo { sec_identity: 2, ..Default::default() },
    )
    .unwrap();
    tables::upsert_tunnel(&pin, "10.0.3.0/24".parse().unwrap(), ip("192.168.0.3")).unwrap();
    let to = |dst: &str| FrameBuilder::new(POD_A_MAC, LXC_A_MAC).ipv4(pod_a(), ip(dst)).udp(1, 2).build();

    f.config(vxlan_config(VXLAN_IFINDEX));
    let cases = [
        ("ipcache tunnel endpoint", "10.0.2.5", TC_ACT_REDIRECT),
        ("tunnel map fallback", "10.0.3.5", TC_ACT_REDIRECT),
        ("ipcache says skip the tunnel", "10.0.4.5", TC_ACT_OK),
        ("world (no tunnel endpoint)", "8.8.8.8", TC_ACT_OK),
    ];
    for (name, dst, want) in cases {
        let frame = to(dst);
        let (verdict, out) = f.run(FROM_CONTAINER, &frame);
        assert_eq!(verdict, want, "{name}");
        assert_eq!(out, frame, "{name}: the inner packet is not rewritten");
    }
    assert!(f.drops().is_empty());

    // Tunnel mode without a tunnel device is a configuration error, never a silent pass.
    f.config(vxlan_config(0));
    assert_eq!(f.run(FROM_CONTAINER, &to("10.0.2.5")).0, TC_ACT_SHOT);
    assert_eq!(f.drops(), vec![(drop_reason::NO_TUNNEL_ENDPOINT, 1)]);
}

#[test]
fn from_overlay_leaves_packets_without_tunnel_metadata_to_the_stack() {
    let f = Fixture::new("conn-overlay");
    let frame = FrameBuilder::new(POD_A_MAC, LXC_A_MAC).ipv4(ip("10.0.2.5"), pod_b()).udp(1, 2).build();
    let (verdict, out) = f.run(FROM_OVERLAY, &frame);
    assert_eq!((verdict, out), (TC_ACT_OK, frame));
}

#[test]
fn the_map_manager_and_the_object_agree_on_the_shape_of_the_shared_maps() {
    use beeline::datapath::manager::{kernel::pinned_spec, maps, MapDef, MapSpec};
    let f = Fixture::new("conn-shapes");
    // If these differed, a manager starting after the loader would replace the programs' map.
    let pin = f.bpffs.pin_dir();
    assert_eq!(
        pinned_spec(&pin.join(maps::Endpoints::NAME), maps::Endpoints::NAME).unwrap(),
        MapSpec::of::<maps::Endpoints>()
    );
    assert_eq!(
        pinned_spec(&pin.join(maps::TunnelMap::NAME), maps::TunnelMap::NAME).unwrap(),
        MapSpec::of::<maps::TunnelMap>()
    );
}

// ----- native routing -------------------------------------------------------------------------

/// A namespace where the FIB is ours: `eth0` 192.168.70.1/24 towards a peer, remote pod CIDR
/// 10.0.2.0/24 via the peer (autoDirectNodeRoutes style), forwarding on, no default route.
struct RoutedNs {
    topo: Topology,
    ns: integration::NetNs,
}

fn routed_ns(label: &str) -> RoutedNs {
    let mut topo = Topology::new(label);
    let ns = topo.namespace("node").unwrap();
    let peer = topo.namespace("peer").unwrap();
    topo.veth((&ns, "eth0"), (&peer, "eth0")).unwrap();
    topo.address(&ns, "eth0", "192.168.70.1/24").unwrap();
    topo.address(&peer, "eth0", "192.168.70.2/24").unwrap();
    topo.sysctl(&ns, "net.ipv4.ip_forward", "1").unwrap();
    let route =
        beeline::datapath::devices::direct_route("10.0.2.0/24".parse::<ipnet::IpNet>().unwrap(), ip("192.168.70.2"));
    let route: Vec<&str> = route.iter().map(String::as_str).collect();
    topo.route(&ns, &route).unwrap();
    RoutedNs { topo, ns }
}

#[test]
fn native_routing_hands_non_local_destinations_to_the_kernel_fib() {
    let f = Fixture::new("conn-native");
    f.config(DatapathConfig { tunnel_proto: TUNNEL_NONE, ..vxlan_config(0) });
    // The tunnel map and ipcache know a tunnel endpoint: native routing must ignore it.
    tables::upsert_tunnel(&f.bpffs.pin_dir(), "10.0.2.0/24".parse().unwrap(), ip("192.168.0.2")).unwrap();
    let r = routed_ns("conn-native");
    let program = f.datapath.program(FROM_CONTAINER).unwrap();
    let run = |frame: &[u8]| r.ns.run(|| run_tc(program, frame).expect("test_run")).unwrap();
    let to = |dst: &str| FrameBuilder::new(POD_A_MAC, LXC_A_MAC).ipv4(pod_a(), ip(dst)).udp(7, 9).build();

    // Route known, next hop's MAC unknown: bpf_redirect_neigh resolves it; we only route (TTL).
    let frame = to("10.0.2.5");
    let out = run(&frame);
    assert_eq!(out.retval, TC_ACT_REDIRECT, "via bpf_redirect_neigh");
    verify_checksums(&out.data).unwrap();
    let parsed = parse(&out.data).unwrap();
    assert!(matches!(parsed.l3, ParsedL3::Ipv4 { ttl: 63, dst, .. } if dst == ip("10.0.2.5")), "{:?}", parsed.l3);
    assert_eq!(out.data.len(), frame.len(), "no encapsulation");

    // Next hop's MAC known: the FIB result's MACs are written and the packet redirected.
    let peer_mac = [0x02, 0, 0, 0, 0x70, 0x02];
    let neigh = ["-n", r.ns.name(), "neigh", "replace", "192.168.70.2", "lladdr", "02:00:00:00:70:02", "dev", "eth0"];
    beeline::datapath::netns::run_ip(&neigh).unwrap();
    let node_mac = r.topo.mac(&r.ns, "eth0").unwrap();
    let out = run(&to("10.0.2.5"));
    assert_eq!(out.retval, TC_ACT_REDIRECT, "via bpf_redirect");
    verify_checksums(&out.data).unwrap();
    let parsed = parse(&out.data).unwrap();
    assert_eq!((parsed.dst_mac, parsed.src_mac), (peer_mac, node_mac), "next hop MACs from the FIB");
    assert!(matches!(parsed.l3, ParsedL3::Ipv4 { ttl: 63, .. }));

    // What the FIB cannot forward goes to the stack untouched: no route (no default route
    // here), the node's own address, an expiring TTL.
    let cases = [
        ("no route", to("8.8.8.8")),
        ("the node's own address", to("192.168.70.1")),
        ("ttl 1", FrameBuilder::new(POD_A_MAC, LXC_A_MAC).ipv4(pod_a(), ip("10.0.2.5")).ttl(1).udp(7, 9).build()),
    ];
    for (name, frame) in cases {
        let out = run(&frame);
        assert_eq!((out.retval, &out.data), (TC_ACT_OK, &frame), "{name}");
    }
    // A local destination still goes straight to its pod.
    let local = FrameBuilder::new(POD_A_MAC, LXC_A_MAC).ipv4(pod_a(), pod_b()).udp(7, 9).build();
    assert_eq!(run(&local).retval, TC_ACT_REDIRECT);
    assert!(f.drops().is_empty());
}

// ----- masquerading -----------------------------------------------------------------------------

fn node_ip() -> Ipv4Addr {
    ip("192.168.0.1")
}

fn masq_config(port_min: u16, port_max: u16) -> DatapathConfig {
    DatapathConfig {
        tunnel_proto: TUNNEL_NONE,
        flags: CONFIG_F_MASQUERADE,
        native_cidr: tables::be(ip("10.0.0.0")),
        native_cidr_prefix_len: 16,
        nat_port_min: port_min,
        nat_port_max: port_max,
        ..vxlan_config(0)
    }
}

/// (source, destination, L4 source port or echo id, L4 destination port or echo id).
fn endpoints_of(frame: &[u8]) -> (Ipv4Addr, Ipv4Addr, u16, u16) {
    let parsed = parse(frame).unwrap();
    let ParsedL3::Ipv4 { src, dst, .. } = parsed.l3 else { panic!("not IPv4: {parsed:?}") };
    let (sport, dport) = match parsed.l4 {
        Some(ParsedL4::Tcp { sport, dport, .. }) | Some(ParsedL4::Udp { sport, dport, .. }) => (sport, dport),
        Some(ParsedL4::Icmp { rest, .. }) => {
            let id = u16::from_be_bytes([rest[0], rest[1]]);
            (id, id)
        }
        other => panic!("unexpected L4 {other:?}"),
    };
    (src, dst, sport, dport)
}

#[test]
fn pod_egress_to_the_world_is_masqueraded_and_replies_are_translated_back() {
    let f = Fixture::new("conn-masq");
    f.config(masq_config(50000, 50009));
    let outside = ip("1.1.1.1");
    let from_pod = move || FrameBuilder::new(LXC_A_MAC, [0x02, 0, 0, 0, 0, 0xfe]).ipv4(pod_a(), outside);
    let to_node = move || FrameBuilder::new([0x02, 0, 0, 0, 0, 0xfe], LXC_A_MAC).ipv4(outside, node_ip());
    type Case = (&'static str, FrameBuilder, Box<dyn Fn(u16) -> FrameBuilder>);
    let cases: Vec<Case> = vec![
        (
            "tcp",
            from_pod().tcp(40000, 443, tcp_flags::SYN).payload(b"hello"),
            Box::new(move |p| to_node().tcp(443, p, tcp_flags::SYN | tcp_flags::ACK).payload(b"world")),
        ),
        (
            "udp",
            from_pod().udp(40001, 53).payload(b"query"),
            Box::new(move |p| to_node().udp(53, p).payload(b"answer")),
        ),
        (
            "icmp echo",
            from_pod().icmp_echo_request(4242, 1).payload(&[7; 32]),
            Box::new(move |p| to_node().icmp_echo_reply(p, 1).payload(&[7; 32])),
        ),
    ];
    for (name, request, reply) in cases {
        let frame = request.build();
        let (_, _, src_port, _) = endpoints_of(&frame);
        let (verdict, out) = f.run(TO_NETDEV, &frame);
        assert_eq!(verdict, TC_ACT_OK, "{name}: continues out of the uplink");
        verify_checksums(&out).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (src, dst, port, _) = endpoints_of(&out);
        assert_eq!((src, dst), (node_ip(), outside), "{name}: leaves with the node IP");
        assert!((50000..=50009).contains(&port), "{name}: allocated port {port} in the configured range");
        assert_eq!(out.len(), frame.len(), "{name}: length");
        // The same flow keeps its mapping.
        assert_eq!(f.run(TO_NETDEV, &frame).1, out, "{name}: second packet, same translation");

        // The reply is translated back and delivered to the pod.
        let back = reply(port).build();
        let (verdict, delivered) = f.run(FROM_NETDEV, &back);
        assert_eq!(verdict, TC_ACT_REDIRECT, "{name}: reply delivered to the pod");
        verify_checksums(&delivered).unwrap_or_else(|e| panic!("{name} reply: {e}"));
        let (src, dst, _, dport) = endpoints_of(&delivered);
        assert_eq!((src, dst, dport), (outside, pod_a(), src_port), "{name}: reply reaches the original source");
        let parsed = parse(&delivered).unwrap();
        assert_eq!((parsed.dst_mac, parsed.src_mac), (POD_A_MAC, LXC_A_MAC), "{name}: gateway -> pod MACs");
    }
    // Both directions of three flows.
    let rows = tables::list_snat(&f.bpffs.pin_dir()).unwrap();
    assert_eq!(rows.len(), 6, "{rows:?}");
    assert!(f.drops().is_empty());
}

#[test]
fn a_source_port_inside_the_range_is_kept_and_udp_without_checksum_stays_without() {
    let f = Fixture::new("conn-masq-keep");
    f.config(masq_config(0, 0));
    let mut frame =
        FrameBuilder::new(LXC_A_MAC, LXC_B_MAC).ipv4(pod_a(), ip("1.1.1.1")).udp(40000, 53).payload(b"q").build();
    // UDP checksum 0 = none (IPv4): must not become a wrong non-zero value.
    frame[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
    let (verdict, out) = f.run(TO_NETDEV, &frame);
    assert_eq!(verdict, TC_ACT_OK);
    let (src, _, port, _) = endpoints_of(&out);
    assert_eq!((src, port), (node_ip(), 40000), "default range 32768-65535 keeps the port");
    assert_eq!(&out[14 + 20 + 6..14 + 20 + 8], &[0, 0], "UDP checksum stays 'none'");
    assert!(matches!(parse(&out).unwrap().l3, ParsedL3::Ipv4 { .. }));
    verify_ipv4_header_checksum(&out);
}

fn verify_ipv4_header_checksum(frame: &[u8]) {
    let sum = beeline::datapath::testing::packet::internet_checksum(&[&frame[14..34]]);
    assert_eq!(sum, 0, "IPv4 header checksum");
}

#[test]
fn traffic_inside_the_cluster_or_not_from_pods_is_not_masqueraded() {
    let f = Fixture::new("conn-masq-skip");
    let pin = f.bpffs.pin_dir();
    let remote_node = RemoteEndpointInfo { sec_identity: 6, ..Default::default() };
    tables::upsert_ipcache(&pin, "172.16.0.5/32".parse().unwrap(), &remote_node).unwrap();
    let world = RemoteEndpointInfo { sec_identity: 2, ..Default::default() };
    tables::upsert_ipcache(&pin, "0.0.0.0/0".parse().unwrap(), &world).unwrap();
    f.config(masq_config(0, 0));
    let base = || FrameBuilder::new(LXC_A_MAC, LXC_B_MAC);
    let cases = [
        ("native-routing CIDR", base().ipv4(pod_a(), ip("10.0.9.9")).tcp(1000, 80, tcp_flags::SYN).build()),
        ("a cluster identity in the ipcache", base().ipv4(pod_a(), ip("172.16.0.5")).udp(1000, 80).build()),
        ("the node's own traffic", base().ipv4(node_ip(), ip("1.1.1.1")).udp(1000, 80).build()),
        ("an unknown source", base().ipv4(ip("10.9.9.9"), ip("1.1.1.1")).udp(1000, 80).build()),
        ("not IPv4", base().ipv6("fd00::1".parse().unwrap(), "2001:db8::1".parse().unwrap()).udp(1, 2).build()),
    ];
    for (name, frame) in &cases {
        let (verdict, out) = f.run(TO_NETDEV, frame);
        assert_eq!((verdict, &out), (TC_ACT_OK, frame), "{name}");
    }
    // Masquerading off: even world traffic leaves as it is.
    f.config(DatapathConfig { flags: 0, ..masq_config(0, 0) });
    let frame = base().ipv4(pod_a(), ip("1.1.1.1")).udp(1000, 80).build();
    assert_eq!(f.run(TO_NETDEV, &frame), (TC_ACT_OK, frame));
    // A reply nobody asked for is not ours to translate (the node's own traffic).
    f.config(masq_config(0, 0));
    let stray = base().ipv4(ip("1.1.1.1"), node_ip()).udp(80, 45678).build();
    assert_eq!(f.run(FROM_NETDEV, &stray), (TC_ACT_OK, stray));
    assert!(tables::list_snat(&pin).unwrap().is_empty());
    assert!(f.drops().is_empty());
}

#[test]
fn no_free_port_and_untranslatable_protocols_are_dropped_with_ciliums_reasons() {
    let f = Fixture::new("conn-masq-full");
    f.config(masq_config(50000, 50000));
    let pin = f.bpffs.pin_dir();
    let flow = |sport| {
        FrameBuilder::new(LXC_A_MAC, LXC_B_MAC).ipv4(pod_a(), ip("1.1.1.1")).tcp(sport, 80, tcp_flags::SYN).build()
    };
    assert_eq!(f.run(TO_NETDEV, &flow(1111)).0, TC_ACT_OK, "the only port is free");
    // A second flow to the same remote endpoint would need the same (and only) port.
    assert_eq!(f.run(TO_NETDEV, &flow(2222)).0, TC_ACT_SHOT);
    assert_eq!(f.drops(), vec![(drop_reason::NAT_NO_MAPPING, 1)]);
    assert_eq!(drop_reason::name(drop_reason::NAT_NO_MAPPING), "No mapping for NAT masquerade");
    // The failed attempt left no half mapping behind.
    assert_eq!(tables::list_snat(&pin).unwrap().len(), 2);

    // A port taken by someone else's reverse row is skipped, not stolen.
    f.config(masq_config(50000, 50001));
    let taken = NatTuple {
        daddr: tables::be(node_ip()),
        saddr: tables::be(ip("1.1.1.1")),
        dport: 50001u16.to_be(),
        sport: 80u16.to_be(),
        nexthdr: 6,
        flags: NAT_DIR_INGRESS,
        pad: 0,
    };
    let owner = NatEntry { to_addr: tables::be(ip("10.0.1.200")), to_port: 9u16.to_be(), ..Default::default() };
    tables::insert_snat(&pin, &taken, &owner).unwrap();
    assert_eq!(f.run(TO_NETDEV, &flow(3333)).0, TC_ACT_SHOT, "50000 and 50001 both taken");

    // ICMP errors and other protocols cannot be translated.
    let icmp_error =
        FrameBuilder::new(LXC_A_MAC, LXC_B_MAC).ipv4(pod_a(), ip("1.1.1.1")).icmp(3, 3, [0; 4]).payload(&[0; 28]);
    assert_eq!(f.run(TO_NETDEV, &icmp_error.build()).0, TC_ACT_SHOT);
    assert_eq!(
        f.drops(),
        vec![(drop_reason::NAT_NO_MAPPING, 2), (drop_reason::NAT_UNSUPP_PROTO, 1)],
        "reasons counted separately"
    );
}
