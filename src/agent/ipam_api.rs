//! `/v1/ipam` on the agent API: pod address allocation for the CNI plugin, listing for the CLI.
//!
//! - `POST /v1/ipam` with an [`AllocateRequest`] → [`AllocateResponse`] (idempotent per attachment);
//! - `DELETE /v1/ipam/{containerID}/{ifname}` → [`ReleaseResponse`] (an unknown attachment is success);
//! - `GET /v1/ipam` → [`IpamListing`].
//!
//! Errors are an [`ApiError`] body; `retryable: true` (HTTP 503) means "try again later", which the
//! CNI plugin reports as CNI error 11 so the runtime retries instead of failing the pod.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::api::ApiState;
use tracing::Instrument;

use crate::controllers::agent::ipam_state::{AllocatedIp, IpamListing, NodeIpamError};
use crate::controllers::agent::multi_pool::AllocateError;
use crate::controllers::agent::pod_ipam::PodIpam;
use crate::ipam::{Family, IpamError, Owner};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllocateRequest {
    pub namespace: String,
    pub pod: String,
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
    /// One family (`IPv4` or `IPv6`); absent: every family enabled on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<Family>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocateResponse {
    pub ips: Vec<AllocatedIp>,
    /// The MTU the pod's interface gets (the node's, minus the tunnel overhead in tunnel mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseResponse {
    pub released: Vec<IpAddr>,
}

/// The body of every `/v1/ipam` error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// `not-ready`, `exhausted`, `invalid` or `internal`.
    pub code: String,
    pub message: String,
    pub retryable: bool,
}

type ApiResult<T> = Result<Json<T>, (StatusCode, Json<ApiError>)>;

pub(super) fn error(status: StatusCode, code: &str, message: String, retryable: bool) -> (StatusCode, Json<ApiError>) {
    (status, Json(ApiError { code: code.into(), message, retryable }))
}

pub(super) fn map_error(e: NodeIpamError) -> (StatusCode, Json<ApiError>) {
    let message = e.to_string();
    match e {
        NodeIpamError::NotReady(_) => error(StatusCode::SERVICE_UNAVAILABLE, "not-ready", message, true),
        NodeIpamError::Persist { .. } => error(StatusCode::SERVICE_UNAVAILABLE, "internal", message, true),
        NodeIpamError::Ipam(IpamError::Exhausted { .. }) => error(StatusCode::CONFLICT, "exhausted", message, false),
        NodeIpamError::FamilyDisabled(_) => error(StatusCode::BAD_REQUEST, "invalid", message, false),
        NodeIpamError::Ipam(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", message, false),
    }
}

pub fn routes() -> Router<Arc<ApiState>> {
    Router::new().route("/v1/ipam", get(list).post(allocate)).route("/v1/ipam/{container_id}/{ifname}", delete(release))
}

async fn allocate(State(s): State<Arc<ApiState>>, Json(req): Json<AllocateRequest>) -> ApiResult<AllocateResponse> {
    if req.container_id.is_empty() || req.ifname.is_empty() {
        return Err(error(StatusCode::BAD_REQUEST, "invalid", "containerID and ifname are required".into(), false));
    }
    let owner = Owner::endpoint(&req.namespace, &req.pod, &req.container_id, &req.ifname);
    let span = tracing::info_span!("ipam_allocate", pod = %format!("{}/{}", req.namespace, req.pod), container = %req.container_id);
    let result = match (&s.multi_pool, &s.crd) {
        (Some(mp), _) => mp.allocate(&owner, &req.namespace, &req.pod, req.family).instrument(span.clone()).await,
        (None, Some(crd)) => crd.allocate(&owner, req.family).map_err(AllocateError::from),
        (None, None) => s.ipam.allocate(&owner, req.family).map_err(AllocateError::from),
    };
    let _enter = span.enter();
    match result {
        Ok(ips) => {
            tracing::info!(ips = ?ips.iter().map(|i| i.ip).collect::<Vec<_>>(), "allocated");
            Ok(Json(AllocateResponse { ips, mtu: Some(pod_mtu(&s.config)) }))
        }
        Err(e) => {
            tracing::warn!(error = %e, "allocation refused");
            Err(match e {
                AllocateError::Ipam(e) => map_error(e),
                AllocateError::Choice(e) => error(StatusCode::BAD_REQUEST, "invalid", e.to_string(), false),
                AllocateError::Lookup { .. } => {
                    error(StatusCode::SERVICE_UNAVAILABLE, "not-ready", e.to_string(), true)
                }
            })
        }
    }
}

/// The pod MTU: `mtu` from the configuration (0: the usual 1500-byte underlay) minus the
/// encapsulation overhead in tunnel mode.
pub fn pod_mtu(config: &crate::config::Config) -> u32 {
    let underlay = if config.mtu == 0 { crate::cni::plugin::DEFAULT_MTU } else { config.mtu };
    let tunnel = (config.routing_mode == crate::config::RoutingMode::Tunnel).then_some(match config.tunnel_protocol {
        crate::config::TunnelProtocol::Geneve => crate::datapath::devices::TunnelProtocol::Geneve,
        crate::config::TunnelProtocol::Vxlan => crate::datapath::devices::TunnelProtocol::Vxlan,
    });
    crate::datapath::devices::pod_mtu(underlay, tunnel)
}

async fn release(
    State(s): State<Arc<ApiState>>,
    Path((container_id, ifname)): Path<(String, String)>,
) -> ApiResult<ReleaseResponse> {
    // An address still used by a registered endpoint stays: DEL removes the endpoint first.
    if s.endpoints.holds(&container_id, &ifname) {
        return Err(error(
            StatusCode::CONFLICT,
            "in-use",
            format!("container {container_id} ({ifname}) is a registered endpoint; remove the endpoint first"),
            false,
        ));
    }
    let mut released = s.ipam.release(&container_id, &ifname).map_err(map_error)?;
    if let Some(mp) = &s.multi_pool {
        released.extend(mp.ipam.release(&container_id, &ifname).map_err(map_error)?);
    }
    if let Some(crd) = &s.crd {
        released.extend(PodIpam::release(&**crd, &container_id, &ifname).map_err(map_error)?);
    }
    if !released.is_empty() {
        tracing::info!(%container_id, %ifname, ?released, "released");
    }
    Ok(Json(ReleaseResponse { released }))
}

async fn list(State(s): State<Arc<ApiState>>) -> Json<IpamListing> {
    Json(listing_of(&s))
}

/// The listing of whichever allocator serves this node.
pub fn listing_of(s: &ApiState) -> IpamListing {
    match (&s.multi_pool, &s.crd) {
        (Some(mp), _) => mp.ipam.listing(),
        (None, Some(crd)) => PodIpam::listing(&**crd),
        (None, None) => s.ipam.listing(),
    }
}

#[cfg(test)]
#[path = "ipam_api_tests.rs"]
mod tests;
