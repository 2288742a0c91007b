//! The agent's node IPAM controller: publishes this node's `CiliumNode`, learns the node's pod
//! CIDRs and keeps `status.ipam.used` current.
//!
//! - The agent owns its CiliumNode except `spec.ipam.podCIDRs` in cluster-pool mode (the
//!   operator's): it server-side applies, as [`FIELD_MANAGER`], the addresses (the Node's
//!   InternalIP/ExternalIP, and CiliumInternalIP = the router address once known), the health
//!   addresses, and in `kubernetes` mode the pod CIDRs it read from `Node.spec.podCIDRs`.
//! - CIDRs come from `CiliumNode.spec.ipam.podCIDRs` (cluster-pool, written by the operator) or
//!   `Node.spec.podCIDRs` (kubernetes, written by kube-controller-manager); until they exist the
//!   shared [`NodeIpam`] stays not-ready and allocation answers "try again later".
//! - Every allocation change is mirrored into `status.ipam.used` / `ipv6-used`.
//! - In `multi-pool` mode the pod CIDRs and `status.ipam.used` are the multi-pool controller's
//!   ([`super::multi_pool`]); this controller then only publishes the addresses, taking the router
//!   and health addresses from the allocator serving the mode (`addresses`).
//!
//! The two watches are on this node's objects only (field selector `metadata.name`). Each change
//! wakes one pass of [`reconcile`]; the pure parts are [`node_cidrs`] and [`agent_spec`].

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource};
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info_span, Instrument};

use super::ipam_state::NodeIpam;
use super::pod_ipam::PodIpam;
use crate::config::IpamMode;
use crate::crds::cilium_node::{ADDRESS_CILIUM_INTERNAL_IP, ADDRESS_EXTERNAL_IP, ADDRESS_INTERNAL_IP};
use crate::crds::CiliumNode;
use crate::ipam::{Family, Owner};

/// The field manager of everything the agent writes on its CiliumNode.
pub const FIELD_MANAGER: &str = "beeline-agent";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("applying the spec of CiliumNode {node}: {source}")]
    ApplySpec { node: String, source: kube::Error },
    #[error("writing status.ipam.used of CiliumNode {node}: {source}")]
    ApplyStatus { node: String, source: kube::Error },
    #[error("the {0} cache stopped before it synced")]
    CacheStopped(&'static str),
}

/// The node's pod CIDRs in `mode`, or what is missing (shown to CNI callers while they retry).
pub fn node_cidrs(mode: IpamMode, node: Option<&Node>, cilium_node: Option<&CiliumNode>) -> Result<Vec<IpNet>, String> {
    let (source, texts): (&str, Vec<String>) = match mode {
        IpamMode::Kubernetes => {
            let node = node.ok_or("the Node object does not exist yet")?;
            let spec = node.spec.as_ref();
            let list = spec.and_then(|s| s.pod_cidrs.clone()).filter(|l| !l.is_empty());
            let list = list.or_else(|| spec.and_then(|s| s.pod_cidr.clone()).map(|c| vec![c])).unwrap_or_default();
            if list.is_empty() {
                return Err("Node.spec.podCIDRs is empty (ipam: kubernetes needs kube-controller-manager \
                            --allocate-node-cidrs)"
                    .into());
            }
            ("Node.spec.podCIDRs", list)
        }
        IpamMode::ClusterPool => {
            let cn = cilium_node.ok_or("waiting for the CiliumNode to be created")?;
            let list = cn.spec.ipam.as_ref().map(|i| i.pod_cidrs.clone()).unwrap_or_default();
            if list.is_empty() {
                let operator_error = cn
                    .status
                    .as_ref()
                    .and_then(|s| s.ipam.as_ref())
                    .and_then(|i| i.operator_status.as_ref().and_then(|o| o.error.clone()));
                return Err(match operator_error {
                    Some(e) => format!("the operator could not allocate a pod CIDR: {e}"),
                    None => "waiting for the operator to assign CiliumNode spec.ipam.podCIDRs".into(),
                });
            }
            ("CiliumNode spec.ipam.podCIDRs", list)
        }
        other => return Err(format!("ipam mode {other:?} is not supported by the agent yet")),
    };
    texts
        .iter()
        .map(|t| {
            t.parse::<IpNet>().map(|n| n.trunc()).map_err(|_| format!("{source} holds {t:?}, which is not a CIDR"))
        })
        .collect()
}

/// Whether pods get their addresses from the node's pod CIDRs ([`NodeIpam`]) in `mode`.
pub fn serves_pod_cidrs(mode: IpamMode) -> bool {
    matches!(mode, IpamMode::Kubernetes | IpamMode::ClusterPool)
}

/// The part of the CiliumNode the agent applies.
pub fn agent_spec(
    node_name: &str,
    mode: IpamMode,
    node: Option<&Node>,
    router: &[IpAddr],
    health: &[IpAddr],
    kubernetes_cidrs: &[IpNet],
) -> Value {
    let mut addresses = Vec::new();
    for addr in node.and_then(|n| n.status.as_ref()).and_then(|s| s.addresses.as_ref()).into_iter().flatten() {
        if addr.type_ == ADDRESS_INTERNAL_IP || addr.type_ == ADDRESS_EXTERNAL_IP {
            addresses.push(json!({ "type": addr.type_, "ip": addr.address }));
        }
    }
    for ip in router {
        addresses.push(json!({ "type": ADDRESS_CILIUM_INTERNAL_IP, "ip": ip.to_string() }));
    }
    let mut spec = json!({ "addresses": addresses });
    let mut health_spec = serde_json::Map::new();
    for ip in health {
        let key = if ip.is_ipv4() { "ipv4" } else { "ipv6" };
        health_spec.insert(key.into(), json!(ip.to_string()));
    }
    if !health_spec.is_empty() {
        spec["health"] = Value::Object(health_spec);
    }
    if mode == IpamMode::Kubernetes && !kubernetes_cidrs.is_empty() {
        let cidrs: Vec<String> = kubernetes_cidrs.iter().map(ToString::to_string).collect();
        spec["ipam"] = json!({ "podCIDRs": cidrs });
    }
    json!({
        "apiVersion": CiliumNode::api_version(&()),
        "kind": CiliumNode::kind(&()),
        "metadata": { "name": node_name },
        "spec": spec,
    })
}

pub struct Context {
    client: Client,
    node_name: String,
    mode: IpamMode,
    ipam: Arc<NodeIpam>,
    /// Where the router and health addresses come from: `ipam` itself, or the multi-pool allocator.
    addresses: Arc<dyn PodIpam>,
    nodes: Store<Node>,
    cilium_nodes: Store<CiliumNode>,
    /// What was last applied, so an unchanged pass writes nothing.
    last_spec: Mutex<Option<Value>>,
    last_status: Mutex<Option<Value>>,
    retry: Duration,
}

/// Runs until `shutdown`.
pub async fn run(
    client: Client,
    node_name: String,
    mode: IpamMode,
    ipam: Arc<NodeIpam>,
    addresses: Arc<dyn PodIpam>,
    retry: Duration,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let changed = Arc::new(Notify::new());
    let by_name = watcher::Config::default().fields(&format!("metadata.name={node_name}"));
    let (nodes, node_writer) = reflector::store::<Node>();
    let (cilium_nodes, cn_writer) = reflector::store::<CiliumNode>();
    let node_watch = reflector::reflector(node_writer, watcher(Api::<Node>::all(client.clone()), by_name.clone()))
        .default_backoff()
        .map(|r| r.map(|_| ()).map_err(|e| format!("Node watch: {e}")))
        .boxed();
    let cn_watch = reflector::reflector(cn_writer, watcher(Api::<CiliumNode>::all(client.clone()), by_name))
        .default_backoff()
        .map(|r| r.map(|_| ()).map_err(|e| format!("CiliumNode watch: {e}")))
        .boxed();
    let mut ipam_changes = ipam.subscribe();
    let mut address_changes = addresses.subscribe();
    let wake = changed.clone();
    let watches = tokio::spawn(async move {
        let mut merged = futures::stream::select(node_watch, cn_watch);
        loop {
            tokio::select! {
                event = merged.next() => match event {
                    Some(Err(e)) => tracing::warn!(error = %e, "watch error; retrying with backoff"),
                    Some(Ok(())) => {}
                    None => return,
                },
                changed = ipam_changes.changed() => if changed.is_err() { return },
                changed = address_changes.changed() => if changed.is_err() { return },
            }
            wake.notify_one();
        }
    });
    let _stop = AbortOnDrop(watches);
    let ctx = Arc::new(Context {
        client,
        node_name,
        mode,
        ipam,
        addresses,
        nodes,
        cilium_nodes,
        last_spec: Mutex::default(),
        last_status: Mutex::default(),
        retry,
    });
    tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        synced = async { tokio::try_join!(ctx.nodes.wait_until_ready(), ctx.cilium_nodes.wait_until_ready()) } => {
            synced.map_err(|_| Error::CacheStopped("Node/CiliumNode"))?;
        }
    }
    loop {
        let span = info_span!("reconcile", controller = "node-ipam", node = %ctx.node_name);
        let pass = reconcile(ctx.clone()).instrument(span);
        let wait = match crate::runtime::controllers::timed("node-ipam", pass).await {
            Ok(()) => None,
            Err(e) => Some(error_policy(&e, &ctx)),
        };
        if !crate::controllers::watch::next_pass(&changed, wait, &shutdown).await {
            return Ok(());
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Returns the retry delay; the failure is logged with its context.
pub fn error_policy(error: &Error, ctx: &Context) -> Duration {
    tracing::warn!(%error, retry_in = ?ctx.retry, "node IPAM pass failed");
    ctx.retry
}

pub async fn reconcile(ctx: Arc<Context>) -> Result<(), Error> {
    let node = ctx.nodes.get(&ObjectRef::new(&ctx.node_name));
    let cn = ctx.cilium_nodes.get(&ObjectRef::new(&ctx.node_name));

    // 1. The CIDRs: install them, or record why there are none.
    let cidrs = node_cidrs(ctx.mode, node.as_deref(), cn.as_deref());
    match &cidrs {
        _ if !serves_pod_cidrs(ctx.mode) => {}
        Ok(list) => match ctx.ipam.set_cidrs(list) {
            Ok(warnings) => warnings.iter().for_each(|w| tracing::warn!(warning = %w, "node IPAM")),
            Err(e) => {
                tracing::warn!(error = %e, "node pod CIDRs not usable");
                ctx.ipam.set_waiting(e.to_string());
            }
        },
        Err(reason) => {
            if !ctx.ipam.is_ready() {
                tracing::info!(%reason, "waiting for pod CIDRs");
                ctx.ipam.set_waiting(reason.clone());
            }
        }
    }

    // 2. The agent's part of the spec (creates the CiliumNode when missing).
    let mut router = Vec::new();
    let mut health = Vec::new();
    for family in [Family::V4, Family::V6] {
        router.extend(ctx.addresses.addr_of(family, &Owner::Router));
        health.extend(ctx.addresses.addr_of(family, &Owner::Health));
    }
    let k8s_cidrs = cidrs.as_ref().map(Vec::as_slice).unwrap_or(&[]);
    let spec = agent_spec(&ctx.node_name, ctx.mode, node.as_deref(), &router, &health, k8s_cidrs);
    let api: Api<CiliumNode> = Api::all(ctx.client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    if cn.is_none() {
        // Deleted (or never created): everything must be written again.
        *ctx.last_status.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
    if cn.is_none() || ctx.last_spec.lock().unwrap_or_else(|p| p.into_inner()).as_ref() != Some(&spec) {
        api.patch(&ctx.node_name, &params, &Patch::Apply(&spec))
            .await
            .map_err(|source| Error::ApplySpec { node: ctx.node_name.clone(), source })?;
        tracing::info!(addresses = ?spec["spec"]["addresses"], "CiliumNode spec applied");
        *ctx.last_spec.lock().unwrap_or_else(|p| p.into_inner()) = Some(spec);
    }

    // 3. status.ipam.used.
    if ctx.ipam.is_ready() {
        let (used, ipv6_used) = ctx.ipam.used();
        let status = json!({
            "apiVersion": CiliumNode::api_version(&()),
            "kind": CiliumNode::kind(&()),
            "metadata": { "name": ctx.node_name },
            "status": { "ipam": { "used": used, "ipv6-used": ipv6_used } },
        });
        if ctx.last_status.lock().unwrap_or_else(|p| p.into_inner()).as_ref() != Some(&status) {
            api.patch_status(&ctx.node_name, &params, &Patch::Apply(&status))
                .await
                .map_err(|source| Error::ApplyStatus { node: ctx.node_name.clone(), source })?;
            *ctx.last_status.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "node_ipam_tests.rs"]
mod tests;
