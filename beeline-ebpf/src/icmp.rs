//! ICMP errors the datapath answers itself: "destination unreachable / port unreachable" for a
//! service frontend without backends (Cilium's `tail_no_service_ipv4` with the default
//! `service-no-backend-response: reject`), so clients fail fast (`ECONNREFUSED`) instead of waiting
//! for a timeout.
//!
//! The request is rewritten in place into the reply (resized to 70 bytes: Ethernet, IPv4, ICMP, the
//! original IPv4 header and the first 8 bytes of its payload, RFC 792) and sent back out of the
//! interface it came in on.

use aya_ebpf::{
    helpers::generated::{bpf_csum_diff, bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use beeline_common::datapath::drop_reason;

use crate::{
    drop::{self, drop},
    parse::{EthHdr, Ipv4Hdr, ETH_HLEN, ETH_P_IP, IPPROTO_ICMP},
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;
const REPLY_TTL: u8 = 64;

#[repr(C)]
#[derive(Clone, Copy)]
struct Reply {
    eth: EthHdr,
    ip: Ipv4Hdr,
    /// type, code, checksum, unused — followed by the quoted datagram, which the checksum covers.
    icmp: [u8; 8],
    quoted_ip: Ipv4Hdr,
    quoted_l4: [u8; 8],
}

const REPLY_LEN: u32 = core::mem::size_of::<Reply>() as u32;
const ICMP_LEN: u32 = 8 + 20 + 8;

/// Answers the IPv4 packet `ip` (already validated, with at least 8 bytes of L4 header at
/// `l4_offset`) with a port unreachable from its destination, out of `ifindex`. Counted as a
/// `NO_SERVICE` drop of the original packet.
#[inline(always)]
pub fn port_unreachable(ctx: &TcContext, ip: &Ipv4Hdr, l4_offset: usize, ifindex: u32) -> i32 {
    drop::count(ctx, drop_reason::NO_SERVICE);
    let (Ok(eth), Ok(quoted_l4)) = (ctx.load::<EthHdr>(0), ctx.load::<[u8; 8]>(l4_offset)) else {
        return drop(ctx, drop_reason::INVALID);
    };
    let mut quoted_ip = *ip;
    // Only the fixed header is quoted; say so, so the quote parses.
    quoted_ip.version_ihl = 0x45;
    let mut reply = Reply {
        eth: EthHdr { dst: eth.src, src: eth.dst, proto: ETH_P_IP.to_be_bytes() },
        ip: Ipv4Hdr {
            version_ihl: 0x45,
            tos: 0,
            tot_len: ((REPLY_LEN as usize - ETH_HLEN) as u16).to_be_bytes(),
            id: [0; 2],
            frag_off: [0; 2],
            ttl: REPLY_TTL,
            protocol: IPPROTO_ICMP,
            check: [0; 2],
            saddr: ip.daddr,
            daddr: ip.saddr,
        },
        icmp: [ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, 0, 0, 0, 0, 0, 0],
        quoted_ip,
        quoted_l4,
    };
    let icmp_sum = checksum(&mut reply.icmp as *mut [u8; 8] as *mut u32, ICMP_LEN);
    reply.icmp[2..4].copy_from_slice(&icmp_sum.to_ne_bytes());
    let ip_sum = checksum(&mut reply.ip as *mut Ipv4Hdr as *mut u32, 20);
    reply.ip.check = ip_sum.to_ne_bytes();

    // SAFETY: plain helper call on this invocation's skb.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, REPLY_LEN, 0) } < 0 || ctx.store(0, &reply, 0).is_err() {
        return drop(ctx, drop_reason::WRITE_ERROR);
    }
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

/// The Internet checksum of `len` bytes at `ptr` (stack memory, `len` a multiple of 4), ready to
/// store in memory order.
#[inline(always)]
pub fn checksum(ptr: *mut u32, len: u32) -> u16 {
    // SAFETY: `ptr` points at `len` initialised bytes on this program's stack.
    let sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, ptr, len, 0) } as u64;
    let mut folded = (sum & 0xffff) + (sum >> 16);
    folded = (folded & 0xffff) + (folded >> 16);
    folded = (folded & 0xffff) + (folded >> 16);
    !(folded as u16)
}
