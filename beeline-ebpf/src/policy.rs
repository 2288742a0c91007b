//! Policy enforcement: the verdict for a packet leaving an endpoint (egress, in `from_container`)
//! or being delivered to one (ingress, before the redirect into the pod — `to_container` does not
//! run on the `bpf_redirect_peer` path).
//!
//! Layout and semantics are in `beeline_common::policy`: per endpoint and direction, enforcement
//! may be off (allow); otherwise the peer's identity and identity 0 are both looked up in the LPM
//! trie, a deny from either wins, any allow allows, and no match is a default deny. Drops are
//! counted with Cilium's reasons: 181 for an explicit deny, 133 for "nothing allows it".
//!
//! Policy is stateful, as in Cilium: a packet that answers a connection conntrack saw opened
//! (`reply`, from [`crate::conntrack::is_reply`]) skips the lookup in both directions — the
//! connection was allowed when it was opened. New and established packets of the original
//! direction are checked every time, so a policy change also cuts connections that are already
//! open. The caller records the allowed connection ([`crate::conntrack::track_allowed`]) once every
//! check on its path passed.

use aya_ebpf::maps::lpm_trie::Key;
use beeline_common::{
    datapath::drop_reason,
    endpoint::EndpointInfo,
    policy::{
        PolicyEndpointKey, PolicyLpmData, DIR_EGRESS, DIR_INGRESS, EP_F_EGRESS_ENFORCE, EP_F_INGRESS_ENFORCE,
        FULL_PREFIX_BITS, POLICY_F_DENY,
    },
};

use aya_ebpf::programs::TcContext;

use crate::{
    conntrack, conntrack6,
    drop::drop,
    events, lookup,
    maps::{POLICY, POLICY_ENDPOINTS},
    parse::{Ipv4Hdr, Ipv6Hdr, ETH_HLEN, IPPROTO_ICMPV6, IPV6_L4_OFF},
};

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_SCTP: u8 = 132;

/// What a policy key matches on, the same for both families: the protocol and the "port" — the
/// destination port for TCP/UDP/SCTP, the type for ICMP and ICMPv6 (protocol 58), 0 for other
/// protocols and for non-first fragments (which carry no L4 header).
#[derive(Clone, Copy)]
pub struct L4 {
    pub protocol: u8,
    pub port: u16,
}

impl L4 {
    #[inline(always)]
    pub fn ipv4(ctx: &TcContext, ip: &Ipv4Hdr) -> L4 {
        if ip.fragment_offset() != 0 {
            return L4 { protocol: ip.protocol, port: 0 };
        }
        L4::at(ctx, ip.protocol, ETH_HLEN + ip.header_len(), IPPROTO_ICMP)
    }

    /// Extension headers are not walked: a packet that has some is matched on the first one's
    /// number with port 0 (only an L3 rule can allow it).
    #[inline(always)]
    pub fn ipv6(ctx: &TcContext, ip: &Ipv6Hdr) -> L4 {
        L4::at(ctx, ip.next_header, IPV6_L4_OFF, IPPROTO_ICMPV6)
    }

    #[inline(always)]
    fn at(ctx: &TcContext, protocol: u8, l4: usize, icmp: u8) -> L4 {
        let port = match protocol {
            IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => {
                ctx.load::<[u8; 2]>(l4 + 2).map(u16::from_be_bytes).unwrap_or(0)
            }
            p if p == icmp => ctx.load::<u8>(l4).map(u16::from).unwrap_or(0),
            _ => 0,
        };
        L4 { protocol, port }
    }
}

/// What one lookup found, as a number the two lookups can be combined with (`max`): scalars, not
/// the map-value pointers, so the compiler cannot fold the two results into pointer arithmetic the
/// verifier rejects.
const NO_MATCH: u8 = 0;
const ALLOWED: u8 = 1;
const DENIED: u8 = 2;

#[inline(always)]
fn lookup(endpoint_id: u32, identity: u32, egress: u8, protocol: u8, port: u16) -> u8 {
    let key = Key::new(FULL_PREFIX_BITS, PolicyLpmData::lookup(endpoint_id, identity, egress, protocol, port));
    match POLICY.get(&key) {
        Some(entry) if entry.flags & POLICY_F_DENY != 0 => DENIED,
        Some(_) => ALLOWED,
        None => NO_MATCH,
    }
}

/// `None` when the packet may pass, otherwise the drop reason.
///
/// This is the one place where a policy verdict is known (endpoint, direction, peer identity,
/// protocol, port, and the verdict below): a policy-verdict event belongs here.
#[inline(always)]
fn denied(ctx: &TcContext, ep: &EndpointInfo, egress: u8, peer: u32, l4: L4, reply: bool) -> Option<u32> {
    if reply {
        return None;
    }
    let endpoint_id = u32::from(ep.lxc_id);
    let flag = if egress == DIR_EGRESS { EP_F_EGRESS_ENFORCE } else { EP_F_INGRESS_ENFORCE };
    // SAFETY: the value is copied out at once.
    let flags = unsafe { POLICY_ENDPOINTS.get(&PolicyEndpointKey { endpoint_id }).map(|c| c.flags).unwrap_or(0) };
    if flags & flag == 0 {
        return None;
    }
    let specific = lookup(endpoint_id, peer, egress, l4.protocol, l4.port);
    let wildcard = lookup(endpoint_id, 0, egress, l4.protocol, l4.port);
    events::policy_verdict(ctx, ep, egress, peer, specific, wildcard);
    match specific.max(wildcard) {
        DENIED => Some(drop_reason::POLICY_DENY),
        ALLOWED => None,
        _ => Some(drop_reason::POLICY),
    }
}

/// Egress policy of `src` towards a destination of identity `dst_identity`: `Some(verdict)` when
/// the packet was dropped. `reply`: the packet answers a tracked connection.
#[inline(always)]
pub fn egress(ctx: &TcContext, src: &EndpointInfo, l4: L4, dst_identity: u32, reply: bool) -> Option<i32> {
    denied(ctx, src, DIR_EGRESS, dst_identity, l4, reply).map(|reason| drop(ctx, reason))
}

/// Ingress policy of local endpoint `dst` for a packet from identity `src_identity`.
#[inline(always)]
pub fn ingress(ctx: &TcContext, dst: &EndpointInfo, l4: L4, src_identity: u32, reply: bool) -> Option<i32> {
    denied(ctx, dst, DIR_INGRESS, src_identity, l4, reply).map(|reason| drop(ctx, reason))
}

/// Ingress policy for a packet the uplink delivers to local endpoint `dst`: from a pod on another
/// node in native routing, or from outside (replies after reverse masquerading). `ip` carries the
/// destination as translated. No tunnel carries the sender's identity here, so it comes from the
/// ipcache (`world` when unknown), as in Cilium's `from-netdev` path. Records an allowed new
/// connection; `Some(verdict)` when the packet was dropped.
#[inline(always)]
pub fn ingress_from_netdev(ctx: &TcContext, dst: &EndpointInfo, ip: &Ipv4Hdr) -> Option<i32> {
    let reply = conntrack::is_reply(ctx, ip);
    let src_identity = lookup::identity(ip.saddr_be(), None);
    if let Some(verdict) = ingress(ctx, dst, L4::ipv4(ctx, ip), src_identity, reply) {
        return Some(verdict);
    }
    if !reply {
        conntrack::track_allowed(ctx, ip);
    }
    None
}

/// [`ingress_from_netdev`] for IPv6 (from the uplink in native routing; no NodePort/masquerade
/// translation exists for IPv6 yet).
#[inline(always)]
pub fn ingress_from_netdev6(ctx: &TcContext, dst: &EndpointInfo, ip: &Ipv6Hdr) -> Option<i32> {
    let reply = conntrack6::is_reply(ctx);
    let src_identity = lookup::identity6(ip.saddr, None);
    if let Some(verdict) = ingress(ctx, dst, L4::ipv6(ctx, ip), src_identity, reply) {
        return Some(verdict);
    }
    if !reply {
        conntrack6::track_allowed(ctx);
    }
    None
}
