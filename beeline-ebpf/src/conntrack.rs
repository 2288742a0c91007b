//! IPv4 connection tracking for the load balancer and for policy (after Cilium's
//! `lib/conntrack.h`, reduced to what service translation and stateful policy need): an LRU map of [`Ct4Tuple`] → [`Ct4Entry`], lifetimes per
//! protocol and TCP state, and closing flags from FIN/RST.
//!
//! Entries expire by their `lifetime` (monotonic seconds): an expired entry counts as absent and is
//! overwritten by the next packet of that tuple, and the LRU evicts the oldest under pressure, so
//! no garbage collector is needed for correctness.

use aya_ebpf::{helpers::generated::bpf_ktime_get_ns, macros::map, maps::LruHashMap, programs::TcContext};
use beeline_common::lb::{
    ct_flags, Ct4Entry, Ct4Tuple, CT_CLOSE_TIMEOUT, CT_LIFETIME_NONTCP, CT_LIFETIME_TCP, CT_SYN_TIMEOUT, TUPLE_F_OUT,
};

use crate::parse::{Ipv4Hdr, ETH_HLEN, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

/// Cilium's `cilium_ct4_global` (its default is 512k TCP entries; smaller here while every test
/// pins its own copy).
#[map(name = "beeline_ct4_global")]
pub static CT4: LruHashMap<Ct4Tuple, Ct4Entry> = LruHashMap::with_max_entries(65536, 0);

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Monotonic seconds, the unit of every lifetime and affinity timestamp.
#[inline(always)]
pub fn now_secs() -> u32 {
    // SAFETY: plain helper call.
    (unsafe { bpf_ktime_get_ns() } / 1_000_000_000) as u32
}

/// Which side of the connection a packet belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// From the side that opened the connection (the client).
    Original,
    /// From the other side (the backend's replies).
    Reply,
}

/// The live entry of `tuple`, if any (expired entries count as absent).
#[inline(always)]
pub fn lookup(tuple: &Ct4Tuple, now: u32) -> Option<*mut Ct4Entry> {
    let entry = CT4.get_ptr_mut(tuple)?;
    // SAFETY: pointer from a successful lookup, valid for this program run.
    if unsafe { (*entry).lifetime } < now {
        return None;
    }
    Some(entry)
}

/// Whether a TCP SYN (without ACK) arrives on an entry both sides have closed: the client reuses
/// the port for a new connection, which must be balanced afresh.
#[inline(always)]
pub fn is_reopened(entry: *const Ct4Entry, proto: u8, tcp_flags: u8) -> bool {
    let closed = ct_flags::RX_CLOSING | ct_flags::TX_CLOSING;
    // SAFETY: the caller passes a pointer from a successful lookup.
    proto == IPPROTO_TCP && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN && unsafe { (*entry).flags } & closed == closed
}

/// Accounts one packet of `len` bytes on `entry` and moves its lifetime forward.
#[inline(always)]
pub fn update(entry: *mut Ct4Entry, dir: Dir, proto: u8, tcp_flags: u8, len: u32, now: u32) {
    // SAFETY: the caller passes a pointer from a successful lookup or insert; concurrent updates
    // from other CPUs only race on counters and flag bits that are only ever set.
    unsafe {
        (*entry).packets += 1;
        (*entry).bytes += u64::from(len);
        let mut flags = (*entry).flags;
        if proto == IPPROTO_TCP {
            let closing = match dir {
                Dir::Original => ct_flags::TX_CLOSING,
                Dir::Reply => ct_flags::RX_CLOSING,
            };
            if tcp_flags & TCP_RST != 0 {
                flags |= ct_flags::TX_CLOSING | ct_flags::RX_CLOSING;
            } else if tcp_flags & TCP_FIN != 0 {
                flags |= closing;
            }
            if dir == Dir::Original && tcp_flags & TCP_SYN == 0 {
                flags |= ct_flags::SEEN_NON_SYN;
            }
        }
        (*entry).flags = flags;
        (*entry).lifetime = now + lifetime(proto, flags);
    }
}

/// Creates (or overwrites) the entry of `tuple` and accounts the packet that created it.
#[inline(always)]
pub fn create(
    tuple: &Ct4Tuple,
    backend_id: u32,
    rev_nat_index: u16,
    proto: u8,
    tcp_flags: u8,
    len: u32,
    now: u32,
) -> Option<*mut Ct4Entry> {
    let entry = Ct4Entry { backend_id, rev_nat_index, ..Default::default() };
    // A full LRU evicts; an insert error only means the flow is balanced again next packet.
    CT4.insert(tuple, &entry, 0).ok()?;
    let ptr = CT4.get_ptr_mut(tuple)?;
    update(ptr, Dir::Original, proto, tcp_flags, len, now);
    Some(ptr)
}

#[inline(always)]
fn lifetime(proto: u8, flags: u16) -> u32 {
    if proto != IPPROTO_TCP {
        return CT_LIFETIME_NONTCP;
    }
    let closed = ct_flags::RX_CLOSING | ct_flags::TX_CLOSING;
    if flags & closed == closed {
        CT_CLOSE_TIMEOUT
    } else if flags & ct_flags::SEEN_NON_SYN == 0 {
        CT_SYN_TIMEOUT
    } else {
        CT_LIFETIME_TCP
    }
}

// ---- Connection state for policy ----------------------------------------------------------------
//
// Policy shares the load balancer's table, as Cilium shares `cilium_ct4_global` between service
// translation and policy: one entry per connection, keyed by its original direction
// (`TUPLE_F_OUT`, client → server as the server sees it). The LB's entries carry a rev-NAT index;
// policy's own have none and are only ever refreshed here (the LB refreshes its own).

/// A packet's connection tuple in the direction it travels, with its TCP flags.
pub struct PacketFlow {
    pub tuple: Ct4Tuple,
    pub tcp_flags: u8,
}

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;

/// The tuple of a TCP, UDP or ICMP echo packet (the echo identifier stands in for the client's
/// port, as in Cilium); `None` for anything else and for non-first fragments, which policy then
/// checks packet by packet.
#[inline(always)]
pub fn packet_flow(ctx: &TcContext, ip: &Ipv4Hdr) -> Option<PacketFlow> {
    if ip.fragment_offset() != 0 {
        return None;
    }
    let l4 = ETH_HLEN + ip.header_len();
    let (sport, dport, tcp_flags) = match ip.protocol {
        IPPROTO_TCP => {
            let ports = ctx.load::<[u8; 4]>(l4).ok()?;
            let flags = ctx.load::<u8>(l4 + 13).ok()?;
            (u16::from_ne_bytes([ports[0], ports[1]]), u16::from_ne_bytes([ports[2], ports[3]]), flags)
        }
        IPPROTO_UDP => {
            let ports = ctx.load::<[u8; 4]>(l4).ok()?;
            (u16::from_ne_bytes([ports[0], ports[1]]), u16::from_ne_bytes([ports[2], ports[3]]), 0)
        }
        IPPROTO_ICMP => {
            let icmp_type = ctx.load::<u8>(l4).ok()?;
            let id = ctx.load::<u16>(l4 + 4).ok()?;
            match icmp_type {
                ICMP_ECHO_REQUEST => (id, 0, 0),
                ICMP_ECHO_REPLY => (0, id, 0),
                _ => return None,
            }
        }
        _ => return None,
    };
    let tuple = Ct4Tuple {
        daddr: ip.daddr_be(),
        saddr: ip.saddr_be(),
        dport,
        sport,
        nexthdr: ip.protocol,
        flags: TUPLE_F_OUT,
        pad: 0,
    };
    Some(PacketFlow { tuple, tcp_flags })
}

/// The tuple the other side of the connection sends with.
#[inline(always)]
fn reversed(t: &Ct4Tuple) -> Ct4Tuple {
    Ct4Tuple { daddr: t.saddr, saddr: t.daddr, dport: t.sport, sport: t.dport, ..*t }
}

/// Whether the packet answers a connection conntrack has seen opened (Cilium's `CT_REPLY`): such
/// packets skip policy in both directions, since the connection was allowed when it was opened.
/// Call it on the packet as it arrived, before any translation rewrites it.
#[inline(always)]
pub fn is_reply(ctx: &TcContext, ip: &Ipv4Hdr) -> bool {
    let Some(flow) = packet_flow(ctx, ip) else {
        return false;
    };
    let now = now_secs();
    let Some(entry) = lookup(&reversed(&flow.tuple), now) else {
        return false;
    };
    refresh_own(entry, Dir::Reply, flow.tuple.nexthdr, flow.tcp_flags, ctx.len(), now);
    true
}

/// Records that a packet in the original direction passed policy: creates the connection's entry
/// (so its replies pass), or refreshes it. Call it with the packet as it is forwarded (after
/// service translation, so the entry names the backend, as the LB's does).
#[inline(always)]
pub fn track_allowed(ctx: &TcContext, ip: &Ipv4Hdr) {
    let Some(flow) = packet_flow(ctx, ip) else {
        return;
    };
    let (proto, len, now) = (flow.tuple.nexthdr, ctx.len(), now_secs());
    match lookup(&flow.tuple, now) {
        Some(entry) if !is_reopened(entry, proto, flow.tcp_flags) => {
            refresh_own(entry, Dir::Original, proto, flow.tcp_flags, len, now)
        }
        // The LB creates (and reopens) its own entries before policy runs; this only replaces an
        // entry of policy's own or a closed connection's.
        _ => {
            let _ = create(&flow.tuple, 0, 0, proto, flow.tcp_flags, len, now);
        }
    }
}

/// Refreshes a policy-owned entry; the LB accounts the entries it created itself.
#[inline(always)]
fn refresh_own(entry: *mut Ct4Entry, dir: Dir, proto: u8, tcp_flags: u8, len: u32, now: u32) {
    // SAFETY: the caller passes a pointer from a successful lookup.
    if unsafe { (*entry).rev_nat_index } == 0 {
        update(entry, dir, proto, tcp_flags, len, now);
    }
}
