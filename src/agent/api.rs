//! The agent's local API: HTTP/JSON over a unix socket (mode 0600), versioned under `/v1`.
//! The CNI plugin and the CLI are its clients.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use axum::{extract::State, routing::get, Json, Router};
use tokio_util::sync::CancellationToken;

use crate::runtime::health::Health;

/// `GET /v1/status`: what `beeline status` prints.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct StatusResponse {
    pub version: String,
    pub node_name: String,
    pub ready: bool,
    pub checks: Vec<CheckStatus>,
    pub routing_mode: String,
    pub tunnel_protocol: String,
    pub ipam: String,
    pub kube_proxy_replacement: bool,
    /// One line per family: `IPv4: 6/254 allocated from 10.0.2.0/24`, or why allocation waits.
    #[serde(default)]
    pub ipam_status: Vec<String>,
    /// The load balancer's settings (`KubeProxyReplacement Details` of `cilium status --verbose`).
    #[serde(default)]
    pub kube_proxy_replacement_details: Option<KprDetails>,
    #[serde(default)]
    pub versions: Versions,
    /// This node's endpoints (pods attached by the CNI plugin), by ID.
    #[serde(default)]
    pub endpoints: Vec<EndpointSummary>,
    /// Every controller of the agent that ran a pass (`Controller Status` of `cilium status`).
    #[serde(default)]
    pub controllers: Vec<crate::runtime::controllers::ControllerStatus>,
    /// Entries / max of every hash-like pinned map (`BPF Maps` of `cilium status`).
    #[serde(default)]
    pub bpf_maps: Vec<crate::datapath::pressure::MapPressure>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Versions {
    pub beeline: String,
    /// `uname -r`.
    pub kernel: String,
    /// The API server's `gitVersion`; empty when it could not be asked.
    pub kubernetes: String,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EndpointSummary {
    pub id: u16,
    /// `namespace/pod`.
    pub pod: String,
    pub ips: Vec<std::net::IpAddr>,
    pub identity: u32,
    pub state: String,
}

impl From<&super::endpoint_core::Endpoint> for EndpointSummary {
    fn from(e: &super::endpoint_core::Endpoint) -> Self {
        Self {
            id: e.id,
            pod: format!("{}/{}", e.spec.namespace, e.spec.pod),
            ips: e.spec.ips.clone(),
            identity: e.identity,
            state: e.state.clone(),
        }
    }
}

/// The running kernel's release (`uname -r`), empty if unreadable.
fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KprDetails {
    /// How NodePort/LoadBalancer traffic reaches remote backends (`SNAT`; DSR is not implemented).
    pub mode: String,
    /// `Random` or `Maglev` (the node default; Services may override it by annotation).
    pub backend_selection: String,
    pub session_affinity: String,
    pub protocols: String,
    /// (frontend kind, `Enabled` / `Disabled` with details), in Cilium's order.
    pub services: Vec<(String, String)>,
}

/// The LB settings `config` runs the datapath with. Without kube-proxy replacement only ClusterIPs
/// and externalIPs are programmed (the services core skips the other kinds).
pub fn kpr_details(config: &crate::config::Config) -> KprDetails {
    let kpr = config.kube_proxy_replacement;
    let on = |enabled: bool| if enabled { "Enabled" } else { "Disabled" }.to_string();
    let (lo, hi) = config.node_port_range;
    let node_port = if kpr { format!("Enabled (Range: {lo}-{hi})") } else { on(false) };
    KprDetails {
        mode: "SNAT".into(),
        backend_selection: match config.bpf_lb_algorithm {
            crate::config::LbAlgorithm::Random => "Random".into(),
            crate::config::LbAlgorithm::Maglev => {
                format!("Maglev (Table Size: {})", crate::services::frontends::DEFAULT_MAGLEV_TABLE_SIZE)
            }
        },
        session_affinity: on(true),
        protocols: "TCP, UDP".into(),
        services: vec![
            ("ClusterIP".into(), on(true)),
            ("NodePort".into(), node_port),
            ("LoadBalancer".into(), on(kpr)),
            ("externalIPs".into(), on(true)),
            ("HostPort".into(), on(kpr)),
        ],
    }
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CheckStatus {
    pub name: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

pub struct ApiState {
    pub node_name: String,
    pub config: crate::config::Config,
    pub health: Health,
    pub ipam: Arc<crate::controllers::agent::ipam_state::NodeIpam>,
    /// What the policy controller's last pass computed (empty until it runs).
    pub policy: crate::controllers::agent::policy_watch::SharedPolicyView,
    pub endpoints: Arc<super::endpoints::EndpointManager>,
    /// Identities and CiliumEndpoints; `None` runs endpoints without the API server (identity `init`).
    pub endpoint_kube: Option<Arc<super::endpoint_kube::EndpointKube>>,
    /// Set in `ipam: multi-pool`: `/v1/ipam` allocates from the pod's pool instead of `ipam`.
    pub multi_pool: Option<crate::controllers::agent::multi_pool::MultiPoolHandle>,
    /// Set in `ipam: crd`: `/v1/ipam` hands out the addresses listed in `CiliumNode.spec.ipam.pool`.
    pub crd: Option<Arc<crate::controllers::agent::crd_ipam::CrdIpam>>,
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .merge(super::ipam_api::routes())
        .merge(super::policy_api::routes())
        .merge(super::endpoint_api::routes())
        .with_state(state)
}

async fn status(State(s): State<Arc<ApiState>>) -> Json<StatusResponse> {
    let kubernetes = match &s.endpoint_kube {
        // Bounded: an unreachable API server must not hold `beeline status` up.
        Some(k) => match tokio::time::timeout(Duration::from_secs(2), k.client().apiserver_version()).await {
            Ok(Ok(info)) => info.git_version,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "API server version unavailable for status");
                String::new()
            }
            Err(e) => {
                tracing::debug!(error = %e, "API server version unavailable for status");
                String::new()
            }
        },
        None => String::new(),
    };
    let mut endpoints: Vec<EndpointSummary> = s.endpoints.list().iter().map(EndpointSummary::from).collect();
    endpoints.sort_by_key(|e| e.id);
    let pin_dir = s.config.pin_dir();
    let bpf_maps = match tokio::task::spawn_blocking(move || crate::datapath::pressure::read_all(&pin_dir)).await {
        Ok(Ok(maps)) => maps,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "map pressure unavailable for status");
            Vec::new()
        }
        Err(e) => {
            tracing::warn!(error = %e, "map pressure task failed");
            Vec::new()
        }
    };
    Json(StatusResponse {
        version: env!("CARGO_PKG_VERSION").to_string(),
        node_name: s.node_name.clone(),
        ready: s.health.is_ready(),
        checks: s.health.report().into_iter().map(|(name, ok, message)| CheckStatus { name, ok, message }).collect(),
        routing_mode: kebab(&s.config.routing_mode),
        tunnel_protocol: kebab(&s.config.tunnel_protocol),
        ipam: kebab(&s.config.ipam),
        kube_proxy_replacement: s.config.kube_proxy_replacement,
        ipam_status: ipam_status_lines(&super::ipam_api::listing_of(&s)),
        kube_proxy_replacement_details: Some(kpr_details(&s.config)),
        versions: Versions { beeline: env!("CARGO_PKG_VERSION").to_string(), kernel: kernel_release(), kubernetes },
        endpoints,
        controllers: crate::runtime::controllers::global().snapshot(),
        bpf_maps,
    })
}

fn ipam_status_lines(listing: &crate::controllers::agent::ipam_state::IpamListing) -> Vec<String> {
    if listing.ready {
        listing.status.clone()
    } else {
        vec![format!("waiting: {}", listing.waiting_for)]
    }
}

/// The kebab-case name serde gives a config enum (`cluster-pool`, `vxlan`, ...).
fn kebab<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on the agent socket {path}: {source}")]
pub struct BindError {
    path: PathBuf,
    source: std::io::Error,
}

/// Binds the socket now (replacing a stale one from a previous run) and serves until `shutdown`;
/// the socket file is removed on the way out.
pub fn serve(
    path: &Path,
    state: Arc<ApiState>,
    shutdown: CancellationToken,
) -> Result<impl std::future::Future<Output = std::io::Result<()>>, BindError> {
    serve_with(path, state, Router::new(), shutdown)
}

/// [`serve`] with more routes that carry their own state (the flow API).
pub fn serve_with(
    path: &Path,
    state: Arc<ApiState>,
    extra: Router,
    shutdown: CancellationToken,
) -> Result<impl std::future::Future<Output = std::io::Result<()>>, BindError> {
    let err = |source| BindError { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => tracing::debug!(path = %path.display(), "removed a stale agent socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    tracing::info!(path = %path.display(), "agent API listening");
    let path = path.to_path_buf();
    Ok(async move {
        let result = axum::serve(listener, router(state).merge(extra))
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        let _ = std::fs::remove_file(&path);
        result
    })
}
