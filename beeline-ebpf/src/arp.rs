//! ARP responder for the pods' gateway.
//!
//! Like Cilium's `tail_handle_arp`: a pod asks for its gateway (the router IP on `cilium_host`, or
//! whichever gateway an older agent configured) and gets the MAC of *its own host-side veth*, so
//! the pod's `arp -a` shows the gateway at the `lxc…` device's MAC. Requests for the pod's own
//! address (duplicate address detection) are left alone. The reply is written over the request
//! and sent back out of the interface it came in on.

use aya_ebpf::{bindings::TC_ACT_OK, helpers::generated::bpf_redirect, programs::TcContext};
use beeline_common::datapath::drop_reason;

use crate::{
    drop::drop,
    lookup,
    parse::{self, ArpHdr, EthHdr, ARPOP_REPLY, ETH_HLEN, ETH_P_ARP},
};

pub fn handle(ctx: &TcContext, ifindex: u32) -> i32 {
    let Ok(req) = parse::arp(ctx) else {
        return drop(ctx, drop_reason::INVALID);
    };
    if !req.is_ipv4_request() {
        return TC_ACT_OK;
    }
    // The requester must be the endpoint behind this veth: its IP maps to this ifindex.
    let sender_ip = u32::from_ne_bytes(req.spa);
    let Some(ep) = lookup::endpoint(sender_ip) else {
        return TC_ACT_OK;
    };
    if ep.ifindex != ifindex || req.tpa == req.spa {
        return TC_ACT_OK;
    }
    let eth = EthHdr { dst: req.sha, src: ep.node_mac, proto: ETH_P_ARP.to_be_bytes() };
    let reply = ArpHdr {
        op: ARPOP_REPLY.to_be_bytes(),
        sha: ep.node_mac,
        spa: req.tpa,
        tha: req.sha,
        tpa: req.spa,
        ..req
    };
    if ctx.store(0, &eth, 0).is_err() || ctx.store(ETH_HLEN, &reply, 0).is_err() {
        return drop(ctx, drop_reason::WRITE_ERROR);
    }
    // Out of the same device (egress), back to the pod.
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}
