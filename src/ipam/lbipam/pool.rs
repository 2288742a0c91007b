//! Pools as the allocator sees them: parsed blocks, selection, and which pools conflict.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::block::{parse_block, BlockError, IpRange};
use super::service::ServiceRequest;
use crate::crds::cilium_load_balancer_ip_pool::{AllowFirstLastIps, CiliumLoadBalancerIPPool};
use crate::crds::selector::LabelSelector;

/// One `CiliumLoadBalancerIPPool`, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolView {
    pub name: String,
    pub generation: Option<i64>,
    pub created: Option<Time>,
    /// Valid blocks in `spec.blocks` order; invalid ones are in `errors` and serve nothing.
    pub ranges: Vec<IpRange>,
    pub errors: Vec<BlockError>,
    /// `allowFirstLastIPs` (unset means Yes).
    pub allow_first_last: bool,
    pub selector: Option<LabelSelector>,
    pub disabled: bool,
}

impl PoolView {
    pub fn from_pool(pool: &CiliumLoadBalancerIPPool) -> Self {
        let (mut ranges, mut errors) = (Vec::new(), Vec::new());
        for (i, block) in pool.spec.blocks.iter().enumerate() {
            match parse_block(i, block) {
                Ok(r) => ranges.push(r),
                Err(e) => errors.push(e),
            }
        }
        PoolView {
            name: pool.metadata.name.clone().unwrap_or_default(),
            generation: pool.metadata.generation,
            created: pool.metadata.creation_timestamp.clone(),
            ranges,
            errors,
            allow_first_last: pool.spec.allow_first_last_ips != Some(AllowFirstLastIps::No),
            selector: pool.spec.service_selector.clone(),
            disabled: pool.spec.disabled,
        }
    }

    /// No selector selects every Service.
    pub fn selects(&self, svc: &ServiceRequest) -> bool {
        self.selector.as_ref().is_none_or(|s| s.matches(&svc.labels))
    }

    /// The range of this pool holding `ip`, if any.
    pub fn range_of(&self, ip: IpAddr) -> Option<&IpRange> {
        self.ranges.iter().find(|r| r.contains(ip))
    }

    /// Whether `ip` is kept out of new allocations by `allowFirstLastIPs: No` in `range`.
    pub fn is_reserved(&self, range: &IpRange, ip: IpAddr) -> bool {
        !self.allow_first_last
            && range.reserved_when_first_last_disallowed().is_some_and(|(first, last)| ip == first || ip == last)
    }
}

/// Why a pool is disabled for conflicting: one of its ranges overlaps `other_range` of `other_pool`
/// (which is the pool itself when two of its own blocks overlap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub range: IpRange,
    pub other_range: IpRange,
    pub other_pool: String,
}

impl Conflict {
    /// Cilium's message, so tooling matching it keeps working.
    pub fn message(&self) -> String {
        format!(
            "Pool conflicts since range '{}' overlaps range '{}' from IP Pool '{}'",
            self.range, self.other_range, self.other_pool
        )
    }
}

/// Sorts pools into allocation order: oldest first (creationTimestamp, then name). This is also the
/// order in which conflicts are settled, so an older pool always wins over a newer one.
pub fn sort_pools(pools: &mut [PoolView]) {
    pools.sort_by(|a, b| (&a.created, &a.name).cmp(&(&b.created, &b.name)));
}

/// Conflicting pools by name, for `pools` in allocation order. A pool conflicts when two of its own
/// ranges overlap, or when one of its ranges overlaps a range of an older pool that does not itself
/// conflict. Conflicting pools claim no space, so a conflict between a newer pool and an already
/// conflicting one does not cascade.
pub fn find_conflicts(pools: &[PoolView]) -> BTreeMap<String, Conflict> {
    let mut conflicts = BTreeMap::new();
    for (i, pool) in pools.iter().enumerate() {
        let internal = pool.ranges.iter().enumerate().find_map(|(a, ra)| {
            pool.ranges.iter().enumerate().find(|(b, rb)| a != *b && ra.overlaps(rb)).map(|(_, rb)| (*ra, *rb))
        });
        let conflict = internal
            .map(|(range, other_range)| Conflict { range, other_range, other_pool: pool.name.clone() })
            .or_else(|| {
                pools[..i].iter().filter(|older| !conflicts.contains_key(&older.name)).find_map(|older| {
                    pool.ranges.iter().find_map(|r| {
                        older.ranges.iter().find(|o| r.overlaps(o)).map(|o| Conflict {
                            range: *r,
                            other_range: *o,
                            other_pool: older.name.clone(),
                        })
                    })
                })
            });
        if let Some(c) = conflict {
            conflicts.insert(pool.name.clone(), c);
        }
    }
    conflicts
}
