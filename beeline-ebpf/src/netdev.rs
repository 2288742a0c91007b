//! `from_netdev` (tc ingress) and `to_netdev` (tc egress) on the node's uplink(s) — the devices
//! of Cilium's `devices` key.
//!
//! - `to_netdev` masquerades pod traffic leaving the cluster to the node IP ([`crate::nat`]);
//! - `from_netdev` reverses that translation for replies and delivers them to the pod, and —
//!   in native routing, where peers route our pod CIDR to this node — delivers packets for local
//!   pods straight to their veth peer (the node namespace has no routes to individual pods),
//!   after the pod's ingress policy ([`crate::policy::ingress_from_netdev`]).
//!
//! - `from_netdev` also balances NodePort / LoadBalancer / externalIP traffic from outside
//!   ([`crate::lb::from_netdev`], [`crate::nodeport`]) and returns the replies of remote backends.
//!
//! - IPv6: `from_netdev` delivers packets for local pods the same way ([`ipv6`]); IPv6 NodePort
//!   and masquerading are out of scope for now.
//!
//! Anything else passes unchanged: the uplink carries the node's own traffic too.

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_OK},
    macros::classifier,
    programs::TcContext,
};
use beeline_common::{
    datapath::{DatapathConfig, CONFIG_F_MASQUERADE},
    endpoint::ENDPOINT_F_HOST,
    events::point,
    ipcache::{IDENTITY_SCOPE_LOCAL, IDENTITY_UNKNOWN, IDENTITY_WORLD},
};

use crate::{
    drop::drop,
    events, forward,
    lb::{self, Next},
    lb6, lookup,
    nat::{self, SnatTarget},
    nodeport,
    parse::{self, Ipv4Hdr, ETH_P_IP, ETH_P_IPV6},
    policy,
};

#[inline(always)]
fn ipv4_frame(ctx: &TcContext) -> Option<Ipv4Hdr> {
    let eth = parse::eth(ctx).ok()?;
    if eth.proto() != ETH_P_IP {
        return None;
    }
    parse::ipv4(ctx).ok()
}

#[classifier]
pub fn to_netdev(ctx: TcContext) -> i32 {
    let config = lookup::config();
    if config.flags & CONFIG_F_MASQUERADE == 0 || config.node_ip == 0 {
        return TC_ACT_OK;
    }
    let Some(ip) = ipv4_frame(&ctx) else {
        return TC_ACT_OK;
    };
    if !needs_masquerade(&ip, &config) {
        return TC_ACT_OK;
    }
    let target = SnatTarget { addr_be: config.node_ip, port_min: config.nat_port_min, port_max: config.nat_port_max };
    match nat::snat_v4(&ctx, &ip, &target) {
        Ok(()) => events::pass(&ctx, point::TO_NETWORK, 0, 0),
        Err(reason) => drop(&ctx, reason),
    }
}

/// Pod source, destination outside the cluster: not in the native-routing CIDR, not a local
/// endpoint, and not an ipcache entry with a cluster identity (pods, nodes); the world entry, a
/// CIDR identity or no entry at all means outside.
#[inline(always)]
fn needs_masquerade(ip: &Ipv4Hdr, config: &DatapathConfig) -> bool {
    let (src, dst) = (ip.saddr_be(), ip.daddr_be());
    match lookup::endpoint(src) {
        Some(ep) if ep.flags & ENDPOINT_F_HOST == 0 => {}
        _ => return false,
    }
    if config.in_native_cidr(dst) || lookup::endpoint(dst).is_some() {
        return false;
    }
    match lookup::ipcache(dst) {
        // A CIDR identity (a policy's prefix) is still outside the cluster.
        Some(info) => {
            info.sec_identity == IDENTITY_WORLD
                || info.sec_identity == IDENTITY_UNKNOWN
                || info.sec_identity & IDENTITY_SCOPE_LOCAL != 0
        }
        None => true,
    }
}

#[classifier]
pub fn from_netdev(ctx: TcContext) -> i32 {
    // The kernel's parse of the ethertype, not a copy of the header: this frame stays empty, so
    // the IPv4 path below keeps the whole stack limit.
    // SAFETY: `skb` is the kernel's __sk_buff for this invocation.
    if u16::from_be(unsafe { (*ctx.skb.skb).protocol } as u16) == ETH_P_IPV6 {
        return ipv6(ctx.skb.skb);
    }
    ipv4(ctx.skb.skb)
}

/// IPv4 on the uplink, in a frame of its own (see [`ipv6`]).
#[inline(never)]
fn ipv4(skb: *mut __sk_buff) -> i32 {
    let ctx = TcContext::new(skb);
    let Some(ip) = ipv4_frame(&ctx) else {
        return TC_ACT_OK;
    };
    // A receive point: reported at `monitor-aggregation: none` only, as in Cilium.
    events::trace(&ctx, point::FROM_NETWORK, 0, 0);
    let config = lookup::config();
    // SAFETY: `skb` is the kernel's __sk_buff for this invocation.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // NodePort / LoadBalancer / externalIP from outside ([`crate::nodeport`]).
    match lb::from_netdev(&ctx, &ip, ifindex) {
        Some(Next::Forward(backend)) => return nodeport::to_backend(&ctx, &ip, backend, &config, ifindex),
        Some(Next::Verdict(verdict)) => return verdict,
        None => {}
    }
    let mut dst = ip.daddr_be();
    // Replies to translated flows (pod masquerading, NodePort SNAT) come back to the node IP.
    if dst == config.node_ip && dst != 0 {
        match nat::rev_snat_v4(&ctx, &ip) {
            Ok(Some(original)) => dst = original,
            Ok(None) => return TC_ACT_OK,
            Err(reason) => return drop(&ctx, reason),
        }
    }
    // With native routing a remote backend's reply to a local client of a ClusterIP comes in here
    // (with a tunnel it comes from the overlay): give it its frontend back before delivery, or
    // the client sees an answer from an address it never called and resets the connection.
    // (Not after a rev-SNAT above: `ip` no longer describes that packet, and NodePort replies get
    // their frontend back in `nodeport::reply_to_client`.)
    if dst == ip.daddr_be() {
        if let Err(verdict) = lb::from_overlay(&ctx, &ip) {
            return verdict;
        }
    }
    match lookup::endpoint(dst) {
        Some(ep) if ep.flags & ENDPOINT_F_HOST == 0 => {
            let translated = Ipv4Hdr { daddr: dst.to_ne_bytes(), ..ip };
            if let Some(verdict) = policy::ingress_from_netdev(&ctx, &ep, &translated) {
                return verdict;
            }
            forward::to_local_endpoint(&ctx, &ip, &ep, &config)
        }
        _ if dst != ip.daddr_be() => {
            // Not a pod: a remote backend's reply to a NodePort client.
            nodeport::reply_to_client(&ctx, &Ipv4Hdr { daddr: dst.to_ne_bytes(), ..ip }, ifindex)
        }
        _ => TC_ACT_OK,
    }
}

/// IPv6 on the uplink: in native routing, peers route our IPv6 pod CIDR to this node; a packet
/// for a local pod gets a remote backend's reply translated back ([`crate::lb6::from_overlay`]),
/// the pod's ingress policy, and delivery. NodePort and masquerading do not exist for IPv6 yet,
/// so everything else is the node's own traffic. Not inlined: keeps its locals off the IPv4 path.
#[inline(never)]
fn ipv6(skb: *mut __sk_buff) -> i32 {
    let ctx = TcContext::new(skb);
    let Ok(ip) = parse::ipv6(&ctx) else {
        return TC_ACT_OK;
    };
    if ip.is_link_scope() {
        return TC_ACT_OK;
    }
    let Some(ep) = lookup::endpoint6(ip.daddr).filter(|ep| ep.flags & ENDPOINT_F_HOST == 0) else {
        return TC_ACT_OK;
    };
    if let Err(verdict) = lb6::from_overlay(&ctx) {
        return verdict;
    }
    if let Some(verdict) = policy::ingress_from_netdev6(&ctx, &ep, &ip) {
        return verdict;
    }
    forward::to_local_endpoint6(&ctx, &ip, &ep, &lookup::config())
}
