//! The agent's remote-datapath wiring: the tunnel map and the ipcache in the map manager's `remote`
//! group (over the pinned kernel maps the eBPF programs read), its writer, and the remote-nodes and
//! remote-endpoints controllers that fill it (the former also reconciles the kernel routes to
//! remote pod CIDRs in the agent's network namespace).

use std::path::Path;
use std::time::Duration;

use crate::config::Config;
use crate::controllers::agent::remote::{self, RemoteEndpointsSync, RemoteMetrics, RemoteNodesSync, RemoteTables};
use crate::controllers::agent::remote_nodes::RemoteNodesConfig;
use crate::datapath::manager::backend::BackendError;
use crate::datapath::manager::kernel::{KernelLpmMap, KernelMap};
use crate::datapath::manager::maps::{Ipcache, TunnelMap, REMOTE_GROUP};
use crate::datapath::manager::writer::WriterOptions;
use crate::datapath::manager::{MapManager, Owner, TableHandle};
use crate::datapath::routes::IpRouteTable;
use crate::runtime::health::Telemetry;
use crate::runtime::runner::Runner;

/// How long the remote controllers batch changes into one pass.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// Opens (or creates) the remote maps under `pin_dir` and adds the writer and both controllers to
/// `runner`.
#[allow(clippy::too_many_arguments)]
pub fn start(
    config: &Config,
    manager: &MapManager,
    nodes_owner: Owner,
    endpoints_owner: Owner,
    pin_dir: &Path,
    node_name: &str,
    client: kube::Client,
    telemetry: &Telemetry,
    runner: &mut Runner,
) -> Result<TableHandle<Ipcache>, BackendError> {
    let (name, order) = REMOTE_GROUP;
    let mut group = manager.group(name, order);
    // Tunnel rows before the ipcache rows that send traffic into the tunnel.
    let tables = RemoteTables {
        tunnel: group.add::<TunnelMap>(KernelMap::open_or_create::<TunnelMap>(pin_dir)?)?,
        ipcache: group.add::<Ipcache>(KernelLpmMap::open_or_create::<Ipcache>(pin_dir)?)?,
    };
    let writer = group.build();
    let cfg = RemoteNodesConfig::from_config(config);
    tracing::info!(tunnel = ?cfg.tunnel, auto_direct_node_routes = cfg.auto_direct_node_routes, pod_mtu = cfg.pod_mtu, "remote datapath");
    let metrics = RemoteMetrics::default();
    metrics.register(&mut telemetry.registry.write().expect("registry lock"));
    let nodes = RemoteNodesSync::new(nodes_owner, tables.clone(), cfg, Box::new(IpRouteTable), metrics);
    let ipcache = tables.ipcache.clone();
    let endpoints = RemoteEndpointsSync::new(endpoints_owner, tables.ipcache);

    let token = runner.shutdown_token();
    let t = token.clone();
    runner.spawn("remote-map-writer", async move {
        writer.run(WriterOptions::default(), t).await;
        Ok(())
    });
    let controller = remote::run_nodes(client.clone(), node_name.to_string(), nodes, DEBOUNCE, token.clone());
    runner.spawn("remote-nodes", async move { Ok(controller.await?) });
    let controller = remote::run_endpoints(client, node_name.to_string(), endpoints, DEBOUNCE, token);
    runner.spawn("remote-endpoints", async move { Ok(controller.await?) });
    Ok(ipcache)
}
