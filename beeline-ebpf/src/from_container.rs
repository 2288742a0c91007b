//! `from_container`: tc ingress on the host side of a pod's veth (packets leaving the pod).
//!
//! 1. count the packet per endpoint (`beeline_ep_stats`);
//! 2. ARP → the gateway responder ([`crate::arp`]);
//! 3. IPv4 → validate, check the source belongs to this veth (else drop), service translation
//!    ([`crate::lb`]: DNAT to a backend, or reverse NAT of a local backend's reply), then policy on
//!    the translated packet (the source's egress policy, a local destination's ingress policy, as
//!    Cilium applies policy to the backend, not the frontend), then forward: a local
//!    destination straight to its pod; in tunnel mode a remote pod into the tunnel (VNI = source
//!    identity) and anything else to the host stack; in native routing everything non-local by
//!    the kernel's FIB ([`crate::fib`]);
//! 4. IPv6 → the same steps in their IPv6 form ([`ipv6`]): neighbour solicitations to the NDP
//!    responder ([`crate::ndp`]), link-scope traffic to the stack, then source check, service
//!    translation ([`crate::lb6`]), policy, forwarding (local pod, tunnel with the IPv4 underlay,
//!    or the FIB);
//! 5. other ethertypes → the stack.
//!
//! Malformed frames are dropped with a reason.

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_OK},
    macros::classifier,
    macros::map,
    maps::HashMap,
    programs::TcContext,
};
use beeline_common::{
    datapath::{drop_reason, TUNNEL_NONE},
    endpoint::{EndpointInfo, ENDPOINT_F_HOST},
    events::point,
    EndpointStats, EndpointStatsKey,
};

use crate::{
    arp, conntrack, conntrack6,
    drop::drop,
    events, fib, forward,
    lb::{self, Next},
    lb6,
    lookup, ndp,
    parse::{
        self, Ipv6Hdr, Malformed, ETH_HLEN, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, ICMP6_NEIGHBOR_SOLICIT, IPPROTO_ICMPV6,
        IPV6_L4_OFF, IPV6_NEXT_HEADER_OFF,
    },
    policy,
};

/// Keyed by the ingress ifindex (the host-side veth), so one pinned map serves every endpoint.
#[map(name = "beeline_ep_stats")]
static ENDPOINT_STATS: HashMap<EndpointStatsKey, EndpointStats> = HashMap::with_max_entries(65536, 0);

#[classifier]
pub fn from_container(ctx: TcContext) -> i32 {
    // SAFETY: `skb` is the kernel's __sk_buff for this invocation.
    let (ifindex, len) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).len) };
    count(ifindex, len);
    // No stack used here (the ethertype is the one the kernel parsed into the skb, no copy of the
    // header): with the JIT a frame of 0 bytes adds nothing to the IPv4 path, which alone takes
    // all of the 512-byte limit with its callees.
    if (len as usize) < ETH_HLEN {
        return invalid(ctx.skb.skb);
    }
    // SAFETY: as above; `protocol` holds the ethertype in network byte order.
    let proto = u16::from_be(unsafe { (*ctx.skb.skb).protocol } as u16);
    match proto {
        ETH_P_ARP => arp(ctx.skb.skb, ifindex),
        ETH_P_IP => ipv4(ctx.skb.skb, ifindex),
        ETH_P_IPV6 => ipv6(ctx.skb.skb, ifindex),
        _ => TC_ACT_OK,
    }
}

#[inline(never)]
fn invalid(skb: *mut __sk_buff) -> i32 {
    drop(&TcContext::new(skb), drop_reason::INVALID)
}

/// The ARP responder in a frame of its own (see [`ipv4`]).
#[inline(never)]
fn arp(skb: *mut __sk_buff, ifindex: u32) -> i32 {
    arp::handle(&TcContext::new(skb), ifindex)
}

/// IPv4 from the pod. Not inlined (like [`ipv6`]): each family's path gets a stack frame of its
/// own, so the two do not add up in `from_container`'s (this one alone is close to the 512-byte
/// limit).
#[inline(never)]
fn ipv4(skb: *mut __sk_buff, ifindex: u32) -> i32 {
    let ctx = &TcContext::new(skb);
    let mut ip = match parse::ipv4(ctx) {
        Ok(ip) => ip,
        Err(Malformed::Truncated | Malformed::BadHeader) => return drop(ctx, drop_reason::INVALID),
    };
    // The source must be the endpoint behind this veth: an address the agent has not registered,
    // or one registered behind another veth, is spoofed (Cilium's "Invalid source ip").
    let src = match lookup::endpoint(ip.saddr_be()) {
        Some(src) if src.ifindex == ifindex => src,
        _ => return drop(ctx, drop_reason::INVALID_SIP),
    };
    events::trace(ctx, point::FROM_ENDPOINT, src.sec_id, 0);
    // Replies are recognised on the packet as the pod sent it: a local backend's reply is about
    // to get its frontend back as source.
    let reply = conntrack::is_reply(ctx, &ip);
    let dst = match lb::from_container(ctx, &ip, ifindex) {
        Next::Forward(dst) => dst,
        Next::Verdict(verdict) => return verdict,
    };
    // Forwarding (and the FIB lookup in native routing) decides on the translated destination.
    ip.daddr = dst.to_ne_bytes();
    let Some(config) = lookup::config_ref() else {
        return TC_ACT_OK;
    };
    // Policy sees the backend (address and, read from the rewritten packet, port).
    let dst_ep = lookup::endpoint(dst);
    let l4 = policy::L4::ipv4(ctx, &ip);
    if let Some(verdict) = policy::egress(ctx, &src, l4, lookup::identity(dst, dst_ep.as_ref()), reply) {
        return verdict;
    }
    let local_pod = dst_ep.filter(|ep| ep.flags & ENDPOINT_F_HOST == 0);
    if let Some(ep) = &local_pod {
        if let Some(verdict) = policy::ingress(ctx, ep, l4, src.sec_id, reply) {
            return verdict;
        }
    }
    if !reply {
        conntrack::track_allowed(ctx, &ip);
    }
    match (dst_ep, local_pod) {
        (_, Some(ep)) => return forward::to_local_endpoint(ctx, &ip, &ep, config),
        // The node itself.
        (Some(_), None) => return TC_ACT_OK,
        (None, _) => {}
    }
    if config.tunnel_proto == TUNNEL_NONE {
        // Native routing: the kernel's routing table decides (no tunnel key).
        return fib::redirect_v4(ctx, &ip, ifindex);
    }
    match forward::tunnel_endpoint(dst, config) {
        Some(node) => forward::to_remote_node(ctx, node, src.sec_id, config),
        None => events::pass(ctx, point::TO_STACK, src.sec_id, 0),
    }
}

/// What the phases of [`ipv6`] hand each other, and finally to [`forward6`].
#[derive(Default)]
struct Route6 {
    /// The destination after service translation.
    dst: [u8; 16],
    /// The local pod it belongs to, when `is_local_pod` is 1.
    local: EndpointInfo,
    is_local_pod: u32,
    src_identity: u32,
    /// The source endpoint (checked by [`source6`]).
    src: EndpointInfo,
    /// 1 when the packet answers a tracked connection (policy skips replies).
    reply: u32,
}

/// "No verdict yet, forward": no TC action has this value.
const CONTINUE: i32 = i32::MIN;

/// IPv6 from the pod, in the order of [`ipv4`] (Cilium's `handle_ipv6_from_lxc`): neighbour
/// solicitations to the responder, then the phases ([`source6`], conntrack, service translation,
/// [`policy6`], conntrack), then forwarding ([`forward6`]). The phases are separate functions called
/// one after the other, so their stack frames do not add up: the IPv4 path alone already fills the
/// 512-byte limit. No flow events: they carry IPv4
/// addresses only (see `events.rs`).
#[inline(never)]
fn ipv6(skb: *mut __sk_buff, ifindex: u32) -> i32 {
    let ctx = TcContext::new(skb);
    if ctx.load::<u8>(IPV6_NEXT_HEADER_OFF) == Ok(IPPROTO_ICMPV6) {
        match ctx.load::<u8>(IPV6_L4_OFF) {
            Ok(ICMP6_NEIGHBOR_SOLICIT) => return ndp::handle(skb, ifindex),
            // The rest of neighbour discovery (RS, RA, NA, redirect) and MLD belong to the stack,
            // whatever their addresses.
            Ok(ty) if parse::is_link_control_icmp6(ty) => return TC_ACT_OK,
            _ => {}
        }
    }
    let mut route = Route6::default();
    // Phases one after the other, each in a frame of its own, with `route` carrying what the next
    // one needs: nested, their frames would add up past the verifier's 512 bytes.
    match source6(skb, ifindex, &mut route) {
        CONTINUE => {}
        verdict => return verdict,
    }
    // Before service translation: a local backend's reply is about to get its frontend back.
    route.reply = u32::from(conntrack6::is_reply(&ctx));
    if let Some(verdict) = lb6::from_container(&ctx, &mut route.dst) {
        return verdict;
    }
    match policy6(skb, &mut route) {
        CONTINUE => {}
        verdict => return verdict,
    }
    if route.reply == 0 {
        // The packet now names the backend, as the LB's own entry does.
        conntrack6::track_allowed(&ctx);
    }
    forward6(skb, &route, ifindex)
}

/// Validation and the source check (the source must be the endpoint behind this veth). `CONTINUE`
/// with `route.src` and `route.dst` filled in, or the verdict.
#[inline(never)]
fn source6(skb: *mut __sk_buff, ifindex: u32, route: &mut Route6) -> i32 {
    let ctx = &TcContext::new(skb);
    let ip = match parse::ipv6(ctx) {
        Ok(ip) => ip,
        Err(Malformed::Truncated | Malformed::BadHeader) => return drop(ctx, drop_reason::INVALID),
    };
    // Neighbour discovery, router solicitations, MLD and anything else on the link: the stack's.
    if ip.is_link_scope() {
        return TC_ACT_OK;
    }
    match lookup::endpoint6(ip.saddr) {
        Some(src) if src.ifindex == ifindex => route.src = src,
        _ => return drop(ctx, drop_reason::INVALID_SIP),
    }
    route.dst = ip.daddr;
    route.src_identity = route.src.sec_id;
    CONTINUE
}

/// Policy on the translated packet (the source's egress, a local destination's ingress), as the
/// IPv4 path applies it to the backend rather than the frontend. `CONTINUE` with the local
/// destination in `route`, or the verdict.
#[inline(never)]
fn policy6(skb: *mut __sk_buff, route: &mut Route6) -> i32 {
    let ctx = &TcContext::new(skb);
    let Ok(ip) = parse::ipv6(ctx) else {
        return drop(ctx, drop_reason::INVALID);
    };
    let reply = route.reply != 0;
    let dst_ep = lookup::endpoint6(route.dst);
    let l4 = policy::L4::ipv6(ctx, &ip);
    if let Some(verdict) = policy::egress(ctx, &route.src, l4, lookup::identity6(route.dst, dst_ep.as_ref()), reply) {
        return verdict;
    }
    match dst_ep {
        Some(ep) if ep.flags & ENDPOINT_F_HOST == 0 => {
            if let Some(verdict) = policy::ingress(ctx, &ep, l4, route.src.sec_id, reply) {
                return verdict;
            }
            route.local = ep;
            route.is_local_pod = 1;
            CONTINUE
        }
        // The node itself.
        Some(_) => TC_ACT_OK,
        None => CONTINUE,
    }
}

/// Where an allowed IPv6 packet goes: its local pod, else (tunnel mode) the node owning the
/// destination, through the IPv4 underlay, else (native routing) by the FIB.
#[inline(never)]
fn forward6(skb: *mut __sk_buff, route: &Route6, ifindex: u32) -> i32 {
    let ctx = &TcContext::new(skb);
    let Ok(ip) = parse::ipv6(ctx) else {
        return drop(ctx, drop_reason::INVALID);
    };
    let ip = Ipv6Hdr { daddr: route.dst, ..ip };
    let Some(config) = lookup::config_ref() else {
        return TC_ACT_OK;
    };
    if route.is_local_pod != 0 {
        return forward::to_local_endpoint6(ctx, &ip, &route.local, config);
    }
    if config.tunnel_proto == TUNNEL_NONE {
        return fib::redirect_v6(ctx, &ip, ifindex);
    }
    match forward::tunnel_endpoint6(route.dst, config) {
        Some(node) => forward::to_remote_node(ctx, node, route.src_identity, config),
        None => TC_ACT_OK,
    }
}

#[inline(never)]
fn count(ifindex: u32, len: u32) {
    let key = EndpointStatsKey { ifindex };
    match ENDPOINT_STATS.get_ptr_mut(key) {
        Some(stats) => {
            // SAFETY: the pointer comes from a successful map lookup and is valid for this call.
            // Counters are per endpoint; concurrent CPUs may race, which only costs precision.
            unsafe {
                (*stats).packets += 1;
                (*stats).bytes += u64::from(len);
            }
        }
        None => {
            let first = EndpointStats { packets: 1, bytes: u64::from(len) };
            // A full map only loses the count, never the packet.
            let _ = ENDPOINT_STATS.insert(key, first, 0);
        }
    }
}
