//! `/v1/endpoint` on the agent API: the CNI plugin registers a pod's endpoint once its network is
//! set up, and removes it on DEL.
//!
//! - `PUT /v1/endpoint/{containerID}` with an [`EndpointRequest`] → the registered [`Endpoint`]
//!   (idempotent; a re-registration keeps the endpoint ID);
//! - `DELETE /v1/endpoint/{containerID}` → [`RemoveOutcome`] (an unknown container is success);
//! - `GET /v1/endpoint` → every [`Endpoint`]; `GET /v1/endpoint/{containerID}` → one, or 404.
//!
//! Errors are the same [`ApiError`] body as `/v1/ipam`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};

use super::api::ApiState;
use super::endpoint_core::{CoreError, Endpoint, EndpointRequest};
use super::endpoints::{EndpointError, RemoveOutcome};
use super::ipam_api::{error, map_error, ApiError};
use crate::cni::types::is_valid_identifier;
use crate::policy::identity::{Label, NumericIdentity};

type ApiResult<T> = Result<Json<T>, (StatusCode, Json<ApiError>)>;

pub fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/v1/endpoint", get(list))
        .route("/v1/endpoint/{container_id}", get(show).put(register).delete(remove))
}

fn map_endpoint_error(e: EndpointError) -> (StatusCode, Json<ApiError>) {
    let message = e.to_string();
    match e {
        EndpointError::Invalid(_) | EndpointError::Core(CoreError::BadMac(_)) => {
            error(StatusCode::BAD_REQUEST, "invalid", message, false)
        }
        EndpointError::NotAllocated { .. } => error(StatusCode::CONFLICT, "not-allocated", message, false),
        EndpointError::Core(CoreError::IpInUse { .. }) => error(StatusCode::CONFLICT, "in-use", message, false),
        EndpointError::Core(CoreError::NoFreeId) => error(StatusCode::CONFLICT, "exhausted", message, false),
        EndpointError::Persist { .. } => error(StatusCode::SERVICE_UNAVAILABLE, "internal", message, true),
        EndpointError::Datapath { .. } => error(StatusCode::INTERNAL_SERVER_ERROR, "datapath", message, false),
        EndpointError::Ipam(e) => map_error(e),
    }
}

fn check_container_id(container_id: &str) -> Result<(), (StatusCode, Json<ApiError>)> {
    if is_valid_identifier(container_id) {
        Ok(())
    } else {
        Err(error(StatusCode::BAD_REQUEST, "invalid", format!("invalid container ID {container_id:?}"), false))
    }
}

async fn register(
    State(s): State<Arc<ApiState>>,
    Path(container_id): Path<String>,
    Json(req): Json<EndpointRequest>,
) -> ApiResult<Endpoint> {
    check_container_id(&container_id)?;
    let span = tracing::info_span!("endpoint_register", pod = %format!("{}/{}", req.namespace, req.pod), container = %container_id);
    let _enter = span.enter();
    // The pod's identity comes from the API server; without one (no kube side, pod not found)
    // the endpoint starts as `init`, as Cilium's do until their labels are known.
    let (identity, labels) = match &s.endpoint_kube {
        Some(kube) => kube.resolve_identity(&req.namespace, &req.pod).await,
        None => (NumericIdentity::INIT.0, vec![Label::reserved("init").to_string()]),
    };
    let manager = s.endpoints.clone();
    let id = container_id.clone();
    let endpoint = tokio::task::spawn_blocking(move || manager.register(&id, req, identity, labels))
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string(), false))?
        .map_err(|e| {
            tracing::warn!(error = %e, "endpoint registration refused");
            map_endpoint_error(e)
        })?;
    if let Some(kube) = &s.endpoint_kube {
        let key = (endpoint.spec.namespace.clone(), endpoint.spec.pod.clone());
        let policy = s.policy.lock().unwrap().enforcing.get(&key).map(|e| e.to_status());
        kube.publish(&endpoint, policy).await;
    }
    Ok(Json(endpoint))
}

async fn remove(State(s): State<Arc<ApiState>>, Path(container_id): Path<String>) -> ApiResult<RemoveOutcome> {
    check_container_id(&container_id)?;
    let manager = s.endpoints.clone();
    let id = container_id.clone();
    let outcome = tokio::task::spawn_blocking(move || manager.remove(&id))
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string(), false))?
        .map_err(map_endpoint_error)?;
    if let (Some(kube), Some(endpoint)) = (&s.endpoint_kube, &outcome.removed) {
        kube.unpublish(endpoint).await;
    }
    Ok(Json(outcome))
}

async fn list(State(s): State<Arc<ApiState>>) -> Json<Vec<Endpoint>> {
    Json(s.endpoints.list())
}

async fn show(State(s): State<Arc<ApiState>>, Path(container_id): Path<String>) -> ApiResult<Endpoint> {
    s.endpoints.get(&container_id).map(Json).ok_or_else(|| {
        error(StatusCode::NOT_FOUND, "not-found", format!("no endpoint for container {container_id}"), false)
    })
}
