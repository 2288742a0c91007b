//! IPv6 service load balancing for TCP/UDP (Cilium's `lb6_*` in `lib/lb.h`), the IPv6 half of
//! [`crate::lb`]: the frontend's master entry (internal scope for `TWO_SCOPES` frontends, as
//! traffic from a pod is in-cluster traffic), the service conntrack entry pins a flow to its
//! backend while the backend exists, a new flow takes a random active slot, the connection entry
//! (client → backend) remembers the rev-NAT ID, then DNAT; a backend's reply (in `from_container`
//! for a local backend, `from_overlay`/`from_netdev` for a remote one) gets the frontend back as
//! its source. Not (yet) for IPv6: session affinity, Maglev (random instead), source ranges,
//! the ICMPv6 reject of a frontend without backends (dropped with `NO_SERVICE`), flow events.
//!
//! IPv6 has no header checksum; the TCP/UDP checksum covers the pseudo-header, so an address
//! change is folded in as a checksum difference of the 16 bytes (`bpf_csum_diff`).
//!
//! Stack: the IPv6 checks of `from_container` already use 288 of the verifier's 512 bytes, so the
//! work happens in `#[inline(never)]` functions taking the raw `__sk_buff` and small pointers.

use aya_ebpf::{
    bindings::{__sk_buff, BPF_F_MARK_MANGLED_0, BPF_F_NO_PREALLOC, BPF_F_PSEUDO_HDR},
    helpers::generated::{bpf_csum_diff, bpf_get_prandom_u32},
    macros::map,
    maps::HashMap,
    programs::TcContext,
};
use beeline_common::{
    datapath::drop_reason,
    lb::{
        svc_flags2, Ct6Tuple, Lb6Backend, Lb6BackendKey, Lb6Key, Lb6RevNatKey, Lb6ReverseNat, Lb6Service,
        LB_LOOKUP_SCOPE_EXT, LB_LOOKUP_SCOPE_INT, TUPLE_F_OUT, TUPLE_F_SERVICE,
    },
};

use crate::{
    conntrack::{self, Dir},
    conntrack6,
    drop::drop,
    parse::{self, ETH_HLEN, IPPROTO_TCP, IPPROTO_UDP, IPV6_DADDR_OFF, IPV6_HLEN, IPV6_SADDR_OFF},
};

// Shapes (type, size, flags) match the map manager's definitions (`src/datapath/manager/maps.rs`).

#[map(name = "beeline_lb6_services")]
static LB6_SERVICES: HashMap<Lb6Key, Lb6Service> = HashMap::with_max_entries(65536, BPF_F_NO_PREALLOC);

#[map(name = "beeline_lb6_backends")]
static LB6_BACKENDS: HashMap<Lb6BackendKey, Lb6Backend> = HashMap::with_max_entries(65536, BPF_F_NO_PREALLOC);

#[map(name = "beeline_lb6_reverse_nat")]
static LB6_REVERSE_NAT: HashMap<Lb6RevNatKey, Lb6ReverseNat> = HashMap::with_max_entries(65536, BPF_F_NO_PREALLOC);

/// The L4 view of a TCP/UDP packet (extension headers are not walked: anything else is no flow).
struct Flow6 {
    sport: u16,
    dport: u16,
    proto: u8,
    tcp_flags: u8,
    csum_offset: u32,
    /// UDP may carry no checksum (0): keep it that way, and never produce 0 (`MARK_MANGLED_0`).
    csum_flags: u32,
    len: u32,
}

const L4_OFF: usize = ETH_HLEN + IPV6_HLEN;

impl Flow6 {
    #[inline(always)]
    fn parse(ctx: &TcContext, next_header: u8) -> Option<Flow6> {
        let (csum_offset, csum_flags, tcp_flags) = match next_header {
            IPPROTO_TCP => (L4_OFF + 16, 0, ctx.load::<u8>(L4_OFF + 13).ok()?),
            IPPROTO_UDP => (L4_OFF + 6, BPF_F_MARK_MANGLED_0, 0),
            _ => return None,
        };
        let ports = ctx.load::<[u8; 4]>(L4_OFF).ok()?;
        Some(Flow6 {
            sport: u16::from_ne_bytes([ports[0], ports[1]]),
            dport: u16::from_ne_bytes([ports[2], ports[3]]),
            proto: next_header,
            tcp_flags,
            csum_offset: csum_offset as u32,
            csum_flags,
            len: ctx.len(),
        })
    }
}

/// "Forward, destination in `dst`": no TC action has this value.
const FORWARD: i32 = i32::MIN;

/// Service translation of a packet from a local pod: reverse NAT of a local backend's reply, or
/// DNAT to a backend, whose address replaces `dst` (the packet's destination on entry). `Some`
/// verdict when the packet was dropped. (An out-parameter rather than a returned address: the
/// caller's frame has no room for another 16-byte copy.)
#[inline(always)]
pub fn from_container(ctx: &TcContext, dst: &mut [u8; 16]) -> Option<i32> {
    // Two calls one after the other, not one call to a function making both: a frame less on the
    // deepest chain.
    match reply_nat(ctx.skb.skb) {
        FORWARD => {}
        verdict => return Some(verdict),
    }
    match dnat(ctx.skb.skb, dst) {
        FORWARD => None,
        verdict => Some(verdict),
    }
}

/// Reverse NAT of a remote backend's reply arriving from the overlay / the uplink (native routing).
#[inline(always)]
pub fn from_overlay(ctx: &TcContext) -> Result<(), i32> {
    match reply_nat(ctx.skb.skb) {
        FORWARD => Ok(()),
        verdict => Err(verdict),
    }
}

/// A backend's reply: the source becomes the frontend again. [`FORWARD`] when done or not a reply.
#[inline(never)]
fn reply_nat(skb: *mut __sk_buff) -> i32 {
    let ctx = TcContext::new(skb);
    let Ok(ip) = parse::ipv6(&ctx) else {
        return FORWARD;
    };
    let Some(flow) = Flow6::parse(&ctx, ip.next_header) else {
        return FORWARD;
    };
    let tuple = Ct6Tuple {
        daddr: ip.saddr,
        saddr: ip.daddr,
        dport: flow.sport,
        sport: flow.dport,
        nexthdr: flow.proto,
        flags: TUPLE_F_OUT,
        pad: 0,
    };
    let now = conntrack::now_secs();
    let Some(entry) = conntrack6::lookup(&tuple, now) else {
        return FORWARD;
    };
    // SAFETY: pointer from a successful lookup.
    let rev_nat_index = unsafe { (*entry).rev_nat_index };
    if rev_nat_index == 0 {
        return FORWARD;
    }
    conntrack::update(entry, Dir::Reply, flow.proto, flow.tcp_flags, flow.len, now);
    // SAFETY: pointer from a successful lookup, read at once.
    let Some(frontend) = (unsafe { LB6_REVERSE_NAT.get(&Lb6RevNatKey { rev_nat_index }) }) else {
        // The service is gone; the reply can no longer be translated.
        return FORWARD;
    };
    let port = if frontend.port != 0 { frontend.port } else { flow.sport };
    match rewrite(&ctx, &flow, IPV6_SADDR_OFF, &ip.saddr, &frontend.address, L4_OFF, flow.sport, port) {
        Ok(()) => FORWARD,
        Err(()) => drop(&ctx, drop_reason::WRITE_ERROR),
    }
}

/// A packet to a frontend: DNAT to the flow's backend. [`FORWARD`] with `dst` = the backend.
#[inline(never)]
fn dnat(skb: *mut __sk_buff, dst: &mut [u8; 16]) -> i32 {
    let ctx = TcContext::new(skb);
    let Ok(ip) = parse::ipv6(&ctx) else {
        return FORWARD;
    };
    let Some(flow) = Flow6::parse(&ctx, ip.next_header) else {
        return FORWARD;
    };
    let mut key = Lb6Key {
        address: ip.daddr,
        dport: flow.dport,
        backend_slot: 0,
        proto: flow.proto,
        scope: LB_LOOKUP_SCOPE_EXT,
        pad: [0; 2],
    };
    // SAFETY: copied out at once.
    let Some(mut svc) = (unsafe { LB6_SERVICES.get(&key).copied() }) else {
        return FORWARD;
    };
    if svc.flags2 & svc_flags2::TWO_SCOPES != 0 {
        key.scope = LB_LOOKUP_SCOPE_INT;
        // SAFETY: copied out at once.
        match unsafe { LB6_SERVICES.get(&key).copied() } {
            Some(s) => svc = s,
            None => return FORWARD,
        }
    }
    let now = conntrack::now_secs();
    // One tuple, first the service entry's (client → frontend), then the connection's (client →
    // backend): a second 40-byte key would not fit the frame.
    let mut t = Ct6Tuple {
        daddr: ip.daddr,
        saddr: ip.saddr,
        dport: flow.dport,
        sport: flow.sport,
        nexthdr: flow.proto,
        flags: TUPLE_F_SERVICE,
        pad: 0,
    };
    let Some(backend) = backend_for(&t, &flow, key, &svc, now) else {
        return drop(&ctx, drop_reason::NO_SERVICE);
    };
    let dport = if backend.port != 0 { backend.port } else { flow.dport };
    t.daddr = backend.address;
    t.dport = dport;
    t.flags = TUPLE_F_OUT;
    let conn = &t;
    match conntrack6::lookup(conn, now) {
        Some(entry) if !conntrack::is_reopened(entry, flow.proto, flow.tcp_flags) => {
            conntrack::update(entry, Dir::Original, flow.proto, flow.tcp_flags, flow.len, now)
        }
        _ => {
            let _ = conntrack6::create(conn, 0, svc.rev_nat_index, flow.proto, flow.tcp_flags, flow.len, now);
        }
    }
    if rewrite(&ctx, &flow, IPV6_DADDR_OFF, &ip.daddr, &backend.address, L4_OFF + 2, flow.dport, dport).is_err() {
        return drop(&ctx, drop_reason::WRITE_ERROR);
    }
    *dst = backend.address;
    FORWARD
}

/// The backend of this flow: the one the service entry remembers (while it exists), else a
/// random active slot's, remembered.
#[inline(always)]
fn backend_for(tuple: &Ct6Tuple, flow: &Flow6, mut key: Lb6Key, svc: &Lb6Service, now: u32) -> Option<Lb6Backend> {
    if let Some(entry) = conntrack6::lookup(tuple, now) {
        // SAFETY: pointer from a successful lookup.
        let backend_id = unsafe { (*entry).backend_id };
        if !conntrack::is_reopened(entry, flow.proto, flow.tcp_flags) {
            // SAFETY: copied out at once.
            if let Some(backend) = unsafe { LB6_BACKENDS.get(&Lb6BackendKey { backend_id }).copied() } {
                conntrack::update(entry, Dir::Original, flow.proto, flow.tcp_flags, flow.len, now);
                return Some(backend);
            }
        }
    }
    if svc.count == 0 {
        return None;
    }
    // SAFETY: plain helper call.
    let random = unsafe { bpf_get_prandom_u32() };
    key.backend_slot = (random % u32::from(svc.count)) as u16 + 1;
    // SAFETY: copied out at once.
    let backend_id = unsafe { LB6_SERVICES.get(&key).map(|slot| slot.backend_id) }?;
    // SAFETY: copied out at once.
    let backend = unsafe { LB6_BACKENDS.get(&Lb6BackendKey { backend_id }).copied() }?;
    let _ = conntrack6::create(tuple, backend_id, svc.rev_nat_index, flow.proto, flow.tcp_flags, flow.len, now);
    Some(backend)
}

/// Rewrites the 16-byte address at `addr_offset` and the port at `port_offset`, folding both
/// changes into the L4 checksum (the address through the pseudo-header).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    flow: &Flow6,
    addr_offset: usize,
    old_addr: &[u8; 16],
    new_addr: &[u8; 16],
    port_offset: usize,
    old_port: u16,
    new_port: u16,
) -> Result<(), ()> {
    if old_addr != new_addr {
        // SAFETY: both are 16-byte buffers on the stack, which the helper only reads (its `*mut`
        // is C's missing const); no copies, the frames are nearly full.
        let diff = unsafe { bpf_csum_diff(old_addr.as_ptr() as *mut u32, 16, new_addr.as_ptr() as *mut u32, 16, 0) };
        if diff < 0 {
            return Err(());
        }
        // Size 0: `to` is a checksum difference, not a value.
        let flags = u64::from(BPF_F_PSEUDO_HDR | flow.csum_flags);
        ctx.l4_csum_replace(flow.csum_offset as usize, 0, diff as u64, flags).map_err(|_| ())?;
        ctx.store(addr_offset, new_addr, 0).map_err(|_| ())?;
    }
    if old_port != new_port {
        let flags = u64::from(flow.csum_flags) | 2;
        ctx.l4_csum_replace(flow.csum_offset as usize, u64::from(old_port), u64::from(new_port), flags)
            .map_err(|_| ())?;
        ctx.store(port_offset, &new_port, 0).map_err(|_| ())?;
    }
    Ok(())
}
