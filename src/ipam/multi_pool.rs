//! Desired state of the multi-pool operator controller, as a pure function:
//! (`CiliumPodIPPool`s, every CiliumNode's `spec.ipam.pools`) → per-node `spec.ipam.pools.allocated`,
//! node errors and pool errors. Semantics follow Cilium's `pkg/ipam/allocator/multipool`:
//!
//! 1. Every CIDR a node lists is occupied first, across all nodes, before anything is allocated
//!    (a CIDR in use is never handed out again; an operator restart is just another first pass).
//! 2. A listed CIDR whose pool is gone, or that lies outside every CIDR of its pool (removed from
//!    the pool), stays with the node as an *orphan*: it is kept in the node's list, counts for
//!    nothing, and is taken back by the pool (re-adopted) as soon as the pool covers it again.
//! 3. Then, per node and requested pool and enabled family, CIDRs of the pool's `maskSize` are added
//!    until the usable addresses (2^h − 2 per CIDR) of the node's non-orphan CIDRs cover `needed`.
//! 4. A CIDR the node no longer lists (the agent released it) or a node no longer present is free:
//!    nothing remembers it, since every pass starts from what nodes list.
//! 5. `maskSize` is immutable: once a pool's family is accepted with a mask, a changed mask is a pool
//!    error and the accepted mask keeps being used (delete and recreate the pool to change it). The
//!    first pass (restart) learns the accepted mask from the CIDRs nodes hold.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use super::addr::Family;
use super::cluster_pool::{ClusterCidrPool, PoolError};
use super::node_alloc::usable_addresses;

/// The pool every pod uses unless an annotation or selector says otherwise.
pub const DEFAULT_POOL: &str = "default";

/// One family of a pool as written in its spec (CIDRs unparsed: the object is user input).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilySpec {
    pub cidrs: Vec<String>,
    pub mask_size: u8,
}

/// A `CiliumPodIPPool` (or an auto-created one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    pub name: String,
    pub ipv4: Option<FamilySpec>,
    pub ipv6: Option<FamilySpec>,
}

impl PoolSpec {
    pub fn family(&self, family: Family) -> Option<&FamilySpec> {
        match family {
            Family::V4 => self.ipv4.as_ref(),
            Family::V6 => self.ipv6.as_ref(),
        }
    }
}

/// `spec.ipam.pools.requested[]`: addresses a node needs from a pool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolDemand {
    pub pool: String,
    pub ipv4: u64,
    pub ipv6: u64,
}

impl PoolDemand {
    pub fn of(&self, family: Family) -> u64 {
        match family {
            Family::V4 => self.ipv4,
            Family::V6 => self.ipv6,
        }
    }
}

/// `spec.ipam.pools.allocated[]`: CIDRs a node holds from a pool (unparsed: user-editable).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolCidrs {
    pub pool: String,
    pub cidrs: Vec<String>,
}

/// What the controller knows of one CiliumNode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodePoolState {
    pub name: String,
    pub requested: Vec<PoolDemand>,
    pub allocated: Vec<PoolCidrs>,
}

/// The desired multi-pool part of one CiliumNode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeAllocation {
    /// `spec.ipam.pools.allocated`, sorted by pool name; within a pool the node's existing order,
    /// then new CIDRs.
    pub allocated: Vec<PoolCidrs>,
    /// `status.ipam.operator-status.error`; `None` clears it.
    pub error: Option<String>,
    /// Orphaned CIDRs and similar: worth an Event, not an error.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredPools {
    pub nodes: BTreeMap<String, NodeAllocation>,
    /// Pool name → why its spec is (partly) refused.
    pub pool_errors: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MultiPoolError {
    #[error("pool {pool}: {family} maskSize is immutable: it is /{accepted}, the spec now says /{requested}; delete and recreate the pool to change it")]
    MaskChanged { pool: String, family: Family, accepted: u8, requested: u8 },
    #[error("pool {pool}: {family} CIDR {text:?} is not a CIDR")]
    InvalidCidr { pool: String, family: Family, text: String },
    #[error("pool {pool}: {source}")]
    Pool { pool: String, source: PoolError },
}

/// The pools and what the controller remembers between passes (accepted mask sizes).
#[derive(Debug, Clone)]
pub struct MultiPools {
    families: Vec<Family>,
    accepted_masks: BTreeMap<(String, Family), u8>,
    first_pass_done: bool,
}

impl MultiPools {
    /// `families`: the enabled ones; allocation happens only for these.
    pub fn new(families: Vec<Family>) -> Self {
        Self { families, accepted_masks: BTreeMap::new(), first_pass_done: false }
    }

    /// One pass. `pools` are the current pool objects, `nodes` every CiliumNode.
    pub fn desired(&mut self, pools: &[PoolSpec], nodes: &[NodePoolState]) -> DesiredPools {
        let mut out = DesiredPools::default();
        let parsed_nodes: Vec<ParsedNode> = nodes.iter().map(ParsedNode::parse).collect();
        if !self.first_pass_done {
            self.learn_masks(pools, &parsed_nodes);
            self.first_pass_done = true;
        }
        // Pools deleted since the last pass may come back with another mask.
        let names: BTreeSet<&str> = pools.iter().map(|p| p.name.as_str()).collect();
        self.accepted_masks.retain(|(pool, _), _| names.contains(pool.as_str()));

        let mut allocators = self.build_allocators(pools, &mut out.pool_errors);

        // 1. Occupy everything listed; out-of-pool CIDRs are orphans.
        let mut states: Vec<NodeWork> = Vec::with_capacity(parsed_nodes.len());
        for node in &parsed_nodes {
            let mut work = NodeWork::default();
            for (pool, entries) in &node.allocated {
                for entry in entries {
                    let cidr = match entry {
                        Ok(cidr) => *cidr,
                        Err(text) => {
                            work.error(format!("pool {pool}: allocated CIDR {text:?} is not a CIDR; left as is"));
                            work.keep(pool, text.clone());
                            continue;
                        }
                    };
                    work.keep(pool, cidr.to_string());
                    let family = Family::of_net(&cidr);
                    let Some(alloc) = allocators.get_mut(&(pool.clone(), family)) else {
                        work.warnings.push(format!("CIDR {cidr} of pool {pool} is an orphan: the pool has no {family} CIDRs any more; it stays until the node releases it"));
                        continue;
                    };
                    if !alloc.cluster_cidrs().iter().any(|c| c.contains(&cidr)) {
                        work.warnings.push(format!("CIDR {cidr} of pool {pool} is an orphan: it is outside the pool's CIDRs; it stays until the node releases it"));
                        continue;
                    }
                    match alloc.restore(&node.name, cidr) {
                        Ok(_) => work.owned.entry((pool.clone(), family)).or_default().push(cidr),
                        Err(e) => work.error(format!("pool {pool}: {e}")),
                    }
                }
            }
            states.push(work);
        }

        // 2. Grow each node until its CIDRs cover what it needs.
        for (node, work) in parsed_nodes.iter().zip(states.iter_mut()) {
            for demand in &node.requested {
                for &family in &self.families {
                    let needed = u128::from(demand.of(family));
                    let key = (demand.pool.clone(), family);
                    let mut have: u128 =
                        work.owned.get(&key).map(|c| c.iter().map(usable_addresses).sum()).unwrap_or(0);
                    if have >= needed {
                        continue;
                    }
                    let Some(alloc) = allocators.get_mut(&key) else {
                        let why = if pools.iter().any(|p| p.name == demand.pool) {
                            format!("pool {} has no usable {family} CIDRs", demand.pool)
                        } else {
                            format!("pool {} does not exist", demand.pool)
                        };
                        work.error(format!("cannot allocate {needed} {family} addresses: {why}"));
                        continue;
                    };
                    while have < needed {
                        match alloc.allocate_additional(&node.name) {
                            Ok(cidr) => {
                                have += usable_addresses(&cidr);
                                work.keep(&demand.pool, cidr.to_string());
                            }
                            Err(e) => {
                                work.error(format!("pool {}: {e}", demand.pool));
                                break;
                            }
                        }
                    }
                }
            }
            out.nodes.insert(node.name.clone(), work.finish());
        }
        out
    }

    /// First pass after a restart: the mask of the CIDRs nodes hold inside a pool is the accepted one.
    fn learn_masks(&mut self, pools: &[PoolSpec], nodes: &[ParsedNode]) {
        for pool in pools {
            for family in [Family::V4, Family::V6] {
                let Some(spec) = pool.family(family) else { continue };
                let ranges: Vec<IpNet> = spec.cidrs.iter().filter_map(|t| t.parse::<IpNet>().ok()).collect();
                let held = nodes
                    .iter()
                    .flat_map(|n| n.allocated.get(&pool.name).into_iter().flatten())
                    .filter_map(|e| e.as_ref().ok())
                    .find(|c| Family::of_net(c) == family && ranges.iter().any(|r| r.contains(*c)));
                if let Some(cidr) = held {
                    self.accepted_masks.insert((pool.name.clone(), family), cidr.prefix_len());
                }
            }
        }
    }

    fn build_allocators(
        &mut self,
        pools: &[PoolSpec],
        errors: &mut BTreeMap<String, String>,
    ) -> BTreeMap<(String, Family), ClusterCidrPool> {
        let mut allocators = BTreeMap::new();
        for pool in pools {
            let mut messages = Vec::new();
            for family in [Family::V4, Family::V6] {
                let Some(spec) = pool.family(family) else { continue };
                let (alloc, error) = self.build_one(pool, family, spec);
                if let Some(alloc) = alloc {
                    allocators.insert((pool.name.clone(), family), alloc);
                }
                messages.extend(error.map(|e| e.to_string()));
            }
            if !messages.is_empty() {
                errors.insert(pool.name.clone(), messages.join("; "));
            }
        }
        allocators
    }

    /// The allocator of one pool family, and what is wrong with its spec. A changed mask is an
    /// error that still yields an allocator with the accepted mask, so the pool keeps serving.
    fn build_one(
        &mut self,
        pool: &PoolSpec,
        family: Family,
        spec: &FamilySpec,
    ) -> (Option<ClusterCidrPool>, Option<MultiPoolError>) {
        let mut cidrs = Vec::with_capacity(spec.cidrs.len());
        for text in &spec.cidrs {
            match text.parse::<IpNet>() {
                Ok(c) => cidrs.push(c),
                Err(_) => {
                    let e = MultiPoolError::InvalidCidr { pool: pool.name.clone(), family, text: text.clone() };
                    return (None, Some(e));
                }
            }
        }
        let key = (pool.name.clone(), family);
        let accepted = *self.accepted_masks.entry(key).or_insert(spec.mask_size);
        let alloc = match ClusterCidrPool::new(family, &cidrs, accepted) {
            Ok(alloc) => alloc,
            Err(source) => return (None, Some(MultiPoolError::Pool { pool: pool.name.clone(), source })),
        };
        let error = (accepted != spec.mask_size).then(|| MultiPoolError::MaskChanged {
            pool: pool.name.clone(),
            family,
            accepted,
            requested: spec.mask_size,
        });
        (Some(alloc), error)
    }
}

/// A node's lists with CIDRs parsed (unparsable entries kept as text).
struct ParsedNode {
    name: String,
    requested: Vec<PoolDemand>,
    allocated: BTreeMap<String, Vec<Result<IpNet, String>>>,
}

impl ParsedNode {
    fn parse(node: &NodePoolState) -> Self {
        let mut allocated: BTreeMap<String, Vec<Result<IpNet, String>>> = BTreeMap::new();
        for entry in &node.allocated {
            let list = allocated.entry(entry.pool.clone()).or_default();
            for text in &entry.cidrs {
                list.push(text.parse::<IpNet>().map(|c| c.trunc()).map_err(|_| text.clone()));
            }
        }
        Self { name: node.name.clone(), requested: node.requested.clone(), allocated }
    }
}

#[derive(Default)]
struct NodeWork {
    /// Pool → CIDR texts the node keeps (its own, orphans, new ones).
    lists: BTreeMap<String, Vec<String>>,
    /// Non-orphan CIDRs per (pool, family): what counts towards `needed`.
    owned: BTreeMap<(String, Family), Vec<IpNet>>,
    errors: Vec<String>,
    warnings: Vec<String>,
}

impl NodeWork {
    fn keep(&mut self, pool: &str, cidr: String) {
        let list = self.lists.entry(pool.to_string()).or_default();
        if !list.contains(&cidr) {
            list.push(cidr);
        }
    }

    fn error(&mut self, message: String) {
        self.errors.push(message);
    }

    fn finish(&mut self) -> NodeAllocation {
        NodeAllocation {
            allocated: std::mem::take(&mut self.lists)
                .into_iter()
                .map(|(pool, cidrs)| PoolCidrs { pool, cidrs })
                .collect(),
            error: (!self.errors.is_empty()).then(|| self.errors.join("; ")),
            warnings: std::mem::take(&mut self.warnings),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("auto-create-cilium-pod-ip-pools: {0}")]
pub struct AutoCreateError(String);

/// Parses `auto-create-cilium-pod-ip-pools` in Cilium's syntax:
/// `default=ipv4-cidrs:10.10.0.0/16,10.20.0.0/16;ipv4-mask-size:24,other=ipv6-cidrs:fd00::/104;ipv6-mask-size:120`.
/// Pools are separated by commas; a comma-separated piece without `=` continues the previous
/// value (a CIDR list). A JSON object `{"default": "ipv4-cidrs:...;..."}` is accepted too.
pub fn parse_auto_create(text: &str) -> Result<Vec<PoolSpec>, AutoCreateError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let pairs: Vec<(String, String)> = if text.starts_with('{') {
        let map: BTreeMap<String, String> =
            serde_json::from_str(text).map_err(|e| AutoCreateError(format!("not a JSON object of strings: {e}")))?;
        map.into_iter().collect()
    } else {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for piece in text.split(',') {
            match (piece.split_once('='), pairs.last_mut()) {
                (Some((name, value)), _) => pairs.push((name.trim().to_string(), value.trim().to_string())),
                (None, Some((_, value))) => {
                    value.push(',');
                    value.push_str(piece.trim());
                }
                (None, None) => return Err(AutoCreateError(format!("{piece:?} is not `<pool>=<spec>`"))),
            }
        }
        pairs
    };
    let mut pools = Vec::new();
    for (name, value) in pairs {
        if name.is_empty() {
            return Err(AutoCreateError(format!("a pool without a name in {value:?}")));
        }
        pools.push(parse_pool_spec(&name, &value)?);
    }
    Ok(pools)
}

fn parse_pool_spec(name: &str, value: &str) -> Result<PoolSpec, AutoCreateError> {
    let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
    for field in value.split(';').map(str::trim).filter(|f| !f.is_empty()) {
        let (key, val) = field
            .split_once(':')
            .ok_or_else(|| AutoCreateError(format!("pool {name}: {field:?} is not `<key>:<value>`")))?;
        if !matches!(key, "ipv4-cidrs" | "ipv4-mask-size" | "ipv6-cidrs" | "ipv6-mask-size") {
            return Err(AutoCreateError(format!(
                "pool {name}: unknown key {key:?} (expected ipv4-cidrs, ipv4-mask-size, ipv6-cidrs, ipv6-mask-size)"
            )));
        }
        fields.insert(key, val.trim());
    }
    let family = |family: Family, cidrs_key: &str, mask_key: &str| -> Result<Option<FamilySpec>, AutoCreateError> {
        let (cidrs, mask) = (fields.get(cidrs_key), fields.get(mask_key));
        match (cidrs, mask) {
            (None, None) => Ok(None),
            (Some(_), None) | (None, Some(_)) => {
                Err(AutoCreateError(format!("pool {name}: {cidrs_key} and {mask_key} must be given together")))
            }
            (Some(cidrs), Some(mask)) => {
                let cidrs: Vec<String> =
                    cidrs.split(',').map(str::trim).filter(|c| !c.is_empty()).map(String::from).collect();
                for c in &cidrs {
                    let net: IpNet =
                        c.parse().map_err(|_| AutoCreateError(format!("pool {name}: {c:?} is not a CIDR")))?;
                    if Family::of_net(&net) != family {
                        return Err(AutoCreateError(format!("pool {name}: {c} in {cidrs_key} is not {family}")));
                    }
                }
                let mask_size: u8 = mask.parse().ok().filter(|m| *m >= 1 && *m <= family.bits()).ok_or_else(|| {
                    AutoCreateError(format!("pool {name}: {mask_key} {mask:?} is not 1..={}", family.bits()))
                })?;
                Ok(Some(FamilySpec { cidrs, mask_size }))
            }
        }
    };
    let ipv4 = family(Family::V4, "ipv4-cidrs", "ipv4-mask-size")?;
    let ipv6 = family(Family::V6, "ipv6-cidrs", "ipv6-mask-size")?;
    if ipv4.is_none() && ipv6.is_none() {
        return Err(AutoCreateError(format!("pool {name}: neither ipv4-cidrs nor ipv6-cidrs given")));
    }
    Ok(PoolSpec { name: name.to_string(), ipv4, ipv6 })
}

#[cfg(test)]
#[path = "multi_pool_tests.rs"]
mod tests;
