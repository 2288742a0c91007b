//! `from_overlay`: tc ingress on `cilium_vxlan` / `cilium_geneve` (collect-metadata devices), i.e.
//! decapsulated packets from other nodes. The VNI is the sender's security identity; a remote
//! backend's reply to a local client gets its frontend back first ([`crate::lb::from_overlay`]);
//! the inner destination is looked up among the local endpoints, its ingress policy applied with
//! that identity, and the packet delivered to its pod. Anything else (the node itself, unknown
//! addresses) goes to the stack. IPv6 inside the (IPv4) tunnel takes the same steps ([`ipv6`]).

use aya_ebpf::{
    bindings::{__sk_buff, bpf_tunnel_key, TC_ACT_OK},
    helpers::generated::bpf_skb_get_tunnel_key,
    macros::classifier,
    programs::TcContext,
};
use beeline_common::{datapath::drop_reason, endpoint::ENDPOINT_F_HOST, events::point};

use crate::{
    conntrack, conntrack6,
    drop::drop,
    events, forward, lb, lb6, lookup,
    parse::{self, ETH_HLEN, ETH_P_IP, ETH_P_IPV6},
    policy,
};

#[classifier]
pub fn from_overlay(ctx: TcContext) -> i32 {
    let skb = ctx.skb.skb;
    let Ok(source_identity) = u32::try_from(tunnel_identity(skb)) else {
        // Not from a tunnel (no metadata): not ours to decide.
        return TC_ACT_OK;
    };
    if ctx.len() < ETH_HLEN as u32 {
        return ipv4(skb, source_identity);
    }
    // The kernel's parse of the inner ethertype (network byte order): no stack used here, so each
    // family's path below has the whole 512-byte limit to itself.
    // SAFETY: `skb` is the kernel's __sk_buff for this invocation.
    match u16::from_be(unsafe { (*skb).protocol } as u16) {
        ETH_P_IPV6 => ipv6(skb, source_identity),
        ETH_P_IP => ipv4(skb, source_identity),
        _ => TC_ACT_OK,
    }
}

/// The sender's security identity from the tunnel metadata (the VNI, 24 bits), or −1 when the
/// packet came without metadata.
#[inline(never)]
fn tunnel_identity(skb: *mut __sk_buff) -> i64 {
    // SAFETY: an all-zero bpf_tunnel_key is valid; the helper fills it.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    // SAFETY: `key` lives on the stack for the call.
    let ret = unsafe { bpf_skb_get_tunnel_key(skb, &mut key, core::mem::size_of::<bpf_tunnel_key>() as u32, 0) };
    if ret < 0 {
        return -1;
    }
    i64::from(key.tunnel_id & 0x00ff_ffff)
}

/// Decapsulated IPv4.
#[inline(never)]
fn ipv4(skb: *mut __sk_buff, source_identity: u32) -> i32 {
    let ctx = TcContext::new(skb);
    if parse::eth(&ctx).is_err() {
        return drop(&ctx, drop_reason::INVALID);
    }
    let ip = match parse::ipv4(&ctx) {
        Ok(ip) => ip,
        Err(_) => return drop(&ctx, drop_reason::INVALID),
    };
    events::trace(&ctx, point::FROM_OVERLAY, source_identity, 0);
    // Before the reply of a remote backend gets its frontend back as source.
    let reply = conntrack::is_reply(&ctx, &ip);
    if let Err(verdict) = lb::from_overlay(&ctx, &ip) {
        return verdict;
    }
    match lookup::endpoint(ip.daddr_be()) {
        Some(ep) if ep.flags & ENDPOINT_F_HOST == 0 => {
            if let Some(verdict) = policy::ingress(&ctx, &ep, policy::L4::ipv4(&ctx, &ip), source_identity, reply) {
                return verdict;
            }
            if !reply {
                conntrack::track_allowed(&ctx, &ip);
            }
            forward::to_local_endpoint(&ctx, &ip, &ep, &lookup::config())
        }
        _ => TC_ACT_OK,
    }
}

/// Decapsulated IPv6 (dual-stack pods over the IPv4 underlay): the same steps as IPv4 — reverse
/// NAT of a remote backend's reply ([`crate::lb6::from_overlay`]), the local pod's ingress policy
/// with the VNI's identity, delivery. Not inlined, to keep its locals off the IPv4 path's stack.
#[inline(never)]
fn ipv6(skb: *mut __sk_buff, source_identity: u32) -> i32 {
    let ctx = TcContext::new(skb);
    let Ok(ip) = parse::ipv6(&ctx) else {
        return drop(&ctx, drop_reason::INVALID);
    };
    let reply = conntrack6::is_reply(&ctx);
    if let Err(verdict) = lb6::from_overlay(&ctx) {
        return verdict;
    }
    match lookup::endpoint6(ip.daddr) {
        Some(ep) if ep.flags & ENDPOINT_F_HOST == 0 => {
            if let Some(verdict) = policy::ingress(&ctx, &ep, policy::L4::ipv6(&ctx, &ip), source_identity, reply) {
                return verdict;
            }
            if !reply {
                conntrack6::track_allowed(&ctx);
            }
            forward::to_local_endpoint6(&ctx, &ip, &ep, &lookup::config())
        }
        _ => TC_ACT_OK,
    }
}
