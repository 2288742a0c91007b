//! Native routing: hand a packet to the kernel's routing table from BPF (Cilium's
//! `fib_redirect_v4`). `bpf_fib_lookup` resolves the route (and the neighbour, when known); the
//! packet is redirected straight to the egress device — with MACs filled in, or through
//! `bpf_redirect_neigh`, which resolves the next hop's MAC itself. Whatever the lookup cannot
//! forward (the node's own addresses, no route, MTU exceeded, forwarding disabled) goes to the
//! stack unchanged, which then answers as a router would (ICMP unreachable / frag needed).

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{bpf_fib_lookup, bpf_redir_neigh, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_OK},
    helpers::generated::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use beeline_common::datapath::drop_reason;

use crate::{drop::drop, forward::decrement_ttl, parse::Ipv4Hdr};

const AF_INET: u8 = 2;

/// Routes `ip`'s packet, which arrived on `ingress_ifindex`, by the kernel's FIB.
#[inline(always)]
pub fn redirect_v4(ctx: &TcContext, ip: &Ipv4Hdr, ingress_ifindex: u32) -> i32 {
    if ip.ttl <= 1 {
        return TC_ACT_OK;
    }
    // SAFETY: all-zero is a valid bpf_fib_lookup (integers and unions of integers).
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = ip.protocol;
    params.__bindgen_anon_1.tot_len = u16::from_be_bytes(ip.tot_len);
    params.ifindex = ingress_ifindex;
    params.__bindgen_anon_2.tos = ip.tos;
    params.__bindgen_anon_3.ipv4_src = ip.saddr_be();
    params.__bindgen_anon_4.ipv4_dst = ip.daddr_be();
    // SAFETY: `params` lives on the stack for the call; size is the full struct.
    let ret = unsafe {
        fib_lookup(ctx.skb.skb as *mut c_void, &mut params, core::mem::size_of::<bpf_fib_lookup>() as i32, 0)
    };
    let ret = match u32::try_from(ret) {
        Ok(r) => r,
        Err(_) => return TC_ACT_OK,
    };
    if ret != BPF_FIB_LKUP_RET_SUCCESS && ret != BPF_FIB_LKUP_RET_NO_NEIGH {
        return TC_ACT_OK;
    }
    if decrement_ttl(ctx, ip).is_err() {
        return drop(ctx, drop_reason::WRITE_ERROR);
    }
    if ret == BPF_FIB_LKUP_RET_SUCCESS {
        let macs: [[u8; 6]; 2] = [params.dmac, params.smac];
        if ctx.store(0, &macs, 0).is_err() {
            return drop(ctx, drop_reason::WRITE_ERROR);
        }
        // SAFETY: plain helper call.
        return unsafe { bpf_redirect(params.ifindex, 0) as i32 };
    }
    // No neighbour entry yet: the lookup left the next hop in `ipv4_dst`.
    // SAFETY: all-zero is valid; reading the union member the lookup wrote.
    let mut nh: bpf_redir_neigh = unsafe { core::mem::zeroed() };
    nh.nh_family = u32::from(AF_INET);
    nh.__bindgen_anon_1.ipv4_nh = unsafe { params.__bindgen_anon_4.ipv4_dst };
    // SAFETY: `nh` lives on the stack for the call.
    unsafe { bpf_redirect_neigh(params.ifindex, &mut nh, core::mem::size_of::<bpf_redir_neigh>() as i32, 0) as i32 }
}
