//! The desired-state function: pools + Services → per-Service ingress and condition, per-pool
//! conditions.
//!
//! Order is fixed so the result never depends on event order:
//! - pools are used oldest first (creationTimestamp, then name), blocks in `spec.blocks` order, and the
//!   first free address wins;
//! - Services are visited oldest first (creationTimestamp, then namespace/name);
//! - pass 1 adopts the addresses Services already show in `status.loadBalancer.ingress` when they are
//!   still valid (inside a pool that selects the Service, of a wanted family or requested, not taken by
//!   an incompatible Service) — a disabled or conflicting pool still lets its holders keep them, and a
//!   first/last address reserved by `allowFirstLastIPs: No` stays with the Service that has it;
//! - pass 2 satisfies Services with specific requested addresses, then pass 3 the others, from enabled,
//!   non-conflicting pools only.
//!
//! Addresses are held globally (one holder group per address, whatever the pool), so even overlapping
//! pools never hand out one address twice.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{LoadBalancerIngress, Service};

use super::addr::{from_u128, to_u128, Count, Family};
use super::block::IpRange;
use super::pool::{find_conflicts, sort_pools, Conflict, PoolView};
use super::service::{classify, LbIpamConfig, Responsibility, ServiceKey, ServiceRequest};
use super::status::DesiredCondition;
use super::{reason, ANNOTATION_IPS, CONDITION_BLOCKS_VALID, CONDITION_IPS_AVAILABLE, CONDITION_IPS_TOTAL};
use super::{CONDITION_IPS_USED, CONDITION_POOL_CONFLICT, CONDITION_REQUEST_SATISFIED};
use crate::crds::cilium_load_balancer_ip_pool::CiliumLoadBalancerIPPool;

/// What a Service's status should be.
#[derive(Debug, Clone, PartialEq)]
pub enum ServiceOutcome {
    /// `status.loadBalancer.ingress` = `ingress` and the `IPAMRequestSatisfied` condition.
    Assign { ingress: Vec<LoadBalancerIngress>, condition: DesiredCondition },
    /// The Service stopped qualifying: remove its ingress entries and our condition.
    Release,
}

/// The conditions a pool's status should carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolOutcome {
    pub conditions: Vec<DesiredCondition>,
    pub total: Count,
    pub used: Count,
    pub available: Count,
}

/// The whole desired state. Services absent from `services` are not LB-IPAM's business.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DesiredState {
    pub services: BTreeMap<ServiceKey, ServiceOutcome>,
    pub pools: BTreeMap<String, PoolOutcome>,
    /// Which pool each assigned address was attributed to (for logs, events and tests).
    pub address_pools: BTreeMap<IpAddr, String>,
}

/// One held address: the pool/range it counts against and the Services sharing it.
#[derive(Debug)]
struct Claim {
    pool: usize,
    holders: Vec<usize>,
}

struct Allocator<'a> {
    pools: &'a [PoolView],
    conflicts: &'a BTreeMap<String, Conflict>,
    services: &'a [ServiceRequest],
    claims: BTreeMap<IpAddr, Claim>,
    /// Per Service: kept/assigned ingress entries in order.
    ingress: Vec<Vec<LoadBalancerIngress>>,
    /// Per Service: first failure (reason, message).
    failures: Vec<Vec<(&'static str, String)>>,
}

/// Where a requested address could come from, for the failure message.
enum RangeLookup {
    Found(usize),
    NoPool,
    Mismatch(String),
    Unusable(String),
}

impl<'a> Allocator<'a> {
    fn usable(&self, pool: usize) -> bool {
        let p = &self.pools[pool];
        !p.disabled && !self.conflicts.contains_key(&p.name)
    }

    fn holds(&self, svc: usize, ip: IpAddr) -> bool {
        self.ingress[svc].iter().any(|i| i.ip.as_deref().and_then(|s| s.parse().ok()) == Some(ip))
    }

    /// Why `svc` may not join the holders of `ip`, if it may not.
    fn join_refusal(&self, svc: usize, ip: IpAddr) -> Option<&'static str> {
        let claim = &self.claims[&ip];
        claim.holders.iter().find_map(|&h| self.services[h].sharing_incompatibility(&self.services[svc]))
    }

    fn take(&mut self, svc: usize, ip: IpAddr, pool: usize, entry: Option<LoadBalancerIngress>) {
        self.claims.entry(ip).or_insert(Claim { pool, holders: Vec::new() }).holders.push(svc);
        let entry = entry.unwrap_or(LoadBalancerIngress { ip: Some(ip.to_string()), ..Default::default() });
        self.ingress[svc].push(entry);
    }

    /// The pool an existing address of `svc` counts against: one that selects the Service and contains
    /// the address, preferring usable pools, then older ones.
    fn attribution(&self, svc: usize, ip: IpAddr) -> Option<usize> {
        (0..self.pools.len())
            .filter(|&p| self.pools[p].range_of(ip).is_some() && self.pools[p].selects(&self.services[svc]))
            .min_by_key(|&p| (!self.usable(p), p))
    }

    /// Pass 1: keep what the Service already has, where still valid.
    fn adopt(&mut self, svc: usize) {
        let s = &self.services[svc];
        let mut families_seen = BTreeSet::new();
        for entry in s.ingress.clone() {
            let Some(ip) = entry.ip.as_deref().and_then(|ip| ip.parse::<IpAddr>().ok()) else { continue };
            if self.holds(svc, ip) {
                continue; // duplicate entry
            }
            if s.requested_ips.is_empty() {
                // One address per wanted family.
                if !s.families.contains(&Family::of(ip)) || !families_seen.insert(Family::of(ip)) {
                    continue;
                }
            } else if !s.requested_ips.contains(&ip) {
                continue;
            }
            if self.claims.contains_key(&ip) {
                let pool = self.claims[&ip].pool;
                if self.pools[pool].selects(s) && self.join_refusal(svc, ip).is_none() {
                    self.take(svc, ip, pool, Some(entry));
                } else if s.requested_ips.is_empty() {
                    families_seen.remove(&Family::of(ip));
                }
                continue;
            }
            match self.attribution(svc, ip) {
                Some(pool) => self.take(svc, ip, pool, Some(entry)),
                None if s.requested_ips.is_empty() => {
                    families_seen.remove(&Family::of(ip));
                }
                None => {}
            }
        }
    }

    fn lookup_requested(&self, svc: usize, ip: IpAddr) -> RangeLookup {
        let mut mismatch = None;
        let mut unusable = None;
        for (p, pool) in self.pools.iter().enumerate() {
            if pool.range_of(ip).is_none() {
                continue;
            }
            if !pool.selects(&self.services[svc]) {
                mismatch.get_or_insert_with(|| pool.name.clone());
            } else if !self.usable(p) {
                let why = if pool.disabled { "disabled" } else { "conflicting with another pool" };
                unusable.get_or_insert_with(|| format!("The pool '{}' containing '{ip}' is {why}", pool.name));
            } else {
                return RangeLookup::Found(p);
            }
        }
        match (unusable, mismatch) {
            (Some(msg), _) => RangeLookup::Unusable(msg),
            (None, Some(pool)) => RangeLookup::Mismatch(pool),
            (None, None) => RangeLookup::NoPool,
        }
    }

    /// Pass 2: specific requested addresses.
    fn satisfy_requested(&mut self, svc: usize) {
        for ip in self.services[svc].requested_ips.clone() {
            if self.holds(svc, ip) {
                continue;
            }
            let pool = match self.lookup_requested(svc, ip) {
                RangeLookup::Found(p) => p,
                RangeLookup::NoPool => {
                    self.fail(svc, reason::NO_POOL, format!("No pool exists with a CIDR containing '{ip}'"));
                    continue;
                }
                RangeLookup::Unusable(msg) => {
                    self.fail(svc, reason::NO_POOL, msg);
                    continue;
                }
                RangeLookup::Mismatch(pool) => {
                    let msg = format!("The pool '{pool}' with the CIDR containing '{ip}' doesn't select this service");
                    self.fail(svc, reason::POOL_SELECTOR_MISMATCH, msg);
                    continue;
                }
            };
            if let Some(claim) = self.claims.get(&ip) {
                if self.services[svc].sharing_key.is_none() {
                    let holder = &self.services[claim.holders[0]].key;
                    let msg = format!("The IP '{ip}' is already allocated to another service ({holder})");
                    self.fail(svc, reason::ALREADY_ALLOCATED, msg);
                } else if let Some(why) = self.join_refusal(svc, ip) {
                    let msg = format!("The IP '{ip}' is already allocated to an incompatible service. Reason: {why}");
                    self.fail(svc, reason::ALREADY_ALLOCATED_INCOMPATIBLE, msg);
                } else {
                    let pool = claim.pool;
                    self.take(svc, ip, pool, None);
                }
                continue;
            }
            let range = self.pools[pool].range_of(ip).expect("lookup found a containing range");
            if self.pools[pool].is_reserved(range, ip) {
                let msg = format!(
                    "The IP '{ip}' is reserved: it is the first or last address of '{}' in pool '{}', which has allowFirstLastIPs: No",
                    range, self.pools[pool].name
                );
                self.fail(svc, reason::ALREADY_ALLOCATED, msg);
                continue;
            }
            self.take(svc, ip, pool, None);
        }
    }

    /// The first free, unreserved address of `range`.
    fn first_free(&self, pool: &PoolView, range: &IpRange) -> Option<IpAddr> {
        let family = range.family();
        let mut candidate = range.first_u128();
        let reserved = |v: u128| pool.is_reserved(range, from_u128(family, v));
        for held in self.claims.range(range.first()..=range.last()).map(|(ip, _)| to_u128(*ip)) {
            while candidate < held && reserved(candidate) {
                candidate += 1;
            }
            if candidate < held {
                break;
            }
            if held == range.last_u128() {
                return None;
            }
            candidate = candidate.max(held + 1);
        }
        while candidate <= range.last_u128() && reserved(candidate) {
            if candidate == range.last_u128() {
                return None;
            }
            candidate += 1;
        }
        (candidate <= range.last_u128()).then(|| from_u128(family, candidate))
    }

    /// Pass 3: one address per wanted family, joining a compatible Service with the same sharing key
    /// before taking a fresh address.
    fn satisfy_families(&mut self, svc: usize) {
        let s = &self.services[svc];
        for family in s.families.clone() {
            let has = self.ingress[svc].iter().any(|i| {
                i.ip.as_deref().and_then(|ip| ip.parse::<IpAddr>().ok()).is_some_and(|ip| Family::of(ip) == family)
            });
            if has {
                continue;
            }
            if s.sharing_key.is_some() {
                let shared = self.claims.iter().find(|(ip, claim)| {
                    Family::of(**ip) == family
                        && self.usable(claim.pool)
                        && self.pools[claim.pool].selects(s)
                        && self.join_refusal(svc, **ip).is_none()
                });
                if let Some((&ip, claim)) = shared {
                    let pool = claim.pool;
                    self.take(svc, ip, pool, None);
                    continue;
                }
            }
            let mut matched_range = false;
            let mut fresh = None;
            'pools: for (p, pool) in self.pools.iter().enumerate() {
                if !self.usable(p) || !pool.selects(s) {
                    continue;
                }
                for range in pool.ranges.iter().filter(|r| r.family() == family) {
                    matched_range = true;
                    if let Some(ip) = self.first_free(pool, range) {
                        fresh = Some((ip, p));
                        break 'pools;
                    }
                }
            }
            match fresh {
                Some((ip, p)) => self.take(svc, ip, p, None),
                None if matched_range => self.fail(
                    svc,
                    reason::OUT_OF_IPS,
                    format!("All enabled CiliumLoadBalancerIPPools that match this service ran out of allocatable {family} addresses"),
                ),
                None => self.fail(
                    svc,
                    reason::NO_POOL,
                    format!("There are no enabled CiliumLoadBalancerIPPools with {family} addresses that match this service"),
                ),
            }
        }
    }

    fn fail(&mut self, svc: usize, reason: &'static str, message: String) {
        self.failures[svc].push((reason, message));
    }

    fn condition(&self, svc: usize) -> DesiredCondition {
        let s = &self.services[svc];
        let ignored = (!s.unparseable_requests.is_empty()).then(|| {
            format!(
                "ignored requested addresses that are not IP addresses ({ANNOTATION_IPS} or spec.loadBalancerIP): {}",
                s.unparseable_requests.join(", ")
            )
        });
        let cond = match self.failures[svc].first() {
            None => {
                let assigned: Vec<String> = self.ingress[svc]
                    .iter()
                    .filter_map(|i| i.ip.clone())
                    .map(|ip| match ip.parse().ok().and_then(|a| self.claims.get(&a)) {
                        Some(c) => format!("{ip} from pool '{}'", self.pools[c.pool].name),
                        None => ip,
                    })
                    .collect();
                let mut message = format!("Assigned {}", assigned.join(", "));
                if assigned.is_empty() {
                    message = "No addresses requested".into();
                }
                if let Some(ignored) = ignored {
                    message = format!("{message}; {ignored}");
                }
                DesiredCondition::new(CONDITION_REQUEST_SATISFIED, "True", reason::SATISFIED, message)
            }
            Some((reason, _)) => {
                let mut messages: Vec<String> = self.failures[svc].iter().map(|(_, m)| m.clone()).collect();
                messages.extend(ignored);
                DesiredCondition::new(CONDITION_REQUEST_SATISFIED, "False", reason, messages.join("; "))
            }
        };
        cond.with_generation(s.generation)
    }
}

fn pool_outcome(
    pool: usize,
    pools: &[PoolView],
    conflict: Option<&Conflict>,
    claims: &BTreeMap<IpAddr, Claim>,
) -> PoolOutcome {
    let p = &pools[pool];
    let held: Vec<IpAddr> = claims.iter().filter(|(_, c)| c.pool == pool).map(|(ip, _)| *ip).collect();
    let mut total = Count::ZERO;
    for range in &p.ranges {
        total = total + range.len();
        if let Some((first, last)) = range.reserved_when_first_last_disallowed().filter(|_| !p.allow_first_last) {
            // A reserved address only counts when a Service still holds it (allowFirstLastIPs was
            // flipped to No after it was assigned).
            let unheld = [first, last].iter().filter(|a| !claims.contains_key(a)).count();
            total = total.saturating_sub(Count::from_u128(unheld as u128));
        }
    }
    let used = Count::from_u128(held.len() as u128);
    let available = total.saturating_sub(used);
    let g = p.generation;
    let count =
        |t: &str, n: Count| DesiredCondition::new(t, "Unknown", reason::NO_REASON, n.to_string()).with_generation(g);
    let conflict_condition = match conflict {
        Some(c) => DesiredCondition::new(CONDITION_POOL_CONFLICT, "True", reason::CIDR_OVERLAP, c.message()),
        None => DesiredCondition::new(CONDITION_POOL_CONFLICT, "False", reason::RESOLVED, ""),
    };
    let blocks_condition = if p.errors.is_empty() {
        DesiredCondition::new(CONDITION_BLOCKS_VALID, "True", reason::VALID, "")
    } else {
        let message = p.errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ");
        DesiredCondition::new(CONDITION_BLOCKS_VALID, "False", reason::INVALID_BLOCK, message)
    };
    PoolOutcome {
        conditions: vec![
            conflict_condition.with_generation(g),
            count(CONDITION_IPS_TOTAL, total),
            count(CONDITION_IPS_AVAILABLE, available),
            count(CONDITION_IPS_USED, used),
            blocks_condition.with_generation(g),
        ],
        total,
        used,
        available,
    }
}

/// The desired state for all `pools` and `services` (see the module docs for the rules and order).
///
/// With no pools at all LB-IPAM is dormant: only Services that carry its condition (it addressed them
/// before the last pool went) are updated; others are left to whoever else may address them.
pub fn desired_state(pools: &[CiliumLoadBalancerIPPool], services: &[Service], config: &LbIpamConfig) -> DesiredState {
    let mut views: Vec<PoolView> = pools.iter().map(PoolView::from_pool).collect();
    sort_pools(&mut views);
    let conflicts = find_conflicts(&views);

    let mut state = DesiredState::default();
    let mut requests = Vec::new();
    for svc in services {
        match classify(svc, config) {
            Responsibility::Ours(req) => {
                let dormant_and_new = views.is_empty()
                    && !svc
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == CONDITION_REQUEST_SATISFIED));
                if !dormant_and_new {
                    requests.push(*req);
                }
            }
            Responsibility::Relinquished(key) => {
                state.services.insert(key, ServiceOutcome::Release);
            }
            Responsibility::NotOurs => {}
        }
    }
    requests.sort_by(|a, b| (&a.created, &a.key).cmp(&(&b.created, &b.key)));

    let n = requests.len();
    let mut alloc = Allocator {
        pools: &views,
        conflicts: &conflicts,
        services: &requests,
        claims: BTreeMap::new(),
        ingress: vec![Vec::new(); n],
        failures: vec![Vec::new(); n],
    };
    for svc in 0..n {
        alloc.adopt(svc);
    }
    for svc in (0..n).filter(|&s| !requests[s].requested_ips.is_empty()) {
        alloc.satisfy_requested(svc);
    }
    for svc in (0..n).filter(|&s| requests[s].requested_ips.is_empty()) {
        alloc.satisfy_families(svc);
    }

    for (svc, req) in requests.iter().enumerate() {
        let outcome = ServiceOutcome::Assign { ingress: alloc.ingress[svc].clone(), condition: alloc.condition(svc) };
        state.services.insert(req.key.clone(), outcome);
    }
    for (p, pool) in views.iter().enumerate() {
        state.pools.insert(pool.name.clone(), pool_outcome(p, &views, conflicts.get(&pool.name), &alloc.claims));
    }
    state.address_pools = alloc.claims.iter().map(|(ip, c)| (*ip, views[c.pool].name.clone())).collect();
    state
}
