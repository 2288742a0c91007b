//! The agent in `ipam: crd`: an external party (an operator of the user's, as with Cilium's CRD
//! mode) lists this node's addresses in `CiliumNode.spec.ipam.pool`; the agent hands them to pods
//! and reports what it uses in `status.ipam.used` / `ipv6-used`.
//!
//! - [`CrdIpam`] wraps the pure [`CrdPool`]. The router (`CiliumInternalIP`, a pod's gateway) and
//!   health addresses are taken from the listed addresses first, as Cilium does in this mode.
//! - Allocation changes are saved to `<state-dir>/ipam-crd.json` (the same atomic state file as the
//!   other modes) before they are acknowledged, and restored when the agent starts.
//! - [`run`] watches this node's CiliumNode (field selector) and keeps the status in step, as
//!   [`FIELD_MANAGER`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::Client;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{info_span, Instrument};

use super::ipam_state::{read_state, save_state, AllocatedIp, AllocationRecord, IpamListing, NodeIpamError, PoolUsage};
use super::own_node::{apply_used, OwnNode};
use super::pod_ipam::PodIpam;
use crate::crds::cilium_node::AllocationIp;
use crate::crds::CiliumNode;
use crate::ipam::crd_pool::CrdPool;
use crate::ipam::{Family, Owner};

/// Owns `status.ipam.used` in this mode.
pub const FIELD_MANAGER: &str = "beeline-agent-ipam-crd";
pub const STATE_FILE: &str = "ipam-crd.json";

pub struct CrdIpam {
    families: Vec<Family>,
    state_file: PathBuf,
    pool: Mutex<CrdPool>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl CrdIpam {
    /// Restores the state file in `state_dir` at once: the pods keep their addresses whether or
    /// not the list still names them.
    pub fn new(families: Vec<Family>, state_dir: &Path) -> Self {
        let state_file = state_dir.join(STATE_FILE);
        let mut warnings = Vec::new();
        let mut pool = CrdPool::default();
        for record in read_state(&state_file, &mut warnings) {
            if let Err(e) = pool.restore(&record.owner, record.ip) {
                warnings.push(format!("not restoring {} for {}: {e}", record.ip, record.owner));
            }
        }
        for warning in warnings {
            tracing::warn!(%warning, "CRD IPAM state");
        }
        Self { families, state_file, pool: Mutex::new(pool), changed: tokio::sync::watch::channel(0).0 }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CrdPool> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn save(&self, pool: &CrdPool) -> Result<(), NodeIpamError> {
        let records = pool.allocations().map(|(ip, owner)| AllocationRecord { ip, owner: owner.clone() }).collect();
        save_state(&self.state_file, records)
    }

    /// Takes the keys of `spec.ipam.pool`, then reserves the router and health addresses of each
    /// enabled family from them. Returns what is worth logging.
    pub fn set_listed<'a>(&self, keys: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let mut pool = self.lock();
        let mut notes = pool.set_listed(keys);
        let mut changed = false;
        for family in &self.families {
            for owner in [Owner::Router, Owner::Health] {
                if pool.addr_of(&owner, *family).is_none() && pool.allocate(&owner, *family).is_ok() {
                    changed = true;
                }
            }
        }
        if changed {
            if let Err(e) = self.save(&pool) {
                notes.push(e.to_string());
            }
        }
        drop(pool);
        self.bump();
        notes
    }

    /// Addresses for `owner`, one per requested family (all enabled ones when `family` is None);
    /// all or nothing, idempotent per owner.
    pub fn allocate(&self, owner: &Owner, family: Option<Family>) -> Result<Vec<AllocatedIp>, NodeIpamError> {
        let families = match family {
            Some(f) if !self.families.contains(&f) => return Err(NodeIpamError::FamilyDisabled(f)),
            Some(f) => vec![f],
            None => self.families.clone(),
        };
        let mut pool = self.lock();
        let mut out = Vec::new();
        let mut failure = None;
        let held_before: Vec<Family> = families.iter().copied().filter(|f| pool.addr_of(owner, *f).is_some()).collect();
        for family in &families {
            let Some(gateway) = pool.addr_of(&Owner::Router, *family) else {
                failure = Some(NodeIpamError::NotReady(format!(
                    "no {family} address listed in CiliumNode spec.ipam.pool for the router yet"
                )));
                break;
            };
            match pool.allocate(owner, *family) {
                Ok(ip) => out.push(AllocatedIp { family: *family, ip, gateway, cidr: IpNet::from(ip) }),
                // Retryable: the external party may list more addresses.
                Err(e) => {
                    failure = Some(NodeIpamError::NotReady(e.to_string()));
                    break;
                }
            }
        }
        let failure = match failure {
            Some(e) => Some(e),
            None if held_before.len() == families.len() => None,
            None => self.save(&pool).err(),
        };
        if let Some(e) = failure {
            if held_before.is_empty() {
                pool.release_owner(owner);
            }
            return Err(e);
        }
        drop(pool);
        self.bump();
        Ok(out)
    }

    /// `status.ipam.used`, `status.ipam.ipv6-used`.
    pub fn used(&self) -> (BTreeMap<String, AllocationIp>, BTreeMap<String, AllocationIp>) {
        self.lock().used()
    }
}

impl PodIpam for CrdIpam {
    fn is_ready(&self) -> bool {
        let pool = self.lock();
        self.families.iter().all(|f| pool.addr_of(&Owner::Router, *f).is_some())
    }
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }
    fn addr_of(&self, family: Family, owner: &Owner) -> Option<IpAddr> {
        self.lock().addr_of(owner, family)
    }
    fn attachment_ips(&self, container_id: &str, interface: &str) -> Vec<IpAddr> {
        let pool = self.lock();
        let ips = pool
            .allocations()
            .filter(|(_, o)| matches!(o, Owner::Endpoint { container_id: c, interface: i, .. } if c == container_id && i == interface))
            .map(|(ip, _)| ip)
            .collect();
        ips
    }
    fn release(&self, container_id: &str, interface: &str) -> Result<Vec<IpAddr>, NodeIpamError> {
        let mut pool = self.lock();
        let owners: Vec<Owner> = pool
            .allocations()
            .map(|(_, o)| o.clone())
            .filter(|o| matches!(o, Owner::Endpoint { container_id: c, interface: i, .. } if c == container_id && i == interface))
            .collect();
        let mut released = Vec::new();
        for owner in owners {
            released.extend(pool.release_owner(&owner));
        }
        if !released.is_empty() {
            self.save(&pool)?;
            drop(pool);
            self.bump();
        }
        Ok(released)
    }
    fn listing(&self) -> IpamListing {
        let ready = PodIpam::is_ready(self);
        let pool = self.lock();
        let status = self
            .families
            .iter()
            .map(|f| {
                let (listed, used) = pool.counts(*f);
                format!("{f}: {used}/{listed} listed addresses in use (CiliumNode spec.ipam.pool)")
            })
            .collect();
        let pools = self
            .families
            .iter()
            .map(|f| {
                let (listed, used) = pool.counts(*f);
                PoolUsage { pool: "crd".into(), family: *f, used: used as u128, capacity: listed as u128 }
            })
            .collect();
        IpamListing {
            ready,
            waiting_for: if ready { String::new() } else { "addresses in CiliumNode spec.ipam.pool".into() },
            status,
            pools,
            allocations: pool.allocations().map(|(ip, owner)| AllocationRecord { ip, owner: owner.clone() }).collect(),
        }
    }
}

/// In `ipam: crd`, spawns [`run`] and returns the allocator; otherwise `None`.
pub fn start(
    config: &crate::config::Config,
    client: &Client,
    node_name: &str,
    runner: &mut crate::runtime::runner::Runner,
    shutdown: CancellationToken,
) -> Option<Arc<CrdIpam>> {
    if config.ipam != crate::config::IpamMode::Crd {
        return None;
    }
    let families = crate::controllers::operator::multi_pool::families(config);
    let ipam = Arc::new(CrdIpam::new(families, &config.state_dir));
    let task = run(client.clone(), node_name.to_string(), ipam.clone(), Duration::from_secs(5), shutdown);
    runner.spawn("crd-ipam", async move { Ok(task.await?) });
    Some(ipam)
}

/// Feeds `spec.ipam.pool` of this node's CiliumNode into `ipam` and writes `status.ipam.used`
/// after every change, until `shutdown`.
pub async fn run(
    client: Client,
    node_name: String,
    ipam: Arc<CrdIpam>,
    retry: Duration,
    shutdown: CancellationToken,
) -> Result<(), kube::Error> {
    // Held until the controller returns: dropping it stops the watch.
    let Some(own) = OwnNode::watch(&client, &node_name, ipam.subscribe(), &shutdown).await else {
        return Ok(());
    };
    let (store, changed) = (&own.store, own.changed.clone());
    let api: Api<CiliumNode> = Api::all(client.clone());
    let mut last_listed: Option<Vec<String>> = None;
    let mut last_used: Option<Value> = None;
    loop {
        let span = info_span!("reconcile", controller = "crd-ipam", node = %node_name);
        let result = crate::runtime::controllers::timed(
            "crd-ipam",
            async {
                let Some(cn) = store.get(&ObjectRef::new(&node_name)) else {
                    // Written again once the CiliumNode exists (node IPAM creates it).
                    last_used = None;
                    return Ok(());
                };
                let listed: Vec<String> = cn.spec.ipam.iter().flat_map(|i| i.pool.keys().cloned()).collect();
                if last_listed.as_ref() != Some(&listed) {
                    for note in ipam.set_listed(listed.iter().map(String::as_str)) {
                        tracing::warn!(%note, "CRD IPAM");
                    }
                    last_listed = Some(listed);
                }
                apply_used(&api, &node_name, FIELD_MANAGER, ipam.used(), &mut last_used).await?;
                Ok::<(), kube::Error>(())
            }
            .instrument(span),
        )
        .await;
        let wait = result.err().map(|error| {
            tracing::warn!(%error, retry_in = ?retry, "CRD IPAM pass failed");
            retry
        });
        if !crate::controllers::watch::next_pass(&changed, wait, &shutdown).await {
            return Ok(());
        }
    }
}

#[cfg(test)]
#[path = "crd_ipam_tests.rs"]
mod tests;
