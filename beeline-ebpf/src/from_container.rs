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
//! 4. other ethertypes (IPv6 for now) → the stack.
//!
//! Malformed frames are dropped with a reason.

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, macros::map, maps::HashMap, programs::TcContext};
use beeline_common::{
    datapath::{drop_reason, TUNNEL_NONE},
    endpoint::ENDPOINT_F_HOST,
    events::point,
    EndpointStats, EndpointStatsKey,
};

use crate::{
    arp, conntrack,
    drop::drop,
    events,
    fib, forward,
    lb::{self, Next},
    lookup,
    parse::{self, Malformed, ETH_P_ARP, ETH_P_IP},
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
    let eth = match parse::eth(&ctx) {
        Ok(eth) => eth,
        Err(_) => return drop(&ctx, drop_reason::INVALID),
    };
    match eth.proto() {
        ETH_P_ARP => arp::handle(&ctx, ifindex),
        ETH_P_IP => ipv4(&ctx, ifindex),
        _ => TC_ACT_OK,
    }
}

#[inline(always)]
fn ipv4(ctx: &TcContext, ifindex: u32) -> i32 {
    let ip = match parse::ipv4(ctx) {
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
    let ip = parse::Ipv4Hdr { daddr: dst.to_ne_bytes(), ..ip };
    let config = lookup::config();
    // Policy sees the backend (address and, read from the rewritten packet, port).
    let dst_ep = lookup::endpoint(dst);
    if let Some(verdict) = policy::egress(ctx, &src, &ip, lookup::identity(dst, dst_ep.as_ref()), reply) {
        return verdict;
    }
    let local_pod = dst_ep.filter(|ep| ep.flags & ENDPOINT_F_HOST == 0);
    if let Some(ep) = &local_pod {
        if let Some(verdict) = policy::ingress(ctx, ep, &ip, src.sec_id, reply) {
            return verdict;
        }
    }
    if !reply {
        conntrack::track_allowed(ctx, &ip);
    }
    match (dst_ep, local_pod) {
        (_, Some(ep)) => return forward::to_local_endpoint(ctx, &ip, &ep, &config),
        // The node itself.
        (Some(_), None) => return TC_ACT_OK,
        (None, _) => {}
    }
    if config.tunnel_proto == TUNNEL_NONE {
        // Native routing: the kernel's routing table decides (no tunnel key).
        return fib::redirect_v4(ctx, &ip, ifindex);
    }
    match forward::tunnel_endpoint(dst, &config) {
        Some(node) => forward::to_remote_node(ctx, node, src.sec_id, &config),
        None => events::pass(ctx, point::TO_STACK, src.sec_id, 0),
    }
}

#[inline(always)]
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
