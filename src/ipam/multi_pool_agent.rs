//! The agent's side of multi-pool IPAM, pure: which pool a pod's address comes from, how many
//! addresses the node asks each pool for, and which CIDR it can hand back.
//!
//! - Pool choice, per family (Cilium's precedence): the pod's `ipam.cilium.io/ipv4-pool` /
//!   `ipv6-pool`, then its `ipam.cilium.io/ip-pool`; the same two on the namespace; then the pools
//!   whose pod/namespace selectors match (only pools that have a selector take part; exactly one
//!   may match); else `default`.
//! - Demand: `needed` = in use + pending + pre-allocation, rounded up to a multiple of the
//!   pre-allocation, so the node always has a spare block ready (16: 0→16, 1→32, 16→32, 17→48).
//! - Release: an unused CIDR goes back, newest first, when the others still cover `needed`.

use std::collections::BTreeMap;

use ipnet::IpNet;

use super::addr::Family;
use super::multi_pool::DEFAULT_POOL;
use super::node_alloc::usable_addresses;
use crate::crds::selector::LabelSelector;

pub use crate::crds::cilium_pod_ip_pool::POOL_ANNOTATION;
/// Pool for IPv4 only (wins over [`POOL_ANNOTATION`]).
pub const IPV4_POOL_ANNOTATION: &str = "ipam.cilium.io/ipv4-pool";
/// Pool for IPv6 only (wins over [`POOL_ANNOTATION`]).
pub const IPV6_POOL_ANNOTATION: &str = "ipam.cilium.io/ipv6-pool";
/// Cilium's default pre-allocation per pool (`ipam-multi-pool-pre-allocation`).
pub const DEFAULT_PRE_ALLOCATION: u64 = 8;

/// Labels and annotations of a pod or namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// A pool's selectors (from its `CiliumPodIPPool`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolSelectors {
    pub name: String,
    pub pod_selector: Option<LabelSelector>,
    pub namespace_selector: Option<LabelSelector>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolChoiceError {
    #[error("{family} pool of pod {pod}: the selectors of several pools match ({}); annotate the pod or its namespace with {POOL_ANNOTATION} to choose", pools.join(", "))]
    Ambiguous { pod: String, family: Family, pools: Vec<String> },
}

fn annotated(meta: &Meta, family: Family) -> Option<&str> {
    let specific = match family {
        Family::V4 => IPV4_POOL_ANNOTATION,
        Family::V6 => IPV6_POOL_ANNOTATION,
    };
    [specific, POOL_ANNOTATION]
        .iter()
        .find_map(|k| meta.annotations.get(*k))
        .map(String::as_str)
        .filter(|p| !p.is_empty())
}

/// The pool of `pod` (named `namespace/name` in errors) for `family`.
pub fn choose_pool(
    pod_name: &str,
    family: Family,
    pod: &Meta,
    namespace: &Meta,
    pools: &[PoolSelectors],
) -> Result<String, PoolChoiceError> {
    if let Some(pool) = annotated(pod, family).or_else(|| annotated(namespace, family)) {
        return Ok(pool.to_string());
    }
    let matching: Vec<String> = pools
        .iter()
        .filter(|p| p.pod_selector.is_some() || p.namespace_selector.is_some())
        .filter(|p| p.pod_selector.as_ref().is_none_or(|s| s.matches(&pod.labels)))
        .filter(|p| p.namespace_selector.as_ref().is_none_or(|s| s.matches(&namespace.labels)))
        .map(|p| p.name.clone())
        .collect();
    match matching.len() {
        0 => Ok(DEFAULT_POOL.to_string()),
        1 => Ok(matching.into_iter().next().expect("one")),
        _ => Err(PoolChoiceError::Ambiguous { pod: pod_name.to_string(), family, pools: matching }),
    }
}

/// `needed` for one pool and family: in use + pending + pre-allocation, rounded up to a multiple
/// of the pre-allocation (a pre-allocation of 0 means no rounding and no spare).
pub fn needed(in_use: u64, pending: u64, pre_allocation: u64) -> u64 {
    let raw = in_use.saturating_add(pending).saturating_add(pre_allocation);
    if pre_allocation == 0 {
        return raw;
    }
    raw.div_ceil(pre_allocation).saturating_mul(pre_allocation)
}

/// CIDRs of one pool and family that can go back: unused ones, newest (last in `cidrs`) first,
/// as long as the remaining ones still cover `needed`. `used(cidr)` is how many addresses are
/// allocated in it.
pub fn releasable(cidrs: &[IpNet], used: impl Fn(&IpNet) -> u128, needed: u64) -> Vec<IpNet> {
    let mut capacity: u128 = cidrs.iter().map(usable_addresses).sum();
    let mut out = Vec::new();
    for cidr in cidrs.iter().rev() {
        let size = usable_addresses(cidr);
        if used(cidr) == 0 && capacity - size >= u128::from(needed) {
            capacity -= size;
            out.push(*cidr);
        }
    }
    out
}

#[cfg(test)]
#[path = "multi_pool_agent_tests.rs"]
mod tests;
