//! The services controller end to end without root: the in-memory API server, a real kube client
//! and reflectors, `ServicesSync`, and the map manager's writer over the fake kernel backend.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use beeline_common::lb::{Lb4Backend, Lb4BackendKey, Lb4Key, Lb4RevNatKey, Lb4ReverseNat, Lb4Service};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

use super::*;
use crate::config::LbAlgorithm;
use crate::controllers::agent::services::LbTables;
use crate::controllers::test_util::{api_with_crds, eventually};
use crate::datapath::manager::fake::{FakeKernel, Faults};
use crate::datapath::manager::maps::{self, Lb4Backends, Lb4RevNat, Lb4Services};
use crate::datapath::manager::writer::WriterOptions;
use crate::datapath::manager::{ManagerOptions, MapDef, MapManager};
use crate::services::ServicesConfig;

fn cfg() -> ServicesConfig {
    ServicesConfig {
        node_name: "node-a".into(),
        extra_node_addresses: vec![],
        kube_proxy_replacement: true,
        node_port_range: (30000, 32767),
        lb_algorithm: LbAlgorithm::Random,
        service_proxy_name: None,
        maglev_table_size: 251,
    }
}

fn service() -> Service {
    serde_json::from_value(json!({
        "metadata": {"namespace": "default", "name": "web"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]},
    }))
    .unwrap()
}

fn slice(ips: &[&str]) -> EndpointSlice {
    let endpoints: Vec<_> = ips.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}})).collect();
    serde_json::from_value(json!({
        "metadata": {"namespace": "default", "name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4", "ports": [{"port": 8080, "protocol": "TCP"}], "endpoints": endpoints,
    }))
    .unwrap()
}

/// What the fake kernel holds, decoded: per frontend `ip:port`, the master's count and the backend
/// addresses its slots point at; plus the backend and rev-NAT maps' sizes.
#[derive(Debug, PartialEq, Eq)]
struct KernelLb {
    frontends: BTreeMap<String, (u16, BTreeSet<String>)>,
    backends: usize,
    rev_nat: usize,
}

fn kernel_lb(kernel: &FakeKernel) -> KernelLb {
    let services: BTreeMap<Lb4Key, Lb4Service> = kernel.contents(Lb4Services::NAME);
    let backends: BTreeMap<Lb4BackendKey, Lb4Backend> = kernel.contents(Lb4Backends::NAME);
    let rev_nat: BTreeMap<Lb4RevNatKey, Lb4ReverseNat> = kernel.contents(Lb4RevNat::NAME);
    let mut frontends: BTreeMap<String, (u16, BTreeSet<String>)> = BTreeMap::new();
    for (key, value) in &services {
        let name = format!("{}:{}", Ipv4Addr::from(u32::from_be(key.address)), u16::from_be(key.dport));
        let entry = frontends.entry(name).or_default();
        if key.backend_slot == 0 {
            entry.0 = value.count;
        } else {
            let backend = backends[&Lb4BackendKey { backend_id: value.backend_id }];
            entry.1.insert(format!("{}:{}", Ipv4Addr::from(u32::from_be(backend.address)), u16::from_be(backend.port)));
        }
    }
    KernelLb { frontends, backends: backends.len(), rev_nat: rev_nat.len() }
}

fn expect(backends: &[&str]) -> KernelLb {
    let addrs: BTreeSet<String> = backends.iter().map(|ip| format!("{ip}:8080")).collect();
    KernelLb {
        frontends: BTreeMap::from([("10.96.0.10:80".to_string(), (backends.len() as u16, addrs))]),
        backends: backends.len(),
        rev_nat: 1,
    }
}

async fn wait_for(kernel: &FakeKernel, want: KernelLb, what: &str) {
    eventually(what, 100, || async { kernel_lb(kernel) == want }).await;
    // Also every slot is numbered 1..=count (no gaps, no leftovers from a larger backend set).
    let services: BTreeMap<Lb4Key, Lb4Service> = kernel.contents(Lb4Services::NAME);
    let slots: Vec<u16> = services.keys().map(|k| k.backend_slot).collect();
    let count = want.frontends.values().next().map_or(0, |f| f.0);
    let expected: Vec<u16> = if want.frontends.is_empty() { vec![] } else { (0..=count).collect() };
    assert_eq!(slots, expected, "{what}: master + slots 1..=count");
}

#[tokio::test]
async fn service_and_slice_changes_reach_the_lb_maps_through_reflectors() {
    let (_server, client) = api_with_crds().await;
    let kernel = FakeKernel::new(Faults::None);
    let manager = MapManager::new(ManagerOptions::default());
    let owner = manager.register_owner("services");
    let (name, order) = maps::LB_GROUP;
    let mut group = manager.group(name, order);
    let tables = LbTables::over_fake(&mut group, &kernel);
    let sync = ServicesSync::new(owner, tables, cfg());
    let token = CancellationToken::new();
    let _stop = token.clone().drop_guard();
    tokio::spawn(group.build().run(WriterOptions::default(), token.clone()));
    let controller =
        tokio::spawn(run(client.clone(), "node-a".into(), sync, Duration::from_millis(100), token.clone()));

    // The first full pass (over an empty cluster) opens the prune gate: the maps become ready.
    assert!(!manager.status().ready, "not ready before the services controller's first pass");
    eventually("map manager ready after the first pass", 100, || async { manager.status().ready }).await;

    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    services.create(&PostParams::default(), &service()).await.unwrap();
    slices.create(&PostParams::default(), &slice(&["10.0.1.1", "10.0.1.2"])).await.unwrap();
    wait_for(&kernel, expect(&["10.0.1.1", "10.0.1.2"]), "two backends programmed").await;

    // Scale up, then down: slots and backends follow, unused backends are removed.
    let mut scaled = slices.get("web-1").await.unwrap();
    scaled.endpoints = slice(&["10.0.1.1", "10.0.1.2", "10.0.1.3"]).endpoints;
    slices.replace("web-1", &PostParams::default(), &scaled).await.unwrap();
    wait_for(&kernel, expect(&["10.0.1.1", "10.0.1.2", "10.0.1.3"]), "scaled to three").await;
    let mut scaled = slices.get("web-1").await.unwrap();
    scaled.endpoints = slice(&["10.0.1.3"]).endpoints;
    slices.replace("web-1", &PostParams::default(), &scaled).await.unwrap();
    wait_for(&kernel, expect(&["10.0.1.3"]), "scaled to one").await;

    // Deleting the Service (and its slice) prunes every row.
    services.delete("web", &DeleteParams::default()).await.unwrap();
    slices.delete("web-1", &DeleteParams::default()).await.unwrap();
    wait_for(&kernel, KernelLb { frontends: BTreeMap::new(), backends: 0, rev_nat: 0 }, "rows pruned").await;

    token.cancel();
    controller.await.unwrap().expect("controller stops cleanly on shutdown");
}
