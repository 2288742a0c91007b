//! NDP responder for the pods' gateway: IPv6's counterpart of [`crate::arp`].
//!
//! A pod resolves its IPv6 gateway (the router IPv6 on `cilium_host`) with a Neighbor
//! Solicitation and gets a Neighbor Advertisement carrying the MAC of *its own host-side veth*, as
//! Cilium's `icmp6_handle_ns` does. Flags as Cilium sets them: Router + Solicited for the router
//! address; Solicited + Override for any other target. Cilium answers only the router and local
//! endpoints and drops other targets; like our ARP responder (and Cilium's ARP responder) we
//! answer every target but the pod's own addresses, so a pod whose route points at another
//! gateway, or at a peer "on link", still sends everything to its veth (docs/decisions.md).
//!
//! Left to the stack: duplicate address detection (source `::`), solicitations for the pod's own
//! addresses, and requests we cannot vouch for (a global source that is not the endpoint behind
//! this veth; a link-local source asking by multicast, see [`our_mac`]).
//!
//! The advertisement is written over the solicitation, resized to exactly NA + one target
//! link-layer option (so solicitations with or without a source link-layer option come out the
//! same), with its checksum computed from scratch, and sent back out of the veth it came in on.

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_OK},
    helpers::generated::{bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use beeline_common::datapath::drop_reason;

use crate::{
    drop::drop,
    icmp::checksum,
    lookup,
    parse::{
        self, is_link_local, is_multicast, is_unspecified, EthHdr, Ipv6Hdr, ETH_P_IPV6, ICMP6_NEIGHBOR_ADVERT,
        IPPROTO_ICMPV6, IPV6_L4_OFF,
    },
};

/// RFC 4861: every ND message is sent, and must arrive, with hop limit 255.
const ND_HOP_LIMIT: u8 = 255;
/// NA flags (first byte after the checksum).
const NA_ROUTER: u8 = 0x80;
const NA_SOLICITED: u8 = 0x40;
const NA_OVERRIDE: u8 = 0x20;
/// Option "target link-layer address", 1 unit of 8 bytes.
const OPT_TARGET_LL: u8 = 2;

/// NS and NA share this layout: type, code, checksum, flags/reserved, target address.
#[repr(C)]
#[derive(Clone, Copy)]
struct NdMsg {
    ty: u8,
    code: u8,
    csum: [u8; 2],
    flags: [u8; 4],
    target: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct LlOption {
    ty: u8,
    len: u8,
    mac: [u8; 6],
}

/// The ICMPv6 part of the advertisement: what the payload length counts.
#[repr(C)]
#[derive(Clone, Copy)]
struct Advert {
    msg: NdMsg,
    opt: LlOption,
}

const ADVERT_LEN: usize = core::mem::size_of::<Advert>();

/// The advertisement's checksum input (RFC 8200 §8.1 pseudo-header, then the message).
#[repr(C)]
#[derive(Clone, Copy)]
struct Summed {
    src: [u8; 16],
    dst: [u8; 16],
    len: [u8; 4],
    zero: [u8; 3],
    next_header: u8,
    advert: Advert,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Frame {
    eth: EthHdr,
    ip: Ipv6Hdr,
    advert: Advert,
}

const FRAME_LEN: u32 = core::mem::size_of::<Frame>() as u32;

/// Answers the Neighbor Solicitation in this frame (the caller saw ICMPv6 type 135) arriving on
/// the host-side veth `ifindex`, or leaves it to the stack. Not inlined: the two copies of the
/// message it builds would otherwise sit on `from_container`'s stack.
#[inline(never)]
pub fn handle(skb: *mut __sk_buff, ifindex: u32) -> i32 {
    let ctx = TcContext::new(skb);
    let (Ok(eth), Ok(ip), Ok(ns)) = (parse::eth(&ctx), parse::ipv6(&ctx), ctx.load::<NdMsg>(IPV6_L4_OFF)) else {
        return drop(&ctx, drop_reason::INVALID);
    };
    // Malformed solicitations are the stack's to discard (it validates and counts them).
    if ns.code != 0 || ip.hop_limit != ND_HOP_LIMIT || is_unspecified(&ip.saddr) || is_multicast(&ns.target) {
        return TC_ACT_OK;
    }
    let Some(mac) = our_mac(&eth, &ip, ifindex) else {
        return TC_ACT_OK;
    };
    if ns.target == ip.saddr || lookup::endpoint6(ns.target).is_some_and(|ep| ep.ifindex == ifindex) {
        // The pod checks its own address.
        return TC_ACT_OK;
    }
    let flags =
        if ns.target == lookup::config().router_ip6 { NA_ROUTER | NA_SOLICITED } else { NA_SOLICITED | NA_OVERRIDE };
    let mut summed = Summed {
        src: ns.target,
        dst: ip.saddr,
        len: (ADVERT_LEN as u32).to_be_bytes(),
        zero: [0; 3],
        next_header: IPPROTO_ICMPV6,
        advert: Advert {
            msg: NdMsg { ty: ICMP6_NEIGHBOR_ADVERT, code: 0, csum: [0; 2], flags: [flags, 0, 0, 0], target: ns.target },
            opt: LlOption { ty: OPT_TARGET_LL, len: 1, mac },
        },
    };
    let csum = checksum(&mut summed as *mut Summed as *mut u32, core::mem::size_of::<Summed>() as u32);
    summed.advert.msg.csum = csum.to_ne_bytes();
    let frame = Frame {
        eth: EthHdr { dst: eth.src, src: mac, proto: ETH_P_IPV6.to_be_bytes() },
        ip: Ipv6Hdr {
            vtc_flow: [0x60, 0, 0, 0],
            payload_len: (ADVERT_LEN as u16).to_be_bytes(),
            next_header: IPPROTO_ICMPV6,
            hop_limit: ND_HOP_LIMIT,
            saddr: ns.target,
            daddr: ip.saddr,
        },
        advert: summed.advert,
    };
    // SAFETY: plain helper call on this invocation's skb.
    if unsafe { bpf_skb_change_tail(skb, FRAME_LEN, 0) } < 0 || ctx.store(0, &frame, 0).is_err() {
        return drop(&ctx, drop_reason::WRITE_ERROR);
    }
    // Out of the same device (egress), back to the pod.
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

/// The MAC to advertise — the host-side veth's — if the solicitation comes from the pod behind
/// `ifindex`. A global source must be that endpoint's address (its row carries the MAC). A
/// link-local source has no row; the kernel uses it for unicast reachability probes of a
/// neighbour it already knows, sent to the MAC it has cached, which is the veth's: the frame's
/// destination is the answer. A link-local multicast solicitation carries no such hint and goes
/// to the stack (Linux solicits from the global address when a packet from it waits).
#[inline(always)]
fn our_mac(eth: &EthHdr, ip: &Ipv6Hdr, ifindex: u32) -> Option<[u8; 6]> {
    if is_link_local(&ip.saddr) {
        return (eth.dst[0] & 1 == 0).then_some(eth.dst);
    }
    lookup::endpoint6(ip.saddr).filter(|ep| ep.ifindex == ifindex).map(|ep| ep.node_mac)
}

// `bpf_csum_diff` sums whole 32-bit words.
const _: () = assert!(core::mem::size_of::<Summed>() % 4 == 0);
