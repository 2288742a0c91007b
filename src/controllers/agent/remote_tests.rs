//! The remote-nodes and remote-endpoints controllers end to end without root: the in-memory API
//! server, reflectors, the map manager's `remote` group over the fake kernel, and an in-memory
//! route table.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use beeline_common::ipcache::{IpcacheKey, RemoteEndpointInfo};
use beeline_common::tunnel::{TunnelKey, TunnelValue};
use ipnet::IpNet;
use kube::api::{DeleteParams, PostParams};

use super::*;
use crate::controllers::test_util::{api_with_crds, eventually};
use crate::crds::cilium_endpoint::{AddressPair, EndpointIdentity, EndpointNetworking, EndpointStatus};
use crate::crds::cilium_node::{CiliumNodeSpec, IpamSpec, NodeAddress};
use crate::datapath::devices::{DeviceError, TunnelProtocol, CILIUM_HOST};
use crate::datapath::manager::fake::{FakeKernel, Faults};
use crate::datapath::manager::maps::REMOTE_GROUP;
use crate::datapath::manager::writer::WriterOptions;
use crate::datapath::manager::{ManagerOptions, MapDef, MapManager};
use crate::datapath::routes::{ExistingRoute, RouteSpec, RouteVia, ROUTE_PROTO};
use crate::datapath::tables::{be, from_be};

/// Routes in memory; `available` false behaves like a namespace without `cilium_host`.
#[derive(Clone, Default)]
struct FakeRoutes {
    routes: Arc<Mutex<Vec<ExistingRoute>>>,
    unavailable: Arc<Mutex<bool>>,
}

impl FakeRoutes {
    fn prefixes(&self) -> Vec<String> {
        let mut p: Vec<String> =
            self.routes.lock().unwrap().iter().map(|r| format!("{} {}", r.prefix, r.protocol)).collect();
        p.sort();
        p
    }
}

impl RouteTable for FakeRoutes {
    fn unavailable(&mut self) -> Option<String> {
        (*self.unavailable.lock().unwrap()).then(|| "no cilium_host".to_string())
    }

    fn list(&mut self) -> Result<Vec<ExistingRoute>, DeviceError> {
        Ok(self.routes.lock().unwrap().clone())
    }

    fn replace(&mut self, route: &RouteSpec) -> Result<(), DeviceError> {
        let (gateway, dev, prefsrc, mtu) = match route.via {
            RouteVia::CiliumHost { router_ip, mtu } => {
                (router_ip.is_ipv4().then_some(router_ip), CILIUM_HOST, Some(router_ip), Some(mtu))
            }
            RouteVia::Node { node_ip } => (Some(node_ip), "eth0", None, None),
        };
        let mut routes = self.routes.lock().unwrap();
        routes.retain(|r| r.prefix != route.prefix);
        routes.push(ExistingRoute {
            prefix: route.prefix,
            gateway,
            dev: Some(dev.into()),
            prefsrc,
            mtu,
            protocol: ROUTE_PROTO.to_string(),
        });
        Ok(())
    }

    fn delete(&mut self, prefix: IpNet) -> Result<(), DeviceError> {
        self.routes.lock().unwrap().retain(|r| !(r.prefix == prefix && r.is_ours()));
        Ok(())
    }
}

fn cilium_node(name: &str, internal: &str, router: &str, cidr: &str) -> CiliumNode {
    CiliumNode::new(
        name,
        CiliumNodeSpec {
            addresses: vec![
                NodeAddress { address_type: "InternalIP".into(), ip: internal.into() },
                NodeAddress { address_type: "CiliumInternalIP".into(), ip: router.into() },
            ],
            ipam: Some(IpamSpec { pod_cidrs: vec![cidr.into()], ..Default::default() }),
            ..Default::default()
        },
    )
}

fn endpoint(name: &str, ip: &str, node: &str, identity: i64) -> CiliumEndpoint {
    CiliumEndpoint::new(
        "default",
        name,
        EndpointStatus {
            identity: Some(EndpointIdentity { id: identity, labels: vec![] }),
            networking: Some(EndpointNetworking {
                addressing: vec![AddressPair { ipv4: Some(ip.into()), ipv6: None }],
                node: Some(node.into()),
            }),
            ..Default::default()
        },
    )
}

/// The fake kernel's ipcache as `prefix → (identity, tunnel endpoint)`.
fn ipcache(kernel: &FakeKernel) -> BTreeMap<String, (u32, String)> {
    let rows: BTreeMap<IpcacheKey, RemoteEndpointInfo> = kernel.contents(Ipcache::NAME);
    rows.iter()
        .map(|(k, v)| {
            let tun = if v.tunnel_endpoint == 0 { "-".to_string() } else { from_be(v.tunnel_endpoint).to_string() };
            (format!("{}/{}", from_be(k.data.ip4), k.prefixlen - 32), (v.sec_identity, tun))
        })
        .collect()
}

fn tunnel(kernel: &FakeKernel) -> BTreeMap<String, String> {
    let rows: BTreeMap<TunnelKey, TunnelValue> = kernel.contents(TunnelMap::NAME);
    rows.iter().map(|(k, v)| (from_be(k.ip4).to_string(), from_be(v.ip4).to_string())).collect()
}

fn row(identity: u32, tunnel: &str) -> (u32, String) {
    (identity, tunnel.to_string())
}

#[tokio::test]
async fn nodes_and_endpoints_reach_the_remote_maps_and_routes() {
    let (_server, client) = api_with_crds().await;
    let kernel = FakeKernel::new(Faults::None);
    // A row a previous agent left for a node deleted while it was down: pruned after both owners'
    // first passes.
    let mut stale = kernel.map::<IpcacheKey, RemoteEndpointInfo>(Ipcache::NAME);
    crate::datapath::manager::backend::MapBackend::upsert(
        &mut stale,
        &IpcacheKey::ipv4(be("10.0.9.0".parse().unwrap()), 24),
        &RemoteEndpointInfo { sec_identity: 2, ..Default::default() },
    )
    .unwrap();
    let manager = MapManager::new(ManagerOptions::default());
    let nodes_owner = manager.register_owner(NODES_OWNER);
    let endpoints_owner = manager.register_owner(ENDPOINTS_OWNER);
    let mut group = manager.group(REMOTE_GROUP.0, REMOTE_GROUP.1);
    let tables = RemoteTables {
        tunnel: group.add::<TunnelMap>(kernel.map(TunnelMap::NAME)).unwrap(),
        ipcache: group.add::<Ipcache>(kernel.map(Ipcache::NAME)).unwrap(),
    };
    let routes = FakeRoutes::default();
    // Someone else's route, which must survive everything below.
    routes.routes.lock().unwrap().push(ExistingRoute {
        prefix: "10.0.7.0/24".parse().unwrap(),
        gateway: Some("192.168.0.254".parse().unwrap()),
        dev: Some("eth0".into()),
        prefsrc: None,
        mtu: None,
        protocol: "static".into(),
    });
    let cfg = RemoteNodesConfig {
        tunnel: Some(TunnelProtocol::Vxlan),
        auto_direct_node_routes: false,
        native_routing_cidr: None,
        native_routing_cidr6: None,
        pod_mtu: 1450,
    };
    let nodes_sync =
        RemoteNodesSync::new(nodes_owner, tables.clone(), cfg, Box::new(routes.clone()), RemoteMetrics::default());
    let endpoints_sync = RemoteEndpointsSync::new(endpoints_owner, tables.ipcache.clone());

    let api: Api<CiliumNode> = Api::all(client.clone());
    api.create(&PostParams::default(), &cilium_node("a", "192.168.0.1", "10.0.0.1", "10.0.0.0/24")).await.unwrap();
    api.create(&PostParams::default(), &cilium_node("b", "192.168.0.2", "10.0.1.1", "10.0.1.0/24")).await.unwrap();

    let token = CancellationToken::new();
    let _stop = token.clone().drop_guard();
    tokio::spawn(group.build().run(WriterOptions::default(), token.clone()));
    let debounce = Duration::from_millis(50);
    let nodes_task = tokio::spawn(run_nodes(client.clone(), "a".into(), nodes_sync, debounce, token.clone()));
    assert!(!manager.status().ready);
    eventually("remote-nodes' first pass", 100, || async { manager.status().waiting_for == vec![ENDPOINTS_OWNER] })
        .await;
    assert!(ipcache(&kernel).contains_key("10.0.9.0/24"), "stale row kept until every owner's first pass");
    let endpoints_task =
        tokio::spawn(run_endpoints(client.clone(), "a".into(), endpoints_sync, debounce, token.clone()));
    eventually("maps ready", 100, || async { manager.status().ready }).await;

    let b_rows = || {
        BTreeMap::from([
            ("10.0.1.0/24".to_string(), row(2, "192.168.0.2")),
            ("10.0.1.1/32".to_string(), row(6, "192.168.0.2")),
            ("192.168.0.2/32".to_string(), row(6, "-")),
        ])
    };
    eventually("b's rows, stale row pruned", 100, || async { ipcache(&kernel) == b_rows() }).await;
    assert_eq!(tunnel(&kernel), BTreeMap::from([("10.0.1.0".to_string(), "192.168.0.2".to_string())]));
    assert_eq!(routes.prefixes(), vec!["10.0.1.0/24 196", "10.0.7.0/24 static"]);

    // A node added later.
    api.create(&PostParams::default(), &cilium_node("c", "192.168.0.3", "10.0.2.1", "10.0.2.0/24")).await.unwrap();
    eventually("c's tunnel row", 100, || async { tunnel(&kernel).contains_key("10.0.2.0") }).await;
    eventually("c's route", 100, || async { routes.prefixes().contains(&"10.0.2.0/24 196".to_string()) }).await;
    assert_eq!(ipcache(&kernel)["10.0.2.0/24"], row(2, "192.168.0.3"));

    // Endpoints: one on b (tunnelled to b), one here (no tunnel endpoint).
    let ceps: Api<CiliumEndpoint> = Api::namespaced(client.clone(), "default");
    ceps.create(&PostParams::default(), &endpoint("web", "10.0.1.7", "192.168.0.2", 31383)).await.unwrap();
    ceps.create(&PostParams::default(), &endpoint("db", "10.0.0.9", "192.168.0.1", 4242)).await.unwrap();
    eventually("endpoint rows", 100, || async {
        let rows = ipcache(&kernel);
        rows.get("10.0.1.7/32") == Some(&row(31383, "192.168.0.2")) && rows.get("10.0.0.9/32") == Some(&row(4242, "-"))
    })
    .await;

    // Node b removed: its rows and route go, c's and the foreign route stay.
    api.delete("b", &DeleteParams::default()).await.unwrap();
    eventually("b's rows gone", 100, || async { !tunnel(&kernel).contains_key("10.0.1.0") }).await;
    eventually("b's route gone", 100, || async { routes.prefixes() == vec!["10.0.2.0/24 196", "10.0.7.0/24 static"] })
        .await;
    let rows = ipcache(&kernel);
    assert!(!rows.contains_key("192.168.0.2/32") && !rows.contains_key("10.0.1.0/24"), "{rows:?}");
    ceps.delete("web", &DeleteParams::default()).await.unwrap();
    eventually("the endpoint's row gone", 100, || async { !ipcache(&kernel).contains_key("10.0.1.7/32") }).await;

    token.cancel();
    nodes_task.await.unwrap().expect("remote-nodes stops cleanly");
    endpoints_task.await.unwrap().expect("remote-endpoints stops cleanly");
}

#[tokio::test]
async fn routes_wait_for_the_node_devices() {
    let kernel = FakeKernel::new(Faults::None);
    let manager = MapManager::new(ManagerOptions::default());
    let owner = manager.register_owner(NODES_OWNER);
    let mut group = manager.group(REMOTE_GROUP.0, REMOTE_GROUP.1);
    let tables = RemoteTables {
        tunnel: group.add::<TunnelMap>(kernel.map(TunnelMap::NAME)).unwrap(),
        ipcache: group.add::<Ipcache>(kernel.map(Ipcache::NAME)).unwrap(),
    };
    let routes = FakeRoutes::default();
    *routes.unavailable.lock().unwrap() = true;
    let cfg = RemoteNodesConfig {
        tunnel: Some(TunnelProtocol::Vxlan),
        auto_direct_node_routes: false,
        native_routing_cidr: None,
        native_routing_cidr6: None,
        pod_mtu: 1450,
    };
    let metrics = RemoteMetrics::default();
    let mut sync = RemoteNodesSync::new(owner, tables.clone(), cfg, Box::new(routes.clone()), metrics.clone());
    let nodes = [
        cilium_node("a", "192.168.0.1", "10.0.0.1", "10.0.0.0/24"),
        cilium_node("b", "192.168.0.2", "10.0.1.1", "10.0.1.0/24"),
    ];
    assert_eq!(sync.sync(&nodes, "a"), Some(DEVICE_RECHECK), "re-check later while cilium_host is missing");
    assert!(routes.prefixes().is_empty());
    assert_eq!(tables.tunnel.desired().len(), 1, "map rows do not wait for the devices");
    *routes.unavailable.lock().unwrap() = false;
    assert_eq!(sync.sync(&nodes, "a"), None);
    assert_eq!(routes.prefixes(), vec!["10.0.1.0/24 196"]);
    assert_eq!((metrics.nodes.get(), metrics.routes_desired.get(), metrics.route_changes.get()), (1, 1, 1));
}
