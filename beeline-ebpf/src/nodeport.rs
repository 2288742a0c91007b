//! NodePort, LoadBalancer and externalIP traffic from outside the cluster (Cilium's
//! `lib/nodeport.h`, SNAT mode, no DSR): what `from_netdev` does after [`crate::lb::from_netdev`]
//! has chosen and DNATed a backend, and with a remote backend's reply.
//!
//! - local backend: delivered straight to its pod (ingress policy with the client's identity); the
//!   client's address is kept, so the pod sees who connected (`externalTrafficPolicy: Local` always
//!   lands here);
//! - remote backend: the source is translated to this node's IP with the masquerading machinery
//!   ([`crate::nat`]), so the reply comes back through this node, then the packet is tunnelled
//!   (identity `world`, as Cilium) or routed by the FIB;
//! - the reply reaches the uplink addressed to the node IP: rev-SNAT (in `from_netdev`), then the
//!   connection entry turns the source back into the frontend, and the FIB sends it out to the
//!   client — not through the stack, which drops a packet whose source is its own address.

use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use beeline_common::{
    datapath::{DatapathConfig, TUNNEL_NONE},
    endpoint::ENDPOINT_F_HOST,
    ipcache::IDENTITY_WORLD,
};

use crate::{
    drop::drop,
    fib, forward, lb, lookup,
    nat::{self, SnatTarget},
    parse::Ipv4Hdr,
    policy,
};

/// Forwards a packet `lb::from_netdev` has DNATed to `backend_be`; `ip` is its header before DNAT.
#[inline(always)]
pub fn to_backend(ctx: &TcContext, ip: &Ipv4Hdr, backend_be: u32, config: &DatapathConfig, ifindex: u32) -> i32 {
    let ip = Ipv4Hdr { daddr: backend_be.to_ne_bytes(), ..*ip };
    if let Some(ep) = lookup::endpoint(backend_be) {
        if ep.flags & ENDPOINT_F_HOST != 0 {
            // A host-network backend on this node: the stack delivers it.
            return TC_ACT_OK;
        }
        // The backend's ingress policy, with the client's identity from the ipcache; an allowed
        // connection is tracked so the backend's replies pass its egress policy.
        if let Some(verdict) = policy::ingress_from_netdev(ctx, &ep, &ip) {
            return verdict;
        }
        return forward::to_local_endpoint(ctx, &ip, &ep, config);
    }
    let target = SnatTarget { addr_be: config.node_ip, port_min: config.nat_port_min, port_max: config.nat_port_max };
    if let Err(reason) = nat::snat_v4(ctx, &ip, &target) {
        return drop(ctx, reason);
    }
    let ip = Ipv4Hdr { saddr: config.node_ip.to_ne_bytes(), ..ip };
    if config.tunnel_proto != TUNNEL_NONE {
        if let Some(node) = forward::tunnel_endpoint(backend_be, config) {
            return forward::to_remote_node(ctx, node, IDENTITY_WORLD, config);
        }
    }
    fib::redirect_v4(ctx, &ip, ifindex)
}

/// A packet whose destination rev-SNAT restored to `ip.daddr` (not a local pod): when it answers a
/// connection balanced here, its source becomes the frontend again and it is routed to the client.
#[inline(always)]
pub fn reply_to_client(ctx: &TcContext, ip: &Ipv4Hdr, ifindex: u32) -> i32 {
    match lb::reply_from_backend(ctx, ip) {
        None => TC_ACT_OK,
        Some(Err(verdict)) => verdict,
        Some(Ok(frontend)) => fib::redirect_v4(ctx, &Ipv4Hdr { saddr: frontend.to_ne_bytes(), ..*ip }, ifindex),
    }
}
