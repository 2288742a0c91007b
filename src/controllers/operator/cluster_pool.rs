//! Cluster-pool IPAM in the operator: one pod CIDR per node, written to
//! `CiliumNode.spec.ipam.podCIDRs`.
//!
//! The allocation is a whole-cluster decision (a CIDR may go to exactly one node), so this is a
//! reflector-driven loop rather than a per-object `Controller`: reflectors keep Nodes and
//! CiliumNodes cached, any change wakes one serialized pass of [`reconcile`], which feeds the pure
//! [`ClusterPools::desired`] and writes the difference:
//! - `spec.ipam.podCIDRs` by server-side apply with the field manager [`FIELD_MANAGER`], which owns
//!   only that field (the agent applies the rest of the CiliumNode as `beeline-agent`);
//! - `status.ipam.operator-status.error` the same way on the status subresource, plus a Warning
//!   Event naming the node when allocation fails;
//! - the CiliumNode of a deleted Node is deleted, which frees its CIDRs for the next pass.
//!
//! Two rules keep a CIDR from ever being handed out twice:
//! 1. the first pass runs only after both caches have synced, so every existing assignment is
//!    restored before anything is allocated (an operator restart is just another first pass);
//! 2. a write is remembered as *pending* until the CiliumNode cache shows it, and passes use the
//!    pending value instead of the (stale) cached one: watch events arrive in order, so once the
//!    cache shows our write it is authoritative again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info_span, Instrument};

use crate::config::Config;
use crate::crds::CiliumNode;
use crate::ipam::podcidr::{
    ClusterPoolConfig, ClusterPoolConfigError, ClusterPools, DesiredPodCidrs, ExistingCiliumNode, FamilyPoolConfig,
    NodePodCidrs,
};

/// The field manager that owns `spec.ipam.podCIDRs` and `status.ipam.operator-status`.
pub const FIELD_MANAGER: &str = "beeline-operator";
/// The Event reason when a node gets no CIDR.
pub const REASON_ALLOCATION_FAILED: &str = "PodCIDRAllocationFailed";
/// The Event reason for an assignment kept despite a mismatch (e.g. a different mask size).
pub const REASON_ALLOCATION_WARNING: &str = "PodCIDRAllocationWarning";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid cluster-pool configuration: {0}")]
    Config(#[from] ClusterPoolConfigError),
    #[error("applying spec.ipam.podCIDRs {cidrs:?} to CiliumNode {node}: {source}")]
    ApplySpec { node: String, cidrs: Vec<String>, source: kube::Error },
    #[error("writing status.ipam.operator-status of CiliumNode {node}: {source}")]
    ApplyStatus { node: String, source: kube::Error },
    #[error("deleting CiliumNode {node}, whose Node is gone: {source}")]
    Delete { node: String, source: kube::Error },
    #[error("the {0} cache stopped before it synced")]
    CacheStopped(&'static str),
}

/// The enabled families' `cluster-pool-ipv{4,6}-cidr` and mask sizes.
pub fn pool_config(config: &Config) -> ClusterPoolConfig {
    ClusterPoolConfig {
        ipv4: config.enable_ipv4.then(|| FamilyPoolConfig {
            cidrs: config.cluster_pool_ipv4_cidr.iter().copied().map(IpNet::V4).collect(),
            mask_size: config.cluster_pool_ipv4_mask_size,
        }),
        ipv6: config.enable_ipv6.then(|| FamilyPoolConfig {
            cidrs: config.cluster_pool_ipv6_cidr.iter().copied().map(IpNet::V6).collect(),
            mask_size: config.cluster_pool_ipv6_mask_size,
        }),
    }
}

/// What every pass needs.
pub struct Context {
    client: Client,
    pools: ClusterPools,
    nodes: Store<Node>,
    cilium_nodes: Store<CiliumNode>,
    recorder: Recorder,
    /// `spec.ipam.podCIDRs` written but not yet seen in the CiliumNode cache.
    pending: Mutex<BTreeMap<String, Vec<String>>>,
    /// The last error evented per node, so a persisting failure is one Event, not one per pass.
    evented: Mutex<BTreeMap<String, String>>,
    /// Retry delay after a failed pass.
    retry: Duration,
}

/// What to do after a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    AwaitChange,
    RequeueAfter(Duration),
}

/// Runs the controller until `shutdown`. Fails at once on an invalid pool configuration.
pub async fn run(client: Client, config: &Config, shutdown: CancellationToken) -> Result<(), Error> {
    run_with(client, ClusterPools::new(&pool_config(config))?, Duration::from_secs(5), shutdown).await
}

/// [`run`] with explicit pools and retry delay (tests).
pub async fn run_with(
    client: Client,
    pools: ClusterPools,
    retry: Duration,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let changed = Arc::new(Notify::new());
    let (nodes, node_writer) = reflector::store::<Node>();
    let (cilium_nodes, cn_writer) = reflector::store::<CiliumNode>();
    let node_watch =
        reflector::reflector(node_writer, watcher(Api::<Node>::all(client.clone()), Default::default())).boxed();
    let cn_watch =
        reflector::reflector(cn_writer, watcher(Api::<CiliumNode>::all(client.clone()), Default::default())).boxed();
    let watches = tokio::spawn(drive(node_watch, cn_watch, ["Node", "CiliumNode"], changed.clone()));
    let _stop_watches = AbortOnDrop(watches);

    let recorder = Recorder::new(
        client.clone(),
        Reporter { controller: FIELD_MANAGER.into(), instance: std::env::var("POD_NAME").ok() },
    );
    let ctx = Arc::new(Context {
        client,
        pools,
        nodes,
        cilium_nodes,
        recorder,
        pending: Mutex::default(),
        evented: Mutex::default(),
        retry,
    });

    // Rule 1: nothing is allocated before every existing assignment is known.
    tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        synced = async { tokio::try_join!(ctx.nodes.wait_until_ready(), ctx.cilium_nodes.wait_until_ready()) } => {
            synced.map_err(|_| Error::CacheStopped("Node/CiliumNode"))?;
        }
    }
    tracing::info!(nodes = ctx.nodes.len(), cilium_nodes = ctx.cilium_nodes.len(), "cluster-pool caches synced");

    loop {
        let pass = reconcile(ctx.clone()).instrument(info_span!("reconcile", controller = "cluster-pool"));
        let action = match crate::runtime::controllers::timed("cluster-pool", pass).await {
            Ok(action) => action,
            Err(e) => error_policy(&e, &ctx),
        };
        let retry = match action {
            Action::AwaitChange => None,
            Action::RequeueAfter(d) => Some(d),
        };
        if !crate::controllers::watch::next_pass(&changed, retry, &shutdown).await {
            return Ok(());
        }
    }
}

/// Aborts the watch task when the controller returns.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Polls both watches (which keeps the stores current) and wakes the loop on every event.
/// `labels` name the two watches in logs.
pub(crate) async fn drive<A, B, K1, K2, E1, E2>(first: A, second: B, labels: [&'static str; 2], changed: Arc<Notify>)
where
    A: futures::Stream<Item = Result<watcher::Event<K1>, E1>> + Send + Unpin,
    B: futures::Stream<Item = Result<watcher::Event<K2>, E2>> + Send + Unpin,
    E1: std::fmt::Display,
    E2: std::fmt::Display,
{
    let [l1, l2] = labels;
    let first = first.default_backoff().map(move |r| r.map(|_| ()).map_err(|e| format!("{l1} watch: {e}"))).boxed();
    let second = second.default_backoff().map(move |r| r.map(|_| ()).map_err(|e| format!("{l2} watch: {e}"))).boxed();
    let mut merged = futures::stream::select(first, second);
    while let Some(event) = merged.next().await {
        if let Err(e) = event {
            tracing::warn!(error = %e, "watch error; retrying with backoff");
        }
        changed.notify_one();
    }
}

/// The inputs of one pass: Node names, and CiliumNodes with pending writes overlaid.
fn snapshot(ctx: &Context) -> (BTreeSet<String>, Vec<ExistingCiliumNode>, BTreeMap<String, Arc<CiliumNode>>) {
    let nodes: BTreeSet<String> = ctx.nodes.state().iter().map(|n| n.name_any()).collect();
    let cached: BTreeMap<String, Arc<CiliumNode>> =
        ctx.cilium_nodes.state().into_iter().map(|cn| (cn.name_any(), cn)).collect();
    let mut pending = ctx.pending.lock().unwrap_or_else(|p| p.into_inner());
    // Rule 2: a pending write is dropped once the cache shows it.
    pending.retain(|name, written| cached.get(name).is_none_or(|cn| pod_cidrs_of(cn) != *written));
    let mut existing: BTreeMap<String, Vec<String>> =
        cached.iter().map(|(name, cn)| (name.clone(), pod_cidrs_of(cn))).collect();
    for (name, written) in pending.iter() {
        existing.insert(name.clone(), written.clone());
    }
    let existing = existing.into_iter().map(|(name, pod_cidrs)| ExistingCiliumNode { name, pod_cidrs }).collect();
    (nodes, existing, cached)
}

fn pod_cidrs_of(cn: &CiliumNode) -> Vec<String> {
    cn.spec.ipam.as_ref().map(|i| i.pod_cidrs.clone()).unwrap_or_default()
}

pub(crate) fn operator_error_of(cn: &CiliumNode) -> Option<String> {
    cn.status.as_ref()?.ipam.as_ref()?.operator_status.as_ref()?.error.clone()
}

/// One pass over the whole cluster. Every node is attempted; the first failure is returned.
pub async fn reconcile(ctx: Arc<Context>) -> Result<Action, Error> {
    let (nodes, existing, cached) = snapshot(&ctx);
    let desired: DesiredPodCidrs = ctx.pools.desired(&nodes, &existing);
    let overlaid: BTreeMap<&str, &Vec<String>> = existing.iter().map(|e| (e.name.as_str(), &e.pod_cidrs)).collect();
    let mut first_error = None;

    for (name, want) in &desired.nodes {
        let current = cached.get(name).map(Arc::as_ref);
        let have = overlaid.get(name.as_str()).map(|v| v.as_slice());
        let result = apply_node(&ctx, name, want, current, have)
            .instrument(info_span!("node", node = %name, cidrs = ?want.pod_cidrs))
            .await;
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
    }
    for (name, cidrs) in &desired.released {
        if let Err(e) = release_node(&ctx, name, cidrs).await {
            first_error.get_or_insert(e);
        }
    }
    for usage in &desired.usage {
        tracing::debug!(?usage, "cluster CIDR usage");
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(Action::AwaitChange),
    }
}

/// Requeues a failed pass; the failure was logged with its context.
pub fn error_policy(error: &Error, ctx: &Context) -> Action {
    tracing::warn!(%error, retry_in = ?ctx.retry, "cluster-pool pass failed");
    Action::RequeueAfter(ctx.retry)
}

async fn apply_node(
    ctx: &Context,
    name: &str,
    want: &NodePodCidrs,
    current: Option<&CiliumNode>,
    have: Option<&[String]>,
) -> Result<(), Error> {
    let api: Api<CiliumNode> = Api::all(ctx.client.clone());
    // The spec write also creates the CiliumNode when the agent has not yet, so status can be set.
    if current.is_none() || have != Some(want.pod_cidrs.as_slice()) {
        let patch = json!({
            "apiVersion": CiliumNode::api_version(&()),
            "kind": CiliumNode::kind(&()),
            "metadata": { "name": name },
            "spec": { "ipam": { "podCIDRs": want.pod_cidrs } },
        });
        api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
            .await
            .map_err(|source| Error::ApplySpec { node: name.into(), cidrs: want.pod_cidrs.clone(), source })?;
        ctx.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), want.pod_cidrs.clone());
        tracing::info!(cidrs = ?want.pod_cidrs, "pod CIDRs assigned");
        if current.is_none() || current.and_then(operator_error_of) != want.error {
            write_status(&api, name, want.error.as_deref()).await?;
        }
    } else if current.and_then(operator_error_of) != want.error {
        write_status(&api, name, want.error.as_deref()).await?;
    }

    let reference = node_reference(name, current);
    let already = ctx.evented.lock().unwrap_or_else(|p| p.into_inner()).get(name).cloned();
    match &want.error {
        Some(error) if already.as_ref() != Some(error) => {
            tracing::warn!(%error, "no pod CIDR for node");
            let note = format!("cannot allocate a pod CIDR for node {name}: {error}");
            publish(ctx, EventType::Warning, REASON_ALLOCATION_FAILED, note, &reference).await;
            ctx.evented.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), error.clone());
        }
        None if already.is_some() => {
            ctx.evented.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        }
        _ => {}
    }
    for warning in &want.warnings {
        let key = format!("warning:{name}");
        let first_time = {
            let mut evented = ctx.evented.lock().unwrap_or_else(|p| p.into_inner());
            evented.insert(key, warning.clone()).as_ref() != Some(warning)
        };
        if !first_time {
            continue;
        }
        publish(ctx, EventType::Warning, REASON_ALLOCATION_WARNING, format!("node {name}: {warning}"), &reference)
            .await;
    }
    Ok(())
}

async fn write_status(api: &Api<CiliumNode>, name: &str, error: Option<&str>) -> Result<(), Error> {
    apply_operator_error(api, name, error).await.map_err(|source| Error::ApplyStatus { node: name.into(), source })
}

/// Applies `status.ipam.operator-status` as [`FIELD_MANAGER`] (also used by multi-pool).
pub(crate) async fn apply_operator_error(
    api: &Api<CiliumNode>,
    name: &str,
    error: Option<&str>,
) -> Result<(), kube::Error> {
    // Applying `operator-status` without `error` removes an error this manager applied before.
    let operator_status = match error {
        Some(e) => json!({ "error": e }),
        None => json!({}),
    };
    let patch = json!({
        "apiVersion": CiliumNode::api_version(&()),
        "kind": CiliumNode::kind(&()),
        "metadata": { "name": name },
        "status": { "ipam": { "operator-status": operator_status } },
    });
    api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await?;
    Ok(())
}

/// Events are best effort: failing to record one must not fail the pass.
async fn publish(
    ctx: &Context,
    type_: EventType,
    reason: &str,
    note: String,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
) {
    publish_event(&ctx.recorder, type_, reason, note, reference).await;
}

/// Records an `AllocatePodCIDR` Event, best effort (also used by multi-pool).
pub(crate) async fn publish_event(
    recorder: &Recorder,
    type_: EventType,
    reason: &str,
    note: String,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
) {
    let event =
        Event { type_, reason: reason.into(), note: Some(note), action: "AllocatePodCIDR".into(), secondary: None };
    if let Err(error) = recorder.publish(&event, reference).await {
        tracing::warn!(%error, reason, "cannot record Event");
    }
}

/// Events regard the CiliumNode (cluster-scoped; kube-runtime records them in `default`).
pub(crate) fn node_reference(name: &str, current: Option<&CiliumNode>) -> k8s_openapi::api::core::v1::ObjectReference {
    match current {
        Some(cn) => cn.object_ref(&()),
        None => k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some(CiliumNode::api_version(&()).into()),
            kind: Some(CiliumNode::kind(&()).into()),
            name: Some(name.into()),
            ..Default::default()
        },
    }
}

async fn release_node(ctx: &Context, name: &str, cidrs: &[String]) -> Result<(), Error> {
    let api: Api<CiliumNode> = Api::all(ctx.client.clone());
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => tracing::info!(node = %name, ?cidrs, "Node deleted: CiliumNode removed, pod CIDRs released"),
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(source) => return Err(Error::Delete { node: name.into(), source }),
    }
    ctx.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
    ctx.evented.lock().unwrap_or_else(|p| p.into_inner()).retain(|k, _| k != name && *k != format!("warning:{name}"));
    Ok(())
}

#[cfg(test)]
#[path = "cluster_pool_tests.rs"]
mod tests;
