//! Keeps the `kubernetes` readiness check in step with the API server's reachability.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{health::Health, runner::TaskResult};

pub const CHECK: &str = "kubernetes";

/// Polls `/version`: ready while it answers, not ready (with the error) while it does not.
/// A vanished API server makes the process unready, never kills it: the datapath keeps working.
pub async fn watch_apiserver(client: kube::Client, health: Health, shutdown: CancellationToken) -> TaskResult {
    let mut delay = Duration::from_millis(200);
    let mut was_ok = None;
    loop {
        let result = tokio::select! {
            r = client.apiserver_version() => r,
            _ = shutdown.cancelled() => return Ok(()),
        };
        match result {
            Ok(info) => {
                if was_ok != Some(true) {
                    tracing::info!(version = %info.git_version, "connected to the Kubernetes API server");
                }
                health.ready(CHECK);
                was_ok = Some(true);
                delay = Duration::from_secs(10);
            }
            Err(e) => {
                if was_ok != Some(false) {
                    tracing::warn!(error = %e, "Kubernetes API server unreachable");
                }
                health.set(CHECK, Err(format!("API server unreachable: {e}")));
                was_ok = Some(false);
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}
