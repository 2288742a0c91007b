//! `from_overlay`: tc ingress on `cilium_vxlan` / `cilium_geneve` (collect-metadata devices), i.e.
//! decapsulated packets from other nodes. The VNI is the sender's security identity; a remote
//! backend's reply to a local client gets its frontend back first ([`crate::lb::from_overlay`]);
//! the inner destination is looked up among the local endpoints, its ingress policy applied with
//! that identity, and the packet delivered to its pod. Anything else (the node itself, unknown
//! addresses) goes to the stack.

use aya_ebpf::{
    bindings::{bpf_tunnel_key, TC_ACT_OK},
    helpers::generated::bpf_skb_get_tunnel_key,
    macros::classifier,
    programs::TcContext,
};
use beeline_common::{datapath::drop_reason, endpoint::ENDPOINT_F_HOST, events::point};

use crate::{
    conntrack,
    drop::drop,
    events,
    forward, lb, lookup,
    parse::{self, ETH_P_IP},
    policy,
};

#[classifier]
pub fn from_overlay(ctx: TcContext) -> i32 {
    // SAFETY: an all-zero bpf_tunnel_key is valid; the helper fills it.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    // SAFETY: `key` lives on the stack for the call.
    let ret = unsafe {
        bpf_skb_get_tunnel_key(ctx.skb.skb, &mut key, core::mem::size_of::<bpf_tunnel_key>() as u32, 0)
    };
    if ret < 0 {
        // Not from a tunnel (no metadata): not ours to decide.
        return TC_ACT_OK;
    }
    // The VNI carries the sender's security identity (24 bits).
    let source_identity = key.tunnel_id & 0x00ff_ffff;
    let eth = match parse::eth(&ctx) {
        Ok(eth) => eth,
        Err(_) => return drop(&ctx, drop_reason::INVALID),
    };
    if eth.proto() != ETH_P_IP {
        return TC_ACT_OK;
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
            if let Some(verdict) = policy::ingress(&ctx, &ep, &ip, source_identity, reply) {
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
