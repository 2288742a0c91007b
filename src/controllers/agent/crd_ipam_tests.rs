//! `ipam: crd` through the in-memory API: the addresses listed in `spec.ipam.pool` serve the
//! router, health and pods; `status.ipam.used` follows; a restarted agent keeps what it handed out.

use kube::api::PostParams;

use super::*;
use crate::controllers::test_util::{api_with_crds, eventually};
use crate::crds::cilium_node::{CiliumNodeSpec, IpamSpec};

fn pod(name: &str) -> Owner {
    Owner::endpoint("default", name, &format!("c-{name}"), "eth0")
}

async fn used_of(client: &Client) -> BTreeMap<String, String> {
    let cn = Api::<CiliumNode>::all(client.clone()).get("node-1").await.unwrap();
    let used = cn.status.and_then(|s| s.ipam).map(|i| i.used).unwrap_or_default();
    used.into_iter().map(|(ip, a)| (ip, a.owner.unwrap_or_default())).collect()
}

#[tokio::test]
async fn listed_addresses_serve_router_health_and_pods_and_survive_a_restart() {
    let (_server, client) = api_with_crds().await;
    let token = CancellationToken::new();
    let _stop = token.clone().drop_guard();
    let listed = ["10.1.0.5", "10.1.0.6", "10.1.0.7"];
    let pool = listed.iter().map(|ip| (ip.to_string(), AllocationIp::default())).collect();
    let spec = CiliumNodeSpec { ipam: Some(IpamSpec { pool, ..Default::default() }), ..Default::default() };
    Api::<CiliumNode>::all(client.clone())
        .create(&PostParams::default(), &CiliumNode::new("node-1", spec))
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let ipam = Arc::new(CrdIpam::new(vec![Family::V4], dir.path()));
    assert!(matches!(ipam.allocate(&pod("a"), None), Err(NodeIpamError::NotReady(_))), "nothing listed yet");
    tokio::spawn(run(client.clone(), "node-1".into(), ipam.clone(), Duration::from_millis(100), token.clone()));
    eventually("the router address from the list", 100, || async { PodIpam::is_ready(&*ipam) }).await;
    let router: IpAddr = "10.1.0.5".parse().unwrap();
    assert_eq!(PodIpam::addr_of(&*ipam, Family::V4, &Owner::Router), Some(router));
    assert_eq!(PodIpam::addr_of(&*ipam, Family::V4, &Owner::Health), Some("10.1.0.6".parse().unwrap()));

    let got = ipam.allocate(&pod("a"), None).unwrap();
    assert_eq!((got[0].ip.to_string(), got[0].gateway), ("10.1.0.7".to_string(), router), "gateway: the router");
    let err = ipam.allocate(&pod("b"), None).unwrap_err();
    assert!(err.is_retryable() && err.to_string().contains("no free IPv4 address"), "{err}");
    eventually("status.ipam.used lists the pod", 100, || async {
        used_of(&client).await.get("10.1.0.7").map(String::as_str) == Some("default/a")
    })
    .await;

    // A restarted agent has the pod's address before the list is even read.
    let again = CrdIpam::new(vec![Family::V4], dir.path());
    assert_eq!(PodIpam::attachment_ips(&again, "c-a", "eth0"), [got[0].ip]);
    assert_eq!(PodIpam::addr_of(&again, Family::V4, &Owner::Router), Some(router), "same router address");

    assert_eq!(PodIpam::release(&*ipam, "c-a", "eth0").unwrap(), [got[0].ip]);
    eventually("the released address leaves status.ipam.used", 100, || async {
        // The in-memory API keeps the emptied entry (see node_ipam's tests); its owner goes.
        used_of(&client).await.get("10.1.0.7").is_none_or(String::is_empty)
    })
    .await;
    assert_eq!(ipam.allocate(&pod("b"), None).unwrap()[0].ip.to_string(), "10.1.0.7");
}
