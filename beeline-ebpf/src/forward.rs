//! Forwarding decisions shared by the programs: delivery to a local endpoint and encapsulation
//! towards a remote node.

use aya_ebpf::{
    bindings::{bpf_tunnel_key, BPF_F_ZERO_CSUM_TX, TC_ACT_OK},
    helpers::generated::{bpf_redirect, bpf_redirect_peer, bpf_skb_set_tunnel_key},
    programs::TcContext,
};
use beeline_common::{
    datapath::{drop_reason, DatapathConfig, CONFIG_F_NO_PEER_REDIRECT, TUNNEL_NONE},
    endpoint::EndpointInfo,
    events::point,
    ipcache::FLAG_SKIP_TUNNEL,
};

use crate::{
    drop::drop,
    events, lookup,
    parse::{Ipv4Hdr, Ipv6Hdr, IPV4_CSUM_OFF, IPV4_TTL_OFF, IPV6_HOP_LIMIT_OFF},
};

/// TTL of the outer header of tunnelled packets.
const TUNNEL_TTL: u8 = 64;

/// Delivers an IPv4 packet to local endpoint `ep`: decrement the TTL (we route, as Cilium does —
/// pods see `ttl=63` from a pod on the same node), rewrite the MACs to gateway → pod, and hand it
/// to the pod.
///
/// Delivery uses `bpf_redirect_peer` by default: the packet moves straight to the ingress of the
/// pod's `eth0` (the veth peer) in the pod's namespace, skipping the host-side veth's transmit
/// path and the per-CPU backlog queue — what Cilium does for to-container delivery from tc
/// ingress hooks (here: `from_container` on the sender's veth and `from_overlay` on the tunnel
/// device, both ingress). The kernel only allows it from tc ingress and only into another
/// namespace, which is always the case for pods. Consequence: the destination's host-side veth
/// egress hook (`to_container`) does not run, so ingress policy has to run in this program before
/// the redirect (it will, with the policy map). `CONFIG_F_NO_PEER_REDIRECT` falls back to a plain
/// `bpf_redirect` to the host-side veth's egress.
#[inline(always)]
pub fn to_local_endpoint(ctx: &TcContext, ip: &Ipv4Hdr, ep: &EndpointInfo, config: &DatapathConfig) -> i32 {
    if ip.ttl <= 1 {
        // Let the kernel answer with ICMP time exceeded, as a router would.
        return TC_ACT_OK;
    }
    if decrement_ttl(ctx, ip).is_err() {
        return drop(ctx, drop_reason::WRITE_ERROR);
    }
    events::trace(ctx, point::TO_ENDPOINT, 0, ep.sec_id);
    deliver(ctx, ep, config)
}

/// [`to_local_endpoint`] for IPv6: hop limit − 1 (IPv6 has no header checksum to fix), MACs,
/// redirect. No trace event: flow events carry IPv4 addresses only (see `events.rs`).
#[inline(always)]
pub fn to_local_endpoint6(ctx: &TcContext, ip: &Ipv6Hdr, ep: &EndpointInfo, config: &DatapathConfig) -> i32 {
    if ip.hop_limit <= 1 {
        // The kernel answers with ICMPv6 time exceeded.
        return TC_ACT_OK;
    }
    if decrement_hop_limit(ctx, ip).is_err() {
        return drop(ctx, drop_reason::WRITE_ERROR);
    }
    deliver(ctx, ep, config)
}

/// Hop limit − 1; the caller has checked `hop_limit > 1`.
#[inline(always)]
pub fn decrement_hop_limit(ctx: &TcContext, ip: &Ipv6Hdr) -> Result<(), ()> {
    ctx.store(IPV6_HOP_LIMIT_OFF, &(ip.hop_limit - 1), 0).map_err(|_| ())
}

/// The last step of local delivery, the same for both families: MACs gateway → pod, then into
/// the pod (see [`to_local_endpoint`] for the choice of redirect).
#[inline(always)]
fn deliver(ctx: &TcContext, ep: &EndpointInfo, config: &DatapathConfig) -> i32 {
    let macs: [[u8; 6]; 2] = [ep.mac, ep.node_mac];
    if ctx.store(0, &macs, 0).is_err() {
        return drop(ctx, drop_reason::WRITE_ERROR);
    }
    // SAFETY: plain helper calls.
    unsafe {
        if config.flags & CONFIG_F_NO_PEER_REDIRECT != 0 {
            bpf_redirect(ep.ifindex, 0) as i32
        } else {
            bpf_redirect_peer(ep.ifindex, 0) as i32
        }
    }
}

/// TTL − 1 with the IPv4 checksum fixed up incrementally; the caller has checked `ttl > 1`.
#[inline(always)]
pub fn decrement_ttl(ctx: &TcContext, ip: &Ipv4Hdr) -> Result<(), ()> {
    let old = u16::from_ne_bytes([ip.ttl, ip.protocol]);
    let new = u16::from_ne_bytes([ip.ttl - 1, ip.protocol]);
    ctx.l3_csum_replace(IPV4_CSUM_OFF, u64::from(old), u64::from(new), 2).map_err(|_| ())?;
    ctx.store(IPV4_TTL_OFF, &(ip.ttl - 1), 0).map_err(|_| ())
}

/// Where a remote destination lives: the node IP to tunnel to (network byte order), if any.
#[inline(always)]
pub fn tunnel_endpoint(dst_be: u32, config: &DatapathConfig) -> Option<u32> {
    if let Some(info) = lookup::ipcache(dst_be) {
        if info.flags & FLAG_SKIP_TUNNEL != 0 {
            return None;
        }
        if info.tunnel_endpoint != 0 {
            return Some(info.tunnel_endpoint);
        }
    }
    lookup::tunnel(dst_be, config.pod_cidr_prefix_len).map(|v| v.ip4).filter(|ip| *ip != 0)
}

/// [`tunnel_endpoint`] for an IPv6 destination. The answer is still the node's IPv4 underlay
/// address: the outer header stays IPv4, so dual-stack pods talk over the same VXLAN mesh.
#[inline(always)]
pub fn tunnel_endpoint6(dst: [u8; 16], config: &DatapathConfig) -> Option<u32> {
    if let Some(info) = lookup::ipcache6(dst) {
        if info.flags & FLAG_SKIP_TUNNEL != 0 {
            return None;
        }
        if info.tunnel_endpoint != 0 {
            return Some(info.tunnel_endpoint);
        }
    }
    lookup::tunnel6(dst, config.pod_cidr6_prefix_len).map(|v| v.ip4).filter(|ip| *ip != 0)
}

/// Sends the packet to `node_be` through the node's tunnel device with the source's identity as
/// VNI (24 bits, like Cilium). The tunnel device (collect-metadata mode) builds the outer
/// headers from the key. In native-routing mode the packet goes to the stack instead.
#[inline(always)]
pub fn to_remote_node(ctx: &TcContext, node_be: u32, src_identity: u32, config: &DatapathConfig) -> i32 {
    if config.tunnel_proto == TUNNEL_NONE {
        return TC_ACT_OK;
    }
    if config.tunnel_ifindex == 0 {
        return drop(ctx, drop_reason::NO_TUNNEL_ENDPOINT);
    }
    // SAFETY: an all-zero bpf_tunnel_key is valid (plain integers and unions of integers).
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    key.tunnel_id = src_identity & 0x00ff_ffff;
    // The helper takes the remote address in host byte order.
    key.__bindgen_anon_1.remote_ipv4 = u32::from_be(node_be);
    key.tunnel_ttl = TUNNEL_TTL;
    // SAFETY: `key` lives on the stack for the call; size is the full struct.
    let ret = unsafe {
        bpf_skb_set_tunnel_key(
            ctx.skb.skb,
            &mut key,
            core::mem::size_of::<bpf_tunnel_key>() as u32,
            u64::from(BPF_F_ZERO_CSUM_TX),
        )
    };
    if ret < 0 {
        return drop(ctx, drop_reason::WRITE_ERROR);
    }
    events::trace(ctx, point::TO_OVERLAY, src_identity, 0);
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(config.tunnel_ifindex, 0) as i32 }
}
