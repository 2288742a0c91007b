//! Native routing: hand a packet to the kernel's routing table from BPF (Cilium's
//! `fib_redirect_v4` / `fib_redirect_v6`). `bpf_fib_lookup` resolves the route (and the
//! neighbour, when known); the packet is redirected straight to the egress device — with MACs
//! filled in, or through `bpf_redirect_neigh`, which resolves the next hop's MAC (ARP or NDP)
//! itself. Whatever the lookup cannot forward (the node's own addresses, no route, MTU exceeded,
//! forwarding disabled) goes to the stack unchanged, which then answers as a router would (ICMP
//! unreachable / frag needed / packet too big).

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{bpf_fib_lookup, bpf_redir_neigh, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_OK},
    helpers::generated::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use beeline_common::{datapath::drop_reason, split_ipv6};

use crate::{
    drop::drop,
    forward::{decrement_hop_limit, decrement_ttl},
    parse::{Ipv4Hdr, Ipv6Hdr, IPV6_HLEN},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

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
    let Some(found) = lookup(ctx, &mut params) else {
        return TC_ACT_OK;
    };
    if decrement_ttl(ctx, ip).is_err() {
        return drop(ctx, drop_reason::WRITE_ERROR);
    }
    redirect(ctx, &params, found, AF_INET)
}

/// [`redirect_v4`] for IPv6: the hop limit instead of the TTL (no header checksum), and
/// `bpf_redirect_neigh` resolves an IPv6 next hop by NDP.
#[inline(always)]
pub fn redirect_v6(ctx: &TcContext, ip: &Ipv6Hdr, ingress_ifindex: u32) -> i32 {
    if ip.hop_limit <= 1 {
        return TC_ACT_OK;
    }
    // SAFETY: all-zero is a valid bpf_fib_lookup (integers and unions of integers).
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET6;
    params.l4_protocol = ip.next_header;
    params.__bindgen_anon_1.tot_len = (IPV6_HLEN + ip.payload_len()) as u16;
    params.ifindex = ingress_ifindex;
    // Traffic class and flow label, as the packet carries them (the kernel masks the version).
    params.__bindgen_anon_2.flowinfo = u32::from_ne_bytes(ip.vtc_flow) & u32::from_be(0x0fff_ffff);
    params.__bindgen_anon_3.ipv6_src = words(ip.saddr);
    params.__bindgen_anon_4.ipv6_dst = words(ip.daddr);
    let Some(found) = lookup(ctx, &mut params) else {
        return TC_ACT_OK;
    };
    if decrement_hop_limit(ctx, ip).is_err() {
        return drop(ctx, drop_reason::WRITE_ERROR);
    }
    redirect(ctx, &params, found, AF_INET6)
}

/// An IPv6 address as the helper's `__be32[4]` (each word's memory in network order).
#[inline(always)]
fn words(addr: [u8; 16]) -> [u32; 4] {
    let (first, rest) = split_ipv6(addr);
    [first, rest[0], rest[1], rest[2]]
}

/// The FIB lookup: `Some(return code)` when the packet can be forwarded from here (a route with
/// or without a resolved neighbour), `None` when the stack should have it.
#[inline(always)]
fn lookup(ctx: &TcContext, params: &mut bpf_fib_lookup) -> Option<u32> {
    // SAFETY: `params` lives on the stack for the call; size is the full struct.
    let ret =
        unsafe { fib_lookup(ctx.skb.skb as *mut c_void, params, core::mem::size_of::<bpf_fib_lookup>() as i32, 0) };
    u32::try_from(ret).ok().filter(|r| *r == BPF_FIB_LKUP_RET_SUCCESS || *r == BPF_FIB_LKUP_RET_NO_NEIGH)
}

/// Out of the route's device: with the neighbour's MAC when the lookup knew it, else through
/// `bpf_redirect_neigh` towards the next hop, which the lookup left in the destination field.
#[inline(always)]
fn redirect(ctx: &TcContext, params: &bpf_fib_lookup, found: u32, family: u8) -> i32 {
    if found == BPF_FIB_LKUP_RET_SUCCESS {
        let macs: [[u8; 6]; 2] = [params.dmac, params.smac];
        if ctx.store(0, &macs, 0).is_err() {
            return drop(ctx, drop_reason::WRITE_ERROR);
        }
        // SAFETY: plain helper call.
        return unsafe { bpf_redirect(params.ifindex, 0) as i32 };
    }
    // SAFETY: all-zero is valid; reading the union member the lookup wrote (the next hop).
    let mut nh: bpf_redir_neigh = unsafe { core::mem::zeroed() };
    nh.nh_family = u32::from(family);
    if family == AF_INET6 {
        nh.__bindgen_anon_1.ipv6_nh = unsafe { params.__bindgen_anon_4.ipv6_dst };
    } else {
        nh.__bindgen_anon_1.ipv4_nh = unsafe { params.__bindgen_anon_4.ipv4_dst };
    }
    // SAFETY: `nh` lives on the stack for the call.
    unsafe { bpf_redirect_neigh(params.ifindex, &mut nh, core::mem::size_of::<bpf_redir_neigh>() as i32, 0) as i32 }
}
