//! Frontend specs → desired rows of the LB maps, with IDs from [`LbIds`].
//!
//! Per frontend: a rev-NAT entry (ID → frontend address), slots `1..=count` naming the backends new
//! connections may pick, then `qcount` further slots for backends kept only for existing flows, and
//! the master slot 0 with `count`, `qcount`, the rev-NAT ID and the flags (the map manager writes the
//! master last, so no lookup ever sees a count pointing at unwritten slots). Terminating backends are
//! chosen only when no active backend is left (KEP-1669). Every backend of any slot — and those in
//! maintenance, which get no slot — has a backends-map entry, so established connections keep their
//! backend until it disappears from the EndpointSlice. Each LoadBalancer address also gets a
//! wildcard entry (port 0, any protocol, rev-NAT ID 0) so its undeclared ports are dropped.
//!
//! IPv6 frontends and backends go to the `lb6` rows with the same structure. Rev-NAT and backend IDs
//! are one space across both families (as in Cilium), so conntrack entries and the shared
//! affinity-match and Maglev maps never confuse an IPv4 service with an IPv6 one.

use std::collections::{BTreeMap, BTreeSet};

use std::net::IpAddr;

use beeline_common::lb::{
    Lb4Backend, Lb4BackendKey, Lb4Key, Lb4RevNatKey, Lb4ReverseNat, Lb4Service, Lb6Backend, Lb6Key, Lb6ReverseNat,
    LB_LOOKUP_SCOPE_EXT,
};
use ipnet::Ipv4Net;

use super::frontends::{collect_frontends, FrontendSpec, Inputs, Note, ServicesConfig};
use super::ids::LbIds;
use super::maglev;
use super::model::{
    flags, flags2, BackendAddr, BackendState, FrontendAddr, FrontendKind, ObjectName, AFFINITY_TIMEOUT_MASK,
    LB_ALG_MAGLEV, LB_ALG_RANDOM, LB_ALG_SHIFT,
};
use crate::config::LbAlgorithm;

/// Key of the affinity-match map (Cilium's `lb_affinity_match`): which backends are valid targets of
/// a stored affinity for a service. The datapath drops an affinity entry whose backend is absent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AffinityMatch {
    pub backend_id: u32,
    pub rev_nat_id: u16,
}

/// A `loadBalancerSourceRanges` entry (Cilium's `lb4_src_range_key`: rev-NAT ID + CIDR, LPM).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceRange {
    pub rev_nat_id: u16,
    pub cidr: Ipv4Net,
}

/// One frontend as `beeline service list` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendStatus {
    pub id: u16,
    pub addr: FrontendAddr,
    pub kind: FrontendKind,
    pub owner: ObjectName,
    /// In slot order (slot = index + 1), with IDs and states.
    pub backends: Vec<(u32, BackendAddr, BackendState)>,
    /// How many of them new connections may pick (the master's `count`).
    pub count: u16,
}

/// Everything the services controller wants in the datapath.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredLb {
    pub services: BTreeMap<Lb4Key, Lb4Service>,
    pub backends: BTreeMap<Lb4BackendKey, Lb4Backend>,
    pub rev_nat: BTreeMap<Lb4RevNatKey, Lb4ReverseNat>,
    /// The IPv6 rows (`beeline_lb6_*`).
    pub services6: BTreeMap<Lb6Key, Lb4Service>,
    pub backends6: BTreeMap<Lb4BackendKey, Lb6Backend>,
    pub rev_nat6: BTreeMap<Lb4RevNatKey, Lb6ReverseNat>,
    pub affinity_match: BTreeSet<AffinityMatch>,
    pub source_ranges: BTreeSet<SourceRange>,
    /// rev-NAT ID → Maglev lookup table (backend IDs), for frontends using Maglev.
    pub maglev: BTreeMap<u16, Vec<u32>>,
    pub frontends: Vec<FrontendStatus>,
    pub notes: Vec<Note>,
}

/// The pure core: cluster objects + config (+ the ID state) → desired LB map rows. Deterministic for
/// given inputs and ID state; IDs of frontends and backends that are gone are released, so call it
/// only with complete (synced) inputs.
pub fn desired_state(inputs: &Inputs<'_>, cfg: &ServicesConfig, ids: &mut LbIds) -> DesiredLb {
    let mut notes = Vec::new();
    let frontends = collect_frontends(inputs, cfg, &mut notes);
    let mut out = build_rows(&frontends, cfg, ids, &mut notes);
    notes.sort();
    notes.dedup();
    out.notes = notes;
    out
}

fn build_rows(frontends: &[FrontendSpec], cfg: &ServicesConfig, ids: &mut LbIds, notes: &mut Vec<Note>) -> DesiredLb {
    let mut out = DesiredLb::default();

    // Backend IDs first, in address order, so fresh allocations are deterministic.
    let mut backend_states: BTreeMap<BackendAddr, BackendState> = BTreeMap::new();
    for b in frontends.iter().flat_map(|fe| &fe.backends) {
        backend_states.entry(b.addr).and_modify(|s| *s = (*s).min(b.state)).or_insert(b.state);
    }
    let mut backend_ids: BTreeMap<BackendAddr, u32> = BTreeMap::new();
    for (addr, state) in &backend_states {
        match ids.backend(addr) {
            Ok(id) => {
                backend_ids.insert(*addr, id);
                let key = Lb4BackendKey { backend_id: id };
                let (proto, port, flags) = (addr.proto.number(), addr.port.to_be(), state.map_flags());
                match addr.ip {
                    IpAddr::V4(ip) => {
                        let address = u32::from(ip).to_be();
                        out.backends.insert(key, Lb4Backend { address, port, proto, flags, ..Default::default() });
                    }
                    IpAddr::V6(ip) => {
                        let address = ip.octets();
                        out.backends6.insert(key, Lb6Backend { address, port, proto, flags, ..Default::default() });
                    }
                }
            }
            Err(e) => notes.push(Note { object: addr.to_string(), message: format!("no backend ID: {e}") }),
        }
    }

    let mut used_frontends = BTreeSet::new();
    for fe in frontends {
        let id = match ids.rev_nat(&fe.addr) {
            Ok(id) => id,
            Err(e) => {
                notes.push(Note {
                    object: fe.owner.to_string(),
                    message: format!("frontend {}: no rev-NAT ID: {e}", fe.addr),
                });
                continue;
            }
        };
        used_frontends.insert(fe.addr);
        frontend_rows(fe, id, &backend_ids, cfg, &mut out);
    }

    ids.release_unused(&used_frontends, &backend_ids.keys().copied().collect());
    wildcard_rows(frontends, &mut out);
    out
}

/// One wildcard entry (port 0, protocol 0 = any, slot 0, no rev-NAT ID) per LoadBalancer ingress
/// address, as Cilium writes them: traffic from outside to a port of that address that no
/// Service declares is dropped by the datapath instead of reaching the node's own sockets.
fn wildcard_rows(frontends: &[FrontendSpec], out: &mut DesiredLb) {
    let lb_addresses: BTreeSet<_> = frontends
        .iter()
        .filter(|fe| fe.kind == FrontendKind::LoadBalancer && !fe.addr.ip.is_unspecified())
        .map(|fe| fe.addr.ip)
        .collect();
    for ip in lb_addresses {
        let value = Lb4Service { flags: flags::LOADBALANCER | flags::ROUTABLE, ..Default::default() };
        out.insert_service(ip, 0, 0, 0, LB_LOOKUP_SCOPE_EXT, value);
    }
}

impl DesiredLb {
    /// A services-map row in the family of `ip`.
    fn insert_service(&mut self, ip: IpAddr, port_be: u16, proto: u8, slot: u16, scope: u8, value: Lb4Service) {
        match ip {
            IpAddr::V4(v4) => {
                let address = u32::from(v4).to_be();
                let key = Lb4Key { address, dport: port_be, backend_slot: slot, proto, scope, pad: [0; 2] };
                self.services.insert(key, value);
            }
            IpAddr::V6(v6) => {
                let address = v6.octets();
                let key = Lb6Key { address, dport: port_be, backend_slot: slot, proto, scope, pad: [0; 2] };
                self.services6.insert(key, value);
            }
        }
    }

    /// A rev-NAT row in the family of `ip`.
    fn insert_rev_nat(&mut self, id: u16, ip: IpAddr, port_be: u16) {
        let key = Lb4RevNatKey { rev_nat_index: id };
        match ip {
            IpAddr::V4(v4) => {
                self.rev_nat.insert(key, Lb4ReverseNat { address: u32::from(v4).to_be(), port: port_be, pad: 0 });
            }
            IpAddr::V6(v6) => {
                self.rev_nat6.insert(key, Lb6ReverseNat { address: v6.octets(), port: port_be });
            }
        }
    }
}

fn frontend_rows(
    fe: &FrontendSpec,
    id: u16,
    backend_ids: &BTreeMap<BackendAddr, u32>,
    cfg: &ServicesConfig,
    out: &mut DesiredLb,
) {
    let (ip, port_be, proto, scope) =
        (fe.addr.ip, fe.addr.port.to_be(), fe.addr.proto.number(), fe.addr.scope.number());
    // Slot order: the backends are sorted by (state, address); maintenance gets no slot.
    let slotted: Vec<(u32, BackendAddr, BackendState)> = fe
        .backends
        .iter()
        .filter(|b| b.state != BackendState::Maintenance)
        .filter_map(|b| backend_ids.get(&b.addr).map(|id| (*id, b.addr, b.state)))
        .take(usize::from(u16::MAX))
        .collect();
    let active = slotted.iter().filter(|b| b.2 == BackendState::Active).count();
    let terminating = slotted.iter().filter(|b| b.2 == BackendState::Terminating).count();
    // No active backend left: the serving-but-terminating ones take new connections (KEP-1669).
    let count = if active == 0 { terminating } else { active };
    let qcount = slotted.len() - count;

    for (slot, (backend_id, _, _)) in slotted.iter().enumerate() {
        let value = Lb4Service {
            backend_id: *backend_id,
            count: 0,
            rev_nat_index: id,
            flags: fe.flags,
            flags2: fe.flags2,
            qcount: 0,
        };
        out.insert_service(ip, port_be, proto, slot as u16 + 1, scope, value);
    }

    let mut master_flags = fe.flags;
    let mut master_flags2 = fe.flags2;
    if !fe.source_ranges.is_empty() {
        master_flags |= flags::SOURCE_RANGE;
        if fe.source_ranges_deny {
            master_flags2 |= flags2::SOURCE_RANGE_DENY;
        }
        for cidr in &fe.source_ranges {
            out.source_ranges.insert(SourceRange { rev_nat_id: id, cidr: *cidr });
        }
    }
    // The master's backend_id carries the affinity timeout (low 24 bits) and the per-service
    // algorithm (high 8 bits), as in Cilium.
    let mut master_word = fe.affinity_timeout.map_or(0, |t| t & AFFINITY_TIMEOUT_MASK);
    match fe.lb_algorithm_annotation {
        Some(LbAlgorithm::Random) => master_word |= LB_ALG_RANDOM << LB_ALG_SHIFT,
        Some(LbAlgorithm::Maglev) => master_word |= LB_ALG_MAGLEV << LB_ALG_SHIFT,
        None => {}
    }
    let master = Lb4Service {
        backend_id: master_word,
        count: count as u16,
        rev_nat_index: id,
        flags: master_flags,
        flags2: master_flags2,
        qcount: qcount as u16,
    };
    out.insert_service(ip, port_be, proto, 0, scope, master);
    out.insert_rev_nat(id, ip, port_be);

    if fe.affinity_timeout.is_some() {
        for (backend_id, _, state) in &slotted {
            if *state == BackendState::Active {
                out.affinity_match.insert(AffinityMatch { backend_id: *backend_id, rev_nat_id: id });
            }
        }
    }
    if fe.uses_maglev(cfg.lb_algorithm) && count > 0 {
        let pickable: Vec<(u32, BackendAddr)> = slotted[..count].iter().map(|(i, a, _)| (*i, *a)).collect();
        out.maglev.insert(id, maglev::lookup_table(&pickable, cfg.maglev_table_size));
    }
    out.frontends.push(FrontendStatus {
        id,
        addr: fe.addr,
        kind: fe.kind,
        owner: fe.owner.clone(),
        backends: slotted,
        count: count as u16,
    });
}
