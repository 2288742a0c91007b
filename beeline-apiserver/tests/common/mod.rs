//! Shared test fixtures: a test custom resource and bounded waiting.

#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use beeline_apiserver::{ApiServer, ServerConfig};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::{Client, CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A namespaced test CR with a status subresource.
#[derive(CustomResource, Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
#[kube(
    group = "test.beeline.io",
    version = "v1",
    kind = "Widget",
    namespaced,
    status = "WidgetStatus",
    shortname = "wdg"
)]
pub struct WidgetSpec {
    pub replicas: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq, Default)]
pub struct WidgetStatus {
    pub observed: i64,
}

/// A cluster-scoped CR shaped like CiliumNode's IPAM part, for two-manager server-side apply.
#[derive(CustomResource, Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq, Default)]
#[kube(group = "test.beeline.io", version = "v1", kind = "PoolNode")]
pub struct PoolNodeSpec {
    #[serde(default)]
    pub ipam: Ipam,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq, Default)]
pub struct Ipam {
    #[serde(default)]
    pub pools: Pools,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq, Default)]
pub struct Pools {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated: Option<Vec<String>>,
}

pub fn server() -> ApiServer {
    ApiServer::new(ServerConfig { bookmark_interval: Duration::from_millis(200), ..ServerConfig::default() })
}

pub async fn install_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [Widget::crd(), PoolNode::crd()] {
        crds.create(&PostParams::default(), &crd).await.expect("create CRD");
    }
}

/// Polls `check` every 50 ms, at most `tries` times; panics with `what` if it never holds.
pub async fn eventually<F, Fut>(what: &str, tries: usize, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..tries {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}
