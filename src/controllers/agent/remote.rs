//! The remote side of the datapath: two controllers feeding the map manager's `remote` group.
//!
//! - remote nodes: CiliumNodes → tunnel-map and ipcache rows ([`super::remote_nodes`]) and kernel
//!   routes ([`crate::datapath::routes`]);
//! - remote endpoints: CiliumEndpoints → ipcache `/32` rows ([`super::remote_endpoints`]).
//!
//! Each is a row owner of its own, so its first full pass (after its caches listed) is what lets
//! the manager prune rows of nodes and pods that went away while the agent was down. The two never
//! claim the same key: nodes write node addresses and pod CIDRs, endpoints write pod `/32`s.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use kube::api::Api;
use kube::runtime::watcher;
use kube::Client;
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use super::remote_endpoints;
use super::remote_nodes::{self, RemoteNodesConfig};
use crate::controllers::watch::{snapshot, WatchError, Watches};
use crate::crds::{CiliumEndpoint, CiliumNode};
use crate::datapath::manager::maps::{Ipcache, TunnelMap};
use crate::datapath::manager::{Owner, TableHandle};
use crate::datapath::routes::{self, RouteTable};

/// Owner names (in `beeline status`, readiness and logs).
pub const NODES_OWNER: &str = "remote-nodes";
pub const ENDPOINTS_OWNER: &str = "remote-endpoints";

/// How soon failed route changes are retried.
pub const ROUTE_RETRY: Duration = Duration::from_secs(2);
/// How often to look again for the node devices while routes cannot be programmed. Short: the
/// agent creates cilium_host about a second after this controller's first pass (once IPAM knows
/// the router IP), and no CiliumNode change follows to trigger another pass — with 30 s, native
/// routing across nodes stayed broken for the first half minute of every lab.
pub const DEVICE_RECHECK: Duration = Duration::from_secs(2);

/// The remote-nodes controller's route and node metrics (`<process>_remote_*`); the map rows are
/// counted by the map manager's `bpf_map_*` metrics.
#[derive(Clone, Debug, Default)]
pub struct RemoteMetrics {
    /// Remote nodes in the last pass (CiliumNodes other than ours).
    pub nodes: Gauge,
    /// Routes to remote pod CIDRs wanted in the last pass.
    pub routes_desired: Gauge,
    pub route_changes: Counter,
    pub route_failures: Counter,
    /// Desired routes left alone because another protocol's route covers the prefix.
    pub foreign_routes: Gauge,
}

impl RemoteMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("remote");
        r.register("nodes", "Remote nodes (CiliumNodes other than this node's)", self.nodes.clone());
        r.register("routes_desired", "Routes to remote pod CIDRs this node wants", self.routes_desired.clone());
        r.register(
            "route_changes",
            "Routes to remote pod CIDRs added, replaced or removed",
            self.route_changes.clone(),
        );
        r.register("route_failures", "Route changes (or listings) that failed", self.route_failures.clone());
        r.register(
            "foreign_routes",
            "Wanted pod CIDR routes covered by a route beeline did not create",
            self.foreign_routes.clone(),
        );
    }
}

/// The tables of the `remote` group.
#[derive(Clone)]
pub struct RemoteTables {
    pub tunnel: TableHandle<TunnelMap>,
    pub ipcache: TableHandle<Ipcache>,
}

/// The remote-nodes controller's state between passes.
pub struct RemoteNodesSync {
    owner: Owner,
    tables: RemoteTables,
    cfg: RemoteNodesConfig,
    routes: Box<dyn RouteTable>,
    metrics: RemoteMetrics,
    passes: u64,
    /// Why routes were last skipped, to log a change of reason once.
    routes_skipped: Option<String>,
}

impl RemoteNodesSync {
    pub fn new(
        owner: Owner,
        tables: RemoteTables,
        cfg: RemoteNodesConfig,
        routes: Box<dyn RouteTable>,
        metrics: RemoteMetrics,
    ) -> Self {
        Self { owner, tables, cfg, routes, metrics, passes: 0, routes_skipped: None }
    }

    /// One full pass over every CiliumNode; returns when to run again without a change (routes
    /// that failed or could not be programmed yet).
    pub fn sync(&mut self, nodes: &[CiliumNode], own_node: &str) -> Option<Duration> {
        let _span = tracing::info_span!("remote_nodes_sync", pass = self.passes, nodes = nodes.len()).entered();
        let desired = remote_nodes::desired(nodes, own_node, &self.cfg);
        for note in &desired.notes {
            tracing::info!("{note}");
        }
        // The group writes tunnel rows before the ipcache rows that use them.
        self.tables.tunnel.replace_owner(&self.owner, desired.tunnel.iter().map(|(k, v)| (*k, *v)));
        self.tables.ipcache.replace_owner(&self.owner, desired.ipcache.iter().map(|(k, v)| (*k, *v)));
        if self.passes == 0 {
            self.owner.initial_pass_done();
        }
        self.passes += 1;

        let report = routes::reconcile(self.routes.as_mut(), &desired.routes);
        let remote = nodes.iter().filter(|n| n.metadata.name.as_deref() != Some(own_node)).count();
        self.metrics.nodes.set(remote as i64);
        self.metrics.routes_desired.set(desired.routes.len() as i64);
        self.metrics.route_changes.inc_by((report.replaced + report.deleted) as u64);
        self.metrics.route_failures.inc_by(report.failed as u64);
        self.metrics.foreign_routes.set(report.foreign as i64);
        if report.skipped != self.routes_skipped {
            match &report.skipped {
                Some(reason) => tracing::info!(%reason, "not programming routes to remote pod CIDRs"),
                None => tracing::info!("programming routes to remote pod CIDRs"),
            }
            self.routes_skipped = report.skipped.clone();
        }
        if report.replaced + report.deleted > 0 {
            tracing::info!(replaced = report.replaced, deleted = report.deleted, "routes to remote pod CIDRs updated");
        }
        match (&report.skipped, report.failed) {
            (Some(_), _) => Some(DEVICE_RECHECK),
            (None, 0) => None,
            (None, _) => Some(ROUTE_RETRY),
        }
    }
}

/// Runs the remote-nodes controller until `shutdown`.
pub async fn run_nodes(
    client: Client,
    node_name: String,
    mut sync: RemoteNodesSync,
    debounce: Duration,
    shutdown: CancellationToken,
) -> Result<(), WatchError> {
    let mut watches = Watches::new(NODES_OWNER);
    let nodes = watches.add("CiliumNode", Api::<CiliumNode>::all(client), watcher::Config::default());
    watches.run(debounce, shutdown, || std::future::ready(sync.sync(&snapshot(&nodes), &node_name))).await
}

/// The remote-endpoints controller's state between passes.
pub struct RemoteEndpointsSync {
    owner: Owner,
    ipcache: TableHandle<Ipcache>,
    passes: u64,
}

impl RemoteEndpointsSync {
    pub fn new(owner: Owner, ipcache: TableHandle<Ipcache>) -> Self {
        Self { owner, ipcache, passes: 0 }
    }

    /// One full pass over every CiliumEndpoint. `own_node` (this node's CiliumNode, when it exists)
    /// tells local endpoints from remote ones.
    pub fn sync(&mut self, endpoints: &[CiliumEndpoint], own_node: Option<&CiliumNode>) {
        let _span =
            tracing::info_span!("remote_endpoints_sync", pass = self.passes, endpoints = endpoints.len()).entered();
        let local: BTreeSet<IpAddr> =
            own_node.iter().flat_map(|n| &n.spec.addresses).filter_map(|a| a.ip.parse().ok()).collect();
        let desired = remote_endpoints::desired(endpoints, &local);
        for note in &desired.notes {
            tracing::debug!("{note}");
        }
        self.ipcache.replace_owner(&self.owner, desired.ipcache);
        if self.passes == 0 {
            self.owner.initial_pass_done();
        }
        self.passes += 1;
    }
}

/// Runs the remote-endpoints controller until `shutdown`.
pub async fn run_endpoints(
    client: Client,
    node_name: String,
    mut sync: RemoteEndpointsSync,
    debounce: Duration,
    shutdown: CancellationToken,
) -> Result<(), WatchError> {
    let mut watches = Watches::new(ENDPOINTS_OWNER);
    let endpoints =
        watches.add("CiliumEndpoint", Api::<CiliumEndpoint>::all(client.clone()), watcher::Config::default());
    let own = watcher::Config::default().fields(&format!("metadata.name={node_name}"));
    let nodes = watches.add("CiliumNode", Api::<CiliumNode>::all(client), own);
    watches
        .run(debounce, shutdown, || {
            let own = snapshot(&nodes).into_iter().next();
            sync.sync(&snapshot(&endpoints), own.as_ref());
            std::future::ready(None)
        })
        .await
}

#[cfg(test)]
#[path = "remote_tests.rs"]
mod tests;
