//! `/healthz`, `/readyz` and `/metrics` on a local TCP address.
//!
//! `/healthz` answers while the process runs its event loop (the kubelet restarts it otherwise).
//! `/readyz` answers 200 only when every registered readiness check passes, and lists the failing
//! ones otherwise (`?verbose` lists all), like the Kubernetes API server's own `/readyz`.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex, RwLock},
};

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Router};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// Named readiness checks. A component registers its check as not ready and flips it when ready.
#[derive(Clone, Default)]
pub struct Health {
    checks: Arc<Mutex<BTreeMap<String, Result<(), String>>>>,
}

impl Health {
    pub fn register(&self, name: &str) {
        self.set(name, Err("starting".into()));
    }

    pub fn set(&self, name: &str, state: Result<(), String>) {
        self.checks.lock().expect("health lock").insert(name.to_string(), state);
    }

    pub fn ready(&self, name: &str) {
        self.set(name, Ok(()));
    }

    pub fn is_ready(&self) -> bool {
        self.checks.lock().expect("health lock").values().all(Result::is_ok)
    }

    /// `(name, ok, reason)` for each check, sorted by name.
    pub fn report(&self) -> Vec<(String, bool, String)> {
        self.checks
            .lock()
            .expect("health lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.is_ok(), v.clone().err().unwrap_or_default()))
            .collect()
    }
}

/// What a process exposes to its probes and to Prometheus.
#[derive(Clone)]
pub struct Telemetry {
    pub health: Health,
    pub registry: Arc<RwLock<Registry>>,
}

impl Telemetry {
    /// Also carries the process's controller metrics ([`super::controllers::global`]).
    pub fn new(prefix: &str) -> Self {
        let mut registry = Registry::with_prefix(prefix);
        super::controllers::global().register(&mut registry);
        Self { health: Health::default(), registry: Arc::new(RwLock::new(registry)) }
    }
}

pub fn router(telemetry: Telemetry) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(telemetry)
}

async fn readyz(State(t): State<Telemetry>, query: axum::extract::RawQuery) -> impl IntoResponse {
    let verbose = query.0.is_some_and(|q| q.split('&').any(|p| p == "verbose"));
    let (ready, body) = readyz_body(&t.health.report(), verbose);
    (if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, body)
}

/// Whether every check passed, and the `/readyz` text: each failing check with its reason (each
/// passing one too when `verbose`), then the verdict.
fn readyz_body(report: &[(String, bool, String)], verbose: bool) -> (bool, String) {
    let mut body = String::new();
    for (name, ok, reason) in report {
        if *ok && verbose {
            body.push_str(&format!("[+]{name} ok\n"));
        } else if !ok {
            body.push_str(&format!("[-]{name} failed: {reason}\n"));
        }
    }
    let ready = report.iter().all(|(_, ok, _)| *ok);
    body.push_str(if ready { "ok\n" } else { "readyz check failed\n" });
    (ready, body)
}

async fn metrics(State(t): State<Telemetry>) -> impl IntoResponse {
    let mut out = String::new();
    let registry = t.registry.read().expect("registry lock");
    match prometheus_client::encoding::text::encode(&mut out, &registry) {
        Ok(()) => (
            StatusCode::OK,
            [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
            out,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Binds `addr` now (so a port conflict fails the start) and serves until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    telemetry: Telemetry,
    shutdown: CancellationToken,
) -> std::io::Result<impl std::future::Future<Output = std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving /healthz, /readyz and /metrics");
    Ok(async move {
        axum::serve(listener, router(telemetry)).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readyz_names_each_failing_check_and_its_reason() {
        let check = |name: &str, ok: bool, reason: &str| (name.to_string(), ok, reason.to_string());
        let report = [check("apiserver", true, ""), check("bpf-maps", false, "initial sync waits for policy")];
        let cases = [
            (&report[..1], false, true, "ok\n"),
            (&report[..1], true, true, "[+]apiserver ok\nok\n"),
            (&report[..], false, false, "[-]bpf-maps failed: initial sync waits for policy\nreadyz check failed\n"),
            (
                &report[..],
                true,
                false,
                "[+]apiserver ok\n[-]bpf-maps failed: initial sync waits for policy\nreadyz check failed\n",
            ),
        ];
        for (report, verbose, ready, body) in cases {
            assert_eq!(readyz_body(report, verbose), (ready, body.to_string()), "{report:?} verbose={verbose}");
        }
    }
}
