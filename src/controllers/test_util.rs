//! Fixtures for control-plane tests: the in-memory API with beeline's CRDs, and bounded waiting.

use std::future::Future;
use std::time::Duration;

use beeline_apiserver::{ApiServer, ServerConfig};
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeSpec, NodeStatus};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::Client;

/// A fresh API server with every cilium.io CRD installed, and a client for it.
pub async fn api_with_crds() -> (ApiServer, Client) {
    let server = ApiServer::new(ServerConfig { bookmark_interval: Duration::from_millis(200), ..Default::default() });
    let client = server.client();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crate::crds::all() {
        crds.create(&PostParams::default(), &crd).await.expect("create CRD");
    }
    (server, client)
}

/// Creates a Node with an InternalIP and, optionally, `spec.podCIDRs`.
pub async fn create_node(client: &Client, name: &str, internal_ip: &str, pod_cidrs: &[&str]) -> Node {
    let node = Node {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        spec: Some(NodeSpec {
            pod_cidrs: (!pod_cidrs.is_empty()).then(|| pod_cidrs.iter().map(|s| s.to_string()).collect()),
            pod_cidr: pod_cidrs.first().map(|s| s.to_string()),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![NodeAddress { type_: "InternalIP".into(), address: internal_ip.into() }]),
            ..Default::default()
        }),
    };
    let nodes = Api::<Node>::all(client.clone());
    nodes.create(&PostParams::default(), &node).await.expect("create Node");
    // Like a kubelet: the addresses are reported through the status subresource.
    let status = serde_json::json!({ "status": node.status });
    nodes.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.expect("Node status")
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
