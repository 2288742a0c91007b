//! Policy on the agent API, for the CLI: `GET /v1/policy` (each policy and whether it was accepted),
//! `GET /v1/policy/selectors` (identities per selector), `GET /v1/policy/endpoints` (local endpoints
//! with their identity and enforcement; `/v1/endpoint` is the endpoint manager's). All read the
//! policy controller's last pass.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use super::api::ApiState;

pub fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/v1/policy", get(policies))
        .route("/v1/policy/selectors", get(selectors))
        .route("/v1/policy/endpoints", get(endpoints))
}

fn or_empty(value: &serde_json::Value) -> serde_json::Value {
    if value.is_null() {
        serde_json::Value::Array(vec![])
    } else {
        value.clone()
    }
}

async fn policies(State(s): State<Arc<ApiState>>) -> Json<serde_json::Value> {
    Json(or_empty(&s.policy.lock().unwrap().policies))
}

async fn selectors(State(s): State<Arc<ApiState>>) -> Json<serde_json::Value> {
    Json(or_empty(&s.policy.lock().unwrap().selectors))
}

async fn endpoints(State(s): State<Arc<ApiState>>) -> Json<serde_json::Value> {
    Json(or_empty(&s.policy.lock().unwrap().endpoints))
}
