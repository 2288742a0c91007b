//! The LB-IPAM controller against the in-memory Kubernetes API through a real `kube::Client`: real
//! Service objects, pools created/edited/deleted while it runs, status conditions, Events, restarts,
//! and `kubectl get ippools` showing the printer columns.

use std::collections::BTreeMap;
use std::future::Future;
use std::process::Command;
use std::time::Duration;

use beeline::controllers::operator::lb_ipam::{self, event_reason, Metrics, Options, FIELD_MANAGER};
use beeline::crds::cilium_load_balancer_ip_pool::{CiliumLoadBalancerIPPool, LbIpBlock, LbIpPoolSpec};
use beeline::operator::crd_install::{self, InstallOptions};
use beeline_apiserver::{ApiServer, ServerConfig};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const SATISFIED: &str = "cilium.io/IPAMRequestSatisfied";

/// A running controller; stopped (and awaited) by [`Controller::stop`], aborted if dropped.
struct Controller {
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), lb_ipam::LbIpamError>>>,
    metrics: Metrics,
}

impl Controller {
    fn start(client: Client) -> Self {
        let shutdown = CancellationToken::new();
        let metrics = Metrics::default();
        let options = Options { debounce: Duration::from_millis(50), ..Options::default() };
        let task = tokio::spawn(lb_ipam::run(client, options, metrics.clone(), shutdown.clone()));
        Controller { shutdown, task: Some(task), metrics }
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        let task = self.task.take().expect("running");
        let result = tokio::time::timeout(Duration::from_secs(5), task).await.expect("stops within 5 s");
        result.expect("task did not panic").expect("clean shutdown");
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn setup() -> (ApiServer, Client) {
    let server = ApiServer::new(ServerConfig::default());
    let client = server.client();
    let options = InstallOptions { timeout: Duration::from_secs(20), ..Default::default() };
    crd_install::install(&client, &[beeline::crds::cilium_load_balancer_ip_pool::crd()], &options)
        .await
        .expect("install the pool CRD");
    (server, client)
}

/// Polls `check` every 50 ms for at most 10 s; panics with `what` and the last value otherwise.
async fn eventually<T: std::fmt::Debug, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let mut last = String::new();
    for _ in 0..200 {
        match check().await {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not reached within 10 s; last: {last}");
}

fn pool_spec(blocks: &[&str]) -> LbIpPoolSpec {
    let blocks = blocks
        .iter()
        .map(|b| match b.split_once('-') {
            Some((start, stop)) => {
                LbIpBlock { start: Some(start.into()), stop: Some(stop.into()), ..Default::default() }
            }
            None => LbIpBlock { cidr: Some(b.to_string()), ..Default::default() },
        })
        .collect();
    LbIpPoolSpec { blocks, ..Default::default() }
}

async fn create_pool(client: &Client, name: &str, blocks: &[&str]) {
    let pools: Api<CiliumLoadBalancerIPPool> = Api::all(client.clone());
    pools
        .create(&PostParams::default(), &CiliumLoadBalancerIPPool::new(name, pool_spec(blocks)))
        .await
        .expect("create pool");
    // creationTimestamp has one-second resolution; pool age decides conflicts and order.
    tokio::time::sleep(Duration::from_millis(1100)).await;
}

async fn delete_pool(client: &Client, name: &str) {
    let pools: Api<CiliumLoadBalancerIPPool> = Api::all(client.clone());
    pools.delete(name, &DeleteParams::default()).await.expect("delete pool");
}

fn service(name: &str, type_: &str, port: i32) -> Service {
    Service {
        metadata: ObjectMeta { name: Some(name.into()), namespace: Some("default".into()), ..Default::default() },
        spec: Some(ServiceSpec {
            type_: Some(type_.into()),
            selector: Some(BTreeMap::from([("app".to_string(), name.to_string())])),
            ports: Some(vec![ServicePort { port, protocol: Some("TCP".into()), ..Default::default() }]),
            ..Default::default()
        }),
        status: None,
    }
}

fn annotated(mut svc: Service, key: &str, value: &str) -> Service {
    svc.metadata.annotations.get_or_insert_with(BTreeMap::new).insert(key.into(), value.into());
    svc
}

async fn create_service(client: &Client, svc: Service) {
    let services: Api<Service> = Api::default_namespaced(client.clone());
    services.create(&PostParams::default(), &svc).await.expect("create service");
}

async fn get_service(client: &Client, name: &str) -> Service {
    Api::<Service>::default_namespaced(client.clone()).get(name).await.expect("get service")
}

fn ingress_ips(svc: &Service) -> Vec<String> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|i| i.iter().filter_map(|i| i.ip.clone()).collect())
        .unwrap_or_default()
}

fn condition(conditions: Option<&Vec<Condition>>, type_: &str) -> Option<Condition> {
    conditions.and_then(|c| c.iter().find(|c| c.type_ == type_).cloned())
}

fn service_condition(svc: &Service) -> Option<Condition> {
    condition(svc.status.as_ref().and_then(|s| s.conditions.as_ref()), SATISFIED)
}

/// Waits until the Service has exactly `ips` and a condition with `reason`.
async fn await_service(client: &Client, name: &str, ips: &[&str], reason: &str) -> Service {
    eventually(&format!("service {name} has {ips:?} ({reason})"), || async {
        let svc = get_service(client, name).await;
        let got = ingress_ips(&svc);
        let cond = service_condition(&svc);
        if got == ips && cond.as_ref().is_some_and(|c| c.reason == reason) {
            Ok(svc)
        } else {
            Err(format!("ingress {got:?}, condition {cond:?}"))
        }
    })
    .await
}

async fn pool_condition(client: &Client, pool: &str, type_: &str) -> Option<Condition> {
    let pools: Api<CiliumLoadBalancerIPPool> = Api::all(client.clone());
    let p = pools.get(pool).await.expect("get pool");
    condition(p.status.as_ref().map(|s| &s.conditions), type_)
}

async fn events_for(client: &Client, namespace: &str, name: &str) -> Vec<Event> {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    events
        .list(&ListParams::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect()
}

/// The status writes `client_name` made to Services.
fn service_status_patches(server: &ApiServer, client_name: &str) -> Vec<String> {
    server
        .accesses()
        .into_iter()
        .filter(|a| a.client == client_name && a.resource == "services" && a.subresource == "status")
        .map(|a| format!("{} {}", a.verb, a.name))
        .collect()
}

#[tokio::test]
async fn dormant_until_a_pool_exists_then_assigns_and_reports() {
    let (server, client) = setup().await;
    create_service(&client, service("web", "LoadBalancer", 80)).await;
    create_service(&client, service("internal", "ClusterIP", 80)).await;
    let mut other_class = service("elsewhere", "LoadBalancer", 80);
    other_class.spec.as_mut().unwrap().load_balancer_class = Some("example.com/other-lb".into());
    create_service(&client, other_class).await;

    let controller = Controller::start(server.client_as("lbipam"));
    eventually("the pool watch has synced", || async {
        let watching =
            server.accesses().iter().any(|a| a.client == "lbipam" && a.resource == "ciliumloadbalancerippools");
        if watching {
            Ok(())
        } else {
            Err("no pool list/watch yet".into())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !server.accesses().iter().any(|a| a.client == "lbipam" && a.resource == "services"),
        "dormant: Services are not even watched before a pool exists"
    );
    assert!(ingress_ips(&get_service(&client, "web").await).is_empty());

    create_pool(&client, "blue", &["10.0.10.0/24"]).await;
    let web = await_service(&client, "web", &["10.0.10.0"], "satisfied").await;
    let cond = service_condition(&web).unwrap();
    assert_eq!(cond.status, "True");
    assert!(cond.message.contains("10.0.10.0") && cond.message.contains("blue"), "{}", cond.message);
    let managers: Vec<_> = web.managed_fields().iter().filter_map(|m| m.manager.clone()).collect();
    assert!(managers.iter().any(|m| m == FIELD_MANAGER), "status applied as {FIELD_MANAGER}: {managers:?}");

    eventually("pool counts", || async {
        let used = pool_condition(&client, "blue", "cilium.io/IPsUsed").await.map(|c| c.message);
        let available = pool_condition(&client, "blue", "cilium.io/IPsAvailable").await.map(|c| c.message);
        let total = pool_condition(&client, "blue", "cilium.io/IPsTotal").await.map(|c| c.message);
        let conflict = pool_condition(&client, "blue", "cilium.io/PoolConflict").await.map(|c| c.status);
        let got = (used.as_deref(), available.as_deref(), total.as_deref(), conflict.as_deref());
        if got == (Some("1"), Some("255"), Some("256"), Some("False")) {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;

    // Neither the ClusterIP Service nor the other class's LoadBalancer is touched.
    for name in ["internal", "elsewhere"] {
        let svc = get_service(&client, name).await;
        assert!(ingress_ips(&svc).is_empty() && service_condition(&svc).is_none(), "{name}: {:?}", svc.status);
    }
    let patched = service_status_patches(&server, "lbipam");
    assert!(patched.iter().all(|p| p.ends_with(" web")), "only `web` is written: {patched:?}");

    let events = events_for(&client, "default", "web").await;
    assert!(
        events.iter().any(|e| e.reason.as_deref() == Some(event_reason::ADDRESSES_ASSIGNED)
            && e.note.as_deref().is_some_and(|n| n.contains("10.0.10.0"))),
        "{events:?}"
    );

    // Quiet: with nothing changing, no more writes.
    let writes = controller.metrics.status_writes.get();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(controller.metrics.status_writes.get(), writes, "no writes when nothing changes");
    assert_eq!(controller.metrics.allocations.get(), 1);
    controller.stop().await;
}

#[tokio::test]
async fn requested_addresses_and_sharing_keys() {
    let (server, client) = setup().await;
    create_pool(&client, "blue", &["10.0.20.0/24"]).await;
    let controller = Controller::start(server.client_as("lbipam"));

    create_service(&client, annotated(service("pinned", "LoadBalancer", 80), "lbipam.cilium.io/ips", "10.0.20.7"))
        .await;
    await_service(&client, "pinned", &["10.0.20.7"], "satisfied").await;

    // Outside every pool: unsatisfied with a reason and a Warning Event.
    create_service(&client, annotated(service("lost", "LoadBalancer", 80), "lbipam.cilium.io/ips", "192.0.2.1")).await;
    let lost = await_service(&client, "lost", &[], "no_pool").await;
    assert_eq!(service_condition(&lost).unwrap().status, "False");
    eventually("a warning event for `lost`", || async {
        let events = events_for(&client, "default", "lost").await;
        let found = events.iter().any(|e| {
            e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some(event_reason::REQUEST_UNSATISFIED)
        });
        if found {
            Ok(())
        } else {
            Err(format!("{events:?}"))
        }
    })
    .await;

    // One key, different ports: one address. Same port: a different address.
    let key = "lbipam.cilium.io/sharing-key";
    create_service(&client, annotated(service("dns-tcp", "LoadBalancer", 53), key, "dns")).await;
    let first = await_service(&client, "dns-tcp", &["10.0.20.0"], "satisfied").await;
    create_service(&client, annotated(service("dns-alt", "LoadBalancer", 5353), key, "dns")).await;
    await_service(&client, "dns-alt", &ingress_ips(&first).iter().map(String::as_str).collect::<Vec<_>>(), "satisfied")
        .await;
    create_service(&client, annotated(service("dns-clash", "LoadBalancer", 53), key, "dns")).await;
    await_service(&client, "dns-clash", &["10.0.20.1"], "satisfied").await;
    eventually("a shared address counts once", || async {
        let used = pool_condition(&client, "blue", "cilium.io/IPsUsed").await.map(|c| c.message);
        if used.as_deref() == Some("3") {
            Ok(())
        } else {
            Err(format!("{used:?}"))
        }
    })
    .await;
    controller.stop().await;
}

#[tokio::test]
async fn a_service_that_stops_qualifying_loses_ingress_and_condition() {
    let (server, client) = setup().await;
    create_pool(&client, "blue", &["10.0.30.0/24"]).await;
    let controller = Controller::start(server.client_as("lbipam"));
    create_service(&client, service("web", "LoadBalancer", 80)).await;
    await_service(&client, "web", &["10.0.30.0"], "satisfied").await;

    // Another controller's condition on the same Service survives the release.
    let services: Api<Service> = Api::default_namespaced(client.clone());
    let foreign = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
        "status": {"conditions": [{"type": "example.com/Probed", "status": "True", "reason": "ok", "message": "",
        "lastTransitionTime": "2024-01-01T00:00:00Z"}]}});
    services
        .patch_status("web", &PatchParams::apply("prober"), &Patch::Apply(&foreign))
        .await
        .expect("foreign condition");

    let to_cluster_ip = json!({"spec": {"type": "ClusterIP"}});
    services.patch("web", &PatchParams::default(), &Patch::Merge(&to_cluster_ip)).await.expect("type change");
    let web = eventually("ingress and condition removed", || async {
        let svc = get_service(&client, "web").await;
        if ingress_ips(&svc).is_empty() && service_condition(&svc).is_none() {
            Ok(svc)
        } else {
            Err(format!("{:?}", svc.status))
        }
    })
    .await;
    let kept = condition(web.status.as_ref().and_then(|s| s.conditions.as_ref()), "example.com/Probed");
    assert!(kept.is_some(), "the prober's condition is kept: {:?}", web.status);
    eventually("the address returns to the pool", || async {
        let used = pool_condition(&client, "blue", "cilium.io/IPsUsed").await.map(|c| c.message);
        if used.as_deref() == Some("0") {
            Ok(())
        } else {
            Err(format!("{used:?}"))
        }
    })
    .await;
    assert_eq!(controller.metrics.releases.get(), 1);

    // Back to LoadBalancer: addressed again.
    services
        .patch("web", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"type": "LoadBalancer"}})))
        .await
        .unwrap();
    await_service(&client, "web", &["10.0.30.0"], "satisfied").await;
    controller.stop().await;
}

#[tokio::test]
async fn deleting_pools_moves_services_then_leaves_them_unsatisfied() {
    let (server, client) = setup().await;
    create_pool(&client, "first", &["10.0.41.0/24"]).await;
    create_pool(&client, "second", &["10.0.42.10-10.0.42.20"]).await;
    let controller = Controller::start(server.client_as("lbipam"));
    create_service(&client, service("web", "LoadBalancer", 80)).await;
    await_service(&client, "web", &["10.0.41.0"], "satisfied").await;

    delete_pool(&client, "first").await;
    let moved = await_service(&client, "web", &["10.0.42.10"], "satisfied").await;
    assert!(service_condition(&moved).unwrap().message.contains("second"));

    delete_pool(&client, "second").await;
    let left = await_service(&client, "web", &[], "no_pool").await;
    assert_eq!(service_condition(&left).unwrap().status, "False");
    controller.stop().await;
}

#[tokio::test]
async fn an_overlapping_newer_pool_conflicts_until_the_overlap_is_gone() {
    let (server, client) = setup().await;
    let controller = Controller::start(server.client_as("lbipam"));
    create_pool(&client, "old", &["10.0.50.0/24"]).await;
    create_pool(&client, "new", &["10.0.50.128/25"]).await;
    let conflict = eventually("`new` conflicts", || async {
        match pool_condition(&client, "new", "cilium.io/PoolConflict").await {
            Some(c) if c.status == "True" => Ok(c),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(conflict.reason, "cidr_overlap");
    assert!(
        conflict.message.contains("old") && conflict.message.contains("10.0.50.0 - 10.0.50.255"),
        "{}",
        conflict.message
    );
    assert_eq!(
        pool_condition(&client, "old", "cilium.io/PoolConflict").await.map(|c| c.status).as_deref(),
        Some("False")
    );
    eventually("a PoolConflict warning on `new`", || async {
        let events = events_for(&client, "default", "new").await;
        let found = events.iter().any(|e| e.reason.as_deref() == Some(event_reason::POOL_CONFLICT));
        if found {
            Ok(())
        } else {
            Err(format!("{events:?}"))
        }
    })
    .await;
    eventually("conflicting-pools gauge", || async {
        let n = controller.metrics.conflicting_pools.get();
        if n == 1 {
            Ok(())
        } else {
            Err(n.to_string())
        }
    })
    .await;

    assert_rbac_covers(&server, "lbipam");

    delete_pool(&client, "old").await;
    let resolved = eventually("`new` recovers", || async {
        match pool_condition(&client, "new", "cilium.io/PoolConflict").await {
            Some(c) if c.status == "False" => Ok(c),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(resolved.reason, "resolved");
    create_service(&client, service("web", "LoadBalancer", 80)).await;
    await_service(&client, "web", &["10.0.50.128"], "satisfied").await;
    controller.stop().await;
}

#[tokio::test]
async fn a_restarted_controller_keeps_existing_addresses_and_writes_nothing_for_them() {
    let (server, client) = setup().await;
    create_pool(&client, "blue", &["10.0.60.0/24"]).await;
    let first = Controller::start(server.client_as("lbipam-1"));
    create_service(&client, service("a", "LoadBalancer", 80)).await;
    await_service(&client, "a", &["10.0.60.0"], "satisfied").await;
    create_service(&client, service("b", "LoadBalancer", 80)).await;
    await_service(&client, "b", &["10.0.60.1"], "satisfied").await;
    first.stop().await;

    // While no controller runs: `a` goes away (freeing .0) and `c` arrives. A controller that
    // allocated from scratch would move `b` to .0; the restarted one keeps `b` and gives `c` .0.
    Api::<Service>::default_namespaced(client.clone()).delete("a", &DeleteParams::default()).await.unwrap();
    create_service(&client, service("c", "LoadBalancer", 80)).await;
    let b_before = get_service(&client, "b").await;

    let second = Controller::start(server.client_as("lbipam-2"));
    await_service(&client, "c", &["10.0.60.0"], "satisfied").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b_after = get_service(&client, "b").await;
    assert_eq!(ingress_ips(&b_after), ["10.0.60.1"]);
    assert_eq!(b_after.resource_version(), b_before.resource_version(), "`b` was not rewritten");
    let patched = service_status_patches(&server, "lbipam-2");
    assert_eq!(patched, ["patch c"], "the restarted controller wrote only the new Service");
    assert!(second.metrics.passes.get() >= 1);
    second.stop().await;
}

/// Every API access `client_name` made is granted by the operator's ClusterRole in
/// `manifests/rbac-operator.yaml`.
fn assert_rbac_covers(server: &ApiServer, client_name: &str) {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/rbac-operator.yaml")).unwrap();
    let docs: Vec<serde_json::Value> = serde_saphyr::from_str_multiple(&text).expect("RBAC manifest parses");
    let role = docs.iter().find(|d| d["kind"] == "ClusterRole").expect("a ClusterRole");
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(String::from)).collect()
    };
    let accesses: Vec<_> = server.accesses().into_iter().filter(|a| a.client == client_name).collect();
    assert!(!accesses.is_empty(), "{client_name} made no API calls");
    for a in accesses {
        let resource =
            if a.subresource.is_empty() { a.resource.clone() } else { format!("{}/{}", a.resource, a.subresource) };
        let granted = role["rules"].as_array().unwrap().iter().any(|r| {
            strings(&r["apiGroups"]).contains(&a.group)
                && strings(&r["resources"]).contains(&resource)
                && strings(&r["verbs"]).contains(&a.verb)
                && (r.get("resourceNames").is_none() || strings(&r["resourceNames"]).contains(&a.name))
        });
        assert!(granted, "not granted by the operator ClusterRole: {a:?}");
    }
}

/// Writes a kubeconfig for the HTTP listener and runs `/usr/bin/kubectl` (bounded by `timeout`).
async fn kubectl(port: u16, args: &[&str]) -> String {
    let home = tempfile::tempdir().expect("temp HOME");
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: http://127.0.0.1:{port}\ncontexts:\n- name: t\n  context:\n    cluster: t\n    user: t\ncurrent-context: t\nusers:\n- name: t\n  user: {{}}\n"
    );
    std::fs::write(home.path().join("kubeconfig"), kubeconfig).unwrap();
    let owned: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("/usr/bin/timeout")
            .arg("60")
            .arg("/usr/bin/kubectl")
            .args(&owned)
            .arg(format!("--cache-dir={}", home.path().join("cache").display()))
            .env_clear()
            .env("HOME", home.path())
            .env("PATH", "/usr/bin:/bin")
            .env("KUBECONFIG", home.path().join("kubeconfig"))
            .output()
            .expect("run kubectl")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "kubectl {args:?}: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_ippools_shows_disabled_conflicting_and_available() {
    let (server, client) = setup().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let http = server.spawn(listener);
    let controller = Controller::start(server.client_as("lbipam"));
    create_pool(&client, "old", &["10.0.70.0/28"]).await;
    create_pool(&client, "new", &["10.0.70.8/29"]).await;
    eventually("both pools have status", || async {
        let old = pool_condition(&client, "old", "cilium.io/IPsAvailable").await;
        let new = pool_condition(&client, "new", "cilium.io/PoolConflict").await;
        if old.is_some() && new.as_ref().is_some_and(|c| c.status == "True") {
            Ok(())
        } else {
            Err(format!("{old:?} {new:?}"))
        }
    })
    .await;

    // The in-memory server renders Tables with name and age only, so kubectl evaluates the CRD's own
    // printer-column JSONPaths itself (custom-columns): the same paths `kubectl get ippools` shows
    // on a real API server.
    let crd = beeline::crds::cilium_load_balancer_ip_pool::crd();
    let version = crd.spec.versions.iter().find(|v| v.name == "v2").expect("v2");
    let columns: Vec<String> = std::iter::once("NAME:.metadata.name".to_string())
        .chain(
            version
                .additional_printer_columns
                .iter()
                .flatten()
                .filter(|c| c.type_ != "date")
                .map(|c| format!("{}:{}", c.name.to_uppercase().replace(' ', "_"), c.json_path)),
        )
        .collect();
    let table = kubectl(port, &["get", "ippools", "-o", &format!("custom-columns={}", columns.join(","))]).await;
    let rows: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0], ["NAME", "DISABLED", "CONFLICTING", "IPS_AVAILABLE"], "{table}");
    let row = |name: &str| rows.iter().find(|r| r[0] == name).unwrap_or_else(|| panic!("{name} in {table}")).clone();
    assert_eq!(row("old")[1..], ["false", "False", "16"], "{table}");
    assert_eq!(row("new")[1..3], ["false", "True"], "{table}");
    controller.stop().await;
    http.abort();
}

fn yaml_docs(path: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).expect("example exists");
    serde_saphyr::from_str_multiple(&text).expect("example parses")
}

#[tokio::test]
async fn the_example_pool_and_services_are_all_satisfied() {
    let (server, client) = setup().await;
    let controller = Controller::start(server.client_as("lbipam"));
    for doc in yaml_docs("examples/lb-ip-pool-range.yaml") {
        let pool: CiliumLoadBalancerIPPool = serde_json::from_value(doc).unwrap();
        Api::<CiliumLoadBalancerIPPool>::all(client.clone()).create(&PostParams::default(), &pool).await.unwrap();
    }
    let mut docs = yaml_docs("examples/lb-ipam/services.yaml").into_iter();
    assert_eq!(docs.len(), 4);
    // `web` alone first: which Service gets the pool's first free address depends on the order the
    // controller sees them in, and a pass may take several at once.
    create_service(&client, serde_json::from_value(docs.next().unwrap()).unwrap()).await;
    // allowFirstLastIPs: No keeps 10.0.10.0 back.
    let web = await_service(&client, "web", &["10.0.10.1"], "satisfied").await;
    for doc in docs {
        create_service(&client, serde_json::from_value(doc).unwrap()).await;
    }
    // The two dns Services share one address.
    await_service(&client, "pinned", &["20.0.20.150"], "satisfied").await;
    let udp = eventually("dns-udp addressed", || async {
        let svc = get_service(&client, "dns-udp").await;
        let ips = ingress_ips(&svc);
        if ips.len() == 1 {
            Ok(ips)
        } else {
            Err(format!("{:?}", svc.status))
        }
    })
    .await;
    assert_ne!(udp, ingress_ips(&web));
    let udp: Vec<&str> = udp.iter().map(String::as_str).collect();
    await_service(&client, "dns-metrics", &udp, "satisfied").await;
    controller.stop().await;
}
