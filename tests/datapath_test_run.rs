//! Layer 2: `from_container` under `BPF_PROG_TEST_RUN` — crafted frames in, verdict and bytes
//! out, map side effects checked. Root, no namespaces.

mod integration;

use std::net::{Ipv4Addr, Ipv6Addr};

use beeline::datapath::{
    loader::programs::FROM_CONTAINER,
    tables,
    testing::{
        packet::{tcp_flags, verify_checksums, FrameBuilder},
        test_run::run_tc,
    },
    Datapath,
};
use beeline_common::{
    datapath::{DatapathConfig, TUNNEL_VXLAN},
    endpoint::EndpointInfo,
};
use integration::{require_root, BpffsDir};

/// `TC_ACT_OK`: let the packet continue.
const TC_ACT_OK: u32 = 0;
/// Without a context, BPF_PROG_TEST_RUN runs tc programs on the namespace's loopback device.
const LOOPBACK_IFINDEX: u32 = 1;

const POD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

fn frames() -> Vec<(&'static str, Vec<u8>)> {
    let pod4: Ipv4Addr = "10.0.1.2".parse().unwrap();
    let svc4: Ipv4Addr = "10.96.0.10".parse().unwrap();
    let pod6: Ipv6Addr = "fd00::1:2".parse().unwrap();
    let svc6: Ipv6Addr = "fd00::96:10".parse().unwrap();
    vec![
        // From an address no endpoint has: not a gateway request the responder answers.
        ("arp", FrameBuilder::arp_request(POD_MAC, "10.0.1.99".parse().unwrap(), "10.0.1.1".parse().unwrap()).build()),
        ("udp4", FrameBuilder::new(POD_MAC, GW_MAC).ipv4(pod4, svc4).udp(40000, 53).payload(b"dns query").build()),
        ("tcp6", FrameBuilder::new(POD_MAC, GW_MAC).ipv6(pod6, svc6).tcp(40001, 80, tcp_flags::SYN).build()),
        (
            "icmp4",
            FrameBuilder::new(POD_MAC, GW_MAC).ipv4(pod4, svc4).icmp_echo_request(1, 1).payload(&[7; 56]).build(),
        ),
        ("icmp6", FrameBuilder::new(POD_MAC, GW_MAC).ipv6(pod6, svc6).icmp_echo_request(1, 1).build()),
    ]
}

#[test]
fn from_container_passes_every_frame_unchanged_and_counts_it() {
    require_root();
    let bpffs = BpffsDir::new("testrun");
    let datapath = Datapath::load(&bpffs.pin_dir()).expect("load the datapath");
    let program = datapath.program(FROM_CONTAINER).unwrap();
    assert!(datapath.endpoint_stats().unwrap().is_empty(), "fresh map must be empty");
    // The pod is the endpoint behind the test_run device (unknown sources are dropped), and the
    // node tunnels: destinations with no tunnel endpoint (a service VIP here) go to the stack.
    let pin = bpffs.pin_dir();
    let pod = EndpointInfo { ifindex: LOOPBACK_IFINDEX, ..Default::default() };
    tables::upsert_endpoint(&pin, "10.0.1.2".parse().unwrap(), &pod).unwrap();
    integration::upsert_endpoint6(&pin, "fd00::1:2".parse().unwrap(), &pod);
    let tunnel = DatapathConfig { tunnel_proto: TUNNEL_VXLAN, tunnel_ifindex: 77, ..Default::default() };
    tables::write_config(&pin, &tunnel).unwrap();

    let (mut packets, mut bytes) = (0u64, 0u64);
    for (name, frame) in frames() {
        verify_checksums(&frame).unwrap_or_else(|e| panic!("{name}: builder produced a bad frame: {e}"));
        let out = run_tc(program, &frame).unwrap_or_else(|e| panic!("{name}: test_run: {e}"));
        assert_eq!(out.retval, TC_ACT_OK, "{name}: verdict");
        assert_eq!(out.data, frame, "{name}: the program must not rewrite the packet");
        verify_checksums(&out.data).unwrap_or_else(|e| panic!("{name}: output checksum: {e}"));

        packets += 1;
        bytes += frame.len() as u64;
        let stats = datapath.endpoint_stats().unwrap();
        assert_eq!(stats.keys().copied().collect::<Vec<_>>(), vec![LOOPBACK_IFINDEX], "{name}: keyed by ifindex");
        let row = stats[&LOOPBACK_IFINDEX];
        assert_eq!((row.packets, row.bytes), (packets, bytes), "{name}: counters after {packets} frames");
    }
}

#[test]
fn a_second_load_reuses_the_pinned_map_and_its_contents() {
    require_root();
    let bpffs = BpffsDir::new("testrun-reuse");
    let frame = FrameBuilder::new(POD_MAC, GW_MAC)
        .ipv4("10.0.1.2".parse().unwrap(), "10.0.1.3".parse().unwrap())
        .udp(1, 2)
        .build();
    {
        let first = Datapath::load(&bpffs.pin_dir()).unwrap();
        run_tc(first.program(FROM_CONTAINER).unwrap(), &frame).unwrap();
        run_tc(first.program(FROM_CONTAINER).unwrap(), &frame).unwrap();
    } // the first instance is gone; only the pin holds the map now
    assert!(bpffs.pin_dir().join("beeline_ep_stats").exists(), "map pin must outlive the loader");

    let second = Datapath::load(&bpffs.pin_dir()).unwrap();
    assert_eq!(second.endpoint_stats().unwrap()[&LOOPBACK_IFINDEX].packets, 2, "contents survive a reload");
    run_tc(second.program(FROM_CONTAINER).unwrap(), &frame).unwrap();
    let row = second.endpoint_stats().unwrap()[&LOOPBACK_IFINDEX];
    assert_eq!((row.packets, row.bytes), (3, 3 * frame.len() as u64));
}
