//! The cluster CIDR pool (operator, `cluster-pool` mode): carves per-node CIDRs of one mask size out
//! of an ordered list of cluster CIDRs of one family.
//!
//! - Allocation takes the lowest free block of the first cluster CIDR that has one, so the next
//!   cluster CIDR is used only when the earlier ones are full (two /28s with mask 29 give the first
//!   two nodes the /29s of the first /28, the next two those of the second).
//! - Restoring an existing assignment (operator restart) occupies it exactly; an assignment outside
//!   every cluster CIDR, or one that collides with another node's, is an error and changes nothing,
//!   so a CIDR is never handed to two nodes. An in-range assignment of a different mask (the mask
//!   was changed in the config) is kept in use and reported, never silently re-carved.
//! - Used blocks live in an interval set: an IPv6 /48 split into /120s (2^72 blocks) costs memory in
//!   proportion to the blocks in use, not to the pool size.

use std::collections::BTreeMap;
use std::fmt;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::addr::{host_bits, last_index, nets_overlap, network_value, u128_to_addr, Family};
use super::index_set::IndexSet;

/// Cilium's message for an exhausted pool; users grep their CiliumNode status for it.
pub const NO_REMAINING_CIDRS: &str =
    "CIDR allocation failed; there are no remaining CIDRs left to allocate in the accepted range";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("no {family} cluster CIDRs configured")]
    NoClusterCidrs { family: Family },
    #[error("cluster CIDR {cidr} is not {family}")]
    FamilyMismatch { family: Family, cidr: IpNet },
    #[error("mask size {mask} is invalid for {family}: it must be at most {max}")]
    MaskTooLong { family: Family, mask: u8, max: u8 },
    #[error("mask size /{mask} is shorter than cluster CIDR {cidr}: a node CIDR must fit inside it")]
    MaskShorterThanCluster { cidr: IpNet, mask: u8 },
    #[error("cluster CIDR {cidr} overlaps cluster CIDR {other}")]
    ClusterCidrOverlap { cidr: IpNet, other: IpNet },
    #[error("{NO_REMAINING_CIDRS} ({family}: {})", join(cidrs))]
    Exhausted { family: Family, cidrs: Vec<IpNet> },
    #[error("node {node}: CIDR {cidr} is not inside any configured {family} cluster CIDR ({})", join(cidrs))]
    OutOfRange { node: String, cidr: IpNet, family: Family, cidrs: Vec<IpNet> },
    #[error("node {node}: requested CIDR {cidr} is already allocated to node {holder} ({held})")]
    Conflict { node: String, cidr: IpNet, holder: String, held: IpNet },
}

fn join(cidrs: &[IpNet]) -> String {
    cidrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// How an existing assignment was taken back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restored {
    /// A block of the configured mask size (or the node already held it).
    Exact,
    /// In range but of another size than the configured mask: kept in use, worth a warning.
    MaskDiffers { configured: u8 },
}

/// Usage of one cluster CIDR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterCidrUsage {
    pub cidr: IpNet,
    /// Blocks of the node mask size that are in use.
    pub used: u128,
    /// `2^(mask − prefix)`, saturated at `u128::MAX`.
    pub total: u128,
}

impl fmt::Display for ClusterCidrUsage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}/{} node CIDRs allocated", self.cidr, self.used, self.total)
    }
}

/// One cluster CIDR split into blocks of the node mask; block `i` starts at `network + i·2^h`.
#[derive(Debug, Clone)]
struct CidrSet {
    cluster: IpNet,
    /// Host bits of a node block.
    block_bits: u8,
    /// Index of the last block.
    last: u128,
    used: IndexSet,
}

impl CidrSet {
    fn block(&self, index: u128, node_prefix: u8) -> IpNet {
        let start = network_value(&self.cluster) + index.checked_shl(self.block_bits.into()).unwrap_or(0);
        IpNet::new(u128_to_addr(Family::of_net(&self.cluster), start), node_prefix).expect("prefix within family width")
    }

    /// Block indices covered by `cidr`, which must lie inside the cluster CIDR.
    fn indices(&self, cidr: &IpNet) -> (u128, u128) {
        let offset = network_value(cidr) - network_value(&self.cluster);
        let first = offset.checked_shr(self.block_bits.into()).unwrap_or(0);
        let span_bits = host_bits(cidr).saturating_sub(self.block_bits);
        (first, first + last_index(span_bits))
    }
}

#[derive(Debug, Clone)]
pub struct ClusterCidrPool {
    family: Family,
    node_prefix: u8,
    sets: Vec<CidrSet>,
    /// Node → CIDRs it holds from this pool, in allocation order.
    by_node: BTreeMap<String, Vec<IpNet>>,
}

impl ClusterCidrPool {
    /// A pool over `cidrs` (order matters) handing out `/node_prefix` blocks. Host bits of a cluster
    /// CIDR are dropped, as Cilium's parser does. Errors name the offending CIDR or mask.
    pub fn new(family: Family, cidrs: &[IpNet], node_prefix: u8) -> Result<Self, PoolError> {
        if cidrs.is_empty() {
            return Err(PoolError::NoClusterCidrs { family });
        }
        // Family first: a mask judged against the wrong family would mislead.
        if let Some(cidr) = cidrs.iter().find(|c| Family::of_net(c) != family) {
            return Err(PoolError::FamilyMismatch { family, cidr: cidr.trunc() });
        }
        if node_prefix > family.bits() {
            return Err(PoolError::MaskTooLong { family, mask: node_prefix, max: family.bits() });
        }
        let mut sets: Vec<CidrSet> = Vec::with_capacity(cidrs.len());
        for cidr in cidrs {
            let cidr = cidr.trunc();
            if node_prefix < cidr.prefix_len() {
                return Err(PoolError::MaskShorterThanCluster { cidr, mask: node_prefix });
            }
            if let Some(other) = sets.iter().find(|s| nets_overlap(&s.cluster, &cidr)) {
                return Err(PoolError::ClusterCidrOverlap { cidr, other: other.cluster });
            }
            let block_bits = family.bits() - node_prefix;
            sets.push(CidrSet {
                cluster: cidr,
                block_bits,
                last: last_index(node_prefix - cidr.prefix_len()),
                used: IndexSet::new(),
            });
        }
        Ok(Self { family, node_prefix, sets, by_node: BTreeMap::new() })
    }

    pub fn family(&self) -> Family {
        self.family
    }

    pub fn node_prefix(&self) -> u8 {
        self.node_prefix
    }

    pub fn cluster_cidrs(&self) -> Vec<IpNet> {
        self.sets.iter().map(|s| s.cluster).collect()
    }

    /// CIDRs `node` holds from this pool.
    pub fn node_cidrs(&self, node: &str) -> &[IpNet] {
        self.by_node.get(node).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Nodes and their CIDRs, ordered by node name.
    pub fn assignments(&self) -> impl Iterator<Item = (&str, &[IpNet])> {
        self.by_node.iter().map(|(n, c)| (n.as_str(), c.as_slice()))
    }

    pub fn is_full(&self) -> bool {
        self.sets.iter().all(|s| s.used.first_free_in(0, s.last).is_none())
    }

    pub fn usage(&self) -> Vec<ClusterCidrUsage> {
        self.sets
            .iter()
            .map(|s| ClusterCidrUsage { cidr: s.cluster, used: s.used.len(), total: s.last.saturating_add(1) })
            .collect()
    }

    /// The node's CIDR from this pool: the one it holds, else a newly allocated one
    /// (cluster-pool mode: one CIDR per node and family).
    pub fn ensure_one(&mut self, node: &str) -> Result<IpNet, PoolError> {
        match self.node_cidrs(node).first() {
            Some(cidr) => Ok(*cidr),
            None => self.allocate_additional(node),
        }
    }

    /// A further CIDR for `node` (multi-pool growth), even if it already holds some.
    pub fn allocate_additional(&mut self, node: &str) -> Result<IpNet, PoolError> {
        let node_prefix = self.node_prefix;
        for set in &mut self.sets {
            if let Some(index) = set.used.first_free_in(0, set.last) {
                set.used.insert(index);
                let cidr = set.block(index, node_prefix);
                self.by_node.entry(node.to_string()).or_default().push(cidr);
                return Ok(cidr);
            }
        }
        Err(PoolError::Exhausted { family: self.family, cidrs: self.cluster_cidrs() })
    }

    /// Takes back an assignment `node` already has (operator restart, or a CIDR set by hand).
    /// Errors leave the pool unchanged.
    pub fn restore(&mut self, node: &str, cidr: IpNet) -> Result<Restored, PoolError> {
        let cidr = cidr.trunc();
        let restored = if cidr.prefix_len() == self.node_prefix {
            Restored::Exact
        } else {
            Restored::MaskDiffers { configured: self.node_prefix }
        };
        if self.node_cidrs(node).contains(&cidr) {
            return Ok(restored);
        }
        let Some(set_index) = self.sets.iter().position(|s| s.cluster.contains(&cidr)) else {
            return Err(PoolError::OutOfRange {
                node: node.to_string(),
                cidr,
                family: self.family,
                cidrs: self.cluster_cidrs(),
            });
        };
        let (first, last) = self.sets[set_index].indices(&cidr);
        if self.sets[set_index].used.intersects(first..=last) {
            // Slow path: find who overlaps. Blocks smaller than the mask may share an index
            // without overlapping; those are not conflicts.
            if let Some((holder, held)) = self.holder_overlapping(&cidr) {
                return Err(PoolError::Conflict { node: node.to_string(), cidr, holder, held });
            }
        }
        self.sets[set_index].used.insert_range(first..=last);
        self.by_node.entry(node.to_string()).or_default().push(cidr);
        Ok(restored)
    }

    fn holder_overlapping(&self, cidr: &IpNet) -> Option<(String, IpNet)> {
        self.by_node.iter().find_map(|(n, held)| held.iter().find(|h| nets_overlap(h, cidr)).map(|h| (n.clone(), *h)))
    }

    /// Releases one CIDR of `node`; false if the node did not hold it.
    pub fn release(&mut self, node: &str, cidr: IpNet) -> bool {
        let cidr = cidr.trunc();
        let Some(held) = self.by_node.get_mut(node) else { return false };
        let Some(pos) = held.iter().position(|c| *c == cidr) else { return false };
        held.remove(pos);
        if held.is_empty() {
            self.by_node.remove(node);
        }
        self.unmark(&cidr);
        true
    }

    /// Releases everything `node` holds (node deleted); returns what it held.
    pub fn release_node(&mut self, node: &str) -> Vec<IpNet> {
        let held = self.by_node.remove(node).unwrap_or_default();
        for cidr in &held {
            self.unmark(cidr);
        }
        held
    }

    fn unmark(&mut self, cidr: &IpNet) {
        let Some(set_index) = self.sets.iter().position(|s| s.cluster.contains(cidr)) else { return };
        let (first, last) = self.sets[set_index].indices(cidr);
        self.sets[set_index].used.remove_range(first..=last);
        if cidr.prefix_len() > self.node_prefix {
            // A block smaller than the mask shares its index with any sibling still held.
            let siblings: Vec<IpNet> = self
                .by_node
                .values()
                .flatten()
                .filter(|h| h.prefix_len() > self.node_prefix && self.sets[set_index].indices(h) == (first, last))
                .copied()
                .collect();
            for sibling in siblings {
                let (a, b) = self.sets[set_index].indices(&sibling);
                self.sets[set_index].used.insert_range(a..=b);
            }
        }
    }
}

#[cfg(test)]
#[path = "cluster_pool_tests.rs"]
mod tests;
