//! This node's CiliumNode as the agent's CRD-backed IPAM controllers (multi-pool, crd) see it: a
//! cache of the one object that wakes the controller on every change of the object *or* of the
//! allocator (a CNI ADD/DEL changes what must be written), and the `status.ipam.used` write both
//! make after each pass.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource};
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::controllers::operator::cluster_pool::AbortOnDrop;
use crate::crds::cilium_node::AllocationIp;
use crate::crds::CiliumNode;

/// The cache of this node's CiliumNode and the wake-up of its controller. The task feeding both
/// stops when this is dropped.
pub struct OwnNode {
    pub store: Store<CiliumNode>,
    /// Notified on every watch event and every change of the allocator.
    pub changed: Arc<Notify>,
    _feed: AbortOnDrop,
}

impl OwnNode {
    /// Starts watching `node_name` and waits for the first list. `None` when `shutdown` came
    /// first or the watch ended before it: the controller then has nothing to do.
    pub async fn watch(
        client: &Client,
        node_name: &str,
        mut allocator_changes: tokio::sync::watch::Receiver<u64>,
        shutdown: &CancellationToken,
    ) -> Option<OwnNode> {
        let changed = Arc::new(Notify::new());
        let by_name = watcher::Config::default().fields(&format!("metadata.name={node_name}"));
        let (store, writer) = reflector::store::<CiliumNode>();
        let mut watch = reflector::reflector(writer, watcher(Api::<CiliumNode>::all(client.clone()), by_name))
            .default_backoff()
            .boxed();
        let wake = changed.clone();
        let feed = tokio::spawn(async move {
            loop {
                tokio::select! {
                    event = watch.next() => match event {
                        Some(Err(e)) => tracing::warn!(error = %e, "CiliumNode watch error; retrying with backoff"),
                        Some(Ok(_)) => {}
                        None => return,
                    },
                    changed = allocator_changes.changed() => if changed.is_err() { return },
                }
                wake.notify_one();
            }
        });
        let own = OwnNode { store, changed, _feed: AbortOnDrop(feed) };
        tokio::select! {
            _ = shutdown.cancelled() => None,
            ready = own.store.wait_until_ready() => ready.is_ok().then_some(own),
        }
    }
}

/// Server-side applies `status.ipam.used` / `ipv6-used` as `field_manager` when it differs from
/// `last` (what this controller wrote last), and remembers it.
pub async fn apply_used(
    api: &Api<CiliumNode>,
    node_name: &str,
    field_manager: &str,
    (used, ipv6_used): (BTreeMap<String, AllocationIp>, BTreeMap<String, AllocationIp>),
    last: &mut Option<Value>,
) -> Result<(), kube::Error> {
    let status = json!({
        "apiVersion": CiliumNode::api_version(&()), "kind": CiliumNode::kind(&()),
        "metadata": {"name": node_name},
        "status": {"ipam": {"used": used, "ipv6-used": ipv6_used}},
    });
    if last.as_ref() != Some(&status) {
        api.patch_status(node_name, &PatchParams::apply(field_manager).force(), &Patch::Apply(&status)).await?;
        *last = Some(status);
    }
    Ok(())
}
