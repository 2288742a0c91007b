//! Rev-NAT and backend IDs for the LB maps, stable per frontend / backend address and restored from
//! the pinned maps at start, so conntrack entries (which store both IDs) stay valid across restarts.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use beeline_common::lb::{Lb4Backend, Lb4BackendKey, Lb4Key, Lb4Service, Lb6Backend, Lb6Key};

use super::model::{BackendAddr, FrontendAddr, Proto, Scope};
use crate::datapath::manager::ids::{IdAllocator, IdError};

/// The two ID spaces of the LB maps.
#[derive(Clone, Debug)]
pub struct LbIds {
    rev_nat: IdAllocator<FrontendAddr>,
    backends: IdAllocator<BackendAddr>,
}

impl Default for LbIds {
    fn default() -> Self {
        Self::new()
    }
}

impl LbIds {
    pub fn new() -> Self {
        Self { rev_nat: IdAllocator::new(1, u32::from(u16::MAX)), backends: IdAllocator::new(1, u32::MAX) }
    }

    /// Restores IDs from the entries the pinned maps held at start (the map manager's
    /// `TableHandle::restored`): a master entry's rev-NAT index per frontend address, a backend's ID
    /// per backend address. Entries that cannot be interpreted are reported, not fatal.
    pub fn restore(
        &mut self,
        services: &[(Lb4Key, Lb4Service)],
        backends: &[(Lb4BackendKey, Lb4Backend)],
    ) -> Vec<String> {
        self.restore_families(services, backends, &[], &[])
    }

    /// [`Self::restore`] over the rows of both families (one ID space).
    pub fn restore_families(
        &mut self,
        services: &[(Lb4Key, Lb4Service)],
        backends: &[(Lb4BackendKey, Lb4Backend)],
        services6: &[(Lb6Key, Lb4Service)],
        backends6: &[(Lb4BackendKey, Lb6Backend)],
    ) -> Vec<String> {
        let mut problems = Vec::new();
        let v4 = services.iter().map(|(k, v)| {
            (IpAddr::V4(Ipv4Addr::from(u32::from_be(k.address))), k.dport, k.backend_slot, k.proto, k.scope, v)
        });
        let v6 = services6
            .iter()
            .map(|(k, v)| (IpAddr::V6(Ipv6Addr::from(k.address)), k.dport, k.backend_slot, k.proto, k.scope, v));
        // Wildcard entries (rev-NAT ID 0, see `desired`) carry no ID to restore.
        for (ip, dport, _, proto, scope, v) in v4.chain(v6).filter(|e| e.2 == 0 && e.5.rev_nat_index != 0) {
            let (Some(proto), Some(scope)) = (Proto::from_number(proto), Scope::from_number(scope)) else {
                problems.push(format!(
                    "service entry {ip} {proto}/{scope}: unknown protocol or scope; its ID is not restored"
                ));
                continue;
            };
            let addr = FrontendAddr { ip, port: u16::from_be(dport), proto, scope };
            if let Err(e) = self.rev_nat.restore(addr, u32::from(v.rev_nat_index)) {
                problems.push(format!("rev-NAT ID of {addr}: {e}"));
            }
        }
        let v4 = backends
            .iter()
            .map(|(k, v)| (k.backend_id, IpAddr::V4(Ipv4Addr::from(u32::from_be(v.address))), v.port, v.proto));
        let v6 = backends6.iter().map(|(k, v)| (k.backend_id, IpAddr::V6(Ipv6Addr::from(v.address)), v.port, v.proto));
        for (backend_id, ip, port, proto) in v4.chain(v6) {
            let Some(proto) = Proto::from_number(proto) else {
                problems.push(format!("backend {backend_id}: unknown protocol {proto}; its ID is not restored"));
                continue;
            };
            let addr = BackendAddr { ip, port: u16::from_be(port), proto };
            if let Err(e) = self.backends.restore(addr, backend_id) {
                problems.push(format!("backend ID of {addr}: {e}"));
            }
        }
        problems
    }

    pub fn rev_nat(&mut self, addr: &FrontendAddr) -> Result<u16, IdError> {
        // The allocator's range is 1..=u16::MAX, so the conversion cannot fail.
        self.rev_nat.allocate(addr).map(|id| id as u16)
    }

    pub fn backend(&mut self, addr: &BackendAddr) -> Result<u32, IdError> {
        self.backends.allocate(addr)
    }

    pub fn rev_nat_of(&self, addr: &FrontendAddr) -> Option<u16> {
        self.rev_nat.get(addr).map(|id| id as u16)
    }

    pub fn backend_of(&self, addr: &BackendAddr) -> Option<u32> {
        self.backends.get(addr)
    }

    /// Frees the IDs of frontends and backends no longer desired (including restored IDs of things
    /// deleted while the agent was down). Only call with a complete view of the cluster.
    pub fn release_unused(&mut self, frontends: &BTreeSet<FrontendAddr>, backends: &BTreeSet<BackendAddr>) {
        let stale: Vec<FrontendAddr> = self.rev_nat.keys().filter(|k| !frontends.contains(k)).copied().collect();
        for k in stale {
            self.rev_nat.release(&k);
        }
        let stale: Vec<BackendAddr> = self.backends.keys().filter(|k| !backends.contains(k)).copied().collect();
        for k in stale {
            self.backends.release(&k);
        }
    }

    pub fn len(&self) -> (usize, usize) {
        (self.rev_nat.len(), self.backends.len())
    }
}
