//! The agent's pod-address state: one [`AddressAllocator`] per enabled family over the node's pod
//! CIDRs, shared by the node-IPAM controller (which learns the CIDRs) and the agent API (which
//! serves the CNI plugin's allocate/release).
//!
//! Every change is saved to a state file (`<state-dir>/ipam.json`, written atomically) before it is
//! acknowledged, so an agent restart restores exactly what pods hold. Until the CIDRs are known,
//! allocation fails at once with a retryable [`NodeIpamError::NotReady`] instead of waiting: the
//! CNI plugin turns it into CNI error 11 ("try again later") and the runtime retries.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::crds::cilium_node::AllocationIp;
use crate::ipam::{AddressAllocator, AllocatorStatus, Family, IpamError, Owner};

#[derive(Debug, thiserror::Error)]
pub enum NodeIpamError {
    #[error("this node's pod CIDRs are not known yet ({0}); try again later")]
    NotReady(String),
    #[error("{0} is not enabled on this node")]
    FamilyDisabled(Family),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error("cannot save the IPAM state to {path}: {source}")]
    Persist { path: PathBuf, source: std::io::Error },
}

impl NodeIpamError {
    /// Whether the caller should retry later (CNI code 11) rather than fail the pod.
    pub fn is_retryable(&self) -> bool {
        matches!(self, NodeIpamError::NotReady(_) | NodeIpamError::Persist { .. })
    }
}

/// One address handed to a pod: the address, its gateway (the node's router address of the same
/// family) and the node CIDR it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocatedIp {
    pub family: Family,
    pub ip: IpAddr,
    pub gateway: IpAddr,
    pub cidr: IpNet,
}

/// A persisted or listed allocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationRecord {
    pub ip: IpAddr,
    pub owner: Owner,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    allocations: Vec<AllocationRecord>,
}

/// What `GET /v1/ipam` and `beeline ipam` show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamListing {
    pub ready: bool,
    /// Why allocation is not possible yet (empty when ready).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub waiting_for: String,
    /// One per family: `IPv4: 6/254 allocated from 10.0.2.0/24`.
    pub status: Vec<String>,
    pub allocations: Vec<AllocationRecord>,
    /// Used and usable addresses per pool and family on this node (`/metrics`).
    #[serde(default)]
    pub pools: Vec<PoolUsage>,
}

/// One pool's addresses in one family on this node: cluster-pool has one pool, `default` (as
/// Cilium names it), multi-pool one per `CiliumPodIPPool`, crd the node's `spec.ipam.pool`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolUsage {
    pub pool: String,
    pub family: Family,
    pub used: u128,
    /// Usable addresses in the node's CIDRs (or listed addresses) of this pool and family.
    pub capacity: u128,
}

impl PoolUsage {
    pub fn of(pool: &str, status: &AllocatorStatus) -> PoolUsage {
        PoolUsage { pool: pool.into(), family: status.family, used: status.used, capacity: status.capacity }
    }
}

pub struct NodeIpam {
    families: Vec<Family>,
    state_file: PathBuf,
    inner: Mutex<Inner>,
    /// Bumped on every change, so the controller rewrites `status.ipam.used`.
    changed: tokio::sync::watch::Sender<u64>,
}

struct Inner {
    /// Empty until the CIDRs of every enabled family are known.
    allocators: BTreeMap<Family, AddressAllocator>,
    waiting_for: String,
}

impl NodeIpam {
    /// `families`: the enabled ones (`enable-ipv4`/`enable-ipv6`); `state_dir`: where `ipam.json` lives.
    pub fn new(families: Vec<Family>, state_dir: &Path) -> Self {
        Self {
            families,
            state_file: state_dir.join("ipam.json"),
            inner: Mutex::new(Inner { allocators: BTreeMap::new(), waiting_for: "the node's pod CIDRs".into() }),
            changed: tokio::sync::watch::channel(0).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn families(&self) -> &[Family] {
        &self.families
    }

    pub fn is_ready(&self) -> bool {
        !self.lock().allocators.is_empty()
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Records why the allocator is not ready (shown by the API and in the retryable error).
    pub fn set_waiting(&self, reason: impl Into<String>) {
        self.lock().waiting_for = reason.into();
    }

    /// Installs the node's CIDRs. The first time every enabled family has one, the allocators are
    /// built, the state file is restored and the router and health addresses are reserved. Later
    /// calls add new CIDRs (a removed CIDR is kept while addresses in it are held). Returns
    /// warnings worth logging (restored entries that conflict, unusable CIDRs).
    pub fn set_cidrs(&self, cidrs: &[IpNet]) -> Result<Vec<String>, NodeIpamError> {
        let mut warnings = Vec::new();
        let mut inner = self.lock();
        if !inner.allocators.is_empty() {
            for cidr in cidrs {
                if let Some(alloc) = inner.allocators.get_mut(&Family::of_net(cidr)) {
                    if alloc.add_cidr(*cidr)? {
                        warnings.push(format!("added pod CIDR {cidr}"));
                    }
                }
            }
            drop(inner);
            self.bump();
            return Ok(warnings);
        }
        let missing: Vec<String> = self
            .families
            .iter()
            .filter(|f| !cidrs.iter().any(|c| Family::of_net(c) == **f))
            .map(ToString::to_string)
            .collect();
        if !missing.is_empty() {
            inner.waiting_for = format!("no {} pod CIDR for this node yet", missing.join(" and "));
            return Err(NodeIpamError::NotReady(inner.waiting_for.clone()));
        }
        let mut allocators = BTreeMap::new();
        for family in &self.families {
            let mine: Vec<IpNet> = cidrs.iter().copied().filter(|c| Family::of_net(c) == *family).collect();
            allocators.insert(*family, AddressAllocator::new(*family, &mine)?);
        }
        for record in read_state(&self.state_file, &mut warnings) {
            let Some(alloc) = allocators.get_mut(&Family::of_addr(record.ip)) else { continue };
            if let Err(e) = alloc.restore(record.owner.clone(), record.ip) {
                warnings.push(format!("not restoring {} for {}: {e}", record.ip, record.owner));
            }
        }
        for alloc in allocators.values_mut() {
            alloc.allocate(Owner::Router)?;
            alloc.allocate(Owner::Health)?;
        }
        let previous = std::mem::replace(&mut inner.allocators, allocators);
        if let Err(e) = self.save(&inner) {
            inner.allocators = previous;
            return Err(e);
        }
        inner.waiting_for.clear();
        drop(inner);
        self.bump();
        Ok(warnings)
    }

    /// Addresses for `owner`, one per requested family (all enabled ones when `family` is None).
    /// Idempotent per owner; all or nothing across families.
    pub fn allocate(&self, owner: &Owner, family: Option<Family>) -> Result<Vec<AllocatedIp>, NodeIpamError> {
        let mut inner = self.lock();
        if inner.allocators.is_empty() {
            return Err(NodeIpamError::NotReady(inner.waiting_for.clone()));
        }
        let families: Vec<Family> = match family {
            Some(f) if !self.families.contains(&f) => return Err(NodeIpamError::FamilyDisabled(f)),
            Some(f) => vec![f],
            None => self.families.clone(),
        };
        let mut out = Vec::new();
        let mut fresh = Vec::new();
        let mut failure = None;
        for f in &families {
            let alloc = inner.allocators.get_mut(f).expect("an allocator per enabled family");
            let existed = alloc.addr_of(owner).is_some();
            match alloc.allocate(owner.clone()) {
                Ok(ip) => {
                    if !existed {
                        fresh.push(*f);
                    }
                    out.push(describe(alloc, ip));
                }
                Err(e) => {
                    failure = Some(NodeIpamError::from(e));
                    break;
                }
            }
        }
        let failure = match failure {
            Some(e) => Some(e),
            None if fresh.is_empty() => None,
            None => self.save(&inner).err(),
        };
        if let Some(e) = failure {
            for f in fresh {
                inner.allocators.get_mut(&f).expect("allocator").release_owner(owner);
            }
            return Err(e);
        }
        drop(inner);
        self.bump();
        Ok(out)
    }

    /// Releases what the attachment (container ID, interface) holds. Idempotent: an unknown
    /// attachment releases nothing and is not an error.
    pub fn release(&self, container_id: &str, interface: &str) -> Result<Vec<IpAddr>, NodeIpamError> {
        let mut inner = self.lock();
        let mut released = Vec::new();
        for alloc in inner.allocators.values_mut() {
            let owners: Vec<Owner> = alloc
                .allocations()
                .filter_map(|(_, o)| match o {
                    Owner::Endpoint { container_id: c, interface: i, .. } if c == container_id && i == interface => {
                        Some(o.clone())
                    }
                    _ => None,
                })
                .collect();
            for owner in owners {
                released.extend(alloc.release_owner(&owner));
            }
        }
        if !released.is_empty() {
            self.save(&inner)?;
            drop(inner);
            self.bump();
        }
        Ok(released)
    }

    /// The addresses the attachment (container ID, interface) holds.
    pub fn attachment_ips(&self, container_id: &str, interface: &str) -> Vec<IpAddr> {
        let inner = self.lock();
        inner
            .allocators
            .values()
            .flat_map(|a| a.allocations())
            .filter(|(_, o)| {
                matches!(o, Owner::Endpoint { container_id: c, interface: i, .. } if c == container_id && i == interface)
            })
            .map(|(ip, _)| ip)
            .collect()
    }

    pub fn listing(&self) -> IpamListing {
        let inner = self.lock();
        IpamListing {
            ready: !inner.allocators.is_empty(),
            waiting_for: inner.waiting_for.clone(),
            status: inner.allocators.values().map(|a| a.status().to_string()).collect(),
            allocations: records(&inner),
            pools: inner.allocators.values().map(|a| PoolUsage::of("default", &a.status())).collect(),
        }
    }

    pub fn statuses(&self) -> Vec<AllocatorStatus> {
        self.lock().allocators.values().map(AddressAllocator::status).collect()
    }

    /// The address an owner holds in `family` (router: `CiliumInternalIP`, health: `spec.health`).
    pub fn addr_of(&self, family: Family, owner: &Owner) -> Option<IpAddr> {
        self.lock().allocators.get(&family)?.addr_of(owner)
    }

    /// `status.ipam.used` and `status.ipam.ipv6-used`: address → owner, as Cilium writes them.
    pub fn used(&self) -> (BTreeMap<String, AllocationIp>, BTreeMap<String, AllocationIp>) {
        let inner = self.lock();
        let mut v4 = BTreeMap::new();
        let mut v6 = BTreeMap::new();
        for r in records(&inner) {
            let entry = AllocationIp { owner: Some(r.owner.to_string()), resource: None };
            match r.ip {
                IpAddr::V4(_) => v4.insert(r.ip.to_string(), entry),
                IpAddr::V6(_) => v6.insert(r.ip.to_string(), entry),
            };
        }
        (v4, v6)
    }

    fn save(&self, inner: &Inner) -> Result<(), NodeIpamError> {
        save_state(&self.state_file, records(inner))
    }
}

/// Writes `allocations` as the state file at `path` (atomically); the other agent allocators
/// (multi-pool) persist through this too, so every mode restores the same way.
pub fn save_state(path: &Path, allocations: Vec<AllocationRecord>) -> Result<(), NodeIpamError> {
    let text = serde_json::to_vec_pretty(&StateFile { allocations }).expect("state serialises");
    write_atomically(path, &text).map_err(|source| NodeIpamError::Persist { path: path.to_path_buf(), source })
}

fn describe(alloc: &AddressAllocator, ip: IpAddr) -> AllocatedIp {
    let gateway = alloc.addr_of(&Owner::Router).expect("router reserved before any pod allocation");
    let cidr = alloc.cidrs().into_iter().find(|c| c.contains(&ip)).expect("allocated inside a node CIDR");
    AllocatedIp { family: alloc.family(), ip, gateway, cidr }
}

fn records(inner: &Inner) -> Vec<AllocationRecord> {
    inner
        .allocators
        .values()
        .flat_map(|a| a.allocations().map(|(ip, owner)| AllocationRecord { ip, owner: owner.clone() }))
        .collect()
}

/// A missing file is a fresh node; an unreadable one is reported and treated as empty (the
/// allocations then come back as pods are re-added, and conflicts are refused, not duplicated).
pub fn read_state(path: &Path, warnings: &mut Vec<String>) -> Vec<AllocationRecord> {
    match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice::<StateFile>(&bytes) {
            Ok(state) => state.allocations,
            Err(e) => {
                warnings.push(format!("ignoring unreadable IPAM state {}: {e}", path.display()));
                Vec::new()
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            warnings.push(format!("cannot read IPAM state {}: {e}", path.display()));
            Vec::new()
        }
    }
}

/// Write to a temporary file in the same directory, then rename over the target: a reader (or a
/// restart after a crash) sees the old or the new content, never half of it.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
#[path = "ipam_state_tests.rs"]
mod tests;
