//! Multi-pool IPAM in the operator: CIDRs of `CiliumPodIPPool`s handed to nodes in
//! `CiliumNode.spec.ipam.pools.allocated`, grown until they cover `spec.ipam.pools.requested`.
//!
//! Like cluster-pool ([`super::cluster_pool`]) this is one serialized loop over reflector caches
//! (CiliumNodes and CiliumPodIPPools) feeding the pure [`MultiPools::desired`]:
//! - `spec.ipam.pools.allocated` is server-side applied as [`FIELD_MANAGER`], which owns only that
//!   field (the agent applies `requested`). The agent also writes `allocated` when it releases a
//!   CIDR (Cilium's protocol), so every operator write carries the `resourceVersion` it was computed
//!   from: a write racing a release is refused (409) and recomputed instead of undoing it;
//! - node errors go to `status.ipam.operator-status.error` plus a Warning Event; pool errors
//!   (changed `maskSize`, bad CIDRs) are a Warning Event on the pool and a log line;
//! - auto-created pools (`auto-create-cilium-pod-ip-pools`) are created once at start when missing.
//!
//! No CIDR is handed out twice: the first pass runs after both caches synced (every existing
//! allocation is occupied first: an operator restart allocates nothing new until then), and a
//! write is *pending* until the cache shows an object at least as new, the pending value standing
//! in for the stale cached one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info_span, Instrument};

use super::cluster_pool::{
    apply_operator_error, drive, node_reference, operator_error_of, publish_event, AbortOnDrop, FIELD_MANAGER,
};
use crate::config::Config;
use crate::crds::cilium_node::{IpamPoolAllocation, IpamPoolSpec};
use crate::crds::cilium_pod_ip_pool::{IpPoolSpec, Ipv4PoolSpec, Ipv6PoolSpec};
use crate::crds::{CiliumNode, CiliumPodIPPool};
use crate::ipam::multi_pool::{
    parse_auto_create, AutoCreateError, FamilySpec, MultiPools, NodePoolState, PoolCidrs, PoolDemand, PoolSpec,
};
use crate::ipam::Family;

/// Event reason when a node's request cannot be met.
pub const REASON_ALLOCATION_FAILED: &str = "PoolCIDRAllocationFailed";
/// Event reason for orphaned CIDRs and similar.
pub const REASON_ALLOCATION_WARNING: &str = "PoolCIDRAllocationWarning";
/// Event reason on a pool whose spec is refused (e.g. a changed `maskSize`).
pub const REASON_POOL_INVALID: &str = "PoolSpecInvalid";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    AutoCreate(#[from] AutoCreateError),
    #[error("creating auto-created CiliumPodIPPool {pool}: {source}")]
    CreatePool { pool: String, source: kube::Error },
    #[error("applying spec.ipam.pools.allocated to CiliumNode {node}: {source}")]
    ApplySpec { node: String, source: kube::Error },
    #[error("writing status.ipam.operator-status of CiliumNode {node}: {source}")]
    ApplyStatus { node: String, source: kube::Error },
    #[error("the {0} cache stopped before it synced")]
    CacheStopped(&'static str),
}

/// The enabled families.
pub fn families(config: &Config) -> Vec<Family> {
    [(config.enable_ipv4, Family::V4), (config.enable_ipv6, Family::V6)]
        .into_iter()
        .filter_map(|(on, f)| on.then_some(f))
        .collect()
}

struct Context {
    client: Client,
    core: Mutex<MultiPools>,
    pools: Store<CiliumPodIPPool>,
    cilium_nodes: Store<CiliumNode>,
    recorder: Recorder,
    /// `allocated` written, with the resourceVersion the write produced, until the cache catches up.
    pending: Mutex<BTreeMap<String, (Vec<PoolCidrs>, String)>>,
    /// Last message evented per key, so a persisting problem is one Event.
    evented: Mutex<BTreeMap<String, String>>,
}

/// Runs until `shutdown`. Fails at once on an invalid `auto-create-cilium-pod-ip-pools`.
pub async fn run(client: Client, config: &Config, shutdown: CancellationToken) -> Result<(), Error> {
    let auto = parse_auto_create(&config.auto_create_cilium_pod_ip_pools)?;
    run_with(client, families(config), auto, Duration::from_secs(5), shutdown).await
}

/// [`run`] with explicit families, auto-created pools and retry delay (tests).
pub async fn run_with(
    client: Client,
    families: Vec<Family>,
    auto_create: Vec<PoolSpec>,
    retry: Duration,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    create_missing_pools(&client, &auto_create).await?;
    let changed = Arc::new(Notify::new());
    let (pools, pool_writer) = reflector::store::<CiliumPodIPPool>();
    let (cilium_nodes, cn_writer) = reflector::store::<CiliumNode>();
    let pool_watch = reflector::reflector(pool_writer, watcher(Api::all(client.clone()), Default::default()));
    let cn_watch = reflector::reflector(cn_writer, watcher(Api::all(client.clone()), Default::default()));
    let watches = tokio::spawn(drive(
        Box::pin(pool_watch),
        Box::pin(cn_watch),
        ["CiliumPodIPPool", "CiliumNode"],
        changed.clone(),
    ));
    let _stop_watches = AbortOnDrop(watches);
    let recorder = Recorder::new(
        client.clone(),
        Reporter { controller: FIELD_MANAGER.into(), instance: std::env::var("POD_NAME").ok() },
    );
    let ctx = Context {
        client,
        core: Mutex::new(MultiPools::new(families)),
        pools,
        cilium_nodes,
        recorder,
        pending: Mutex::default(),
        evented: Mutex::default(),
    };
    tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        synced = async { tokio::try_join!(ctx.pools.wait_until_ready(), ctx.cilium_nodes.wait_until_ready()) } => {
            synced.map_err(|_| Error::CacheStopped("CiliumPodIPPool/CiliumNode"))?;
        }
    }
    tracing::info!(pools = ctx.pools.len(), cilium_nodes = ctx.cilium_nodes.len(), "multi-pool caches synced");
    loop {
        let pass = reconcile(&ctx).instrument(info_span!("reconcile", controller = "multi-pool"));
        let failed = match crate::runtime::controllers::timed("multi-pool", pass).await {
            Ok(()) => false,
            Err(error) => {
                tracing::warn!(%error, retry_in = ?retry, "multi-pool pass failed");
                true
            }
        };
        if !crate::controllers::watch::next_pass(&changed, failed.then_some(retry), &shutdown).await {
            return Ok(());
        }
    }
}

/// Creates the auto-created pools that do not exist; an existing pool of that name is left alone
/// (it may have been edited on purpose).
async fn create_missing_pools(client: &Client, pools: &[PoolSpec]) -> Result<(), Error> {
    let api: Api<CiliumPodIPPool> = Api::all(client.clone());
    for pool in pools {
        let object = CiliumPodIPPool::new(&pool.name, pool_object_spec(pool));
        match api.create(&PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }, &object).await
        {
            Ok(_) => tracing::info!(pool = %pool.name, "auto-created CiliumPodIPPool"),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(source) => return Err(Error::CreatePool { pool: pool.name.clone(), source }),
        }
    }
    Ok(())
}

fn pool_object_spec(pool: &PoolSpec) -> IpPoolSpec {
    IpPoolSpec {
        ipv4: pool.ipv4.as_ref().map(|f| Ipv4PoolSpec { cidrs: f.cidrs.clone(), mask_size: f.mask_size }),
        ipv6: pool.ipv6.as_ref().map(|f| Ipv6PoolSpec { cidrs: f.cidrs.clone(), mask_size: f.mask_size }),
        pod_selector: None,
        namespace_selector: None,
    }
}

/// The core's view of a `CiliumPodIPPool`.
pub fn pool_spec(pool: &CiliumPodIPPool) -> PoolSpec {
    PoolSpec {
        name: pool.name_any(),
        ipv4: pool.spec.ipv4.as_ref().map(|f| FamilySpec { cidrs: f.cidrs.clone(), mask_size: f.mask_size }),
        ipv6: pool.spec.ipv6.as_ref().map(|f| FamilySpec { cidrs: f.cidrs.clone(), mask_size: f.mask_size }),
    }
}

/// `spec.ipam.pools` of a CiliumNode, in the core's types.
pub fn node_pools(cn: &CiliumNode) -> (Vec<PoolDemand>, Vec<PoolCidrs>) {
    let Some(pools) = cn.spec.ipam.as_ref().and_then(|i| i.pools.as_ref()) else { return Default::default() };
    let requested = pools
        .requested
        .iter()
        .map(|r| PoolDemand {
            pool: r.pool.clone(),
            ipv4: r.needed.ipv4_addrs.unwrap_or(0).max(0) as u64,
            ipv6: r.needed.ipv6_addrs.unwrap_or(0).max(0) as u64,
        })
        .collect();
    (requested, allocated_of(pools))
}

fn allocated_of(pools: &IpamPoolSpec) -> Vec<PoolCidrs> {
    pools.allocated.iter().map(|a| PoolCidrs { pool: a.pool.clone(), cidrs: a.cidrs.clone() }).collect()
}

/// Whether resourceVersion `seen` is at least `written` (numeric when both are, as the API server
/// and the in-memory one issue them; otherwise only equality counts).
pub(crate) fn caught_up(seen: &str, written: &str) -> bool {
    match (seen.parse::<u64>(), written.parse::<u64>()) {
        (Ok(s), Ok(w)) => s >= w,
        _ => seen == written,
    }
}

async fn reconcile(ctx: &Context) -> Result<(), Error> {
    let pools: Vec<PoolSpec> = ctx.pools.state().iter().map(|p| pool_spec(p)).collect();
    let cached: BTreeMap<String, Arc<CiliumNode>> =
        ctx.cilium_nodes.state().into_iter().map(|cn| (cn.name_any(), cn)).collect();
    // Pending writes stand in for the cache until it catches up; their resourceVersion is the one
    // the next write must carry.
    let overlay: BTreeMap<String, (Vec<PoolCidrs>, String)> = {
        let mut pending = ctx.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.retain(|name, (_, rv)| {
            cached.get(name).is_some_and(|cn| !caught_up(cn.resource_version().as_deref().unwrap_or(""), rv))
        });
        pending.clone()
    };
    let mut states = Vec::with_capacity(cached.len());
    let mut versions: BTreeMap<String, String> = BTreeMap::new();
    for (name, cn) in &cached {
        let (requested, mut allocated) = node_pools(cn);
        let mut rv = cn.resource_version().unwrap_or_default();
        if let Some((written, written_rv)) = overlay.get(name) {
            allocated = written.clone();
            rv = written_rv.clone();
        }
        versions.insert(name.clone(), rv);
        states.push(NodePoolState { name: name.clone(), requested, allocated });
    }
    let desired = ctx.core.lock().unwrap_or_else(|p| p.into_inner()).desired(&pools, &states);

    for (pool, error) in &desired.pool_errors {
        if remember(ctx, &format!("pool:{pool}"), error) {
            tracing::warn!(%pool, %error, "CiliumPodIPPool refused in part");
            if let Some(object) = ctx.pools.state().iter().find(|p| p.name_any() == *pool) {
                let reference = object.object_ref(&());
                publish_event(&ctx.recorder, EventType::Warning, REASON_POOL_INVALID, error.clone(), &reference).await;
            }
        }
    }
    let mut first_error = None;
    for state in &states {
        let want = &desired.nodes[&state.name];
        let span = info_span!("node", node = %state.name);
        let result =
            apply_node(ctx, state, want, cached[&state.name].as_ref(), &versions[&state.name]).instrument(span).await;
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Whether `message` under `key` is new (then it is remembered).
fn remember(ctx: &Context, key: &str, message: &str) -> bool {
    let mut evented = ctx.evented.lock().unwrap_or_else(|p| p.into_inner());
    evented.insert(key.to_string(), message.to_string()).as_deref() != Some(message)
}

async fn apply_node(
    ctx: &Context,
    state: &NodePoolState,
    want: &crate::ipam::multi_pool::NodeAllocation,
    current: &CiliumNode,
    resource_version: &str,
) -> Result<(), Error> {
    let name = state.name.as_str();
    let api: Api<CiliumNode> = Api::all(ctx.client.clone());
    if want.allocated != state.allocated {
        let allocated: Vec<IpamPoolAllocation> = want
            .allocated
            .iter()
            .map(|p| IpamPoolAllocation { pool: p.pool.clone(), cidrs: p.cidrs.clone() })
            .collect();
        let patch = json!({
            "apiVersion": CiliumNode::api_version(&()),
            "kind": CiliumNode::kind(&()),
            "metadata": { "name": name, "resourceVersion": resource_version },
            "spec": { "ipam": { "pools": { "allocated": allocated } } },
        });
        let written = api
            .patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
            .await
            .map_err(|source| Error::ApplySpec { node: name.into(), source })?;
        let rv = written.resource_version().unwrap_or_default();
        ctx.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(name.into(), (want.allocated.clone(), rv));
        tracing::info!(allocated = ?want.allocated, "pool CIDRs allocated");
    }
    if operator_error_of(current) != want.error {
        apply_operator_error(&api, name, want.error.as_deref())
            .await
            .map_err(|source| Error::ApplyStatus { node: name.into(), source })?;
    }
    let reference = node_reference(name, Some(current));
    match &want.error {
        Some(error) if remember(ctx, &format!("node:{name}"), error) => {
            tracing::warn!(%error, "pool request not met");
            let note = format!("cannot allocate pool CIDRs for node {name}: {error}");
            publish_event(&ctx.recorder, EventType::Warning, REASON_ALLOCATION_FAILED, note, &reference).await;
        }
        None => {
            ctx.evented.lock().unwrap_or_else(|p| p.into_inner()).remove(&format!("node:{name}"));
        }
        _ => {}
    }
    for warning in &want.warnings {
        if remember(ctx, &format!("warning:{name}:{warning}"), warning) {
            tracing::warn!(%warning, "pool CIDR");
            let note = format!("node {name}: {warning}");
            publish_event(&ctx.recorder, EventType::Warning, REASON_ALLOCATION_WARNING, note, &reference).await;
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "multi_pool_tests.rs"]
mod tests;
