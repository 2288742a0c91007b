//! Desired state of the cluster-pool operator controller, as a pure function:
//! (Kubernetes Nodes, existing CiliumNode `spec.ipam.podCIDRs`, config) → per-node `podCIDRs` and
//! `status.ipam.operator-status.error`.
//!
//! The function recomputes from scratch each time, so an operator restart is just another call:
//! 1. every existing assignment of a node that still exists is restored first, in node-name order
//!    (a CIDR already in use is never handed to anyone else; a malformed, out-of-range or
//!    colliding assignment is left untouched on the node and reported in its status);
//! 2. only then do nodes without a CIDR for an enabled family get one, all families or none, so a
//!    dual-stack node never runs half-configured; exhaustion is reported with Cilium's message and
//!    resolved by the first call after a CIDR is freed;
//! 3. CiliumNodes whose Node is gone release their CIDRs.
//!
//! The controller must call it only once both the Node and the CiliumNode caches have synced,
//! otherwise step 1 would not know every assignment. Inputs are plain structs so this does not
//! depend on the CRD types.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use super::addr::Family;
use super::cluster_pool::{ClusterCidrPool, ClusterCidrUsage, PoolError, Restored};

/// Cilium refuses IPv6 node masks more than 16 bits longer than the cluster CIDR (its bitmap
/// allocator's limit). Our pool has no such limit, but accepting configs Cilium rejects would let
/// a config that works here fail on Cilium; we mirror its start-up check.
pub const MAX_IPV6_MASK_DIFF: u8 = 16;

/// One family's part of the config (`cluster-pool-ipv4-cidr` + `cluster-pool-ipv4-mask-size`, or IPv6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyPoolConfig {
    pub cidrs: Vec<IpNet>,
    pub mask_size: u8,
}

/// `None` for a disabled family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterPoolConfig {
    pub ipv4: Option<FamilyPoolConfig>,
    pub ipv6: Option<FamilyPoolConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterPoolConfigError {
    #[error("cluster-pool IPAM needs at least one of IPv4 and IPv6 enabled")]
    NoFamily,
    #[error("unable to initialize {family} allocator: {source}")]
    Pool { family: Family, source: PoolError },
    #[error(
        "unable to initialize IPv6 allocator: mask size /{mask} is more than {MAX_IPV6_MASK_DIFF} bits longer than cluster CIDR {cidr}"
    )]
    Ipv6MaskTooLong { cidr: IpNet, mask: u8 },
}

/// What the controller knows of an existing CiliumNode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingCiliumNode {
    pub name: String,
    /// `spec.ipam.podCIDRs` as written (may be malformed: it is user-editable).
    pub pod_cidrs: Vec<String>,
}

/// The desired IPAM part of one node's CiliumNode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePodCidrs {
    /// `spec.ipam.podCIDRs`: IPv4 first, then IPv6 (as Cilium writes them). When the node's
    /// existing value could not be restored it is returned unchanged.
    pub pod_cidrs: Vec<String>,
    /// `status.ipam.operator-status.error`; `None` clears a previous error.
    pub error: Option<String>,
    /// Worth an Event, not an error (an assignment kept although its size differs from the mask).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredPodCidrs {
    /// One entry per Kubernetes Node (a CiliumNode to create or update).
    pub nodes: BTreeMap<String, NodePodCidrs>,
    /// CiliumNodes without a Node: their CIDRs are free again; the controller deletes them.
    pub released: BTreeMap<String, Vec<String>>,
    /// Per cluster CIDR usage after this pass (metrics, `beeline status` on the operator).
    pub usage: Vec<ClusterCidrUsage>,
}

/// The validated pools of the enabled families.
#[derive(Debug, Clone)]
pub struct ClusterPools {
    pools: Vec<ClusterCidrPool>,
}

impl ClusterPools {
    /// Validates the config the way Cilium's operator does at start-up.
    pub fn new(config: &ClusterPoolConfig) -> Result<Self, ClusterPoolConfigError> {
        let mut pools = Vec::new();
        for (family, part) in [(Family::V4, &config.ipv4), (Family::V6, &config.ipv6)] {
            let Some(part) = part else { continue };
            let pool = ClusterCidrPool::new(family, &part.cidrs, part.mask_size)
                .map_err(|source| ClusterPoolConfigError::Pool { family, source })?;
            if family == Family::V6 {
                if let Some(cidr) =
                    pool.cluster_cidrs().into_iter().find(|c| part.mask_size - c.prefix_len() > MAX_IPV6_MASK_DIFF)
                {
                    return Err(ClusterPoolConfigError::Ipv6MaskTooLong { cidr, mask: part.mask_size });
                }
            }
            pools.push(pool);
        }
        if pools.is_empty() {
            return Err(ClusterPoolConfigError::NoFamily);
        }
        Ok(Self { pools })
    }

    fn pool_mut(&mut self, family: Family) -> Option<&mut ClusterCidrPool> {
        self.pools.iter_mut().find(|p| p.family() == family)
    }

    /// The desired state for `nodes` (names of Kubernetes Nodes) given the existing CiliumNodes.
    pub fn desired(&self, nodes: &BTreeSet<String>, cilium_nodes: &[ExistingCiliumNode]) -> DesiredPodCidrs {
        let mut pools = self.clone();
        let existing: BTreeMap<&str, &ExistingCiliumNode> =
            cilium_nodes.iter().map(|cn| (cn.name.as_str(), cn)).collect();
        let mut out = DesiredPodCidrs { nodes: BTreeMap::new(), released: BTreeMap::new(), usage: Vec::new() };

        // 1. Restore, so nothing in use is handed out again.
        let mut restored: BTreeMap<&str, Vec<IpNet>> = BTreeMap::new();
        for (name, cn) in &existing {
            if !nodes.contains(*name) {
                if !cn.pod_cidrs.is_empty() {
                    out.released.insert(name.to_string(), cn.pod_cidrs.clone());
                }
                continue;
            }
            match pools.restore_node(name, &cn.pod_cidrs) {
                Ok((cidrs, warnings)) => {
                    restored.insert(name, cidrs);
                    if !warnings.is_empty() {
                        out.nodes
                            .insert(name.to_string(), NodePodCidrs { pod_cidrs: Vec::new(), error: None, warnings });
                    }
                }
                Err(error) => {
                    out.nodes.insert(
                        name.to_string(),
                        NodePodCidrs { pod_cidrs: cn.pod_cidrs.clone(), error: Some(error), warnings: Vec::new() },
                    );
                }
            }
        }

        // 2. Allocate what is missing, all enabled families or none.
        for name in nodes {
            if out.nodes.get(name).is_some_and(|n| n.error.is_some()) {
                continue;
            }
            let mut cidrs = restored.get(name.as_str()).cloned().unwrap_or_default();
            let entry = out.nodes.entry(name.clone()).or_insert_with(|| NodePodCidrs {
                pod_cidrs: Vec::new(),
                error: None,
                warnings: Vec::new(),
            });
            match pools.fill_missing_families(name, &cidrs) {
                Ok(new) => {
                    cidrs.extend(new);
                    cidrs.sort_by_key(Family::of_net);
                    entry.pod_cidrs = cidrs.iter().map(ToString::to_string).collect();
                }
                Err(error) => {
                    entry.pod_cidrs = existing.get(name.as_str()).map(|cn| cn.pod_cidrs.clone()).unwrap_or_default();
                    entry.error = Some(error.to_string());
                }
            }
        }
        out.usage = pools.pools.iter().flat_map(ClusterCidrPool::usage).collect();
        out
    }

    /// Restores every CIDR of one node, all or nothing. Errors are the status message.
    fn restore_node(&mut self, node: &str, pod_cidrs: &[String]) -> Result<(Vec<IpNet>, Vec<String>), String> {
        let mut done: Vec<IpNet> = Vec::new();
        let mut warnings = Vec::new();
        let mut result = Ok(());
        for text in pod_cidrs {
            let cidr: IpNet = match text.parse() {
                Ok(c) => c,
                Err(_) => {
                    result = Err(format!("invalid podCIDR {text:?}: not a CIDR"));
                    break;
                }
            };
            let family = Family::of_net(&cidr);
            let Some(pool) = self.pool_mut(family) else {
                result = Err(format!(
                    "unable to allocate CIDR {cidr} since allocator for {family} addresses does not exist"
                ));
                break;
            };
            match pool.restore(node, cidr) {
                Ok(Restored::Exact) => done.push(cidr.trunc()),
                Ok(Restored::MaskDiffers { configured }) => {
                    warnings.push(format!(
                        "podCIDR {cidr} is kept although the configured {family} mask size is /{configured}"
                    ));
                    done.push(cidr.trunc());
                }
                Err(e) => {
                    result = Err(e.to_string());
                    break;
                }
            }
        }
        match result {
            Ok(()) => Ok((done, warnings)),
            Err(error) => {
                for cidr in done {
                    if let Some(pool) = self.pool_mut(Family::of_net(&cidr)) {
                        pool.release(node, cidr);
                    }
                }
                Err(error)
            }
        }
    }

    /// Allocates one CIDR for each enabled family `held` lacks; on any failure releases what it
    /// took and returns the error.
    fn fill_missing_families(&mut self, node: &str, held: &[IpNet]) -> Result<Vec<IpNet>, PoolError> {
        let mut new = Vec::new();
        for index in 0..self.pools.len() {
            let family = self.pools[index].family();
            if held.iter().any(|c| Family::of_net(c) == family) {
                continue;
            }
            match self.pools[index].allocate_additional(node) {
                Ok(cidr) => new.push(cidr),
                Err(e) => {
                    for cidr in new {
                        if let Some(pool) = self.pool_mut(Family::of_net(&cidr)) {
                            pool.release(node, cidr);
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(new)
    }
}

#[cfg(test)]
#[path = "podcidr_tests.rs"]
mod tests;
