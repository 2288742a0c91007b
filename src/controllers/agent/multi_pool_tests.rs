//! Multi-pool end to end through the in-memory API: the operator controller and this agent's
//! controller run in-process, pods are allocated through the agent's `/v1/ipam` over its socket.

use std::collections::BTreeSet;
use std::path::Path;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::PostParams;

use super::*;
use crate::agent::api::{self, ApiState};
use crate::agent::ipam_api::{AllocateRequest, AllocateResponse};
use crate::cli::agent_client::{self, AgentClientError};
use crate::controllers::operator::multi_pool as operator;
use crate::controllers::test_util::{api_with_crds, eventually};
use crate::crds::cilium_pod_ip_pool::{IpPoolSpec, Ipv4PoolSpec};
use crate::ipam::multi_pool::parse_auto_create;

async fn create_pool(client: &Client, name: &str, cidr: &str) {
    let spec =
        IpPoolSpec { ipv4: Some(Ipv4PoolSpec { cidrs: vec![cidr.into()], mask_size: 27 }), ..Default::default() };
    Api::<CiliumPodIPPool>::all(client.clone())
        .create(&PostParams::default(), &CiliumPodIPPool::new(name, spec))
        .await
        .unwrap();
}

async fn create_namespace(client: &Client, name: &str, pool: &str) {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            annotations: Some([(multi_pool_agent::POOL_ANNOTATION.to_string(), pool.to_string())].into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.unwrap();
}

/// Allocates for `namespace/pod`, retrying (bounded) while the agent says "try again later", as
/// the container runtime does on CNI error 11.
async fn allocate(socket: &Path, namespace: &str, pod: &str) -> AllocatedIp {
    let body = serde_json::to_vec(&AllocateRequest {
        namespace: namespace.into(),
        pod: pod.into(),
        container_id: format!("c-{namespace}-{pod}"),
        ifname: "eth0".into(),
        family: None,
    })
    .unwrap();
    for _ in 0..200 {
        let result: Result<AllocateResponse, _> =
            agent_client::request_json(socket, hyper::Method::POST, "/v1/ipam", Some(body.clone())).await;
        match result {
            Ok(mut response) => return response.ips.remove(0),
            Err(AgentClientError::Status { status: 503, .. }) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(other) => panic!("allocating for {namespace}/{pod}: {other}"),
        }
    }
    panic!("{namespace}/{pod} got no address in time");
}

async fn release(socket: &Path, namespace: &str, pod: &str) {
    let uri = format!("/v1/ipam/c-{namespace}-{pod}/eth0");
    let _: serde_json::Value = agent_client::request_json(socket, hyper::Method::DELETE, &uri, None).await.unwrap();
}

async fn allocated(client: &Client, pool: &str) -> Vec<String> {
    let Some(cn) = Api::<CiliumNode>::all(client.clone()).get_opt("node-1").await.unwrap() else { return vec![] };
    allocated_of(&cn).into_iter().find(|p| p.pool == pool).map(|p| p.cidrs).unwrap_or_default()
}

#[tokio::test]
async fn tenants_get_their_own_pools_and_the_node_grows_and_shrinks_with_demand() {
    let (_server, client) = api_with_crds().await;
    let token = CancellationToken::new();
    let _stop = token.clone().drop_guard();
    let auto = parse_auto_create("default=ipv4-cidrs:10.0.0.0/24;ipv4-mask-size:27").unwrap();
    tokio::spawn(operator::run_with(client.clone(), vec![Family::V4], auto, Duration::from_millis(100), token.clone()));
    create_pool(&client, "tenant-a", "10.10.0.0/24").await;
    create_pool(&client, "tenant-b", "10.20.0.0/24").await;
    create_namespace(&client, "team-a", "tenant-a").await;
    create_namespace(&client, "team-b", "tenant-b").await;

    let dir = tempfile::tempdir().unwrap();
    let ipam = Arc::new(MultiPoolIpam::new(
        vec![Family::V4],
        multi_pool_agent::DEFAULT_PRE_ALLOCATION,
        &dir.path().join("mp"),
    ));
    tokio::spawn(run(client.clone(), "node-1".into(), ipam.clone(), Duration::from_millis(100), token.clone()));
    let socket = dir.path().join("beeline.sock");
    let node_ipam = Arc::new(super::super::ipam_state::NodeIpam::new(vec![Family::V4], &dir.path().join("state")));
    let state = Arc::new(ApiState {
        node_name: "node-1".into(),
        config: crate::config::Config::from_raw(&Default::default()).unwrap(),
        health: crate::runtime::health::Telemetry::new("test").health,
        ipam: node_ipam.clone(),
        endpoints: Arc::new(crate::agent::endpoints::EndpointManager::new(
            &dir.path().join("state"),
            Arc::new(crate::agent::endpoints::fake::FakeDatapath::default()),
            node_ipam,
            Arc::new(crate::agent::ipam_expiry::SystemClock),
        )),
        endpoint_kube: None,
        multi_pool: Some(MultiPoolHandle { ipam: ipam.clone(), client: client.clone() }),
        crd: None,
        policy: Default::default(),
    });
    tokio::spawn(api::serve(&socket, state, token.clone()).unwrap());

    // Ten pods per tenant on the same node: each from its own pool.
    let mut a_ips = BTreeSet::new();
    for i in 0..10 {
        let a = allocate(&socket, "team-a", &format!("web-{i}")).await;
        let b = allocate(&socket, "team-b", &format!("web-{i}")).await;
        assert!("10.10.0.0/24".parse::<IpNet>().unwrap().contains(&a.ip), "team-a pod got {}", a.ip);
        assert!("10.20.0.0/24".parse::<IpNet>().unwrap().contains(&b.ip), "team-b pod got {}", b.ip);
        assert!("10.0.0.0/27".parse::<IpNet>().unwrap().contains(&a.gateway), "gateway is the router, from default");
        a_ips.insert(a.ip);
    }
    assert_eq!(allocated(&client, "tenant-a").await, ["10.10.0.0/27"], "10 pods + 8 spare fit one /27");
    assert_eq!(allocated(&client, "tenant-b").await, ["10.20.0.0/27"]);

    // Scale team-a from 10 to 40: the node requests and receives a second /27.
    for i in 10..40 {
        a_ips.insert(allocate(&socket, "team-a", &format!("web-{i}")).await.ip);
    }
    assert_eq!(a_ips.len(), 40, "distinct addresses");
    let cidrs = allocated(&client, "tenant-a").await;
    assert_eq!(cidrs, ["10.10.0.0/27", "10.10.0.32/27"]);
    let nets: Vec<IpNet> = cidrs.iter().map(|c| c.parse().unwrap()).collect();
    assert!(a_ips.iter().all(|ip| nets.iter().any(|n| n.contains(ip))));
    eventually("status.ipam.used lists the 40 team-a pods", 100, || async {
        let cn = Api::<CiliumNode>::all(client.clone()).get("node-1").await.unwrap();
        let used = cn.status.and_then(|s| s.ipam).map(|i| i.used).unwrap_or_default();
        a_ips.iter().all(|ip| used.contains_key(&ip.to_string()))
    })
    .await;

    // Back to 10 (the first ten stay): the newest /27 is unused and handed back.
    for i in 10..40 {
        release(&socket, "team-a", &format!("web-{i}")).await;
    }
    eventually("the second /27 is handed back", 100, || async {
        allocated(&client, "tenant-a").await == ["10.10.0.0/27"]
    })
    .await;
    assert_eq!(allocated(&client, "tenant-b").await, ["10.20.0.0/27"]);
}

fn pools(list: &[(&str, &[&str])]) -> Vec<PoolCidrs> {
    list.iter()
        .map(|(p, c)| PoolCidrs { pool: p.to_string(), cidrs: c.iter().map(|c| c.to_string()).collect() })
        .collect()
}

fn pod(name: &str) -> Owner {
    Owner::endpoint("team-a", name, &format!("c-{name}"), "eth0")
}

fn choice(pool: &str) -> BTreeMap<Family, String> {
    [(Family::V4, pool.to_string())].into()
}

#[test]
fn a_restarted_agent_gets_its_addresses_back_when_their_cidrs_are_listed_again() {
    let dir = tempfile::tempdir().unwrap();
    let node = pools(&[("default", &["10.0.0.0/27"]), ("tenant-a", &["10.10.0.0/27", "10.10.0.32/27"])]);
    let first = MultiPoolIpam::new(vec![Family::V4], 8, dir.path());
    first.sync_allocated(&node);
    let router = first.addr_of(Family::V4, &Owner::Router).expect("router reserved in default");
    let health = first.addr_of(Family::V4, &Owner::Health).expect("health reserved in default");
    let a = first.allocate(&pod("a"), &choice("tenant-a")).unwrap()[0].ip;
    let b = first.allocate(&pod("b"), &choice("tenant-a")).unwrap()[0].ip;
    let d = first.allocate(&pod("d"), &choice("default")).unwrap()[0].ip;
    assert_eq!(first.release("c-b", "eth0").unwrap(), [b], "a released address is not saved");
    drop(first);

    let second = MultiPoolIpam::new(vec![Family::V4], 8, dir.path());
    assert!(!second.is_ready(), "nothing restored before the CIDRs are listed");
    assert!(second.attachment_ips("c-a", "eth0").is_empty());
    // Only default comes back first: tenant-a's address waits, and a new pod can't take it.
    second.sync_allocated(&pools(&[("default", &["10.0.0.0/27"])]));
    assert_eq!(second.addr_of(Family::V4, &Owner::Router), Some(router), "same router address");
    assert_eq!(second.addr_of(Family::V4, &Owner::Health), Some(health));
    assert_eq!(second.attachment_ips("c-d", "eth0"), [d]);
    drop(second);

    // A second restart before tenant-a's CIDR returned still remembers pod a.
    let third = MultiPoolIpam::new(vec![Family::V4], 8, dir.path());
    third.sync_allocated(&node);
    assert_eq!(third.attachment_ips("c-a", "eth0"), [a], "restored once its CIDR is listed");
    assert_eq!(third.allocate(&pod("a"), &choice("tenant-a")).unwrap()[0].ip, a, "a repeated ADD keeps it");
    let e = third.allocate(&pod("e"), &choice("tenant-a")).unwrap()[0].ip;
    assert_ne!(e, a, "a restored address is not handed to another pod");
    assert_eq!(third.attachment_ips("c-b", "eth0"), Vec::<IpAddr>::new(), "b was released before the restart");
    let used = third.used().0;
    assert_eq!(used.len(), 5, "router, health, a, d, e: {used:?}");
}

#[test]
fn a_saved_address_released_before_its_cidr_returns_is_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let node = pools(&[("default", &["10.0.0.0/27"]), ("tenant-a", &["10.10.0.0/27"])]);
    let first = MultiPoolIpam::new(vec![Family::V4], 8, dir.path());
    first.sync_allocated(&node);
    let a = first.allocate(&pod("a"), &choice("tenant-a")).unwrap()[0].ip;
    drop(first);
    let second = MultiPoolIpam::new(vec![Family::V4], 8, dir.path());
    assert_eq!(second.release("c-a", "eth0").unwrap(), [a], "CNI DEL while the agent waits for its CIDRs");
    second.sync_allocated(&node);
    assert!(second.attachment_ips("c-a", "eth0").is_empty());
    assert_eq!(second.used().0.len(), 2, "router and health only");
}

#[test]
fn dual_stack_pods_get_one_address_per_family_from_their_pools_and_keep_both_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let both = vec![Family::V4, Family::V6];
    let node = pools(&[
        ("default", &["10.0.0.0/27", "fd00:10::/120"]),
        ("tenant-a", &["10.10.0.0/27", "fd00:a::/120"]),
        ("tenant-b", &["fd00:b::/120"]),
    ]);
    let first = MultiPoolIpam::new(both.clone(), 8, dir.path());
    first.sync_allocated(&node);
    let routers = [first.addr_of(Family::V4, &Owner::Router), first.addr_of(Family::V6, &Owner::Router)];
    assert!(routers.iter().all(Option::is_some), "a router address per family in default: {routers:?}");
    // IPv4 from tenant-a, IPv6 from tenant-b (ipv4-pool / ipv6-pool annotations choose per family).
    let choice: BTreeMap<Family, String> = [(Family::V4, "tenant-a".into()), (Family::V6, "tenant-b".into())].into();
    let got = first.allocate(&pod("a"), &choice).unwrap();
    let summary: Vec<(Family, bool, Option<IpAddr>)> =
        got.iter().map(|a| (a.family, a.cidr.contains(&a.ip), Some(a.gateway))).collect();
    assert_eq!(summary, [(Family::V4, true, routers[0]), (Family::V6, true, routers[1])], "{got:?}");
    assert!(got[0].cidr.to_string() == "10.10.0.0/27" && got[1].cidr.to_string() == "fd00:b::/120", "{got:?}");
    // All or nothing: a pool without an IPv6 CIDR here leaves no IPv4 address behind.
    let v6_missing: BTreeMap<Family, String> =
        [(Family::V4, "tenant-a".into()), (Family::V6, "tenant-c".into())].into();
    assert!(first.allocate(&pod("b"), &v6_missing).unwrap_err().is_retryable());
    assert!(first.attachment_ips("c-b", "eth0").is_empty(), "the IPv4 address of a failed dual-stack ADD is released");
    drop(first);

    let second = MultiPoolIpam::new(both, 8, dir.path());
    second.sync_allocated(&node);
    assert_eq!(second.attachment_ips("c-a", "eth0"), got.iter().map(|a| a.ip).collect::<Vec<_>>());
    assert_eq!([second.addr_of(Family::V4, &Owner::Router), second.addr_of(Family::V6, &Owner::Router)], routers);
    let (v4, v6) = second.used();
    assert_eq!((v4.len(), v6.len()), (3, 3), "router, health and the pod in each family");
}
