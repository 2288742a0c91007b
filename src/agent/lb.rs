//! The agent's load-balancer wiring: the map manager over the pinned kernel LB maps, its writer, its
//! metrics and its `datapath-maps` readiness check, and the services controller that fills it.

use std::path::Path;
use std::time::Duration;

use beeline_common::lb::{LbConfig, LB_ALG_MAGLEV, LB_ALG_RANDOM};

use crate::config::{Config, LbAlgorithm};
use crate::controllers::agent::services::{LbTables, ServicesSync};
use crate::controllers::agent::services_watch;
use crate::datapath::lb_tables;
use crate::datapath::manager::backend::BackendError;
use crate::datapath::manager::kernel::KernelMap;
use crate::datapath::manager::maps::{self, Lb4Backends, Lb4Maglev, Lb4RevNat, Lb4Services, LbAffinityMatch};
use crate::datapath::manager::writer::WriterOptions;
use crate::datapath::manager::{ManagerOptions, MapManager};
use crate::runtime::health::{Health, Telemetry};
use crate::runtime::runner::Runner;
use crate::services::ServicesConfig;

/// The readiness check: every owner has made its first full pass and nothing is pending.
pub const CHECK: &str = "datapath-maps";
/// How long the services controller batches changes into one pass.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// Opens (or creates) the LB maps under `pin_dir` and adds the writer, the services controller and
/// the readiness poller to `runner`.
pub fn start(
    config: &Config,
    pin_dir: &Path,
    node_name: &str,
    client: kube::Client,
    telemetry: &Telemetry,
    runner: &mut Runner,
) -> Result<MapManager, BackendError> {
    let manager = MapManager::new(ManagerOptions::default());
    manager.register_metrics(&mut telemetry.registry.write().expect("registry lock"));
    let owner = manager.register_owner("services");
    let (name, order) = maps::LB_GROUP;
    let mut group = manager.group(name, order);
    // Dependency order: what the service slots refer to first.
    let tables = LbTables {
        backends: group.add::<Lb4Backends>(KernelMap::open_or_create::<Lb4Backends>(pin_dir)?)?,
        rev_nat: group.add::<Lb4RevNat>(KernelMap::open_or_create::<Lb4RevNat>(pin_dir)?)?,
        services: group.add::<Lb4Services>(KernelMap::open_or_create::<Lb4Services>(pin_dir)?)?,
        affinity_match: group.add::<LbAffinityMatch>(KernelMap::open_or_create::<LbAffinityMatch>(pin_dir)?)?,
        maglev: group.add::<Lb4Maglev>(KernelMap::open_or_create::<Lb4Maglev>(pin_dir)?)?,
    };
    let writer = group.build();
    let services_config = ServicesConfig::from_config(config, node_name);
    write_lb_config(pin_dir, &services_config);
    let sync = ServicesSync::new(owner, tables, services_config);

    let token = runner.shutdown_token();
    let t = token.clone();
    runner.spawn("lb-map-writer", async move {
        writer.run(WriterOptions::default(), t).await;
        Ok(())
    });
    let controller = services_watch::run(client, node_name.to_string(), sync, DEBOUNCE, token.clone());
    runner.spawn("services", async move { Ok(controller.await?) });
    // Set before any task runs, so `/readyz` never shows a placeholder.
    telemetry.health.set(CHECK, readiness(&manager));
    runner.spawn("datapath-maps-readiness", report_readiness(manager.clone(), telemetry.health.clone(), token));
    Ok(manager)
}

/// Tells the datapath the node's default backend selection and Maglev table size. Without the
/// loaded datapath (no pinned config map) there is nothing to tell; a warning says so.
fn write_lb_config(pin_dir: &Path, cfg: &ServicesConfig) {
    let value = LbConfig {
        algorithm: match cfg.lb_algorithm {
            LbAlgorithm::Random => LB_ALG_RANDOM,
            LbAlgorithm::Maglev => LB_ALG_MAGLEV,
        },
        maglev_table_size: cfg.maglev_table_size,
    };
    if let Err(error) = lb_tables::write_lb_config(pin_dir, &value) {
        tracing::warn!(%error, "cannot write the datapath's LB configuration");
    }
}

/// Mirrors [`MapManager::status`] into the `datapath-maps` readiness check once a second.
async fn report_readiness(
    manager: MapManager,
    health: Health,
    shutdown: tokio_util::sync::CancellationToken,
) -> crate::runtime::runner::TaskResult {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        health.set(CHECK, readiness(&manager));
    }
}

/// The check's state, with the reason when not ready.
fn readiness(manager: &MapManager) -> Result<(), String> {
    let status = manager.status();
    if status.ready {
        return Ok(());
    }
    if !status.waiting_for.is_empty() {
        return Err(format!("waiting for the first full pass of: {}", status.waiting_for.join(", ")));
    }
    let pending: Vec<String> = status
        .tables
        .iter()
        .filter(|t| t.counts.pending > 0)
        .map(|t| match &t.counts.last_error {
            Some(e) => format!("{} ({} pending, last error: {e})", t.map, t.counts.pending),
            None => format!("{} ({} pending)", t.map, t.counts.pending),
        })
        .collect();
    Err(format!("map writes pending: {}", pending.join(", ")))
}
