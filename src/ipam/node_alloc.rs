//! The per-node address allocator: hands out pod addresses of one family from the node's CIDRs.
//!
//! Like Cilium's host-scope allocator, each CIDR excludes its network (first) and last address, so a
//! /n CIDR holds 2^(bits−n) − 2 addresses and /31, /32, /127, /128 hold none. The router
//! (`cilium_host`) and health addresses are ordinary allocations with reserved owners, so they count
//! as used: a /29 shows `IPv4: 6/6 allocated from 10.0.42.0/29` with the router, health and four pods.
//!
//! Allocation is idempotent per owner (a retried CNI ADD gets the same address), restorable (the
//! agent re-occupies what endpoints use after a restart, and conflicts are reported), and the search
//! resumes after the last address handed out so a just-released address is not reused at once
//! (stale conntrack or ipcache entries for it have time to age out).
//!
//! One allocator serves one family over one or more CIDRs; CIDRs can be added and (when empty)
//! removed, which is what multi-pool needs per pool. Dual-stack nodes hold one allocator per family.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::addr::{addr_to_u128, host_bits, last_index, nets_overlap, network_value, u128_to_addr, Family};
use super::index_set::IndexSet;

/// Who holds an address. The agent's restore and the CNI plugin's DEL/GC key on this.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Owner {
    /// The node's router address, assigned to `cilium_host` (CiliumInternalIP).
    Router,
    /// The node's health-check endpoint.
    Health,
    /// A pod attachment: CNI's state key is (container ID, interface name); the pod names it for people.
    Endpoint { pod: PodRef, container_id: String, interface: String },
}

/// `namespace/name` of a pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

impl Owner {
    pub fn endpoint(namespace: &str, pod: &str, container_id: &str, interface: &str) -> Self {
        Owner::Endpoint {
            pod: PodRef { namespace: namespace.to_string(), name: pod.to_string() },
            container_id: container_id.to_string(),
            interface: interface.to_string(),
        }
    }
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Displays as Cilium lists allocations: `router`, `health`, `default/netshoot-client`.
impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Router => f.write_str("router"),
            Owner::Health => f.write_str("health"),
            Owner::Endpoint { pod, .. } => pod.fmt(f),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("{cidr} is not an {family} CIDR")]
    FamilyMismatch { family: Family, cidr: IpNet },
    #[error("CIDR {cidr} overlaps {existing}, which this allocator already manages")]
    CidrOverlap { cidr: IpNet, existing: IpNet },
    #[error("CIDR {cidr} still has {used} allocated addresses; release them before removing it")]
    CidrInUse { cidr: IpNet, used: u128 },
    #[error("{0} is not one of this allocator's CIDRs")]
    UnknownCidr(IpNet),
    #[error("no free {} addresses: {}", status.family, status)]
    Exhausted { status: AllocatorStatus },
    #[error("{addr} is not inside any of the node's {family} CIDRs ({})", join(cidrs))]
    NotInRange { addr: IpAddr, family: Family, cidrs: Vec<IpNet> },
    #[error("{addr} is the network or last address of {cidr}, which are never allocated")]
    ReservedAddress { addr: IpAddr, cidr: IpNet },
    #[error("{addr} is already allocated to {owner}")]
    AlreadyAllocated { addr: IpAddr, owner: Box<Owner> },
    #[error("{owner} already holds {existing}; it cannot also take {requested}")]
    OwnerHasOtherAddress { owner: Box<Owner>, existing: IpAddr, requested: IpAddr },
}

fn join(cidrs: &[IpNet]) -> String {
    cidrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// Usage of one family, rendered as Cilium's `cilium status` IPAM line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocatorStatus {
    pub family: Family,
    pub used: u128,
    pub capacity: u128,
    pub cidrs: Vec<IpNet>,
}

/// `IPv4: 6/254 allocated from 10.0.2.0/24`.
impl fmt::Display for AllocatorStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}/{} allocated from {}", self.family, self.used, self.capacity, join(&self.cidrs))
    }
}

/// Usable addresses of a node CIDR: 2^h − 2 (network and last address excluded), 0 below /30 (/126).
pub fn usable_addresses(cidr: &IpNet) -> u128 {
    let h = host_bits(cidr);
    if h < 2 {
        0
    } else {
        // 2^h − 2 == last_index(h) − 1, also for h == 128.
        last_index(h) - 1
    }
}

/// One node CIDR: used offsets from its network address (valid offsets 1..=capacity).
#[derive(Debug, Clone)]
struct CidrRange {
    cidr: IpNet,
    capacity: u128,
    used: IndexSet,
    /// Where the next search starts (one past the last offset handed out).
    next: u128,
}

impl CidrRange {
    fn new(cidr: IpNet) -> Self {
        Self { cidr, capacity: usable_addresses(&cidr), used: IndexSet::new(), next: 1 }
    }

    fn offset_of(&self, addr: IpAddr) -> Option<u128> {
        self.cidr.contains(&addr).then(|| addr_to_u128(addr) - network_value(&self.cidr))
    }

    fn addr_at(&self, offset: u128) -> IpAddr {
        u128_to_addr(Family::of_net(&self.cidr), network_value(&self.cidr) + offset)
    }

    fn take_next(&mut self) -> Option<IpAddr> {
        if self.capacity == 0 {
            return None;
        }
        let start = self.next.clamp(1, self.capacity);
        let offset =
            self.used.first_free_in(start, self.capacity).or_else(|| self.used.first_free_in(1, self.capacity))?;
        self.used.insert(offset);
        self.next = offset.saturating_add(1);
        Some(self.addr_at(offset))
    }
}

/// Addresses of one family over the node's CIDRs, with their owners.
#[derive(Debug, Clone)]
pub struct AddressAllocator {
    family: Family,
    ranges: Vec<CidrRange>,
    by_owner: HashMap<Owner, IpAddr>,
    by_addr: BTreeMap<IpAddr, Owner>,
}

impl AddressAllocator {
    /// An allocator over `cidrs` (in order: the first CIDR with room serves the next allocation).
    /// Host bits of a CIDR are dropped (`10.0.2.7/24` means `10.0.2.0/24`), as Cilium's parser does.
    pub fn new(family: Family, cidrs: &[IpNet]) -> Result<Self, IpamError> {
        let mut alloc = Self { family, ranges: Vec::new(), by_owner: HashMap::new(), by_addr: BTreeMap::new() };
        for cidr in cidrs {
            alloc.add_cidr(*cidr)?;
        }
        Ok(alloc)
    }

    pub fn family(&self) -> Family {
        self.family
    }

    pub fn cidrs(&self) -> Vec<IpNet> {
        self.ranges.iter().map(|r| r.cidr).collect()
    }

    /// Adds a CIDR (multi-pool grows a node this way). Returns false if it is already managed.
    pub fn add_cidr(&mut self, cidr: IpNet) -> Result<bool, IpamError> {
        let cidr = cidr.trunc();
        if Family::of_net(&cidr) != self.family {
            return Err(IpamError::FamilyMismatch { family: self.family, cidr });
        }
        if self.ranges.iter().any(|r| r.cidr == cidr) {
            return Ok(false);
        }
        if let Some(existing) = self.ranges.iter().find(|r| nets_overlap(&r.cidr, &cidr)) {
            return Err(IpamError::CidrOverlap { cidr, existing: existing.cidr });
        }
        self.ranges.push(CidrRange::new(cidr));
        Ok(true)
    }

    /// Removes an unused CIDR (multi-pool hands surplus CIDRs back). Refuses while any address in
    /// it is allocated.
    pub fn remove_cidr(&mut self, cidr: IpNet) -> Result<(), IpamError> {
        let cidr = cidr.trunc();
        let index = self.ranges.iter().position(|r| r.cidr == cidr).ok_or(IpamError::UnknownCidr(cidr))?;
        let used = self.ranges[index].used.len();
        if used > 0 {
            return Err(IpamError::CidrInUse { cidr, used });
        }
        self.ranges.remove(index);
        Ok(())
    }

    pub fn capacity(&self) -> u128 {
        self.ranges.iter().fold(0u128, |sum, r| sum.saturating_add(r.capacity))
    }

    pub fn used(&self) -> u128 {
        self.by_addr.len() as u128
    }

    pub fn free(&self) -> u128 {
        self.capacity().saturating_sub(self.used())
    }

    /// Used addresses inside one CIDR (multi-pool decides which CIDR it can release).
    pub fn used_in(&self, cidr: &IpNet) -> Option<u128> {
        self.ranges.iter().find(|r| r.cidr == cidr.trunc()).map(|r| r.used.len())
    }

    pub fn status(&self) -> AllocatorStatus {
        AllocatorStatus { family: self.family, used: self.used(), capacity: self.capacity(), cidrs: self.cidrs() }
    }

    /// An address for `owner`: the one it already holds, else the next free one.
    pub fn allocate(&mut self, owner: Owner) -> Result<IpAddr, IpamError> {
        if let Some(addr) = self.by_owner.get(&owner) {
            return Ok(*addr);
        }
        let addr = self
            .ranges
            .iter_mut()
            .find_map(CidrRange::take_next)
            .ok_or_else(|| IpamError::Exhausted { status: self.status() })?;
        self.by_owner.insert(owner.clone(), addr);
        self.by_addr.insert(addr, owner);
        Ok(addr)
    }

    /// Re-occupies `addr` for `owner` (agent restart: the router address found on `cilium_host`,
    /// endpoint addresses from restored endpoints). Idempotent for the same pair; any conflict is an
    /// error and leaves the allocator unchanged.
    pub fn restore(&mut self, owner: Owner, addr: IpAddr) -> Result<(), IpamError> {
        if let Some(existing) = self.by_owner.get(&owner) {
            return if *existing == addr {
                Ok(())
            } else {
                Err(IpamError::OwnerHasOtherAddress { owner: Box::new(owner), existing: *existing, requested: addr })
            };
        }
        if let Some(holder) = self.by_addr.get(&addr) {
            return Err(IpamError::AlreadyAllocated { addr, owner: Box::new(holder.clone()) });
        }
        let Some((range, offset)) = self.ranges.iter_mut().find_map(|r| r.offset_of(addr).map(|o| (r, o))) else {
            return Err(IpamError::NotInRange { addr, family: self.family, cidrs: self.cidrs() });
        };
        if offset == 0 || offset > range.capacity {
            return Err(IpamError::ReservedAddress { addr, cidr: range.cidr });
        }
        range.used.insert(offset);
        self.by_owner.insert(owner.clone(), addr);
        self.by_addr.insert(addr, owner);
        Ok(())
    }

    /// Releases whatever `owner` holds; `None` if it holds nothing (a repeated CNI DEL).
    pub fn release_owner(&mut self, owner: &Owner) -> Option<IpAddr> {
        let addr = self.by_owner.remove(owner)?;
        self.by_addr.remove(&addr);
        self.clear(addr);
        Some(addr)
    }

    /// Releases `addr`; returns who held it, `None` if it was free.
    pub fn release_addr(&mut self, addr: IpAddr) -> Option<Owner> {
        let owner = self.by_addr.remove(&addr)?;
        self.by_owner.remove(&owner);
        self.clear(addr);
        Some(owner)
    }

    fn clear(&mut self, addr: IpAddr) {
        for range in &mut self.ranges {
            if let Some(offset) = range.offset_of(addr) {
                range.used.remove(offset);
                return;
            }
        }
    }

    pub fn owner_of(&self, addr: IpAddr) -> Option<&Owner> {
        self.by_addr.get(&addr)
    }

    pub fn addr_of(&self, owner: &Owner) -> Option<IpAddr> {
        self.by_owner.get(owner).copied()
    }

    /// Allocations in address order (for `beeline ipam` and `status --verbose`).
    pub fn allocations(&self) -> impl Iterator<Item = (IpAddr, &Owner)> {
        self.by_addr.iter().map(|(a, o)| (*a, o))
    }
}

#[cfg(test)]
#[path = "node_alloc_tests.rs"]
mod tests;
