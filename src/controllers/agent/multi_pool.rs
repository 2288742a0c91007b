//! The agent in `ipam: multi-pool`: pod addresses from the CIDRs the operator allocated to this
//! node per pool (`CiliumNode.spec.ipam.pools.allocated`), demand published in
//! `spec.ipam.pools.requested`, unused CIDRs handed back.
//!
//! - [`MultiPoolIpam`] holds one [`AddressAllocator`] per pool and family. The router and health
//!   addresses come from the `default` pool, as in Cilium; a pod's gateway is the router address.
//! - Every allocation change is saved to `<state-dir>/ipam-multi-pool.json` (the same atomic
//!   state file as cluster-pool's, [`super::ipam_state::save_state`]) before it is acknowledged.
//!   A restarted agent reads it at once and puts each address back as soon as the CIDR holding it
//!   is listed again in `allocated` — before any allocation, release or `requested` write of that
//!   pass — so pods, the router and the health endpoint keep their addresses.
//! - An allocation that finds no free address in its pool is *pending* (counted in `needed`, so the
//!   operator grows the node) and refused as retryable: the CNI plugin reports "try again later".
//! - [`run`] keeps the CiliumNode in step: `requested` (field manager [`FIELD_MANAGER`]),
//!   `status.ipam.used`, and releases (an unused CIDR, newest first, when the rest still covers
//!   `needed`), which drop the CIDR from `allocated` as [`RELEASE_FIELD_MANAGER`] with the
//!   resourceVersion they were computed from, so a concurrent operator write is never undone.
//!
//! The pure decisions are in [`crate::ipam::multi_pool_agent`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::{info_span, Instrument};

use super::ipam_state::{read_state, save_state, AllocatedIp, AllocationRecord, IpamListing, NodeIpamError, PoolUsage};
use super::own_node::{apply_used, OwnNode};
use crate::controllers::operator::multi_pool::caught_up;
use crate::crds::cilium_node::AllocationIp;
use crate::crds::{CiliumNode, CiliumPodIPPool};
use crate::ipam::multi_pool::{PoolCidrs, PoolDemand, DEFAULT_POOL};
use crate::ipam::multi_pool_agent::{self, Meta, PoolChoiceError, PoolSelectors};
use crate::ipam::{AddressAllocator, Family, IpamError, Owner};

/// Owns `spec.ipam.pools.requested` and, in this mode, `status.ipam.used`.
pub const FIELD_MANAGER: &str = "beeline-agent-ipam-pools";
/// Writes `spec.ipam.pools.allocated` when the agent hands a CIDR back.
pub const RELEASE_FIELD_MANAGER: &str = "beeline-agent-ipam-release";
/// A pending request that is not retried within this time stops counting towards `needed`.
const PENDING_EXPIRY: Duration = Duration::from_secs(120);
/// The state file in `state-dir` (cluster-pool's is `ipam.json`; both may exist after a mode change).
pub const STATE_FILE: &str = "ipam-multi-pool.json";

#[derive(Debug, thiserror::Error)]
pub enum AllocateError {
    #[error(transparent)]
    Ipam(#[from] NodeIpamError),
    #[error(transparent)]
    Choice(#[from] PoolChoiceError),
    #[error("looking up {what} to choose its IP pool: {source}")]
    Lookup { what: String, source: kube::Error },
}

type Key = (String, Family);

#[derive(Default)]
struct Inner {
    allocators: BTreeMap<Key, AddressAllocator>,
    /// Owners refused for lack of addresses, by pool and family, with when they last asked.
    pending: BTreeMap<Key, BTreeMap<Owner, Instant>>,
    /// Saved allocations whose CIDR is not (yet) listed in `allocated`: restored when it is.
    unrestored: Vec<AllocationRecord>,
}

pub struct MultiPoolIpam {
    families: Vec<Family>,
    pre_allocation: u64,
    state_file: PathBuf,
    inner: Mutex<Inner>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl MultiPoolIpam {
    /// Reads the state file in `state_dir` at once (the addresses come back with their CIDRs).
    pub fn new(families: Vec<Family>, pre_allocation: u64, state_dir: &Path) -> Self {
        let state_file = state_dir.join(STATE_FILE);
        let mut warnings = Vec::new();
        let unrestored = read_state(&state_file, &mut warnings);
        for warning in warnings {
            tracing::warn!(%warning, "multi-pool IPAM state");
        }
        let inner = Mutex::new(Inner { unrestored, ..Default::default() });
        Self { families, pre_allocation, state_file, inner, changed: tokio::sync::watch::channel(0).0 }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Takes the node's `allocated` lists: new CIDRs are added; CIDRs no longer listed are
    /// dropped once empty. Then reserves the router and health addresses in `default`. Returns
    /// what is worth logging.
    pub fn sync_allocated(&self, allocated: &[PoolCidrs]) -> Vec<String> {
        let mut notes = Vec::new();
        let mut inner = self.lock();
        let mut listed: BTreeSet<(Key, IpNet)> = BTreeSet::new();
        for pool in allocated {
            for text in &pool.cidrs {
                let Ok(cidr) = text.parse::<IpNet>().map(|c| c.trunc()) else {
                    notes.push(format!("pool {}: ignoring {text:?}, not a CIDR", pool.pool));
                    continue;
                };
                let family = Family::of_net(&cidr);
                if !self.families.contains(&family) {
                    continue;
                }
                let key = (pool.pool.clone(), family);
                listed.insert((key.clone(), cidr));
                let alloc = inner
                    .allocators
                    .entry(key)
                    .or_insert_with(|| AddressAllocator::new(family, &[]).expect("empty allocator"));
                match alloc.add_cidr(cidr) {
                    Ok(true) => notes.push(format!("pool {}: added CIDR {cidr}", pool.pool)),
                    Ok(false) => {}
                    Err(e) => notes.push(format!("pool {}: {e}", pool.pool)),
                }
            }
        }
        for (key, alloc) in inner.allocators.iter_mut() {
            for cidr in alloc.cidrs() {
                if !listed.contains(&(key.clone(), cidr)) && alloc.remove_cidr(cidr).is_ok() {
                    notes.push(format!("pool {}: CIDR {cidr} no longer allocated to this node", key.0));
                }
            }
        }
        // Saved addresses first, so the router and health keep theirs after a restart.
        let mut changed = restore_saved(&mut inner, &mut notes);
        for family in &self.families {
            if let Some(alloc) = inner.allocators.get_mut(&(DEFAULT_POOL.to_string(), *family)) {
                for owner in [Owner::Router, Owner::Health] {
                    if alloc.addr_of(&owner).is_none() && alloc.free() > 0 && alloc.allocate(owner).is_ok() {
                        changed = true;
                    }
                }
            }
        }
        if changed {
            if let Err(e) = self.save(&inner) {
                // Retried with the next change; the router/health rows are re-derived on restart.
                notes.push(e.to_string());
            }
        }
        drop(inner);
        self.bump();
        notes
    }

    fn save(&self, inner: &Inner) -> Result<(), NodeIpamError> {
        save_state(&self.state_file, records_of(inner))
    }

    /// The pool of each enabled family (or of `family` only) for a pod, from its annotations, its
    /// namespace's, and the pools' selectors.
    pub async fn choose_pools(
        &self,
        client: &Client,
        namespace: &str,
        pod: &str,
        family: Option<Family>,
    ) -> Result<BTreeMap<Family, String>, AllocateError> {
        let lookup = |what: String| move |source| AllocateError::Lookup { what, source };
        let pod_obj = Api::<Pod>::namespaced(client.clone(), namespace)
            .get_opt(pod)
            .await
            .map_err(lookup(format!("pod {namespace}/{pod}")))?;
        let ns_obj = Api::<Namespace>::all(client.clone())
            .get_opt(namespace)
            .await
            .map_err(lookup(format!("namespace {namespace}")))?;
        let pod_meta = meta(pod_obj.as_ref().map(|p| &p.metadata));
        let ns_meta = meta(ns_obj.as_ref().map(|n| &n.metadata));
        let families: Vec<Family> = match family {
            Some(f) => vec![f],
            None => self.families.clone(),
        };
        let mut selectors = None;
        let mut out = BTreeMap::new();
        let annotated = [&pod_meta, &ns_meta].iter().any(|m| {
            [
                multi_pool_agent::POOL_ANNOTATION,
                multi_pool_agent::IPV4_POOL_ANNOTATION,
                multi_pool_agent::IPV6_POOL_ANNOTATION,
            ]
            .iter()
            .any(|k| m.annotations.contains_key(*k))
        });
        for f in families {
            // Pools are listed only when no annotation decides (selectors are the exception).
            if !annotated && selectors.is_none() {
                let list = Api::<CiliumPodIPPool>::all(client.clone())
                    .list(&Default::default())
                    .await
                    .map_err(lookup("CiliumPodIPPools".into()))?;
                selectors = Some(
                    list.items
                        .iter()
                        .map(|p| PoolSelectors {
                            name: p.name_any(),
                            pod_selector: p.spec.pod_selector.clone(),
                            namespace_selector: p.spec.namespace_selector.clone(),
                        })
                        .collect::<Vec<_>>(),
                );
            }
            let pools = selectors.as_deref().unwrap_or(&[]);
            let pool = multi_pool_agent::choose_pool(&format!("{namespace}/{pod}"), f, &pod_meta, &ns_meta, pools)?;
            out.insert(f, pool);
        }
        Ok(out)
    }

    /// Addresses for `owner` from the chosen pools, all families or none; idempotent per owner.
    pub fn allocate(&self, owner: &Owner, pools: &BTreeMap<Family, String>) -> Result<Vec<AllocatedIp>, NodeIpamError> {
        let mut inner = self.lock();
        for family in pools.keys() {
            if !self.families.contains(family) {
                return Err(NodeIpamError::FamilyDisabled(*family));
            }
        }
        let mut out = Vec::new();
        let mut fresh: Vec<Key> = Vec::new();
        let mut failure = None;
        for (family, pool) in pools {
            let key = (pool.clone(), *family);
            let gateway =
                inner.allocators.get(&(DEFAULT_POOL.to_string(), *family)).and_then(|a| a.addr_of(&Owner::Router));
            let Some(gateway) = gateway else {
                failure = Some(NodeIpamError::NotReady(format!(
                    "no {family} router address yet: waiting for a CIDR of pool {DEFAULT_POOL}"
                )));
                break;
            };
            let result = match inner.allocators.get_mut(&key) {
                None => Err(None),
                Some(alloc) => {
                    let existed = alloc.addr_of(owner).is_some();
                    match alloc.allocate(owner.clone()) {
                        Ok(ip) => {
                            let cidr = alloc.cidrs().into_iter().find(|c| c.contains(&ip)).expect("inside a CIDR");
                            Ok((AllocatedIp { family: *family, ip, gateway, cidr }, existed))
                        }
                        Err(IpamError::Exhausted { status }) => Err(Some(status.to_string())),
                        Err(e) => {
                            failure = Some(NodeIpamError::Ipam(e));
                            break;
                        }
                    }
                }
            };
            match result {
                Ok((ip, existed)) => {
                    if !existed {
                        fresh.push(key.clone());
                    }
                    if let Some(p) = inner.pending.get_mut(&key) {
                        p.remove(owner);
                    }
                    out.push(ip);
                }
                Err(status) => {
                    // No room: pending, so `needed` grows and the operator adds a CIDR.
                    inner.pending.entry(key).or_default().insert(owner.clone(), Instant::now());
                    let detail = status.map(|s| format!(" ({s})")).unwrap_or_default();
                    failure = Some(NodeIpamError::NotReady(format!(
                        "no free {family} address in pool {pool} on this node{detail}: waiting for the operator to allocate a CIDR"
                    )));
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
            for key in fresh {
                if let Some(alloc) = inner.allocators.get_mut(&key) {
                    alloc.release_owner(owner);
                }
            }
            drop(inner);
            self.bump();
            return Err(e);
        }
        drop(inner);
        self.bump();
        Ok(out)
    }

    /// Releases what the attachment holds in every pool (and a saved address not restored yet);
    /// idempotent. Saved before it returns, like an allocation.
    pub fn release(&self, container_id: &str, interface: &str) -> Result<Vec<IpAddr>, NodeIpamError> {
        let mut inner = self.lock();
        let matches = |o: &Owner| matches!(o, Owner::Endpoint { container_id: c, interface: i, .. } if c == container_id && i == interface);
        let mut released = Vec::new();
        for alloc in inner.allocators.values_mut() {
            let owners: Vec<Owner> = alloc.allocations().map(|(_, o)| o.clone()).filter(|o| matches(o)).collect();
            for owner in owners {
                released.extend(alloc.release_owner(&owner));
            }
        }
        for pending in inner.pending.values_mut() {
            pending.retain(|o, _| !matches(o));
        }
        let before = inner.unrestored.len();
        inner.unrestored.retain(|r| {
            let gone = matches(&r.owner);
            if gone {
                released.push(r.ip);
            }
            !gone
        });
        if !released.is_empty() || inner.unrestored.len() != before {
            self.save(&inner)?;
            drop(inner);
            self.bump();
        }
        Ok(released)
    }

    /// The addresses the attachment (container ID, interface) holds.
    pub fn attachment_ips(&self, container_id: &str, interface: &str) -> Vec<IpAddr> {
        self.records()
            .into_iter()
            .filter(|r| {
                matches!(&r.owner, Owner::Endpoint { container_id: c, interface: i, .. } if c == container_id && i == interface)
            })
            .map(|r| r.ip)
            .collect()
    }

    /// The address an owner holds in `family` in any pool (router and health: in `default`).
    pub fn addr_of(&self, family: Family, owner: &Owner) -> Option<IpAddr> {
        let inner = self.lock();
        let found = inner.allocators.iter().filter(|((_, f), _)| *f == family).find_map(|(_, a)| a.addr_of(owner));
        found
    }

    /// Whether a pod can get an address of every enabled family (the router addresses exist).
    pub fn is_ready(&self) -> bool {
        self.families.iter().all(|f| self.addr_of(*f, &Owner::Router).is_some())
    }

    /// `spec.ipam.pools.requested`, sorted by pool name: every pool the node holds or waits for,
    /// and always `default` (router and health live there).
    pub fn requested(&self) -> Vec<PoolDemand> {
        let mut inner = self.lock();
        let now = Instant::now();
        for pending in inner.pending.values_mut() {
            pending.retain(|_, at| now.duration_since(*at) < PENDING_EXPIRY);
        }
        let mut pools: BTreeSet<String> =
            inner.allocators.keys().chain(inner.pending.keys()).map(|k| k.0.clone()).collect();
        pools.insert(DEFAULT_POOL.to_string());
        pools
            .into_iter()
            .map(|pool| {
                let mut demand = PoolDemand { pool: pool.clone(), ipv4: 0, ipv6: 0 };
                for family in &self.families {
                    let n = needed_of(&inner, &(pool.clone(), *family), self.pre_allocation);
                    match family {
                        Family::V4 => demand.ipv4 = n,
                        Family::V6 => demand.ipv6 = n,
                    }
                }
                demand
            })
            .collect()
    }

    /// Takes unused CIDRs out of use (newest first) while the rest covers `needed`; the caller
    /// drops them from `allocated`. Removed here first, so nothing is allocated in them meanwhile.
    pub fn take_releasable(&self) -> Vec<(String, IpNet)> {
        let mut inner = self.lock();
        let mut out = Vec::new();
        let keys: Vec<Key> = inner.allocators.keys().cloned().collect();
        for key in keys {
            let needed = needed_of(&inner, &key, self.pre_allocation);
            let alloc = inner.allocators.get_mut(&key).expect("key listed");
            let cidrs = alloc.cidrs();
            for cidr in multi_pool_agent::releasable(&cidrs, |c| alloc.used_in(c).unwrap_or(0), needed) {
                if alloc.remove_cidr(cidr).is_ok() {
                    out.push((key.0.clone(), cidr));
                }
            }
        }
        out
    }

    /// `status.ipam.used`, `status.ipam.ipv6-used`.
    pub fn used(&self) -> (BTreeMap<String, AllocationIp>, BTreeMap<String, AllocationIp>) {
        let (mut v4, mut v6) = (BTreeMap::new(), BTreeMap::new());
        for r in self.records() {
            let entry = AllocationIp { owner: Some(r.owner.to_string()), resource: None };
            match r.ip {
                IpAddr::V4(_) => v4.insert(r.ip.to_string(), entry),
                IpAddr::V6(_) => v6.insert(r.ip.to_string(), entry),
            };
        }
        (v4, v6)
    }

    fn records(&self) -> Vec<AllocationRecord> {
        let inner = self.lock();
        inner
            .allocators
            .values()
            .flat_map(|a| a.allocations().map(|(ip, owner)| AllocationRecord { ip, owner: owner.clone() }))
            .collect()
    }

    /// What `GET /v1/ipam` shows: one status line per pool and family.
    pub fn listing(&self) -> IpamListing {
        let inner = self.lock();
        let status: Vec<String> =
            inner.allocators.iter().map(|((pool, _), a)| format!("pool {pool}: {}", a.status())).collect();
        let pools = inner.allocators.iter().map(|((pool, _), a)| PoolUsage::of(pool, &a.status())).collect();
        drop(inner);
        let ready = !status.is_empty();
        IpamListing {
            ready,
            waiting_for: if ready {
                String::new()
            } else {
                "CIDRs from the operator (spec.ipam.pools.allocated)".into()
            },
            status,
            allocations: self.records(),
            pools,
        }
    }
}

/// What the agent API needs to serve `/v1/ipam` in multi-pool mode.
#[derive(Clone)]
pub struct MultiPoolHandle {
    pub ipam: Arc<MultiPoolIpam>,
    /// Reads the pod, its namespace and the pools to choose a pool.
    pub client: Client,
}

impl MultiPoolHandle {
    /// Chooses the pod's pools, then allocates from them.
    pub async fn allocate(
        &self,
        owner: &Owner,
        namespace: &str,
        pod: &str,
        family: Option<Family>,
    ) -> Result<Vec<AllocatedIp>, AllocateError> {
        let pools = self.ipam.choose_pools(&self.client, namespace, pod, family).await?;
        Ok(self.ipam.allocate(owner, &pools)?)
    }
}

/// What the state file holds: every allocation, and the saved ones still waiting for their CIDR
/// (so a second restart before the CIDR returns does not forget them).
fn records_of(inner: &Inner) -> Vec<AllocationRecord> {
    let held = inner
        .allocators
        .values()
        .flat_map(|a| a.allocations().map(|(ip, owner)| AllocationRecord { ip, owner: owner.clone() }));
    held.chain(inner.unrestored.iter().cloned()).collect()
}

/// Puts saved allocations back into the allocator whose CIDRs hold them; the rest wait. Returns
/// whether anything changed (a restored entry, or one dropped because it conflicts).
fn restore_saved(inner: &mut Inner, notes: &mut Vec<String>) -> bool {
    let mut changed = false;
    let saved = std::mem::take(&mut inner.unrestored);
    for record in saved {
        let family = Family::of_addr(record.ip);
        let home = inner
            .allocators
            .iter_mut()
            .find(|((_, f), a)| *f == family && a.cidrs().iter().any(|c| c.contains(&record.ip)));
        match home {
            None => inner.unrestored.push(record),
            Some(((pool, _), alloc)) => {
                changed = true;
                match alloc.restore(record.owner.clone(), record.ip) {
                    Ok(()) => notes.push(format!("pool {pool}: restored {} for {}", record.ip, record.owner)),
                    Err(e) => notes.push(format!("pool {pool}: not restoring {} for {}: {e}", record.ip, record.owner)),
                }
            }
        }
    }
    changed
}

fn needed_of(inner: &Inner, key: &Key, pre_allocation: u64) -> u64 {
    let in_use = inner.allocators.get(key).map_or(0, |a| a.used()) as u64;
    let pending = inner.pending.get(key).map_or(0, |p| p.len()) as u64;
    multi_pool_agent::needed(in_use, pending, pre_allocation)
}

fn meta(object: Option<&ObjectMeta>) -> Meta {
    Meta {
        labels: object.and_then(|m| m.labels.clone()).unwrap_or_default(),
        annotations: object.and_then(|m| m.annotations.clone()).unwrap_or_default(),
    }
}

fn allocated_of(cn: &CiliumNode) -> Vec<PoolCidrs> {
    crate::controllers::operator::multi_pool::node_pools(cn).1
}

/// In `ipam: multi-pool`, spawns [`run`] and returns the API's handle; otherwise `None`.
pub fn start(
    config: &crate::config::Config,
    client: &Client,
    node_name: &str,
    runner: &mut crate::runtime::runner::Runner,
    shutdown: CancellationToken,
) -> Option<MultiPoolHandle> {
    if config.ipam != crate::config::IpamMode::MultiPool {
        return None;
    }
    let families = crate::controllers::operator::multi_pool::families(config);
    let ipam = Arc::new(MultiPoolIpam::new(families, multi_pool_agent::DEFAULT_PRE_ALLOCATION, &config.state_dir));
    let task = run(client.clone(), node_name.to_string(), ipam.clone(), Duration::from_secs(5), shutdown);
    runner.spawn("multi-pool-ipam", async move { Ok(task.await?) });
    Some(MultiPoolHandle { ipam, client: client.clone() })
}

/// Keeps this node's CiliumNode in step with `ipam` until `shutdown`.
pub async fn run(
    client: Client,
    node_name: String,
    ipam: Arc<MultiPoolIpam>,
    retry: Duration,
    shutdown: CancellationToken,
) -> Result<(), kube::Error> {
    // Held until the controller returns: dropping it stops the watch.
    let Some(own) = OwnNode::watch(&client, &node_name, ipam.subscribe(), &shutdown).await else {
        return Ok(());
    };
    let (store, changed) = (&own.store, own.changed.clone());
    let api: Api<CiliumNode> = Api::all(client.clone());
    let mut last_requested: Option<Value> = None;
    let mut last_used: Option<Value> = None;
    // CIDRs handed back, and the resourceVersion of that write: until the cache is that new, its
    // stale `allocated` must not bring them back into use.
    let mut recent: Option<(Vec<(String, IpNet)>, String)> = None;
    loop {
        let span = info_span!("reconcile", controller = "multi-pool-agent", node = %node_name);
        let result = crate::runtime::controllers::timed(
            "multi-pool-agent",
            async {
                let cn = store.get(&ObjectRef::new(&node_name));
                if let Some(cn) = &cn {
                    let seen = cn.resource_version().unwrap_or_default();
                    if recent.as_ref().is_some_and(|(_, rv)| caught_up(&seen, rv)) {
                        recent = None;
                    }
                    let mut allocated = allocated_of(cn);
                    if let Some((dropped, _)) = &recent {
                        allocated = without(allocated, dropped);
                    }
                    for note in ipam.sync_allocated(&allocated) {
                        tracing::info!(%note, "multi-pool IPAM");
                    }
                } else {
                    last_requested = None;
                    last_used = None;
                }
                let requested = json!(ipam
                    .requested()
                    .iter()
                    .map(|d| json!({"pool": d.pool, "needed": needed_json(d)}))
                    .collect::<Vec<_>>());
                if last_requested.as_ref() != Some(&requested) {
                    let patch = json!({
                        "apiVersion": CiliumNode::api_version(&()), "kind": CiliumNode::kind(&()),
                        "metadata": {"name": node_name},
                        "spec": {"ipam": {"pools": {"requested": requested}}},
                    });
                    api.patch(&node_name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await?;
                    tracing::info!(%requested, "pool requests applied");
                    last_requested = Some(requested);
                }
                if let Some(cn) = &cn {
                    if recent.is_none() {
                        recent = release(&api, &node_name, cn, &ipam).await?;
                    }
                    apply_used(&api, &node_name, FIELD_MANAGER, ipam.used(), &mut last_used).await?;
                }
                Ok::<(), kube::Error>(())
            }
            .instrument(span),
        )
        .await;
        let wait = match result {
            Ok(()) => None,
            Err(error) => {
                tracing::warn!(%error, retry_in = ?retry, "multi-pool agent pass failed");
                Some(retry)
            }
        };
        if !crate::controllers::watch::next_pass(&changed, wait, &shutdown).await {
            return Ok(());
        }
    }
}

fn needed_json(d: &PoolDemand) -> Value {
    let mut needed = serde_json::Map::new();
    if d.ipv4 > 0 {
        needed.insert("ipv4-addrs".into(), json!(d.ipv4));
    }
    if d.ipv6 > 0 {
        needed.insert("ipv6-addrs".into(), json!(d.ipv6));
    }
    Value::Object(needed)
}

/// `allocated` without the `(pool, CIDR)`s in `dropped` (pools left empty disappear).
fn without(allocated: Vec<PoolCidrs>, dropped: &[(String, IpNet)]) -> Vec<PoolCidrs> {
    allocated
        .into_iter()
        .map(|p| {
            let cidrs = p
                .cidrs
                .iter()
                .filter(|t| {
                    !dropped
                        .iter()
                        .any(|(pool, c)| *pool == p.pool && t.parse::<IpNet>().is_ok_and(|n| n.trunc() == *c))
                })
                .cloned()
                .collect();
            PoolCidrs { pool: p.pool, cidrs }
        })
        .filter(|p| !p.cidrs.is_empty())
        .collect()
}

/// Hands unused CIDRs back by writing `allocated` without them, guarded by the resourceVersion the
/// decision was based on; a conflict puts them back in use until the next pass decides again.
/// Returns what was handed back and the resourceVersion of the write.
async fn release(
    api: &Api<CiliumNode>,
    node_name: &str,
    cn: &CiliumNode,
    ipam: &MultiPoolIpam,
) -> Result<Option<(Vec<(String, IpNet)>, String)>, kube::Error> {
    let dropped = ipam.take_releasable();
    if dropped.is_empty() {
        return Ok(None);
    }
    let allocated: Vec<Value> =
        without(allocated_of(cn), &dropped).into_iter().map(|p| json!({"pool": p.pool, "cidrs": p.cidrs})).collect();
    let patch = json!({
        "apiVersion": CiliumNode::api_version(&()), "kind": CiliumNode::kind(&()),
        "metadata": {"name": node_name, "resourceVersion": cn.resource_version()},
        "spec": {"ipam": {"pools": {"allocated": allocated}}},
    });
    match api.patch(node_name, &PatchParams::apply(RELEASE_FIELD_MANAGER).force(), &Patch::Apply(&patch)).await {
        Ok(written) => {
            tracing::info!(released = ?dropped, "unused pool CIDRs handed back");
            Ok(Some((dropped, written.resource_version().unwrap_or_default())))
        }
        Err(e) => {
            // Still listed: back in use until the next pass decides again.
            ipam.sync_allocated(&allocated_of(cn));
            Err(e)
        }
    }
}

#[cfg(test)]
#[path = "multi_pool_tests.rs"]
mod tests;
