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
    loader::programs::{FROM_CONTAINER, FROM_OVERLAY},
    tables,
    testing::{
        packet::{parse, tcp_flags, verify_checksums, FrameBuilder, ParsedL3},
        test_run::run_tc,
    },
    Datapath,
};
use beeline_common::{
    datapath::{drop_reason, DatapathConfig, TUNNEL_NONE, TUNNEL_VXLAN},
    endpoint::{EndpointInfo, ENDPOINT_F_HOST},
    ipcache::{RemoteEndpointInfo, FLAG_SKIP_TUNNEL},
};
use integration::{require_root, BpffsDir};

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
    bpffs: BpffsDir,
    datapath: Datapath,
}

impl Fixture {
    /// A loaded datapath with pod A (on loopback, the test_run ingress device) and pod B (local,
    /// behind ifindex 4242) registered.
    fn new(label: &str) -> Fixture {
        require_root();
        let bpffs = BpffsDir::new(label);
        let datapath = Datapath::load(&bpffs.pin_dir()).expect("load the datapath");
        let f = Fixture { bpffs, datapath };
        f.endpoint(pod_a(), LOOPBACK, POD_A_MAC, LXC_A_MAC, IDENTITY_A, 0);
        f.endpoint(pod_b(), LXC_B_IFINDEX, POD_B_MAC, LXC_B_MAC, 40000, 0);
        f
    }

    fn endpoint(&self, addr: Ipv4Addr, ifindex: u32, mac: [u8; 6], node_mac: [u8; 6], identity: u32, flags: u32) {
        let info = EndpointInfo { ifindex, lxc_id: 100, flags, mac, node_mac, sec_id: identity, ..Default::default() };
        tables::upsert_endpoint(&self.bpffs.pin_dir(), addr, &info).unwrap();
    }

    fn config(&self, config: DatapathConfig) {
        tables::write_config(&self.bpffs.pin_dir(), &config).unwrap();
    }

    fn run(&self, program: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        let out = run_tc(self.datapath.program(program).unwrap(), frame).expect("test_run");
        (out.retval, out.data)
    }

    fn drops(&self) -> Vec<(u32, u64)> {
        tables::read_drops(&self.bpffs.pin_dir()).unwrap().into_iter().map(|(r, s)| (r, s.packets)).collect()
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
        ("unregistered source", base().ipv4(ip("10.0.1.77"), pod_b()).udp(1, 2).build()),
        ("ipv6", base().ipv6("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap()).udp(1, 2).build()),
    ];
    for (name, frame) in cases {
        let (verdict, out) = f.run(FROM_CONTAINER, &frame);
        assert_eq!((verdict, &out), (TC_ACT_OK, &frame), "{name}");
    }
    assert!(f.drops().is_empty());
}

#[test]
fn a_spoofed_source_is_dropped_with_its_reason() {
    let f = Fixture::new("conn-spoof");
    // Pod B's address arriving on pod A's veth.
    let frame = FrameBuilder::new(POD_A_MAC, LXC_A_MAC).ipv4(pod_b(), pod_a()).udp(1, 2).build();
    let (verdict, _) = f.run(FROM_CONTAINER, &frame);
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(f.drops(), vec![(drop_reason::INVALID_SIP, 1)]);
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
        flags: 0,
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

    // Native routing: nothing is tunnelled.
    f.config(DatapathConfig { tunnel_proto: TUNNEL_NONE, ..vxlan_config(0) });
    for dst in ["10.0.2.5", "10.0.3.5"] {
        assert_eq!(f.run(FROM_CONTAINER, &to(dst)).0, TC_ACT_OK, "native: {dst}");
    }

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
