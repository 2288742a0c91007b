//! The controller against the in-memory API through a real `kube::Client`.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::Client;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::config::RawConfig;
use crate::controllers::test_util::{api_with_crds, create_node, eventually};
use crate::ipam::cluster_pool::NO_REMAINING_CIDRS;

/// A running controller; cancelled (and awaited) on drop of the guard's `stop`.
struct Running {
    token: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), Error>>,
}

impl Running {
    fn start(client: &Client, cidrs: &[&str], mask: u8) -> Self {
        let config = ClusterPoolConfig {
            ipv4: Some(FamilyPoolConfig { cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(), mask_size: mask }),
            ipv6: None,
        };
        Self::start_with(client, config)
    }

    fn start_with(client: &Client, config: ClusterPoolConfig) -> Self {
        let token = CancellationToken::new();
        let pools = ClusterPools::new(&config).expect("valid pools");
        let task = tokio::spawn(run_with(client.clone(), pools, Duration::from_millis(200), token.clone()));
        Self { token, task }
    }

    async fn stop(mut self) {
        self.token.cancel();
        let task = std::mem::replace(&mut self.task, tokio::spawn(async { Ok(()) }));
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

async fn pod_cidrs(client: &Client, name: &str) -> Option<Vec<String>> {
    let cn = Api::<CiliumNode>::all(client.clone()).get_opt(name).await.unwrap()?;
    Some(pod_cidrs_of(&cn))
}

async fn operator_error(client: &Client, name: &str) -> Option<String> {
    let cn = Api::<CiliumNode>::all(client.clone()).get_opt(name).await.unwrap()?;
    operator_error_of(&cn)
}

#[tokio::test]
async fn distinct_cidrs_kept_across_restart_released_on_delete_and_exhaustion_reported() {
    let (_server, client) = api_with_crds().await;
    // One /28 cut into /29s: room for exactly two nodes.
    let op = Running::start(&client, &["10.0.42.0/28"], 29);
    create_node(&client, "node-b", "192.168.0.2", &[]).await;
    create_node(&client, "node-c", "192.168.0.3", &[]).await;
    eventually("both nodes get a CIDR", 100, || async {
        pod_cidrs(&client, "node-b").await.is_some_and(|c| c.len() == 1)
            && pod_cidrs(&client, "node-c").await.is_some_and(|c| c.len() == 1)
    })
    .await;
    let b = pod_cidrs(&client, "node-b").await.unwrap();
    let c = pod_cidrs(&client, "node-c").await.unwrap();
    let all: BTreeSet<&str> = b.iter().chain(&c).map(String::as_str).collect();
    assert_eq!(all, BTreeSet::from(["10.0.42.0/29", "10.0.42.8/29"]), "distinct CIDRs out of the pool");

    // The operator owns only spec.ipam.podCIDRs: the agent's apply of other fields does not conflict,
    // and the managed fields show the split.
    let cns: Api<CiliumNode> = Api::all(client.clone());
    let agent_apply = json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumNode", "metadata": {"name": "node-c"},
        "spec": {"addresses": [{"type": "InternalIP", "ip": "192.168.0.3"}]},
    });
    cns.patch("node-c", &PatchParams::apply("beeline-agent"), &Patch::Apply(&agent_apply)).await.unwrap();
    let cn = cns.get("node-c").await.unwrap();
    assert_eq!(pod_cidrs_of(&cn), c, "the agent's apply keeps the operator's field");
    let managers = cn.metadata.managed_fields.clone().unwrap_or_default();
    let operator_spec = managers
        .iter()
        .find(|m| m.manager.as_deref() == Some(FIELD_MANAGER) && m.subresource.is_none())
        .expect("operator manages spec");
    let fields = serde_json::to_value(&operator_spec.fields_v1).unwrap();
    assert_eq!(fields, json!({"f:spec": {"f:ipam": {"f:podCIDRs": {}}}}), "operator owns only podCIDRs");

    // Restart: while the operator is down a node that sorts first appears. After restart the
    // existing assignments are restored before anything is allocated, so node-a cannot take
    // node-b's CIDR: it is reported as exhausted instead.
    op.stop().await;
    create_node(&client, "node-a", "192.168.0.1", &[]).await;
    let op = Running::start(&client, &["10.0.42.0/28"], 29);
    eventually("node-a reported as exhausted", 100, || async {
        operator_error(&client, "node-a").await.is_some_and(|e| e.contains(NO_REMAINING_CIDRS))
    })
    .await;
    assert_eq!(pod_cidrs(&client, "node-a").await.unwrap(), Vec::<String>::new());
    assert_eq!(pod_cidrs(&client, "node-b").await.unwrap(), b, "restart keeps node-b's CIDR");
    assert_eq!(pod_cidrs(&client, "node-c").await.unwrap(), c, "restart keeps node-c's CIDR");
    assert_eq!(operator_error(&client, "node-b").await, None);

    // The exhaustion is an Event naming the node.
    let events: Api<K8sEvent> = Api::namespaced(client.clone(), "default");
    eventually("a Warning Event names node-a", 100, || async {
        events.list(&Default::default()).await.unwrap().items.iter().any(|e| {
            e.reason.as_deref() == Some(REASON_ALLOCATION_FAILED)
                && e.type_.as_deref() == Some("Warning")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("node-a")
                && e.note.as_deref().is_some_and(|n| n.contains("node-a") && n.contains(NO_REMAINING_CIDRS))
        })
    })
    .await;

    // Deleting node-b releases its CIDR (its CiliumNode goes) and the waiting node-a gets it.
    Api::<Node>::all(client.clone()).delete("node-b", &DeleteParams::default()).await.unwrap();
    eventually("node-a gets node-b's CIDR", 100, || async { pod_cidrs(&client, "node-a").await.as_ref() == Some(&b) })
        .await;
    eventually("node-b's CiliumNode is removed", 100, || async { pod_cidrs(&client, "node-b").await.is_none() }).await;
    eventually("node-a's error is cleared", 100, || async { operator_error(&client, "node-a").await.is_none() }).await;
    assert_eq!(pod_cidrs(&client, "node-c").await.unwrap(), c);
    op.stop().await;
}

#[tokio::test]
async fn a_burst_of_nodes_gets_distinct_cidrs() {
    let (_server, client) = api_with_crds().await;
    let op = Running::start(&client, &["10.8.0.0/16"], 24);
    let names: Vec<String> = (0..20).map(|i| format!("burst-{i:02}")).collect();
    let creates = names.iter().enumerate().map(|(i, n)| {
        let client = client.clone();
        async move { create_node(&client, n, &format!("192.168.1.{}", i + 1), &[]).await }
    });
    futures::future::join_all(creates).await;
    eventually("every node has a CIDR", 200, || async {
        let list = Api::<CiliumNode>::all(client.clone()).list(&Default::default()).await.unwrap();
        list.items.iter().filter(|cn| pod_cidrs_of(cn).len() == 1).count() == names.len()
    })
    .await;
    let list = Api::<CiliumNode>::all(client.clone()).list(&Default::default()).await.unwrap();
    let cidrs: BTreeSet<String> = list.items.iter().flat_map(pod_cidrs_of).collect();
    assert_eq!(cidrs.len(), names.len(), "no CIDR is given to two nodes: {cidrs:?}");
    for cidr in &cidrs {
        let net: ipnet::Ipv4Net = cidr.parse().unwrap();
        assert!("10.8.0.0/16".parse::<ipnet::Ipv4Net>().unwrap().contains(&net) && net.prefix_len() == 24, "{net}");
    }
    op.stop().await;
}

#[tokio::test]
async fn dual_stack_nodes_get_one_cidr_per_family_from_config() {
    let (_server, client) = api_with_crds().await;
    let raw: RawConfig = [
        ("enable-ipv6", "true"),
        ("cluster-pool-ipv4-cidr", "10.20.0.0/16"),
        ("cluster-pool-ipv4-mask-size", "24"),
        ("cluster-pool-ipv6-cidr", "fd00:20::/104"),
        ("cluster-pool-ipv6-mask-size", "120"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let config = Config::from_raw(&raw).unwrap();
    let token = CancellationToken::new();
    let task = tokio::spawn({
        let (client, token) = (client.clone(), token.clone());
        async move { run(client, &config, token).await }
    });
    create_node(&client, "ds-1", "192.168.2.1", &[]).await;
    eventually("dual-stack CIDRs", 100, || async { pod_cidrs(&client, "ds-1").await.is_some_and(|c| c.len() == 2) })
        .await;
    let cidrs = pod_cidrs(&client, "ds-1").await.unwrap();
    assert_eq!(cidrs, ["10.20.0.0/24", "fd00:20::/120"], "IPv4 first, then IPv6");
    token.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn inconsistent_config_fails_at_start() {
    let (_server, client) = api_with_crds().await;
    let raw: RawConfig = [("enable-ipv6", "true"), ("cluster-pool-ipv6-cidr", "fd00::/64")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    // Mask /120 is 56 bits longer than /64: Cilium refuses this at start, and so do we.
    let config = Config::from_raw(&raw).unwrap();
    let err = run(client, &config, CancellationToken::new()).await.unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    assert!(err.to_string().contains("more than 16 bits longer"), "{err}");
}
