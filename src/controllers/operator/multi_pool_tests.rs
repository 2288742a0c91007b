//! The multi-pool controller against the in-memory API through a real `kube::Client`.

use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;

use super::*;
use crate::controllers::test_util::{api_with_crds, eventually};

struct Running {
    token: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), Error>>>,
}

impl Running {
    fn start(client: &Client, auto: &str) -> Self {
        let token = CancellationToken::new();
        let auto = parse_auto_create(auto).expect("valid auto-create pools");
        let task =
            tokio::spawn(run_with(client.clone(), vec![Family::V4], auto, Duration::from_millis(100), token.clone()));
        Self { token, task: Some(task) }
    }

    async fn stop(mut self) {
        self.token.cancel();
        let task = self.task.take().expect("running");
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("controller stops on shutdown")
            .expect("task not panicked")
            .expect("controller ended cleanly");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// What the agent applies: its requests (as `beeline-agent`).
async fn request(client: &Client, node: &str, requests: &[(&str, i64)]) {
    let requested: Vec<serde_json::Value> =
        requests.iter().map(|(p, n)| json!({"pool": p, "needed": {"ipv4-addrs": n}})).collect();
    let patch = json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumNode", "metadata": {"name": node},
        "spec": {"ipam": {"pools": {"requested": requested}}},
    });
    Api::<CiliumNode>::all(client.clone())
        .patch(node, &PatchParams::apply("beeline-agent").force(), &Patch::Apply(&patch))
        .await
        .unwrap();
}

async fn allocated(client: &Client, node: &str) -> Vec<(String, Vec<String>)> {
    let Some(cn) = Api::<CiliumNode>::all(client.clone()).get_opt(node).await.unwrap() else { return vec![] };
    node_pools(&cn).1.into_iter().map(|p| (p.pool, p.cidrs)).collect()
}

fn pools(list: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
    list.iter().map(|(p, c)| (p.to_string(), c.iter().map(|s| s.to_string()).collect())).collect()
}

async fn create_pool(client: &Client, name: &str, cidrs: &[&str], mask: u8) {
    let pool = CiliumPodIPPool::new(
        name,
        IpPoolSpec {
            ipv4: Some(Ipv4PoolSpec { cidrs: cidrs.iter().map(|s| s.to_string()).collect(), mask_size: mask }),
            ..Default::default()
        },
    );
    Api::<CiliumPodIPPool>::all(client.clone()).create(&PostParams::default(), &pool).await.unwrap();
}

#[tokio::test]
async fn allocates_grows_releases_and_survives_restart() {
    let (_server, client) = api_with_crds().await;
    let op = Running::start(&client, "default=ipv4-cidrs:10.10.0.0/24;ipv4-mask-size:27");
    eventually("the default pool is auto-created", 100, || async {
        Api::<CiliumPodIPPool>::all(client.clone()).get_opt("default").await.unwrap().is_some()
    })
    .await;
    create_pool(&client, "tenant-b", &["10.20.0.0/24"], 27).await;

    request(&client, "node-1", &[("default", 16), ("tenant-b", 16)]).await;
    eventually("node-1 gets a /27 of each pool", 100, || async {
        allocated(&client, "node-1").await == pools(&[("default", &["10.10.0.0/27"]), ("tenant-b", &["10.20.0.0/27"])])
    })
    .await;

    // The operator owns only spec.ipam.pools.allocated.
    let cn = Api::<CiliumNode>::all(client.clone()).get("node-1").await.unwrap();
    let managed = cn.metadata.managed_fields.clone().unwrap_or_default();
    let operator = managed
        .iter()
        .find(|m| m.manager.as_deref() == Some(FIELD_MANAGER) && m.subresource.is_none())
        .expect("operator manages spec");
    assert_eq!(
        serde_json::to_value(&operator.fields_v1).unwrap(),
        json!({"f:spec": {"f:ipam": {"f:pools": {"f:allocated": {}}}}})
    );

    // Demand grows past one /27 (30 usable): a second one.
    request(&client, "node-1", &[("default", 48), ("tenant-b", 16)]).await;
    eventually("node-1 gets a second default /27", 100, || async {
        allocated(&client, "node-1").await
            == pools(&[("default", &["10.10.0.0/27", "10.10.0.32/27"]), ("tenant-b", &["10.20.0.0/27"])])
    })
    .await;

    // The agent releases the newest default CIDR (its own write of `allocated`): it stays released
    // and is free for the next node.
    request(&client, "node-1", &[("default", 16), ("tenant-b", 16)]).await;
    let release = json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumNode", "metadata": {"name": "node-1"},
        "spec": {"ipam": {"pools": {"allocated": [
            {"pool": "default", "cidrs": ["10.10.0.0/27"]}, {"pool": "tenant-b", "cidrs": ["10.20.0.0/27"]}]}}},
    });
    Api::<CiliumNode>::all(client.clone())
        .patch("node-1", &PatchParams::apply("beeline-agent-release").force(), &Patch::Apply(&release))
        .await
        .unwrap();
    request(&client, "node-2", &[("default", 1)]).await;
    eventually("node-2 gets the released CIDR", 100, || async {
        allocated(&client, "node-2").await == pools(&[("default", &["10.10.0.32/27"])])
    })
    .await;
    assert_eq!(
        allocated(&client, "node-1").await,
        pools(&[("default", &["10.10.0.0/27"]), ("tenant-b", &["10.20.0.0/27"])]),
        "the release is not undone"
    );

    // Restart while a node sorting first waits: existing allocations are occupied first.
    op.stop().await;
    request(&client, "node-0", &[("default", 1)]).await;
    let op = Running::start(&client, "default=ipv4-cidrs:10.10.0.0/24;ipv4-mask-size:27");
    eventually("node-0 gets a fresh CIDR", 100, || async {
        allocated(&client, "node-0").await == pools(&[("default", &["10.10.0.64/27"])])
    })
    .await;
    assert_eq!(allocated(&client, "node-2").await, pools(&[("default", &["10.10.0.32/27"])]));
    op.stop().await;
}

#[tokio::test]
async fn mask_change_and_unknown_pool_are_reported() {
    let (_server, client) = api_with_crds().await;
    let op = Running::start(&client, "");
    create_pool(&client, "blue", &["10.30.0.0/24"], 27).await;
    request(&client, "node-1", &[("blue", 1), ("nope", 1)]).await;
    eventually("node-1 gets blue, and an error for nope", 100, || async {
        let cn = Api::<CiliumNode>::all(client.clone()).get("node-1").await.unwrap();
        allocated(&client, "node-1").await == pools(&[("blue", &["10.30.0.0/27"])])
            && operator_error_of(&cn).is_some_and(|e| e.contains("pool nope does not exist"))
    })
    .await;

    let pools_api = Api::<CiliumPodIPPool>::all(client.clone());
    let patch = json!({"spec": {"ipv4": {"cidrs": ["10.30.0.0/24"], "maskSize": 28}}});
    pools_api.patch("blue", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let events: Api<K8sEvent> = Api::namespaced(client.clone(), "default");
    eventually("a Warning Event says maskSize is immutable", 100, || async {
        events.list(&Default::default()).await.unwrap().items.iter().any(|e| {
            e.reason.as_deref() == Some(REASON_POOL_INVALID)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("blue")
                && e.note.as_deref().is_some_and(|n| n.contains("immutable") && n.contains("/27"))
        })
    })
    .await;
    // The pool keeps serving /27s.
    request(&client, "node-2", &[("blue", 1)]).await;
    eventually("node-2 gets a /27 despite the edit", 100, || async {
        allocated(&client, "node-2").await == pools(&[("blue", &["10.30.0.32/27"])])
    })
    .await;
    op.stop().await;
}
