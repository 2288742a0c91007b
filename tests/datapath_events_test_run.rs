//! Flow events of the datapath under `BPF_PROG_TEST_RUN`, read back from the pinned
//! `beeline_events` ring buffer: trace events with the aggregation of Cilium's "medium" level (the
//! default: no receive points, a flow's first packets only) and the other `monitor-aggregation`
//! levels and `bpf-events-*-enabled` switches, drop events with their reason, and policy verdicts with their match
//! type. Root, no namespaces (pod A sits on loopback, where test_run runs; pod B is local behind
//! an arbitrary ifindex).

mod integration;

use std::net::Ipv4Addr;

use beeline::datapath::{
    events,
    loader::programs::{FROM_CONTAINER, FROM_NETDEV},
    tables,
    testing::packet::{tcp_flags, FrameBuilder},
};
use beeline::observe::decode::{decode, DatapathEvent, Endpoint, EventKind};
use beeline_common::{
    datapath::{
        drop_reason, monitor_flags, DatapathConfig, MONITOR_AGGREGATION_LOW, MONITOR_AGGREGATION_MAXIMUM,
        MONITOR_AGGREGATION_MEDIUM, MONITOR_AGGREGATION_NONE,
    },
    events::{metric_dir, point, policy_match},
    policy::{PolicyEntry, PolicyKey, DIR_INGRESS, EP_F_INGRESS_ENFORCE},
};
use integration::{
    two_pods::{self, EP_B, ID_A, ID_B, LOOPBACK, LXC_A, MAC_A},
    LoadedDatapath,
};

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

struct Fixture {
    dp: LoadedDatapath,
    ring: aya::maps::RingBuf<aya::maps::MapData>,
}

impl Fixture {
    fn new(label: &str) -> Fixture {
        let dp = LoadedDatapath::new(label);
        two_pods::register(&dp);
        let ring = events::open_ring(&dp.bpffs.pin_dir()).expect("open the events ring");
        Fixture { dp, ring }
    }

    /// Runs `frame` through `from_container` and returns the events it produced.
    fn run(&mut self, frame: &[u8]) -> Vec<DatapathEvent> {
        self.dp.run(FROM_CONTAINER, frame);
        events::drain(&mut self.ring).iter().map(|b| decode(b).expect("decodable event")).collect()
    }
}

fn tcp_a_to_b(sport: u16, flags: u8) -> Vec<u8> {
    FrameBuilder::new(MAC_A, LXC_A).ipv4(ip("10.0.1.2"), ip("10.0.1.3")).tcp(sport, 80, flags).build()
}

fn kinds(events: &[DatapathEvent]) -> Vec<EventKind> {
    events.iter().map(|e| e.kind).collect()
}

const FROM_EP: EventKind = EventKind::Trace { point: point::FROM_ENDPOINT };
const TO_EP: EventKind = EventKind::Trace { point: point::TO_ENDPOINT };

#[test]
fn traces_report_a_flows_first_packet_and_new_tcp_flags_only() {
    let mut f = Fixture::new("ev-trace");
    let syn = f.run(&tcp_a_to_b(40000, tcp_flags::SYN));
    // Medium hides the receive point (from-endpoint), as Cilium's TRACE_AGGREGATE_RX does.
    assert_eq!(kinds(&syn), [TO_EP]);
    let first = syn[0];
    assert_eq!(first.src, Endpoint { ip: ip("10.0.1.2"), port: 40000 });
    assert_eq!(first.dst, Endpoint { ip: ip("10.0.1.3"), port: 80 });
    assert_eq!((first.protocol, first.tcp_flags, first.ifindex), (6, tcp_flags::SYN, LOOPBACK));
    assert_eq!(first.dst_identity, ID_B, "the destination's identity at to-endpoint");
    assert!(first.ktime_ns > 0);
    // The same flow again: a retransmitted SYN and plain ACKs are aggregated away …
    assert_eq!(kinds(&f.run(&tcp_a_to_b(40000, tcp_flags::SYN))), []);
    assert_eq!(kinds(&f.run(&tcp_a_to_b(40000, tcp_flags::ACK))), []);
    assert_eq!(kinds(&f.run(&tcp_a_to_b(40000, tcp_flags::ACK | tcp_flags::PSH))), []);
    // … a FIN is new on this flow and reported, a second FIN is not.
    let fin = f.run(&tcp_a_to_b(40000, tcp_flags::FIN | tcp_flags::ACK));
    assert_eq!(kinds(&fin), [TO_EP]);
    assert_eq!(fin[0].tcp_flags, tcp_flags::FIN | tcp_flags::ACK);
    assert_eq!(kinds(&f.run(&tcp_a_to_b(40000, tcp_flags::FIN | tcp_flags::ACK))), []);
    // Another source port is another flow.
    assert_eq!(kinds(&f.run(&tcp_a_to_b(40001, tcp_flags::ACK))), [TO_EP]);
    assert_eq!(events::read_lost(&f.dp.bpffs.pin_dir()).unwrap(), 0);
}

#[test]
fn monitor_aggregation_levels_and_event_switches_decide_what_is_written() {
    let mut f = Fixture::new("ev-levels");
    let pin = f.dp.bpffs.pin_dir();
    let set = |flags: u32| tables::write_config(&pin, &DatapathConfig { flags, ..Default::default() }).unwrap();
    // none: every packet, receive points included, with the source's identity at from-endpoint.
    set(monitor_flags(MONITOR_AGGREGATION_NONE, true, true, true));
    for _ in 0..3 {
        let evs = f.run(&tcp_a_to_b(41000, tcp_flags::ACK));
        assert_eq!(kinds(&evs), [FROM_EP, TO_EP]);
        assert_eq!((evs[0].src_identity, evs[1].dst_identity), (ID_A, ID_B));
    }
    // The uplink's receive point, at none only: a packet from outside to the node itself.
    let from_outside = FrameBuilder::new(MAC_A, LXC_A).ipv4(ip("192.168.0.9"), ip("192.168.0.1")).udp(9, 9).build();
    f.dp.run(FROM_NETDEV, &from_outside);
    let evs: Vec<DatapathEvent> =
        events::drain(&mut f.ring).iter().map(|b| decode(b).expect("decodable event")).collect();
    assert_eq!(kinds(&evs), [EventKind::Trace { point: point::FROM_NETWORK }]);
    assert_eq!(evs[0].src.ip, ip("192.168.0.9"));
    // low: every packet, no receive points.
    set(monitor_flags(MONITOR_AGGREGATION_LOW, true, true, true));
    for _ in 0..3 {
        assert_eq!(kinds(&f.run(&tcp_a_to_b(41000, tcp_flags::ACK))), [TO_EP]);
    }
    f.dp.run(FROM_NETDEV, &from_outside);
    assert!(events::drain(&mut f.ring).is_empty(), "from-network is hidden above none");
    // maximum aggregates like medium: a new flow once, then nothing.
    set(monitor_flags(MONITOR_AGGREGATION_MAXIMUM, true, true, true));
    assert_eq!(kinds(&f.run(&tcp_a_to_b(41001, tcp_flags::ACK))), [TO_EP]);
    assert_eq!(kinds(&f.run(&tcp_a_to_b(41001, tcp_flags::ACK))), []);
    // Traces off: nothing for forwarded packets, drops still reported.
    set(monitor_flags(MONITOR_AGGREGATION_NONE, false, true, true));
    assert_eq!(kinds(&f.run(&tcp_a_to_b(41002, tcp_flags::SYN))), []);
    let spoofed = FrameBuilder::new(MAC_A, LXC_A).ipv4(ip("10.0.1.99"), ip("10.0.1.3")).tcp(1, 80, tcp_flags::ACK);
    assert_eq!(kinds(&f.run(&spoofed.build())), [EventKind::Drop { reason: drop_reason::INVALID_SIP as u16 }]);
    // Drop events off: the drop is not reported, but it is still counted and still a drop.
    set(monitor_flags(MONITOR_AGGREGATION_MEDIUM, true, false, true));
    let before = invalid_sip_drops(&f);
    assert_eq!(kinds(&f.run(&spoofed.build())), []);
    assert_eq!(invalid_sip_drops(&f), before + 1);
    // Policy verdicts off: a denial is dropped and the drop reported, without a verdict.
    set(monitor_flags(MONITOR_AGGREGATION_MEDIUM, true, true, false));
    tables::set_policy_enforcement(&pin, EP_B, EP_F_INGRESS_ENFORCE).unwrap();
    assert_eq!(
        kinds(&f.run(&tcp_a_to_b(41003, tcp_flags::SYN))),
        [EventKind::Drop { reason: drop_reason::POLICY as u16 }]
    );
}

fn invalid_sip_drops(f: &Fixture) -> u64 {
    f.dp.drops().into_iter().find(|(r, _)| *r == drop_reason::INVALID_SIP).map_or(0, |(_, n)| n)
}

/// Forwarded packets counted in `beeline_metrics`: (ingress, egress) packets and ingress bytes.
fn forwards(f: &Fixture) -> (u64, u64, u64) {
    let rows = events::read_forwards(&f.dp.bpffs.pin_dir()).expect("read beeline_metrics");
    let get = |dir| rows.iter().find(|(d, _)| *d == dir).map(|(_, s)| *s).unwrap_or_default();
    let (ingress, egress) = (get(metric_dir::INGRESS), get(metric_dir::EGRESS));
    (ingress.packets, egress.packets, ingress.bytes)
}

#[test]
fn every_delivered_packet_is_counted_as_forwarded_even_when_its_event_is_aggregated_away() {
    let mut f = Fixture::new("ev-fwd");
    assert_eq!(forwards(&f), (0, 0, 0));
    let frame = tcp_a_to_b(40100, tcp_flags::ACK);
    let mut reported = 0;
    for _ in 0..5 {
        reported += f.run(&frame).iter().filter(|e| e.kind == TO_EP).count();
    }
    assert_eq!(reported, 1, "the trace event is aggregated");
    // Delivered to pod B five times: five ingress forwards of the frame's length, none egress.
    assert_eq!(forwards(&f), (5, 0, 5 * frame.len() as u64));
    // A dropped packet (spoofed source) is not a forward.
    let spoofed = FrameBuilder::new(MAC_A, LXC_A).ipv4(ip("10.0.1.99"), ip("10.0.1.3")).tcp(1, 80, tcp_flags::ACK);
    f.run(&spoofed.build());
    assert_eq!(forwards(&f), (5, 0, 5 * frame.len() as u64));
}

#[test]
fn drops_are_always_reported_with_their_reason() {
    let mut f = Fixture::new("ev-drop");
    // A source that is not the endpoint behind this interface: spoofed.
    let spoofed = FrameBuilder::new(MAC_A, LXC_A).ipv4(ip("10.0.1.99"), ip("10.0.1.3")).tcp(1, 80, tcp_flags::ACK);
    for _ in 0..3 {
        let events = f.run(&spoofed.build());
        assert_eq!(kinds(&events), [EventKind::Drop { reason: drop_reason::INVALID_SIP as u16 }]);
        assert_eq!(events[0].src, Endpoint { ip: ip("10.0.1.99"), port: 1 });
    }
    // An IPv4 header length below 20 bytes: invalid, reported without a tuple.
    let mut bad = tcp_a_to_b(1, tcp_flags::SYN);
    bad[14] = 0x44;
    let events = f.run(&bad);
    assert_eq!(kinds(&events), [EventKind::Drop { reason: drop_reason::INVALID as u16 }]);
    assert_eq!(events[0].src.ip, Ipv4Addr::UNSPECIFIED);
}

#[test]
fn policy_verdicts_carry_direction_verdict_and_match_type() {
    let mut f = Fixture::new("ev-policy");
    let pin = f.dp.bpffs.pin_dir();
    tables::set_policy_enforcement(&pin, EP_B, EP_F_INGRESS_ENFORCE).unwrap();
    let denied = EventKind::PolicyVerdict { egress: false, allowed: false, match_type: policy_match::NONE };
    let drop = EventKind::Drop { reason: drop_reason::POLICY as u16 };
    // Default deny: a verdict and a drop, for every packet (denials are never aggregated).
    let events = f.run(&tcp_a_to_b(40000, tcp_flags::SYN));
    assert_eq!(kinds(&events), [denied, drop]);
    assert_eq!((events[0].src_identity, events[0].dst_identity), (ID_A, ID_B));
    // The retransmission: denials are never aggregated.
    assert_eq!(kinds(&f.run(&tcp_a_to_b(40000, tcp_flags::SYN))), [denied, drop]);
    // An L4 allow for A: allowed, L3-L4, then delivered; reported once per flow.
    tables::upsert_policy(&pin, &PolicyKey::l4(EP_B, ID_A, DIR_INGRESS, 6, 80, 16), &PolicyEntry::ALLOW).unwrap();
    let allowed_l3_l4 = EventKind::PolicyVerdict { egress: false, allowed: true, match_type: policy_match::L3_L4 };
    assert_eq!(kinds(&f.run(&tcp_a_to_b(40002, tcp_flags::SYN))), [allowed_l3_l4, TO_EP]);
    assert_eq!(kinds(&f.run(&tcp_a_to_b(40002, tcp_flags::ACK))), []);
    // An L3 allow for A, a new flow: L3-Only.
    tables::upsert_policy(&pin, &PolicyKey::l3(EP_B, ID_A, DIR_INGRESS), &PolicyEntry::ALLOW).unwrap();
    let l3 = EventKind::PolicyVerdict { egress: false, allowed: true, match_type: policy_match::L3_ONLY };
    let frame = FrameBuilder::new(MAC_A, LXC_A).ipv4(ip("10.0.1.2"), ip("10.0.1.3")).udp(5000, 53).build();
    assert_eq!(kinds(&f.run(&frame)), [l3, TO_EP]);
}
