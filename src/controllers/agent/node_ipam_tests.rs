use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSpec, NodeStatus};
use kube::api::ObjectMeta;

use super::*;
use crate::controllers::operator::cluster_pool;
use crate::controllers::test_util::{api_with_crds, create_node, eventually};
use crate::crds::cilium_node::{CiliumNodeSpec, CiliumNodeStatus, IpamSpec, IpamStatus, OperatorStatus};
use crate::ipam::podcidr::{ClusterPoolConfig, ClusterPools, FamilyPoolConfig};

fn node(pod_cidrs: Option<&[&str]>, pod_cidr: Option<&str>, addresses: &[(&str, &str)]) -> Node {
    Node {
        metadata: ObjectMeta { name: Some("n1".into()), ..Default::default() },
        spec: Some(NodeSpec {
            pod_cidrs: pod_cidrs.map(|l| l.iter().map(|s| s.to_string()).collect()),
            pod_cidr: pod_cidr.map(str::to_string),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(
                addresses
                    .iter()
                    .map(|(t, a)| k8s_openapi::api::core::v1::NodeAddress {
                        type_: t.to_string(),
                        address: a.to_string(),
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
    }
}

fn cilium_node(pod_cidrs: &[&str], operator_error: Option<&str>) -> CiliumNode {
    let mut cn = CiliumNode::new(
        "n1",
        CiliumNodeSpec {
            ipam: Some(IpamSpec { pod_cidrs: pod_cidrs.iter().map(|s| s.to_string()).collect(), ..Default::default() }),
            ..Default::default()
        },
    );
    cn.status = operator_error.map(|e| CiliumNodeStatus {
        ipam: Some(IpamStatus {
            operator_status: Some(OperatorStatus { error: Some(e.into()) }),
            ..Default::default()
        }),
        ..Default::default()
    });
    cn
}

#[test]
fn node_cidrs_by_mode() {
    let n = |c: Option<&[&str]>, single: Option<&str>| node(c, single, &[]);
    let ok = |list: &[&str]| Ok::<Vec<IpNet>, String>(list.iter().map(|s| s.parse().unwrap()).collect());
    type Case = (IpamMode, Option<Node>, Option<CiliumNode>, Result<Vec<IpNet>, String>);
    let cases: Vec<Case> = vec![
        (
            IpamMode::Kubernetes,
            Some(n(Some(&["10.1.0.0/24", "fd00::/120"]), None)),
            None,
            ok(&["10.1.0.0/24", "fd00::/120"]),
        ),
        (IpamMode::Kubernetes, Some(n(None, Some("10.1.1.0/24"))), None, ok(&["10.1.1.0/24"])),
        (IpamMode::Kubernetes, Some(n(Some(&[]), None)), None, Err("Node.spec.podCIDRs is empty".into())),
        (IpamMode::Kubernetes, None, None, Err("Node object does not exist".into())),
        (IpamMode::Kubernetes, Some(n(Some(&["10.1.2.7/24"]), None)), None, ok(&["10.1.2.0/24"])),
        (IpamMode::Kubernetes, Some(n(Some(&["nope"]), None)), None, Err("\"nope\", which is not a CIDR".into())),
        (IpamMode::ClusterPool, None, None, Err("waiting for the CiliumNode".into())),
        (IpamMode::ClusterPool, None, Some(cilium_node(&[], None)), Err("waiting for the operator".into())),
        (
            IpamMode::ClusterPool,
            None,
            Some(cilium_node(&[], Some("no remaining CIDRs"))),
            Err("could not allocate a pod CIDR: no remaining CIDRs".into()),
        ),
        (
            IpamMode::ClusterPool,
            Some(n(Some(&["10.9.0.0/24"]), None)),
            Some(cilium_node(&["10.0.7.0/24"], None)),
            ok(&["10.0.7.0/24"]),
        ),
        (IpamMode::MultiPool, None, None, Err("not supported by the agent yet".into())),
    ];
    for (mode, node, cn, want) in cases {
        let got = node_cidrs(mode, node.as_ref(), cn.as_ref());
        match (&got, &want) {
            (Ok(g), Ok(w)) => assert_eq!(g, w, "{mode:?}"),
            (Err(g), Err(w)) => assert!(g.contains(w.as_str()), "{mode:?}: {g:?} lacks {w:?}"),
            _ => panic!("{mode:?}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn agent_spec_publishes_addresses_health_and_kubernetes_cidrs_only_in_kubernetes_mode() {
    let n = node(None, None, &[("InternalIP", "192.168.0.5"), ("Hostname", "n1"), ("ExternalIP", "203.0.113.5")]);
    let router: Vec<IpAddr> = vec!["10.0.7.1".parse().unwrap(), "fd00::1".parse().unwrap()];
    let health: Vec<IpAddr> = vec!["10.0.7.2".parse().unwrap()];
    let cidrs: Vec<IpNet> = vec!["10.0.7.0/24".parse().unwrap()];
    let spec = agent_spec("n1", IpamMode::ClusterPool, Some(&n), &router, &health, &cidrs);
    assert_eq!(
        spec["spec"],
        json!({
            "addresses": [
                {"type": "InternalIP", "ip": "192.168.0.5"},
                {"type": "ExternalIP", "ip": "203.0.113.5"},
                {"type": "CiliumInternalIP", "ip": "10.0.7.1"},
                {"type": "CiliumInternalIP", "ip": "fd00::1"},
            ],
            "health": {"ipv4": "10.0.7.2"},
        }),
        "cluster-pool: podCIDRs belong to the operator"
    );
    let spec = agent_spec("n1", IpamMode::Kubernetes, Some(&n), &[], &[], &cidrs);
    assert_eq!(spec["spec"]["ipam"], json!({"podCIDRs": ["10.0.7.0/24"]}));
    assert_eq!(spec["metadata"]["name"], "n1");
    // The typed CiliumNode accepts what the agent applies.
    let _: CiliumNode = serde_json::from_value(spec).unwrap();
}

struct Task(CancellationToken, tokio::task::JoinHandle<()>);
impl Drop for Task {
    fn drop(&mut self) {
        self.0.cancel();
        self.1.abort();
    }
}

fn start_agent(client: &Client, node: &str, mode: IpamMode, ipam: Arc<NodeIpam>) -> Task {
    let token = CancellationToken::new();
    let fut = run(client.clone(), node.into(), mode, ipam.clone(), ipam, Duration::from_millis(200), token.clone());
    Task(token, tokio::spawn(async move { fut.await.expect("node IPAM controller") }))
}

fn start_operator(client: &Client, cidr: &str, mask: u8) -> Task {
    let token = CancellationToken::new();
    let config = ClusterPoolConfig {
        ipv4: Some(FamilyPoolConfig { cidrs: vec![cidr.parse().unwrap()], mask_size: mask }),
        ipv6: None,
    };
    let pools = ClusterPools::new(&config).unwrap();
    let fut = cluster_pool::run_with(client.clone(), pools, Duration::from_millis(200), token.clone());
    Task(token, tokio::spawn(async move { fut.await.expect("operator") }))
}

async fn get_cn(client: &Client, name: &str) -> Option<CiliumNode> {
    Api::<CiliumNode>::all(client.clone()).get_opt(name).await.unwrap()
}

#[tokio::test]
async fn cluster_pool_agent_waits_for_the_operator_then_serves_and_reports_used() {
    let (_server, client) = api_with_crds().await;
    let dir = tempfile::tempdir().unwrap();
    create_node(&client, "n1", "192.168.0.5", &[]).await;
    let ipam = Arc::new(NodeIpam::new(vec![Family::V4], dir.path()));
    let _agent = start_agent(&client, "n1", IpamMode::ClusterPool, ipam.clone());

    // Without an operator the agent publishes its CiliumNode but cannot allocate.
    eventually("the agent creates its CiliumNode", 100, || async {
        get_cn(&client, "n1").await.is_some_and(|cn| cn.address("InternalIP") == Some("192.168.0.5"))
    })
    .await;
    let pod = Owner::endpoint("default", "web-1", "ctr-1", "eth0");
    eventually("allocation is refused as retryable, waiting for the operator", 100, || async {
        let err = ipam.allocate(&pod, None).unwrap_err();
        err.is_retryable() && err.to_string().contains("waiting for the operator")
    })
    .await;

    let _operator = start_operator(&client, "10.0.0.0/16", 24);
    eventually("the agent becomes ready with the operator's CIDR", 100, || async { ipam.is_ready() }).await;
    let cn = get_cn(&client, "n1").await.unwrap();
    let cidr = cn.spec.ipam.as_ref().unwrap().pod_cidrs[0].clone();
    let ips = ipam.allocate(&pod, None).unwrap();
    assert_eq!(ips[0].cidr.to_string(), cidr);
    eventually("CiliumInternalIP is the router address", 100, || async {
        get_cn(&client, "n1").await.unwrap().address("CiliumInternalIP") == Some(ips[0].gateway.to_string().as_str())
    })
    .await;
    eventually("status.ipam.used lists router, health and the pod", 100, || async {
        let cn = get_cn(&client, "n1").await.unwrap();
        let used: BTreeMap<String, Option<String>> = cn
            .status
            .and_then(|s| s.ipam)
            .map(|i| i.used.into_iter().map(|(ip, a)| (ip, a.owner)).collect())
            .unwrap_or_default();
        used.len() == 3
            && used.get(&ips[0].ip.to_string()) == Some(&Some("default/web-1".into()))
            && used.get(&ips[0].gateway.to_string()) == Some(&Some("router".into()))
            && used.values().any(|o| o.as_deref() == Some("health"))
    })
    .await;

    // Release shows up in status too; podCIDRs stay the operator's.
    ipam.release("ctr-1", "eth0").unwrap();
    eventually("released address leaves status.ipam.used", 100, || async {
        // The in-memory API's server-side apply removes the `owner` leaf the agent stopped applying
        // but leaves the emptied map entry behind (the real server drops the entry); the owner
        // is what matters to readers, so that is what is asserted.
        let cn = get_cn(&client, "n1").await.unwrap();
        cn.status.and_then(|s| s.ipam).is_some_and(|i| {
            i.used.values().filter(|a| a.owner.is_some()).count() == 2
                && i.used.get(&ips[0].ip.to_string()).is_none_or(|a| a.owner.is_none())
        })
    })
    .await;
    let cn = get_cn(&client, "n1").await.unwrap();
    let agent_fields: Vec<String> = cn
        .metadata
        .managed_fields
        .unwrap_or_default()
        .iter()
        .filter(|m| m.manager.as_deref() == Some(FIELD_MANAGER))
        .map(|m| serde_json::to_string(&m.fields_v1).unwrap())
        .collect();
    assert!(!agent_fields.is_empty());
    assert!(agent_fields.iter().all(|f| !f.contains("podCIDRs")), "the agent must not own podCIDRs: {agent_fields:?}");
    assert_eq!(cn.spec.ipam.unwrap().pod_cidrs, [cidr]);
}

#[tokio::test]
async fn kubernetes_mode_takes_the_node_pod_cidrs_and_mirrors_them() {
    let (_server, client) = api_with_crds().await;
    let dir = tempfile::tempdir().unwrap();
    create_node(&client, "k1", "192.168.0.9", &["10.244.3.0/24"]).await;
    let ipam = Arc::new(NodeIpam::new(vec![Family::V4], dir.path()));
    let _agent = start_agent(&client, "k1", IpamMode::Kubernetes, ipam.clone());
    eventually("ready from Node.spec.podCIDRs", 100, || async { ipam.is_ready() }).await;
    assert_eq!(ipam.listing().status, ["IPv4: 2/254 allocated from 10.244.3.0/24"]);
    eventually("the CiliumNode mirrors the Node's pod CIDRs", 100, || async {
        get_cn(&client, "k1").await.and_then(|cn| cn.spec.ipam).is_some_and(|i| i.pod_cidrs == ["10.244.3.0/24"])
    })
    .await;
}

#[tokio::test]
async fn multi_pool_mode_publishes_the_router_and_health_addresses_of_the_default_pool() {
    use crate::controllers::agent::multi_pool::MultiPoolIpam;
    use crate::ipam::multi_pool::PoolCidrs;
    let (_server, client) = api_with_crds().await;
    let dir = tempfile::tempdir().unwrap();
    create_node(&client, "m1", "192.168.0.7", &[]).await;
    let ipam = Arc::new(NodeIpam::new(vec![Family::V4], &dir.path().join("node")));
    let pools = Arc::new(MultiPoolIpam::new(vec![Family::V4], 8, &dir.path().join("pools")));
    let token = CancellationToken::new();
    let fut = run(
        client.clone(),
        "m1".into(),
        IpamMode::MultiPool,
        ipam.clone(),
        pools.clone(),
        Duration::from_millis(200),
        token.clone(),
    );
    let _agent = Task(token, tokio::spawn(async move { fut.await.expect("node IPAM controller") }));
    eventually("the agent creates its CiliumNode", 100, || async {
        get_cn(&client, "m1").await.is_some_and(|cn| cn.address("InternalIP") == Some("192.168.0.7"))
    })
    .await;
    assert!(get_cn(&client, "m1").await.unwrap().address("CiliumInternalIP").is_none(), "no router address yet");

    pools.sync_allocated(&[PoolCidrs { pool: "default".into(), cidrs: vec!["10.10.0.0/27".into()] }]);
    let router = pools.addr_of(Family::V4, &Owner::Router).unwrap().to_string();
    let health = pools.addr_of(Family::V4, &Owner::Health).unwrap().to_string();
    assert!(router.starts_with("10.10.0.") && health.starts_with("10.10.0.") && router != health);
    eventually("CiliumInternalIP and spec.health from the default pool", 100, || async {
        let cn = get_cn(&client, "m1").await.unwrap();
        cn.address("CiliumInternalIP") == Some(router.as_str())
            && cn.spec.health.and_then(|h| h.ipv4).as_deref() == Some(health.as_str())
    })
    .await;
    // The pod CIDRs and status.ipam.used are the multi-pool controller's, not this one's.
    let cn = get_cn(&client, "m1").await.unwrap();
    assert!(cn.spec.ipam.is_none_or(|i| i.pod_cidrs.is_empty()), "no podCIDRs in multi-pool mode");
    assert!(cn.status.and_then(|s| s.ipam).is_none_or(|i| i.used.is_empty()), "status.ipam.used left alone");
    assert!(!ipam.is_ready(), "the cluster-pool allocator stays unused");
}
