//! An in-memory Kubernetes API server: the test double behind beeline's controller tests and the
//! control plane of the lab. Not a product feature; the product never depends on it.
//!
//! Two ways in: [`ApiServer::client`] (a `kube::Client` over the in-process `tower::Service`) and
//! [`ApiServer::serve`] (plain HTTP on an already-bound listener, for kubectl and other processes).

pub mod discovery;
pub mod errors;
pub mod http;
pub mod managed;
pub mod patch;
pub mod printers;
pub mod record;
pub mod resources;
pub mod selectors;
pub mod service_ips;
pub mod storage;
pub mod validation;
pub mod watch;

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::record::{Access, Recorder};
use crate::storage::State;
use crate::validation::Validator;

/// Tunables; the defaults suit the lab.
#[derive(Clone)]
pub struct ServerConfig {
    /// How many events the log keeps for watch resumption; older resourceVersions get 410 Gone.
    pub event_log_capacity: usize,
    /// How often watches that allow bookmarks get one.
    pub bookmark_interval: Duration,
    /// Custom-resource validation against the CRD schema.
    pub validator: Validator,
    /// ClusterIP ranges, primary family first (kube-apiserver's `--service-cluster-ip-range`).
    pub service_cidrs: service_ips::ServiceCidrs,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            event_log_capacity: 10_000,
            bookmark_interval: Duration::from_secs(10),
            validator: validation::default_validator(),
            service_cidrs: service_ips::ServiceCidrs::default(),
        }
    }
}

struct Inner {
    state: Mutex<State>,
    config: ServerConfig,
    recorder: Recorder,
}

/// A handle to one in-memory API server; clones share it.
#[derive(Clone)]
pub struct ApiServer {
    inner: Arc<Inner>,
}

impl Default for ApiServer {
    fn default() -> Self {
        Self::new(ServerConfig::default())
    }
}

impl ApiServer {
    pub fn new(config: ServerConfig) -> Self {
        let (mut state, _rx) = State::new(config.event_log_capacity, config.validator.clone());
        state.set_service_cidrs(config.service_cidrs.clone());
        ApiServer { inner: Arc::new(Inner { state: Mutex::new(state), config, recorder: Recorder::default() }) }
    }

    /// The store, locked. A poisoned lock still holds consistent data (writes are all-or-nothing
    /// before they touch the store), so it is recovered rather than propagated.
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The router, usable as a `tower::Service` for any request body.
    pub fn router(&self) -> axum::Router {
        http::router(self.clone())
    }

    /// A `kube::Client` talking to this server in-process, with default namespace `default`.
    pub fn client(&self) -> kube::Client {
        kube::Client::new(self.router(), "default")
    }

    /// A client whose requests carry `X-Beeline-Component: <component>` (for the access record).
    pub fn client_as(&self, component: &str) -> kube::Client {
        let value = ::http::HeaderValue::from_str(component).expect("component names are header-safe");
        let service = tower::ServiceBuilder::new()
            .map_request(move |mut req: ::http::Request<kube::client::Body>| {
                req.headers_mut().insert("x-beeline-component", value.clone());
                req
            })
            .service(self.router());
        kube::Client::new(service, "default")
    }

    /// Serves plain HTTP on an already-bound listener (possibly bound inside another network
    /// namespace) until the task is dropped or the listener fails.
    pub async fn serve(&self, listener: std::net::TcpListener) -> std::io::Result<()> {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        axum::serve(listener, self.router()).await
    }

    /// Spawns [`ApiServer::serve`] on the current runtime.
    pub fn spawn(&self, listener: std::net::TcpListener) -> tokio::task::JoinHandle<std::io::Result<()>> {
        let server = self.clone();
        tokio::spawn(async move { server.serve(listener).await })
    }

    /// Every API access so far.
    pub fn accesses(&self) -> Vec<Access> {
        self.inner.recorder.all()
    }

    pub fn recorder(&self) -> &Recorder {
        &self.inner.recorder
    }

    /// Writes the whole store to a file (JSON).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let snap = self.state().snapshot();
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&snap)?)?;
        std::fs::rename(tmp, path)
    }

    /// Replaces the store with a snapshot written by [`ApiServer::save`]. Watches cannot resume
    /// across a restore (older resourceVersions get 410 Gone), as after an etcd restore.
    pub fn load(&self, path: &Path) -> std::io::Result<()> {
        let snap: serde_json::Value = serde_json::from_slice(&std::fs::read(path)?)?;
        self.state().restore(&snap).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
}
