//! IPv6 connection tracking (Cilium's `cilium_ct6_global`): the same entries, lifetimes and closing
//! rules as [`crate::conntrack`] (whose entry helpers serve both: Cilium's `ct_entry` is shared),
//! keyed by [`Ct6Tuple`]. Service translation ([`crate::lb6`]) and policy share the table, as for
//! IPv4.

use aya_ebpf::{bindings::__sk_buff, macros::map, maps::LruHashMap, programs::TcContext};
use beeline_common::lb::{Ct6Entry, Ct6Tuple, TUPLE_F_OUT};

use crate::{
    conntrack::{self, Dir},
    parse::{ETH_HLEN, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, IPV6_DADDR_OFF, IPV6_HLEN, IPV6_SADDR_OFF},
};

/// Shape matches the IPv4 table (and `src/datapath/lb_tables.rs`, which reads the pin).
#[map(name = "beeline_ct6_global")]
pub static CT6: LruHashMap<Ct6Tuple, Ct6Entry> = LruHashMap::with_max_entries(65536, 0);

const ICMP6_ECHO_REQUEST: u8 = 128;
const ICMP6_ECHO_REPLY: u8 = 129;
/// Offset of the IPv6 next-header field from the start of the frame.
const IPV6_NEXT_HEADER_OFF: usize = ETH_HLEN + 6;

/// The live entry of `tuple`, if any (expired entries count as absent).
#[inline(always)]
pub fn lookup(tuple: &Ct6Tuple, now: u32) -> Option<*mut Ct6Entry> {
    let entry = CT6.get_ptr_mut(tuple)?;
    // SAFETY: pointer from a successful lookup, valid for this program run.
    if unsafe { (*entry).lifetime } < now {
        return None;
    }
    Some(entry)
}

/// Creates (or overwrites) the entry of `tuple` and accounts the packet that created it.
#[inline(always)]
pub fn create(
    tuple: &Ct6Tuple,
    backend_id: u32,
    rev_nat_index: u16,
    proto: u8,
    tcp_flags: u8,
    len: u32,
    now: u32,
) -> Option<*mut Ct6Entry> {
    let entry = Ct6Entry { backend_id, rev_nat_index, ..Default::default() };
    // A full LRU evicts; an insert error only means the flow is balanced again next packet.
    CT6.insert(tuple, &entry, 0).ok()?;
    let ptr = CT6.get_ptr_mut(tuple)?;
    conntrack::update(ptr, Dir::Original, proto, tcp_flags, len, now);
    Some(ptr)
}

/// Fills `t` with the tuple of a TCP, UDP or ICMPv6 echo packet in its direction of travel, or
/// with `reverse` in the other side's (the echo identifier stands in for the client's port);
/// returns the TCP flags. Read field by field from the packet, with no header copy on the stack.
/// Extension headers are not walked.
#[inline(always)]
fn packet_tuple(ctx: &TcContext, reverse: bool, t: &mut Ct6Tuple) -> Option<u8> {
    let l4 = ETH_HLEN + IPV6_HLEN;
    let next_header = ctx.load::<u8>(IPV6_NEXT_HEADER_OFF).ok()?;
    let (sport, dport, tcp_flags) = match next_header {
        IPPROTO_TCP | IPPROTO_UDP => {
            let ports = ctx.load::<[u8; 4]>(l4).ok()?;
            let flags = if next_header == IPPROTO_TCP { ctx.load::<u8>(l4 + 13).ok()? } else { 0 };
            (u16::from_ne_bytes([ports[0], ports[1]]), u16::from_ne_bytes([ports[2], ports[3]]), flags)
        }
        IPPROTO_ICMPV6 => {
            let icmp_type = ctx.load::<u8>(l4).ok()?;
            let id = ctx.load::<u16>(l4 + 4).ok()?;
            match icmp_type {
                ICMP6_ECHO_REQUEST => (id, 0, 0),
                ICMP6_ECHO_REPLY => (0, id, 0),
                _ => return None,
            }
        }
        _ => return None,
    };
    let (s_off, d_off) = if reverse { (IPV6_DADDR_OFF, IPV6_SADDR_OFF) } else { (IPV6_SADDR_OFF, IPV6_DADDR_OFF) };
    t.saddr = ctx.load::<[u8; 16]>(s_off).ok()?;
    t.daddr = ctx.load::<[u8; 16]>(d_off).ok()?;
    (t.sport, t.dport) = if reverse { (dport, sport) } else { (sport, dport) };
    t.nexthdr = next_header;
    t.flags = TUPLE_F_OUT;
    t.pad = 0;
    Some(tcp_flags)
}

/// The packet, as it is now, answers a tracked connection (call it before any translation): such
/// packets skip policy in both directions, as for IPv4 ([`crate::conntrack::is_reply`]).
#[inline(always)]
pub fn is_reply(ctx: &TcContext) -> bool {
    reply_check(ctx.skb.skb) != 0
}

/// Records a connection whose opening packet (as it is now: after service translation, so the
/// entry names the backend) passed every policy check.
#[inline(always)]
pub fn track_allowed(ctx: &TcContext) {
    track(ctx.skb.skb);
}

/// In a frame of its own, reading the header from the packet: the IPv6 paths' stack is nearly
/// spent, and a header passed in would have to be a copy on the caller's frame.
#[inline(never)]
fn reply_check(skb: *mut __sk_buff) -> u32 {
    let ctx = TcContext::new(skb);
    let mut t = Ct6Tuple::default();
    // The other side's tuple.
    let Some(tcp_flags) = packet_tuple(&ctx, true, &mut t) else {
        return 0;
    };
    let now = conntrack::now_secs();
    let Some(entry) = lookup(&t, now) else {
        return 0;
    };
    refresh_own(entry, Dir::Reply, t.nexthdr, tcp_flags, ctx.len(), now);
    1
}

#[inline(never)]
fn track(skb: *mut __sk_buff) {
    let ctx = TcContext::new(skb);
    let mut t = Ct6Tuple::default();
    let Some(tcp_flags) = packet_tuple(&ctx, false, &mut t) else {
        return;
    };
    let (proto, len, now) = (t.nexthdr, ctx.len(), conntrack::now_secs());
    match lookup(&t, now) {
        Some(entry) if !conntrack::is_reopened(entry, proto, tcp_flags) => {
            refresh_own(entry, Dir::Original, proto, tcp_flags, len, now)
        }
        // The LB creates (and reopens) its own entries before policy runs.
        _ => {
            let _ = create(&t, 0, 0, proto, tcp_flags, len, now);
        }
    }
}

/// Refreshes a policy-owned entry; the LB accounts the entries it created itself.
#[inline(always)]
fn refresh_own(entry: *mut Ct6Entry, dir: Dir, proto: u8, tcp_flags: u8, len: u32, now: u32) {
    // SAFETY: the caller passes a pointer from a successful lookup.
    if unsafe { (*entry).rev_nat_index } == 0 {
        conntrack::update(entry, dir, proto, tcp_flags, len, now);
    }
}
