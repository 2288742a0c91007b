//! `ipam: crd`, pure: the node's addresses are listed one by one by an external party in
//! `CiliumNode.spec.ipam.pool` (IP → owner); the agent hands them to pods and reports what it uses
//! in `status.ipam.used`.
//!
//! - Allocation takes the lowest free listed address of the family; idempotent per owner and
//!   family (a dual-stack pod holds one of each).
//! - An address that disappears from the list while a pod holds it stays allocated (the pod keeps
//!   working) and is reported, never handed out again once released.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::addr::Family;
use super::node_alloc::Owner;
use crate::crds::cilium_node::AllocationIp;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrdPoolError {
    #[error("no free {family} address in CiliumNode spec.ipam.pool ({used} of {listed} listed addresses in use)")]
    Exhausted { family: Family, used: usize, listed: usize },
    #[error("spec.ipam.pool key {0:?} is not an IP address")]
    InvalidAddress(String),
}

#[derive(Debug, Clone, Default)]
pub struct CrdPool {
    listed: BTreeSet<IpAddr>,
    by_owner: BTreeMap<(Owner, Family), IpAddr>,
    by_addr: BTreeMap<IpAddr, Owner>,
}

impl CrdPool {
    /// Replaces the listed addresses with the keys of `spec.ipam.pool`. Returns the problems worth
    /// logging: unparsable keys (skipped) and held addresses no longer listed (kept).
    pub fn set_listed<'a>(&mut self, keys: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let mut notes = Vec::new();
        let mut listed = BTreeSet::new();
        for key in keys {
            match key.parse::<IpAddr>() {
                Ok(ip) => {
                    listed.insert(ip);
                }
                Err(_) => notes.push(CrdPoolError::InvalidAddress(key.to_string()).to_string()),
            }
        }
        for (ip, owner) in &self.by_addr {
            if !listed.contains(ip) {
                notes
                    .push(format!("{ip} (held by {owner}) is no longer listed in spec.ipam.pool; kept until released"));
            }
        }
        self.listed = listed;
        notes
    }

    /// The address `owner` holds in `family`, else the lowest free listed one.
    pub fn allocate(&mut self, owner: &Owner, family: Family) -> Result<IpAddr, CrdPoolError> {
        if let Some(ip) = self.by_owner.get(&(owner.clone(), family)) {
            return Ok(*ip);
        }
        let of_family = || self.listed.iter().filter(|ip| Family::of_addr(**ip) == family);
        let ip =
            of_family().find(|ip| !self.by_addr.contains_key(ip)).copied().ok_or_else(|| CrdPoolError::Exhausted {
                family,
                used: of_family().filter(|ip| self.by_addr.contains_key(ip)).count(),
                listed: of_family().count(),
            })?;
        self.by_owner.insert((owner.clone(), family), ip);
        self.by_addr.insert(ip, owner.clone());
        Ok(ip)
    }

    /// Puts back an allocation saved before an agent restart (listed or not: the pod has it).
    /// Refused when another owner holds the address or the owner holds another of the family.
    pub fn restore(&mut self, owner: &Owner, ip: IpAddr) -> Result<(), String> {
        let family = Family::of_addr(ip);
        match (self.by_addr.get(&ip), self.by_owner.get(&(owner.clone(), family))) {
            (Some(holder), _) if holder != owner => Err(format!("{ip} is held by {holder}")),
            (_, Some(held)) if *held != ip => Err(format!("{owner} already holds {held}")),
            _ => {
                self.by_owner.insert((owner.clone(), family), ip);
                self.by_addr.insert(ip, owner.clone());
                Ok(())
            }
        }
    }

    /// Releases what `owner` holds (every family); empty if nothing.
    pub fn release_owner(&mut self, owner: &Owner) -> Vec<IpAddr> {
        let keys: Vec<(Owner, Family)> = self.by_owner.keys().filter(|(o, _)| o == owner).cloned().collect();
        let mut released = Vec::new();
        for key in keys {
            if let Some(ip) = self.by_owner.remove(&key) {
                self.by_addr.remove(&ip);
                released.push(ip);
            }
        }
        released
    }

    /// The address `owner` holds in `family`.
    pub fn addr_of(&self, owner: &Owner, family: Family) -> Option<IpAddr> {
        self.by_owner.get(&(owner.clone(), family)).copied()
    }

    /// Every allocation, address → owner.
    pub fn allocations(&self) -> impl Iterator<Item = (IpAddr, &Owner)> {
        self.by_addr.iter().map(|(ip, o)| (*ip, o))
    }

    /// How many addresses of `family` are listed and how many of those are in use.
    pub fn counts(&self, family: Family) -> (usize, usize) {
        let of_family = self.listed.iter().filter(|ip| Family::of_addr(**ip) == family);
        let listed = of_family.clone().count();
        (listed, of_family.filter(|ip| self.by_addr.contains_key(ip)).count())
    }

    /// `status.ipam.used` (IPv4) and `status.ipam.ipv6-used`: address → owner.
    pub fn used(&self) -> (BTreeMap<String, AllocationIp>, BTreeMap<String, AllocationIp>) {
        let (mut v4, mut v6) = (BTreeMap::new(), BTreeMap::new());
        for (ip, owner) in &self.by_addr {
            let entry = AllocationIp { owner: Some(owner.to_string()), resource: None };
            match ip {
                IpAddr::V4(_) => v4.insert(ip.to_string(), entry),
                IpAddr::V6(_) => v6.insert(ip.to_string(), entry),
            };
        }
        (v4, v6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> Owner {
        Owner::endpoint("default", name, &format!("c-{name}"), "eth0")
    }

    #[test]
    fn allocates_listed_addresses_and_reports_usage() {
        let mut pool = CrdPool::default();
        let notes = pool.set_listed(["10.1.0.7", "10.1.0.5", "fd00::5", "bogus"]);
        assert_eq!(notes, ["spec.ipam.pool key \"bogus\" is not an IP address"]);
        let a = pool.allocate(&pod("a"), Family::V4).unwrap();
        assert_eq!(a.to_string(), "10.1.0.5", "lowest free first");
        assert_eq!(pool.allocate(&pod("a"), Family::V4).unwrap(), a, "idempotent per owner");
        assert_eq!(pool.allocate(&pod("b"), Family::V4).unwrap().to_string(), "10.1.0.7");
        let err = pool.allocate(&pod("c"), Family::V4).unwrap_err();
        assert_eq!(err, CrdPoolError::Exhausted { family: Family::V4, used: 2, listed: 2 });
        assert_eq!(pool.allocate(&pod("c"), Family::V6).unwrap().to_string(), "fd00::5");
        let both = (pool.addr_of(&pod("a"), Family::V4), pool.addr_of(&pod("a"), Family::V6));
        assert_eq!(both, (Some(a), None));

        let (v4, v6) = pool.used();
        assert_eq!(v4.keys().map(String::as_str).collect::<Vec<_>>(), ["10.1.0.5", "10.1.0.7"]);
        assert_eq!(v4["10.1.0.5"].owner.as_deref(), Some("default/a"));
        assert_eq!(v6["fd00::5"].owner.as_deref(), Some("default/c"));

        assert_eq!(pool.release_owner(&pod("a")), [a]);
        assert_eq!(pool.release_owner(&pod("a")), Vec::<IpAddr>::new());
        assert_eq!(pool.allocate(&pod("d"), Family::V4).unwrap(), a, "released address is free again");
    }

    #[test]
    fn unlisted_addresses_stay_with_their_pod_until_released() {
        let mut pool = CrdPool::default();
        pool.set_listed(["10.1.0.5", "10.1.0.6"]);
        let a = pool.allocate(&pod("a"), Family::V4).unwrap();
        let notes = pool.set_listed(["10.1.0.6"]);
        assert!(notes[0].contains("10.1.0.5") && notes[0].contains("default/a"), "{notes:?}");
        assert!(pool.used().0.contains_key("10.1.0.5"), "still reported as used");
        assert_eq!(pool.release_owner(&pod("a")), [a]);
        assert_eq!(pool.allocate(&pod("b"), Family::V4).unwrap().to_string(), "10.1.0.6");
        assert!(pool.allocate(&pod("c"), Family::V4).is_err(), "10.1.0.5 is not handed out again");
    }

    #[test]
    fn dual_stack_owners_hold_one_address_per_family_and_restore_refuses_conflicts() {
        let mut pool = CrdPool::default();
        pool.set_listed(["10.1.0.5", "10.1.0.6", "fd00::5"]);
        let v4 = pool.allocate(&pod("a"), Family::V4).unwrap();
        let v6 = pool.allocate(&pod("a"), Family::V6).unwrap();
        assert_eq!(pool.allocate(&pod("a"), Family::V4).unwrap(), v4, "the IPv6 allocation kept the IPv4 one");
        assert_eq!(pool.counts(Family::V4), (2, 1));
        assert_eq!(pool.release_owner(&pod("a")), [v4, v6]);

        let mut restored = CrdPool::default();
        restored.restore(&pod("a"), v4).unwrap();
        restored.restore(&pod("a"), v4).unwrap();
        assert!(restored.restore(&pod("b"), v4).unwrap_err().contains("held by"));
        assert!(restored.restore(&pod("a"), "10.1.0.6".parse().unwrap()).unwrap_err().contains("already holds"));
        restored.set_listed(["10.1.0.5", "10.1.0.6"]);
        assert_eq!(
            restored.allocate(&pod("b"), Family::V4).unwrap().to_string(),
            "10.1.0.6",
            "a restored address stays taken"
        );
    }
}
