//! Policy verdicts of `from_container` under `BPF_PROG_TEST_RUN`: the egress policy of the sending
//! endpoint and the ingress policy of a local destination, from the policy trie and the
//! per-endpoint enforcement flags. Root, no namespaces.
//!
//! Pod A sends (it sits on loopback, the device test_run runs on); pod B is local behind an
//! arbitrary ifindex. A delivered packet is `TC_ACT_REDIRECT`, a packet to the world that passes is
//! `TC_ACT_OK` (to the stack), a dropped one `TC_ACT_SHOT` with its reason counted.
//! (`from_overlay`'s ingress check needs tunnel metadata, which test_run cannot attach.)
//! `from_netdev` (the uplink's delivery to local pods in native routing) is run on loopback too.

mod integration;

use std::net::Ipv4Addr;

use beeline::datapath::{
    loader::programs::{FROM_CONTAINER, FROM_NETDEV},
    tables,
    testing::{
        packet::{tcp_flags, FrameBuilder},
        test_run::run_tc,
    },
};
use beeline_common::{
    datapath::drop_reason,
    endpoint::EndpointInfo,
    ipcache::RemoteEndpointInfo,
    policy::{PolicyEntry, PolicyKey, DIR_EGRESS, DIR_INGRESS, EP_F_EGRESS_ENFORCE, EP_F_INGRESS_ENFORCE},
};
use integration::{
    two_pods::{self, EP_A, EP_B, ID_A, ID_B, LOOPBACK, LXC_A, MAC_A},
    LoadedDatapath,
};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const ID_OTHER: u32 = 777;
const ID_WORLD: u32 = 2;
const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
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
    fn new(label: &str) -> Fixture {
        let dp = LoadedDatapath::new(label);
        two_pods::register(&dp);
        let pin = dp.bpffs.pin_dir();
        let world = RemoteEndpointInfo { sec_identity: ID_WORLD, ..Default::default() };
        tables::upsert_ipcache(&pin, "0.0.0.0/0".parse().unwrap(), &world).unwrap();
        let other = RemoteEndpointInfo { sec_identity: ID_OTHER, ..Default::default() };
        tables::upsert_ipcache(&pin, "192.168.7.0/24".parse().unwrap(), &other).unwrap();
        Fixture { dp }
    }

    fn enforce(&self, endpoint: u32, flags: u32) {
        tables::set_policy_enforcement(&self.bpffs.pin_dir(), endpoint, flags).unwrap();
    }

    fn allow(&self, key: PolicyKey) {
        tables::upsert_policy(&self.bpffs.pin_dir(), &key, &PolicyEntry::ALLOW).unwrap();
    }

    fn deny(&self, key: PolicyKey) {
        tables::upsert_policy(&self.bpffs.pin_dir(), &key, &PolicyEntry::DENY).unwrap();
    }

    fn verdict(&self, frame: &[u8]) -> u32 {
        self.dp.run(FROM_CONTAINER, frame).0
    }
}

fn from_a(dst: &str) -> FrameBuilder {
    FrameBuilder::new(MAC_A, LXC_A).ipv4(ip("10.0.1.2"), ip(dst))
}

fn tcp_to(dst: &str, port: u16) -> Vec<u8> {
    from_a(dst).tcp(40000, port, tcp_flags::SYN).build()
}

fn udp_to(dst: &str, port: u16) -> Vec<u8> {
    from_a(dst).udp(40000, port).build()
}

const B: &str = "10.0.1.3";

/// Runs `(name, frame, expected verdict)` cases and checks the drop counters grew by exactly the
/// expected reasons.
fn check(f: &Fixture, cases: &[(&str, Vec<u8>, u32, Option<u32>)]) {
    let mut expected: std::collections::BTreeMap<u32, u64> = f.drops().into_iter().collect();
    for (name, frame, want, reason) in cases {
        assert_eq!(f.verdict(frame), *want, "{name}");
        if let Some(r) = reason {
            *expected.entry(*r).or_default() += 1;
        }
        assert_eq!(f.drops(), expected.iter().map(|(r, n)| (*r, *n)).collect::<Vec<_>>(), "{name}: drop counters");
    }
}

#[test]
fn without_enforcement_everything_passes_even_with_entries() {
    let f = Fixture::new("pol-none");
    // Entries alone do nothing: the direction must be enforced (Cilium's default-allow endpoints).
    f.deny(PolicyKey::l3(EP_B, ID_A, DIR_INGRESS));
    f.deny(PolicyKey::l3(EP_A, 0, DIR_EGRESS));
    f.enforce(EP_B, EP_F_EGRESS_ENFORCE);
    check(
        &f,
        &[
            ("to local B", tcp_to(B, 80), TC_ACT_REDIRECT, None),
            ("to the world", udp_to("8.8.8.8", 53), TC_ACT_OK, None),
        ],
    );
}

#[test]
fn ingress_enforcement_with_no_entries_is_a_default_deny() {
    let f = Fixture::new("pol-default-deny");
    f.enforce(EP_B, EP_F_INGRESS_ENFORCE);
    check(
        &f,
        &[
            ("tcp", tcp_to(B, 80), TC_ACT_SHOT, Some(drop_reason::POLICY)),
            ("udp", udp_to(B, 53), TC_ACT_SHOT, Some(drop_reason::POLICY)),
            // A's egress is not enforced, so the world is reachable.
            ("world", udp_to("8.8.8.8", 53), TC_ACT_OK, None),
        ],
    );
}

#[test]
fn l3_allow_admits_every_port_of_that_identity_only() {
    let f = Fixture::new("pol-l3");
    f.enforce(EP_B, EP_F_INGRESS_ENFORCE);
    f.allow(PolicyKey::l3(EP_B, ID_A, DIR_INGRESS));
    // Another endpoint's entry for the same peer must not leak into B's decisions.
    f.allow(PolicyKey::l3(EP_A, ID_OTHER, DIR_INGRESS));
    check(
        &f,
        &[
            ("tcp 80", tcp_to(B, 80), TC_ACT_REDIRECT, None),
            ("udp 53", udp_to(B, 53), TC_ACT_REDIRECT, None),
            ("icmp", from_a(B).icmp_echo_request(1, 1).build(), TC_ACT_REDIRECT, None),
        ],
    );
    // Replacing the peer's entry takes effect at once.
    tables::remove_policy(&f.bpffs.pin_dir(), &PolicyKey::l3(EP_B, ID_A, DIR_INGRESS)).unwrap();
    f.allow(PolicyKey::l3(EP_B, ID_OTHER, DIR_INGRESS));
    check(&f, &[("peer no longer allowed", tcp_to(B, 80), TC_ACT_SHOT, Some(drop_reason::POLICY))]);
}

#[test]
fn l4_allow_matches_protocol_and_exact_or_masked_ports() {
    let f = Fixture::new("pol-l4");
    f.enforce(EP_B, EP_F_INGRESS_ENFORCE);
    f.allow(PolicyKey::l4(EP_B, ID_A, DIR_INGRESS, TCP, 80, 16));
    // 8080-8081 as one /15 prefix.
    f.allow(PolicyKey::l4(EP_B, ID_A, DIR_INGRESS, TCP, 8080, 15));
    // Every UDP port.
    f.allow(PolicyKey::l4(EP_B, ID_A, DIR_INGRESS, UDP, 0, 0));
    // ICMP echo request (type 8) only.
    f.allow(PolicyKey::l4(EP_B, ID_A, DIR_INGRESS, ICMP, 8, 16));
    let denied = Some(drop_reason::POLICY);
    check(
        &f,
        &[
            ("tcp 80", tcp_to(B, 80), TC_ACT_REDIRECT, None),
            ("tcp 81", tcp_to(B, 81), TC_ACT_SHOT, denied),
            ("tcp 8080", tcp_to(B, 8080), TC_ACT_REDIRECT, None),
            ("tcp 8081", tcp_to(B, 8081), TC_ACT_REDIRECT, None),
            ("tcp 8079", tcp_to(B, 8079), TC_ACT_SHOT, denied),
            ("tcp 8082", tcp_to(B, 8082), TC_ACT_SHOT, denied),
            ("udp 80", udp_to(B, 80), TC_ACT_REDIRECT, None),
            ("udp 65535", udp_to(B, 65535), TC_ACT_REDIRECT, None),
            ("icmp echo request", from_a(B).icmp_echo_request(1, 1).build(), TC_ACT_REDIRECT, None),
            ("icmp timestamp", from_a(B).icmp(13, 0, [0; 4]).build(), TC_ACT_SHOT, denied),
        ],
    );
}

#[test]
fn identity_zero_is_a_wildcard_peer() {
    let f = Fixture::new("pol-wildcard");
    f.enforce(EP_B, EP_F_INGRESS_ENFORCE);
    f.allow(PolicyKey::l4(EP_B, 0, DIR_INGRESS, TCP, 443, 16));
    check(
        &f,
        &[
            ("any peer on 443", tcp_to(B, 443), TC_ACT_REDIRECT, None),
            ("any peer on 80", tcp_to(B, 80), TC_ACT_SHOT, Some(drop_reason::POLICY)),
        ],
    );
}

#[test]
fn deny_wins_over_allow_from_either_lookup() {
    let f = Fixture::new("pol-deny");
    f.enforce(EP_B, EP_F_INGRESS_ENFORCE);
    // Allow everything from everyone, deny A on TCP 80: the specific deny wins over the wildcard allow.
    f.allow(PolicyKey::l3(EP_B, 0, DIR_INGRESS));
    f.deny(PolicyKey::l4(EP_B, ID_A, DIR_INGRESS, TCP, 80, 16));
    // Allow A on UDP, deny UDP 53 for everyone: the wildcard deny wins over the specific allow.
    f.allow(PolicyKey::l4(EP_B, ID_A, DIR_INGRESS, UDP, 0, 0));
    f.deny(PolicyKey::l4(EP_B, 0, DIR_INGRESS, UDP, 53, 16));
    let deny = Some(drop_reason::POLICY_DENY);
    check(
        &f,
        &[
            ("tcp 80 denied", tcp_to(B, 80), TC_ACT_SHOT, deny),
            ("tcp 443 allowed by the wildcard", tcp_to(B, 443), TC_ACT_REDIRECT, None),
            ("udp 53 denied for everyone", udp_to(B, 53), TC_ACT_SHOT, deny),
            ("udp 54 allowed", udp_to(B, 54), TC_ACT_REDIRECT, None),
        ],
    );
}

#[test]
fn egress_is_checked_against_the_destination_identity_from_the_ipcache() {
    let f = Fixture::new("pol-egress");
    f.enforce(EP_A, EP_F_EGRESS_ENFORCE);
    f.allow(PolicyKey::l4(EP_A, ID_B, DIR_EGRESS, TCP, 80, 16));
    f.allow(PolicyKey::l4(EP_A, ID_OTHER, DIR_EGRESS, UDP, 53, 16));
    // An ingress entry for A's peer must not open A's egress.
    f.allow(PolicyKey::l3(EP_A, ID_WORLD, DIR_INGRESS));
    let denied = Some(drop_reason::POLICY);
    check(
        &f,
        &[
            ("to local B on 80", tcp_to(B, 80), TC_ACT_REDIRECT, None),
            ("to local B on 81", tcp_to(B, 81), TC_ACT_SHOT, denied),
            ("to the /24 identity on 53", udp_to("192.168.7.9", 53), TC_ACT_OK, None),
            ("to the /24 identity on 54", udp_to("192.168.7.9", 54), TC_ACT_SHOT, denied),
            ("to the world", udp_to("8.8.8.8", 53), TC_ACT_SHOT, denied),
        ],
    );
    // Egress and ingress are separate: B enforcing ingress now also needs an ingress allow for A.
    f.enforce(EP_B, EP_F_INGRESS_ENFORCE);
    check(&f, &[("B's ingress denies", tcp_to(B, 80), TC_ACT_SHOT, denied)]);
    f.allow(PolicyKey::l3(EP_B, ID_A, DIR_INGRESS));
    check(&f, &[("both allow", tcp_to(B, 80), TC_ACT_REDIRECT, None)]);
}

#[test]
fn the_map_manager_and_the_object_agree_on_the_shape_of_the_policy_maps() {
    use beeline::datapath::manager::{kernel::pinned_spec, maps, MapDef, MapSpec};
    let f = Fixture::new("pol-shapes");
    let pin = f.bpffs.pin_dir();
    assert_eq!(
        pinned_spec(&pin.join(maps::PolicyMap::NAME), maps::PolicyMap::NAME).unwrap(),
        MapSpec::of::<maps::PolicyMap>()
    );
    assert_eq!(
        pinned_spec(&pin.join(maps::PolicyEndpoints::NAME), maps::PolicyEndpoints::NAME).unwrap(),
        MapSpec::of::<maps::PolicyEndpoints>()
    );
}

const C: &str = "10.0.1.4";
const ID_C: u32 = 40001;

fn from_c(dst: &str) -> FrameBuilder {
    FrameBuilder::new(MAC_A, LXC_A).ipv4(ip(C), ip(dst))
}

fn from_outside(src: &str) -> FrameBuilder {
    FrameBuilder::new([0x02, 0, 0, 0, 0, 0x99], [0x02, 0, 0, 0, 0, 0x98]).ipv4(ip(src), ip("10.0.1.2"))
}

#[test]
fn replies_of_allowed_connections_pass_and_new_inbound_flows_stay_denied() {
    let f = Fixture::new("pol-ct");
    // C sits on loopback too, so it can send through from_container under test_run.
    let c =
        EndpointInfo { ifindex: LOOPBACK, lxc_id: 33, mac: MAC_A, node_mac: LXC_A, sec_id: ID_C, ..Default::default() };
    tables::upsert_endpoint(&f.bpffs.pin_dir(), ip(C).into(), &c).unwrap();
    // A: egress allows TCP 80 and echo requests to C, UDP 53 to the /24; ingress is default-deny.
    f.enforce(EP_A, EP_F_EGRESS_ENFORCE | EP_F_INGRESS_ENFORCE);
    f.allow(PolicyKey::l4(EP_A, ID_C, DIR_EGRESS, TCP, 80, 16));
    f.allow(PolicyKey::l4(EP_A, ID_C, DIR_EGRESS, ICMP, 8, 16));
    f.allow(PolicyKey::l4(EP_A, ID_OTHER, DIR_EGRESS, UDP, 53, 16));
    let denied = Some(drop_reason::POLICY);
    let syn_ack = tcp_flags::SYN | tcp_flags::ACK;
    check(
        &f,
        &[
            ("A opens TCP 80 to C", tcp_to(C, 80), TC_ACT_REDIRECT, None),
            ("C's SYN-ACK is a reply", from_c("10.0.1.2").tcp(80, 40000, syn_ack).build(), TC_ACT_REDIRECT, None),
            ("A's ACK is established", from_a(C).tcp(40000, 80, tcp_flags::ACK).build(), TC_ACT_REDIRECT, None),
            ("C's data is a reply", from_c("10.0.1.2").tcp(80, 40000, tcp_flags::ACK).build(), TC_ACT_REDIRECT, None),
            ("C opening a flow to A", from_c("10.0.1.2").tcp(5555, 22, tcp_flags::SYN).build(), TC_ACT_SHOT, denied),
            ("C from 80 to another port of A", from_c("10.0.1.2").tcp(80, 40001, syn_ack).build(), TC_ACT_SHOT, denied),
            ("A's egress to C:81 is denied", tcp_to(C, 81), TC_ACT_SHOT, denied),
            ("so C:81 has no reply to give", from_c("10.0.1.2").tcp(81, 40000, syn_ack).build(), TC_ACT_SHOT, denied),
            ("A pings C", from_a(C).icmp_echo_request(7, 1).build(), TC_ACT_REDIRECT, None),
            ("C's echo reply", from_c("10.0.1.2").icmp_echo_reply(7, 1).build(), TC_ACT_REDIRECT, None),
            ("an echo reply for another ping", from_c("10.0.1.2").icmp_echo_reply(8, 1).build(), TC_ACT_SHOT, denied),
            ("an echo request from C", from_c("10.0.1.2").icmp_echo_request(7, 1).build(), TC_ACT_SHOT, denied),
        ],
    );
    // The connection's entry is in the node's one conntrack table, next to the LB's.
    let ct = beeline::datapath::lb_tables::list_ct(&f.bpffs.pin_dir()).unwrap();
    let a_to_c = ct.iter().filter(|(t, _)| t.saddr == tables::be(ip("10.0.1.2")) && t.daddr == tables::be(ip(C)));
    assert_eq!(a_to_c.count(), 2, "the TCP connection and the ping: {ct:?}");

    // Through the uplink (native routing delivery): the source identity comes from the ipcache.
    let run_netdev = |frame: Vec<u8>| run_tc(f.datapath.program(FROM_NETDEV).unwrap(), &frame).unwrap().retval;
    assert_eq!(f.verdict(&udp_to("192.168.7.9", 53)), TC_ACT_OK, "A's query leaves");
    assert_eq!(run_netdev(from_outside("192.168.7.9").udp(53, 40000).build()), TC_ACT_REDIRECT, "its answer");
    let before = f.drops();
    assert_eq!(run_netdev(from_outside("192.168.7.9").udp(5353, 53).build()), TC_ACT_SHOT, "a new flow in");
    assert_eq!(run_netdev(from_outside("8.8.8.8").udp(53, 40000).build()), TC_ACT_SHOT, "not the server asked");
    f.allow(PolicyKey::l4(EP_A, ID_OTHER, DIR_INGRESS, UDP, 53, 16));
    assert_eq!(run_netdev(from_outside("192.168.7.9").udp(5353, 53).build()), TC_ACT_REDIRECT, "the /24 now may");
    assert_eq!(run_netdev(from_outside("8.8.8.8").udp(5353, 53).build()), TC_ACT_SHOT, "the world still may not");
    let policy_drops = |d: &[(u32, u64)]| d.iter().find(|(r, _)| *r == drop_reason::POLICY).map_or(0, |(_, n)| *n);
    assert_eq!(policy_drops(&f.drops()), policy_drops(&before) + 3);
}

#[test]
fn a_policy_change_cuts_established_connections_but_replies_need_no_allow() {
    let f = Fixture::new("pol-ct-change");
    f.enforce(EP_B, EP_F_INGRESS_ENFORCE);
    f.allow(PolicyKey::l4(EP_B, ID_A, DIR_INGRESS, TCP, 80, 16));
    check(&f, &[("A opens B:80", tcp_to(B, 80), TC_ACT_REDIRECT, None)]);
    // Cilium checks policy on established packets of the original direction too.
    tables::remove_policy(&f.bpffs.pin_dir(), &PolicyKey::l4(EP_B, ID_A, DIR_INGRESS, TCP, 80, 16)).unwrap();
    let est = from_a(B).tcp(40000, 80, tcp_flags::ACK).build();
    check(&f, &[("established, no longer allowed", est, TC_ACT_SHOT, Some(drop_reason::POLICY))]);
}
