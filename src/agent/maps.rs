//! The agent's one map manager: every BPF map group (LB, remote, policy) syncs through it, so there is one
//! prune gate over all row owners, one set of `<process>_bpf_map_*` metrics, and one
//! `datapath-maps` readiness check.

use std::time::Duration;

use crate::datapath::manager::{ManagerOptions, MapManager, Owner};
use crate::runtime::health::{Health, Telemetry};
use crate::runtime::runner::Runner;

/// The readiness check: every owner has made its first full pass and nothing is pending.
pub const CHECK: &str = "datapath-maps";

/// Owner names of the agent's controllers.
pub const SERVICES_OWNER: &str = "services";
pub const POLICY_OWNER: &str = "policy";

/// The manager with its metrics registered. Register every owner (see [`Owners`]) before any
/// group's writer starts: an owner registered after the gate opened is not waited for.
pub fn manager(telemetry: &Telemetry) -> MapManager {
    let manager = MapManager::new(ManagerOptions::default());
    manager.register_metrics(&mut telemetry.registry.write().expect("registry lock"));
    manager
}

/// The row owners of the agent's controllers, registered together.
pub struct Owners {
    pub services: Owner,
    pub remote_nodes: Owner,
    pub remote_endpoints: Owner,
    pub policy: Owner,
}

impl Owners {
    pub fn register(manager: &MapManager) -> Self {
        use crate::controllers::agent::remote::{ENDPOINTS_OWNER, NODES_OWNER};
        Self {
            services: manager.register_owner(SERVICES_OWNER),
            remote_nodes: manager.register_owner(NODES_OWNER),
            remote_endpoints: manager.register_owner(ENDPOINTS_OWNER),
            policy: manager.register_owner(POLICY_OWNER),
        }
    }
}

/// Sets the `datapath-maps` check now and keeps it current.
pub fn start_readiness(manager: &MapManager, telemetry: &Telemetry, runner: &mut Runner) {
    // Set before any task runs, so `/readyz` never shows a placeholder.
    telemetry.health.set(CHECK, readiness(manager));
    let token = runner.shutdown_token();
    runner.spawn("datapath-maps-readiness", report_readiness(manager.clone(), telemetry.health.clone(), token));
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
