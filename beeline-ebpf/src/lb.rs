//! Per-packet service load balancing (kube-proxy replacement) for IPv4 TCP/UDP, after Cilium's
//! `lib/lb.h` (`lb4_lookup_service` → `lb4_local` → `lb4_xlate`, and `lb4_rev_nat` for replies).
//!
//! Forward path (`from_container`):
//! 1. frontend lookup by (VIP, port, proto) in the external scope; a `TWO_SCOPES` frontend is looked
//!    up again in the internal scope (traffic from a pod is in-cluster traffic, so
//!    `internalTrafficPolicy` applies);
//! 2. `loadBalancerSourceRanges` check for frontends that carry them;
//! 3. the service conntrack entry (client → frontend) pins an established flow to its backend for as
//!    long as the backend exists in the backends map — whether or not it still has a slot, so a
//!    terminating backend keeps its connections while new ones only pick from the master's `count`
//!    active slots;
//! 4. a new flow: ClientIP affinity (valid while within the timeout and the backend is still in the
//!    affinity-match map), else Maglev (per-service or node default) or a random slot; no backend at
//!    all is answered with ICMP port unreachable;
//! 5. the connection conntrack entry (client → backend) remembers the rev-NAT ID, then DNAT.
//!
//! Reply path (`from_container` of a local backend, `from_overlay` for a remote one): the connection
//! entry of the reversed tuple gives the rev-NAT ID, and the source becomes the frontend again.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_NO_PREALLOC, BPF_F_PSEUDO_HDR},
    helpers::generated::bpf_get_prandom_u32,
    macros::map,
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap},
    programs::TcContext,
};
use beeline_common::{
    datapath::drop_reason,
    lb::{
        svc_flags, svc_flags2, Ct4Tuple, Lb4AffinityKey, Lb4Backend, Lb4BackendKey, Lb4Key, Lb4RevNatKey,
        Lb4ReverseNat, Lb4Service, Lb4SrcRangeData, LbAffinityMatchKey, LbAffinityValue, LbConfig, LbMaglevKey,
        AFFINITY_TIMEOUT_MASK, LB_ALG_MAGLEV, LB_ALG_SHIFT, LB_LOOKUP_SCOPE_EXT, LB_LOOKUP_SCOPE_INT,
        SRC_RANGE_STATIC_PREFIX, TUPLE_F_OUT, TUPLE_F_SERVICE,
    },
};

use crate::{
    conntrack::{self, Dir},
    drop::drop,
    events, fib, forward, icmp, lookup,
    parse::{Ipv4Hdr, ETH_HLEN, IPPROTO_TCP, IPPROTO_UDP, IPV4_CSUM_OFF, IPV4_DADDR_OFF, IPV4_SADDR_OFF},
};

// Shapes (type, size, flags) match the map manager's definitions (`src/datapath/manager/maps.rs`),
// which reopen these pins: a mismatch would make the agent recreate them empty.

#[map(name = "beeline_lb4_services")]
static LB4_SERVICES: HashMap<Lb4Key, Lb4Service> = HashMap::with_max_entries(65536, BPF_F_NO_PREALLOC);

#[map(name = "beeline_lb4_backends")]
static LB4_BACKENDS: HashMap<Lb4BackendKey, Lb4Backend> = HashMap::with_max_entries(65536, BPF_F_NO_PREALLOC);

#[map(name = "beeline_lb4_reverse_nat")]
static LB4_REVERSE_NAT: HashMap<Lb4RevNatKey, Lb4ReverseNat> =
    HashMap::with_max_entries(65536, BPF_F_NO_PREALLOC);

#[map(name = "beeline_lb_affinity_match")]
static LB_AFFINITY_MATCH: HashMap<LbAffinityMatchKey, u8> = HashMap::with_max_entries(65536, BPF_F_NO_PREALLOC);

#[map(name = "beeline_lb4_maglev")]
static LB4_MAGLEV: HashMap<LbMaglevKey, u32> = HashMap::with_max_entries(1 << 20, BPF_F_NO_PREALLOC);

/// Written by the datapath only (like Cilium's `cilium_lb4_affinity`).
#[map(name = "beeline_lb4_affinity")]
static LB4_AFFINITY: LruHashMap<Lb4AffinityKey, LbAffinityValue> = LruHashMap::with_max_entries(65536, 0);

#[map(name = "beeline_lb4_source_range")]
static LB4_SOURCE_RANGE: LpmTrie<Lb4SrcRangeData, u8> = LpmTrie::with_max_entries(65536, BPF_F_NO_PREALLOC);

#[map(name = "beeline_lb_config")]
static LB_CONFIG: Array<LbConfig> = Array::with_max_entries(1, 0);

/// What the caller does next.
pub enum Next {
    /// Forward to this destination (network byte order): the backend after DNAT, otherwise the
    /// packet's own destination.
    Forward(u32),
    /// Return this verdict (dropped, or answered).
    Verdict(i32),
}

/// The L4 view of a TCP/UDP packet; addresses and ports as they sit in the packet.
struct Flow {
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
    proto: u8,
    tcp_flags: u8,
    l4_offset: usize,
    csum_offset: usize,
    /// UDP may carry no checksum (0): keep it that way, and never produce 0 (`MARK_MANGLED_0`).
    csum_flags: u64,
    len: u32,
}

impl Flow {
    #[inline(always)]
    fn parse(ctx: &TcContext, ip: &Ipv4Hdr) -> Option<Flow> {
        if ip.fragment_offset() != 0 {
            return None;
        }
        let l4_offset = ETH_HLEN + ip.header_len();
        let (csum_offset, csum_flags, tcp_flags) = match ip.protocol {
            IPPROTO_TCP => (l4_offset + 16, 0, ctx.load::<u8>(l4_offset + 13).ok()?),
            IPPROTO_UDP => (l4_offset + 6, u64::from(BPF_F_MARK_MANGLED_0), 0),
            _ => return None,
        };
        let ports = ctx.load::<[u8; 4]>(l4_offset).ok()?;
        Some(Flow {
            saddr: ip.saddr_be(),
            daddr: ip.daddr_be(),
            sport: u16::from_ne_bytes([ports[0], ports[1]]),
            dport: u16::from_ne_bytes([ports[2], ports[3]]),
            proto: ip.protocol,
            tcp_flags,
            l4_offset,
            csum_offset,
            csum_flags,
            len: ctx.len(),
        })
    }
}

/// Service handling for a packet leaving a pod (the ingress veth is `ifindex`): reverse NAT when it
/// is a backend's reply, DNAT when it is addressed to a frontend.
#[inline(always)]
pub fn from_container(ctx: &TcContext, ip: &Ipv4Hdr, ifindex: u32) -> Next {
    let Some(flow) = Flow::parse(ctx, ip) else {
        return Next::Forward(ip.daddr_be());
    };
    let now = conntrack::now_secs();
    match reply_nat(ctx, &flow, now) {
        Some(Err(verdict)) => return Next::Verdict(verdict),
        Some(Ok(src)) => {
            let config = lookup::config();
            let in_cluster = || {
                lookup::endpoint(flow.daddr).is_some() || forward::tunnel_endpoint(flow.daddr, &config).is_some()
            };
            if src == config.node_ip && src != 0 && !in_cluster() {
                // A NodePort reply to a client outside the cluster now comes from this node's own
                // address: the stack would drop it as a martian (local source arriving on a veth),
                // so it is routed from here, as Cilium's rev-NAT path redirects to the native
                // device. Clients in the cluster (local pods, the tunnel) are forwarded as usual.
                let ip = Ipv4Hdr { saddr: src.to_ne_bytes(), ..*ip };
                return Next::Verdict(fib::redirect_v4(ctx, &ip, ifindex));
            }
            return Next::Forward(flow.daddr);
        }
        None => {}
    }
    let Some((key, svc)) = lookup_service(&flow) else {
        return Next::Forward(flow.daddr);
    };
    if svc.flags & svc_flags::SOURCE_RANGE != 0 && !source_range_allows(&svc, flow.saddr) {
        return Next::Verdict(drop(ctx, drop_reason::NOT_IN_SRC_RANGE));
    }
    let backend = match backend_for(&flow, key, &svc, now) {
        Some(b) => b,
        None if svc.count == 0 => return Next::Verdict(icmp::port_unreachable(ctx, ip, flow.l4_offset, ifindex)),
        None => return Next::Verdict(drop(ctx, drop_reason::NO_SERVICE)),
    };
    match connect(ctx, &flow, &svc, &backend, now) {
        Ok(()) => Next::Forward(backend.address),
        Err(verdict) => Next::Verdict(verdict),
    }
}

/// Service handling for a packet arriving from outside the cluster on an uplink (`ifindex`), after
/// Cilium's `nodeport_lb4`: only the external scope counts (`externalTrafficPolicy`); a frontend
/// that is not reachable from outside (a ClusterIP) is dropped as `IS_CLUSTER_IP`; source ranges
/// apply; with `externalTrafficPolicy: Local` and no backend on this node the packet is dropped
/// (the client's load balancer is meant to follow the health-check node port), any other frontend
/// without backends is rejected with ICMP. `None`: not addressed to a frontend.
#[inline(always)]
pub fn from_netdev(ctx: &TcContext, ip: &Ipv4Hdr, ifindex: u32) -> Option<Next> {
    let flow = Flow::parse(ctx, ip)?;
    let key = Lb4Key {
        address: flow.daddr,
        dport: flow.dport,
        backend_slot: 0,
        proto: flow.proto,
        scope: LB_LOOKUP_SCOPE_EXT,
        pad: [0; 2],
    };
    // SAFETY: copied out at once.
    let Some(svc) = (unsafe { LB4_SERVICES.get(&key).copied() }) else {
        return undeclared_port(ctx, &key);
    };
    if svc.flags & svc_flags::ROUTABLE == 0 {
        return Some(Next::Verdict(drop(ctx, drop_reason::IS_CLUSTER_IP)));
    }
    if svc.flags & svc_flags::SOURCE_RANGE != 0 && !source_range_allows(&svc, flow.saddr) {
        return Some(Next::Verdict(drop(ctx, drop_reason::NOT_IN_SRC_RANGE)));
    }
    let now = conntrack::now_secs();
    let backend = match backend_for(&flow, key, &svc, now) {
        Some(b) => b,
        None if svc.count == 0 && svc.flags & svc_flags::EXT_LOCAL_SCOPE != 0 => {
            return Some(Next::Verdict(drop(ctx, drop_reason::NO_SERVICE)))
        }
        None if svc.count == 0 => {
            return Some(Next::Verdict(icmp::port_unreachable(ctx, ip, flow.l4_offset, ifindex)))
        }
        None => return Some(Next::Verdict(drop(ctx, drop_reason::NO_SERVICE))),
    };
    Some(match connect(ctx, &flow, &svc, &backend, now) {
        Ok(()) => Next::Forward(backend.address),
        Err(verdict) => Next::Verdict(verdict),
    })
}

/// A port no Service declares on a LoadBalancer address: the address's wildcard entry (port 0,
/// protocol 0) says the address is ours, so the packet is dropped rather than handed to the node's
/// own sockets. Anything else (no wildcard) is not a service packet.
#[inline(always)]
fn undeclared_port(ctx: &TcContext, key: &Lb4Key) -> Option<Next> {
    let wildcard = Lb4Key { dport: 0, proto: 0, ..*key };
    // SAFETY: presence check only.
    unsafe { LB4_SERVICES.get(&wildcard) }?;
    Some(Next::Verdict(drop(ctx, drop_reason::NO_SERVICE)))
}

/// Reverse NAT for a packet that may answer a connection balanced on this node (a remote
/// backend's reply arriving on the uplink after rev-SNAT): `Some(Ok(new source))` when it was one.
#[inline(always)]
pub fn reply_from_backend(ctx: &TcContext, ip: &Ipv4Hdr) -> Option<Result<u32, i32>> {
    let flow = Flow::parse(ctx, ip)?;
    reply_nat(ctx, &flow, conntrack::now_secs())
}

/// The connection entry (client → backend, remembering the frontend for replies) and the DNAT.
#[inline(always)]
fn connect(ctx: &TcContext, flow: &Flow, svc: &Lb4Service, backend: &Lb4Backend, now: u32) -> Result<(), i32> {
    let dport = if backend.port != 0 { backend.port } else { flow.dport };
    let tuple = Ct4Tuple {
        daddr: backend.address,
        saddr: flow.saddr,
        dport,
        sport: flow.sport,
        nexthdr: flow.proto,
        flags: TUPLE_F_OUT,
        pad: 0,
    };
    match conntrack::lookup(&tuple, now) {
        Some(entry) if !conntrack::is_reopened(entry, flow.proto, flow.tcp_flags) => {
            conntrack::update(entry, Dir::Original, flow.proto, flow.tcp_flags, flow.len, now)
        }
        _ => {
            let _ = conntrack::create(&tuple, 0, svc.rev_nat_index, flow.proto, flow.tcp_flags, flow.len, now);
        }
    }
    rewrite(ctx, flow, IPV4_DADDR_OFF, flow.daddr, backend.address, flow.l4_offset + 2, flow.dport, dport)
        .map_err(|_| drop(ctx, drop_reason::WRITE_ERROR))?;
    events::service(ctx, flow.daddr, flow.dport);
    Ok(())
}

/// Reverse NAT for packets arriving from the overlay: a remote backend's reply to a local client.
/// `Err` carries a verdict.
#[inline(always)]
pub fn from_overlay(ctx: &TcContext, ip: &Ipv4Hdr) -> Result<(), i32> {
    let Some(flow) = Flow::parse(ctx, ip) else {
        return Ok(());
    };
    reply_nat(ctx, &flow, conntrack::now_secs()).unwrap_or(Ok(0)).map(|_| ())
}

/// `None` when the packet is no reply of a balanced connection; otherwise its source is rewritten to
/// the frontend, which is returned (`Err` with a verdict when the rewrite fails).
#[inline(always)]
fn reply_nat(ctx: &TcContext, flow: &Flow, now: u32) -> Option<Result<u32, i32>> {
    let tuple = Ct4Tuple {
        daddr: flow.saddr,
        saddr: flow.daddr,
        dport: flow.sport,
        sport: flow.dport,
        nexthdr: flow.proto,
        flags: TUPLE_F_OUT,
        pad: 0,
    };
    let entry = conntrack::lookup(&tuple, now)?;
    // SAFETY: pointer from a successful lookup.
    let rev_nat_index = unsafe { (*entry).rev_nat_index };
    if rev_nat_index == 0 {
        return None;
    }
    conntrack::update(entry, Dir::Reply, flow.proto, flow.tcp_flags, flow.len, now);
    // SAFETY: copied out at once.
    let Some(frontend) = (unsafe { LB4_REVERSE_NAT.get(&Lb4RevNatKey { rev_nat_index }).copied() }) else {
        // The service is gone; the reply can no longer be translated.
        return Some(Ok(flow.saddr));
    };
    let port = if frontend.port != 0 { frontend.port } else { flow.sport };
    let result = rewrite(ctx, flow, IPV4_SADDR_OFF, flow.saddr, frontend.address, flow.l4_offset, flow.sport, port);
    Some(result.map(|()| frontend.address).map_err(|_| drop(ctx, drop_reason::WRITE_ERROR)))
}

/// The master entry of the frontend the packet is addressed to, with its key.
#[inline(always)]
fn lookup_service(flow: &Flow) -> Option<(Lb4Key, Lb4Service)> {
    let mut key = Lb4Key {
        address: flow.daddr,
        dport: flow.dport,
        backend_slot: 0,
        proto: flow.proto,
        scope: LB_LOOKUP_SCOPE_EXT,
        pad: [0; 2],
    };
    // SAFETY: copied out at once.
    let mut svc = unsafe { LB4_SERVICES.get(&key).copied() }?;
    if svc.flags2 & svc_flags2::TWO_SCOPES != 0 {
        key.scope = LB_LOOKUP_SCOPE_INT;
        // SAFETY: copied out at once.
        svc = unsafe { LB4_SERVICES.get(&key).copied() }?;
    }
    Some((key, svc))
}

/// `loadBalancerSourceRanges`: an allow list, or a deny list with `SOURCE_RANGE_DENY`.
#[inline(always)]
fn source_range_allows(svc: &Lb4Service, saddr: u32) -> bool {
    let data = Lb4SrcRangeData { rev_nat_id: svc.rev_nat_index, pad: 0, address: saddr };
    let hit = LB4_SOURCE_RANGE.get(&Key::new(SRC_RANGE_STATIC_PREFIX + 32, data)).is_some();
    let deny = svc.flags2 & svc_flags2::SOURCE_RANGE_DENY != 0;
    hit != deny
}

/// The backend of this flow: the one conntrack remembers (while it exists), else a fresh choice,
/// remembered. `None` when there is nothing to choose from.
#[inline(always)]
fn backend_for(flow: &Flow, key: Lb4Key, svc: &Lb4Service, now: u32) -> Option<Lb4Backend> {
    let tuple = Ct4Tuple {
        daddr: flow.daddr,
        saddr: flow.saddr,
        dport: flow.dport,
        sport: flow.sport,
        nexthdr: flow.proto,
        flags: TUPLE_F_SERVICE,
        pad: 0,
    };
    if let Some(entry) = conntrack::lookup(&tuple, now) {
        // SAFETY: pointer from a successful lookup.
        let backend_id = unsafe { (*entry).backend_id };
        if !conntrack::is_reopened(entry, flow.proto, flow.tcp_flags) {
            if let Some(backend) = backend(backend_id) {
                conntrack::update(entry, Dir::Original, flow.proto, flow.tcp_flags, flow.len, now);
                return Some(backend);
            }
        }
    }
    if svc.count == 0 {
        return None;
    }
    let backend_id = select(flow, key, svc, now)?;
    let backend = backend(backend_id)?;
    if svc.flags & svc_flags::AFFINITY != 0 {
        let key = Lb4AffinityKey { client_ip: flow.saddr, rev_nat_id: svc.rev_nat_index, pad: 0 };
        let value = LbAffinityValue { last_used: u64::from(now), backend_id, pad: 0 };
        let _ = LB4_AFFINITY.insert(&key, &value, 0);
    }
    let _ = conntrack::create(&tuple, backend_id, svc.rev_nat_index, flow.proto, flow.tcp_flags, flow.len, now);
    Some(backend)
}

#[inline(always)]
fn backend(backend_id: u32) -> Option<Lb4Backend> {
    // SAFETY: copied out at once.
    unsafe { LB4_BACKENDS.get(&Lb4BackendKey { backend_id }).copied() }
}

/// Picks a backend ID for a new flow: affinity first, then the service's algorithm.
#[inline(always)]
fn select(flow: &Flow, mut key: Lb4Key, svc: &Lb4Service, now: u32) -> Option<u32> {
    if svc.flags & svc_flags::AFFINITY != 0 {
        if let Some(id) = affinity_backend(flow.saddr, svc, now) {
            return Some(id);
        }
    }
    let config = LB_CONFIG.get(0).copied().unwrap_or_default();
    let algorithm = match svc.backend_id >> LB_ALG_SHIFT {
        0 => config.algorithm,
        per_service => per_service,
    };
    if algorithm == LB_ALG_MAGLEV && config.maglev_table_size != 0 {
        let index = flow_hash(flow) % config.maglev_table_size;
        let mkey = LbMaglevKey { rev_nat_id: svc.rev_nat_index, pad: 0, index };
        // SAFETY: copied out at once.
        if let Some(id) = unsafe { LB4_MAGLEV.get(&mkey).copied() } {
            return Some(id);
        }
    }
    // SAFETY: plain helper call.
    let random = unsafe { bpf_get_prandom_u32() };
    key.backend_slot = (random % u32::from(svc.count)) as u16 + 1;
    // SAFETY: copied out at once.
    unsafe { LB4_SERVICES.get(&key).map(|slot| slot.backend_id) }
}

/// The client's remembered backend for this service, while the entry is within the service's
/// timeout and the backend is still a valid target (affinity-match map); refreshed on use, removed
/// otherwise.
#[inline(always)]
fn affinity_backend(client: u32, svc: &Lb4Service, now: u32) -> Option<u32> {
    let key = Lb4AffinityKey { client_ip: client, rev_nat_id: svc.rev_nat_index, pad: 0 };
    let entry = LB4_AFFINITY.get_ptr_mut(&key)?;
    // SAFETY: pointer from a successful lookup.
    let (last_used, backend_id) = unsafe { ((*entry).last_used, (*entry).backend_id) };
    let timeout = u64::from(svc.backend_id & AFFINITY_TIMEOUT_MASK);
    let valid = LbAffinityMatchKey { backend_id, rev_nat_id: svc.rev_nat_index, pad: 0 };
    // SAFETY: existence check only.
    if u64::from(now) > last_used + timeout || unsafe { LB_AFFINITY_MATCH.get(&valid) }.is_none() {
        let _ = LB4_AFFINITY.remove(&key);
        return None;
    }
    // SAFETY: as above; a racing writer stores the same kind of value.
    unsafe { (*entry).last_used = u64::from(now) };
    Some(backend_id)
}

/// A stable hash of the 5-tuple (murmur3's finaliser over the mixed fields), so every packet of a
/// flow maps to the same Maglev entry.
#[inline(always)]
fn flow_hash(flow: &Flow) -> u32 {
    let mut h = flow.saddr ^ flow.daddr.rotate_left(13) ^ (u32::from(flow.sport) << 16 | u32::from(flow.dport));
    h ^= u32::from(flow.proto).rotate_left(24);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Rewrites one address (at `addr_offset`) and the port at `port_offset`, fixing the IPv4 header
/// checksum and the L4 checksum (pseudo-header for the address).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    flow: &Flow,
    addr_offset: usize,
    old_addr: u32,
    new_addr: u32,
    port_offset: usize,
    old_port: u16,
    new_port: u16,
) -> Result<(), i64> {
    if old_addr != new_addr {
        let l4_flags = u64::from(BPF_F_PSEUDO_HDR) | flow.csum_flags | 4;
        ctx.l4_csum_replace(flow.csum_offset, u64::from(old_addr), u64::from(new_addr), l4_flags)?;
        ctx.l3_csum_replace(IPV4_CSUM_OFF, u64::from(old_addr), u64::from(new_addr), 4)?;
        ctx.store(addr_offset, &new_addr, 0)?;
    }
    if old_port != new_port {
        ctx.l4_csum_replace(flow.csum_offset, u64::from(old_port), u64::from(new_port), flow.csum_flags | 2)?;
        ctx.store(port_offset, &new_port, 0)?;
    }
    Ok(())
}
