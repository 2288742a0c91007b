//! The in-memory API driven only through a real kube 5 `Client` and kube-runtime.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, PodSpec, Service};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

fn cm(name: &str, data: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        data: Some(BTreeMap::from([("k".to_string(), data.to_string())])),
        ..Default::default()
    }
}

struct Ctx {
    client: Client,
    reconciles: AtomicUsize,
    cleanups: AtomicUsize,
}

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct ReconcileError(#[from] Box<kube::runtime::finalizer::Error<kube::Error>>);

async fn reconcile(w: Arc<Widget>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    ctx.reconciles.fetch_add(1, Ordering::SeqCst);
    let ns = w.namespace().expect("namespaced");
    let widgets: Api<Widget> = Api::namespaced(ctx.client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&widgets, "test.beeline.io/cleanup", w, |event| async {
        match event {
            Finalizer::Apply(w) => {
                let name = w.name_any();
                let pod = Pod {
                    metadata: ObjectMeta {
                        name: Some(format!("{name}-pod")),
                        owner_references: Some(vec![w.controller_owner_ref(&()).expect("owner ref")]),
                        labels: Some(BTreeMap::from([("replicas".into(), w.spec.replicas.to_string())])),
                        ..Default::default()
                    },
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "c".into(),
                            image: Some("busybox".into()),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                pods.patch(
                    &format!("{name}-pod"),
                    &PatchParams::apply("widget-controller").force(),
                    &Patch::Apply(&pod),
                )
                .await?;
                let status = json!({"status": {"observed": w.metadata.generation}});
                widgets.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await?;
                Ok(Action::await_change())
            }
            Finalizer::Cleanup(_) => {
                ctx.cleanups.fetch_add(1, Ordering::SeqCst);
                Ok(Action::await_change())
            }
        }
    })
    .await
    .map_err(|e| ReconcileError(Box::new(e)))
}

#[tokio::test]
async fn controller_reconciles_create_update_child_change_and_delete() {
    let server = server();
    let client = server.client();
    install_crds(&client).await;
    let ctx = Arc::new(Ctx { client: client.clone(), reconciles: AtomicUsize::new(0), cleanups: AtomicUsize::new(0) });
    let widgets: Api<Widget> = Api::default_namespaced(client.clone());
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let controller = Controller::new(widgets.clone(), watcher::Config::default())
        .owns(pods.clone(), watcher::Config::default())
        .run(reconcile, |_, _, _| Action::requeue(Duration::from_millis(200)), ctx.clone())
        .for_each(|_| async {});
    let handle = tokio::spawn(controller);

    // Create: the controller adds its finalizer, creates the child and reports status.
    widgets.create(&PostParams::default(), &Widget::new("w1", WidgetSpec { replicas: 1, note: None })).await.unwrap();
    eventually("child pod and status after create", 100, || async {
        let w = widgets.get("w1").await.unwrap();
        pods.get_opt("w1-pod").await.unwrap().is_some() && w.status.as_ref().is_some_and(|s| s.observed == 1)
    })
    .await;
    let w = widgets.get("w1").await.unwrap();
    assert_eq!(w.finalizers(), ["test.beeline.io/cleanup"]);
    assert_eq!(w.metadata.generation, Some(1), "status and finalizer writes do not bump generation");

    // The status patch round-trips and the controller settles: repeated identical writes are
    // no-ops that keep the resourceVersion, so they trigger nothing.
    let settled_rv = widgets.get("w1").await.unwrap().resource_version();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let count = ctx.reconciles.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ctx.reconciles.load(Ordering::SeqCst), count, "controller kept reconciling a settled object");
    assert_eq!(widgets.get("w1").await.unwrap().resource_version(), settled_rv);

    // Update: a spec change bumps generation and is reconciled.
    let patch = json!({"spec": {"replicas": 3}});
    widgets.patch("w1", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    eventually("status after update", 100, || async {
        let w = widgets.get("w1").await.unwrap();
        let pod = pods.get("w1-pod").await.unwrap();
        w.status.is_some_and(|s| s.observed == 2) && pod.labels().get("replicas").map(String::as_str) == Some("3")
    })
    .await;

    // Owned child change: deleting the pod triggers a reconcile that recreates it.
    let old_uid = pods.get("w1-pod").await.unwrap().uid();
    pods.delete("w1-pod", &DeleteParams::default()).await.unwrap();
    eventually("pod recreated", 100, || async {
        pods.get_opt("w1-pod").await.unwrap().is_some_and(|p| p.uid() != old_uid)
    })
    .await;

    // Delete: the finalizer's cleanup runs, then the object and (by ownerReferences) its pod go.
    widgets.delete("w1", &DeleteParams::default()).await.unwrap();
    eventually("widget and pod gone after cleanup", 100, || async {
        widgets.get_opt("w1").await.unwrap().is_none() && pods.get_opt("w1-pod").await.unwrap().is_none()
    })
    .await;
    assert_eq!(ctx.cleanups.load(Ordering::SeqCst), 1);
    handle.abort();
}

#[tokio::test]
async fn stale_update_is_a_conflict() {
    let client = server().client();
    let cms: Api<ConfigMap> = Api::default_namespaced(client);
    let created = cms.create(&PostParams::default(), &cm("c", "1")).await.unwrap();
    let mut fresh = created.clone();
    fresh.data = Some(BTreeMap::from([("k".to_string(), "2".to_string())]));
    let updated = cms.replace("c", &PostParams::default(), &fresh).await.unwrap();
    assert_ne!(updated.resource_version(), created.resource_version());
    let mut stale = created.clone();
    stale.data = Some(BTreeMap::from([("k".to_string(), "3".to_string())]));
    match cms.replace("c", &PostParams::default(), &stale).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 409);
            assert_eq!(s.reason, "Conflict");
        }
        other => panic!("expected 409 Conflict, got {other:?}"),
    }
    // Errors are real Status objects: NotFound and AlreadyExists.
    match cms.get("missing").await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (404, "NotFound")),
        other => panic!("expected 404, got {other:?}"),
    }
    match cms.create(&PostParams::default(), &cm("c", "x")).await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (409, "AlreadyExists")),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
}

#[tokio::test]
async fn noop_write_keeps_resource_version_and_generate_name_fills_metadata() {
    let client = server().client();
    let cms: Api<ConfigMap> = Api::default_namespaced(client);
    let mut obj = cm("", "1");
    obj.metadata.name = None;
    obj.metadata.generate_name = Some("gen-".into());
    let created = cms.create(&PostParams::default(), &obj).await.unwrap();
    let name = created.name_any();
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    let again = cms.patch(&name, &PatchParams::default(), &Patch::Merge(json!({"data": {"k": "1"}}))).await.unwrap();
    assert_eq!(again.resource_version(), created.resource_version());
    let changed = cms.patch(&name, &PatchParams::default(), &Patch::Merge(json!({"data": {"k": "2"}}))).await.unwrap();
    assert_ne!(changed.resource_version(), created.resource_version());
}

#[tokio::test]
async fn load_balancers_with_local_traffic_policy_get_a_health_check_node_port() {
    let client = server().client();
    let services: Api<Service> = Api::default_namespaced(client);
    let svc = |name: &str, ty: &str, etp: &str| -> Service {
        serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"type": ty, "externalTrafficPolicy": etp, "ports": [{"port": 80}]}}))
        .unwrap()
    };
    let health = |s: &Service| s.spec.as_ref().unwrap().health_check_node_port;
    let node_port = |s: &Service| s.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].node_port.unwrap();
    let local = services.create(&PostParams::default(), &svc("local", "LoadBalancer", "Local")).await.unwrap();
    let (np, hc) = (node_port(&local), health(&local).expect("allocated"));
    assert!((30000..=32767).contains(&hc) && hc != np, "node port {np}, health check {hc}");
    for (name, ty, etp) in [("cluster", "LoadBalancer", "Cluster"), ("np", "NodePort", "Local")] {
        let other = services.create(&PostParams::default(), &svc(name, ty, etp)).await.unwrap();
        assert_eq!(health(&other), None, "{name}");
        assert!(node_port(&other) != hc, "{name}: no port handed out twice");
    }
}

#[tokio::test]
async fn selectors_filter_lists() {
    let client = server().client();
    let pods: Api<Pod> = Api::default_namespaced(client);
    for (name, app, node) in [("a1", "a", "n1"), ("a2", "a", "n2"), ("b1", "b", "n1"), ("c1", "c", "n2")] {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(BTreeMap::from([("app".to_string(), app.to_string())])),
                ..Default::default()
            },
            spec: Some(PodSpec { node_name: Some(node.into()), ..Default::default() }),
            ..Default::default()
        };
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    let names = |l: kube::api::ObjectList<Pod>| l.items.iter().map(|p| p.name_any()).collect::<Vec<_>>();
    let cases = [
        (ListParams::default().labels("app=a"), vec!["a1", "a2"]),
        (ListParams::default().labels("app in (a, b)"), vec!["a1", "a2", "b1"]),
        (ListParams::default().labels("app notin (a),app!=c"), vec!["b1"]),
        (ListParams::default().labels("!app"), vec![]),
        (ListParams::default().fields("spec.nodeName=n1"), vec!["a1", "b1"]),
        (ListParams::default().fields("metadata.name=c1"), vec!["c1"]),
        (ListParams::default().fields("status.phase=Pending").labels("app=b"), vec!["b1"]),
    ];
    for (params, want) in cases {
        assert_eq!(names(pods.list(&params).await.unwrap()), want, "{params:?}");
    }
    // limit/continue pages through everything exactly once.
    let first = pods.list(&ListParams::default().limit(3)).await.unwrap();
    assert_eq!(first.items.len(), 3);
    let token = first.metadata.continue_.clone().expect("continue token");
    let rest = pods.list(&ListParams::default().limit(3).continue_token(&token)).await.unwrap();
    assert_eq!(names(rest), vec!["c1"]);
}

#[tokio::test]
async fn watch_resumes_from_resource_version_and_reports_gone() {
    let server = beeline_apiserver::ApiServer::new(beeline_apiserver::ServerConfig {
        event_log_capacity: 8,
        ..beeline_apiserver::ServerConfig::default()
    });
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    let first = cms.create(&PostParams::default(), &cm("one", "1")).await.unwrap();
    let rv = first.resource_version().unwrap();
    cms.create(&PostParams::default(), &cm("two", "2")).await.unwrap();
    cms.patch("one", &PatchParams::default(), &Patch::Merge(json!({"data": {"k": "9"}}))).await.unwrap();
    let mut stream = cms.watch(&WatchParams::default().timeout(5), &rv).await.unwrap().boxed();
    let mut seen = Vec::new();
    for _ in 0..2 {
        match tokio::time::timeout(Duration::from_secs(5), stream.try_next()).await.unwrap().unwrap() {
            Some(WatchEvent::Added(o)) => seen.push(format!("ADDED {}", o.name_any())),
            Some(WatchEvent::Modified(o)) => seen.push(format!("MODIFIED {}", o.name_any())),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, ["ADDED two", "MODIFIED one"]);

    // Push the first resourceVersion out of the event log: resuming from it is 410 Gone.
    for i in 0..10 {
        cms.patch("two", &PatchParams::default(), &Patch::Merge(json!({"data": {"k": i.to_string()}}))).await.unwrap();
    }
    let mut stream = cms.watch(&WatchParams::default().timeout(5), &rv).await.unwrap().boxed();
    match tokio::time::timeout(Duration::from_secs(5), stream.try_next()).await.unwrap().unwrap() {
        Some(WatchEvent::Error(e)) => assert_eq!(e.code, 410),
        other => panic!("expected a 410 error event, got {other:?}"),
    }
}

#[tokio::test]
async fn bookmarks_arrive_and_streaming_lists_work() {
    let server = server();
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    let created = cms.create(&PostParams::default(), &cm("one", "1")).await.unwrap();
    let list = cms.list(&ListParams::default()).await.unwrap();
    let rv = list.metadata.resource_version.unwrap();
    let mut stream = cms.watch(&WatchParams::default().timeout(10), &rv).await.unwrap().boxed();
    // Nothing changes, so the first event must be a bookmark.
    let bookmark = match tokio::time::timeout(Duration::from_secs(5), stream.try_next()).await.unwrap().unwrap() {
        Some(WatchEvent::Bookmark(b)) => b,
        other => panic!("expected a bookmark, got {other:?}"),
    };
    assert!(
        bookmark.metadata.resource_version.parse::<u64>().unwrap()
            >= created.resource_version().unwrap().parse().unwrap()
    );

    // kube-runtime's streaming-list watcher (sendInitialEvents + initial-events-end bookmark).
    let events = watcher(cms.clone(), watcher::Config::default().streaming_lists());
    let mut events = events.boxed();
    let mut initial = Vec::new();
    for _ in 0..10 {
        match tokio::time::timeout(Duration::from_secs(5), events.try_next()).await.unwrap().unwrap() {
            Some(watcher::Event::Init) => {}
            Some(watcher::Event::InitApply(o)) => initial.push(o.name_any()),
            Some(watcher::Event::InitDone) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(initial, ["one"]);
    cms.create(&PostParams::default(), &cm("two", "2")).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(5), events.try_next()).await.unwrap().unwrap() {
        Some(watcher::Event::Apply(o)) => assert_eq!(o.name_any(), "two"),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn status_subresource_isolates_spec_and_status() {
    let client = server().client();
    install_crds(&client).await;
    let widgets: Api<Widget> = Api::default_namespaced(client);
    let mut w = Widget::new("w", WidgetSpec { replicas: 1, note: None });
    w.status = Some(WidgetStatus { observed: 42 });
    let created = widgets.create(&PostParams::default(), &w).await.unwrap();
    assert_eq!(created.status, None, "status is dropped on create");
    // A status write changes status only, and not generation.
    let mut s = created.clone();
    s.status = Some(WidgetStatus { observed: 7 });
    s.spec.replicas = 99;
    let after = widgets.replace_status("w", &PostParams::default(), &s).await.unwrap();
    assert_eq!((after.spec.replicas, after.status.clone().unwrap().observed), (1, 7));
    assert_eq!(after.metadata.generation, Some(1));
    // A main write changes spec only, and bumps generation.
    let mut m = after.clone();
    m.spec.replicas = 2;
    m.status = Some(WidgetStatus { observed: 0 });
    let after = widgets.replace("w", &PostParams::default(), &m).await.unwrap();
    assert_eq!((after.spec.replicas, after.status.unwrap().observed), (2, 7));
    assert_eq!(after.metadata.generation, Some(2));
}

#[tokio::test]
async fn finalizers_hold_deletion() {
    let client = server().client();
    let cms: Api<ConfigMap> = Api::default_namespaced(client);
    let mut obj = cm("f", "1");
    obj.metadata.finalizers = Some(vec!["test/hold".into()]);
    cms.create(&PostParams::default(), &obj).await.unwrap();
    cms.delete("f", &DeleteParams::default()).await.unwrap();
    let held = cms.get("f").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    cms.patch("f", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}}))).await.unwrap();
    assert!(cms.get_opt("f").await.unwrap().is_none());
}

#[tokio::test]
async fn server_side_apply_merges_two_managers_and_reports_conflicts() {
    let client = server().client();
    install_crds(&client).await;
    let nodes: Api<PoolNode> = Api::all(client);
    let agent = |requested: &[&str]| {
        json!({"apiVersion": "test.beeline.io/v1", "kind": "PoolNode", "metadata": {"name": "n1"},
               "spec": {"ipam": {"pools": {"requested": requested}}}})
    };
    let operator = json!({"apiVersion": "test.beeline.io/v1", "kind": "PoolNode", "metadata": {"name": "n1"},
                          "spec": {"ipam": {"pools": {"allocated": ["10.0.0.0/24"]}}}});
    nodes.patch("n1", &PatchParams::apply("agent"), &Patch::Apply(agent(&["default"]))).await.unwrap();
    nodes.patch("n1", &PatchParams::apply("operator"), &Patch::Apply(&operator)).await.unwrap();
    let n = nodes.get("n1").await.unwrap();
    assert_eq!(n.spec.ipam.pools.requested, Some(vec!["default".to_string()]));
    assert_eq!(n.spec.ipam.pools.allocated, Some(vec!["10.0.0.0/24".to_string()]));
    let managers: Vec<String> = n.managed_fields().iter().filter_map(|m| m.manager.clone()).collect();
    assert_eq!(managers, ["agent", "operator"]);

    // The agent re-applies with a new request: still its field, the operator's stays.
    nodes.patch("n1", &PatchParams::apply("agent"), &Patch::Apply(agent(&["default", "extra"]))).await.unwrap();
    let n = nodes.get("n1").await.unwrap();
    assert_eq!(n.spec.ipam.pools.allocated, Some(vec!["10.0.0.0/24".to_string()]));

    // The operator writing the agent's field is a conflict, unless forced.
    let clash = json!({"apiVersion": "test.beeline.io/v1", "kind": "PoolNode", "metadata": {"name": "n1"},
                       "spec": {"ipam": {"pools": {"allocated": ["10.0.0.0/24"], "requested": []}}}});
    match nodes.patch("n1", &PatchParams::apply("operator"), &Patch::Apply(&clash)).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
            assert!(s.message.contains("agent") && s.message.contains(".spec.ipam.pools.requested"), "{}", s.message);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let forced = nodes.patch("n1", &PatchParams::apply("operator").force(), &Patch::Apply(&clash)).await.unwrap();
    assert_eq!(forced.spec.ipam.pools.requested, Some(vec![]));
}

#[tokio::test]
async fn snapshot_round_trip_and_access_record() {
    let server = server();
    let client = server.client_as("test-operator");
    install_crds(&client).await;
    let widgets: Api<Widget> = Api::default_namespaced(client.clone());
    widgets.create(&PostParams::default(), &Widget::new("keep", WidgetSpec { replicas: 4, note: None })).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("store.json");
    server.save(&file).unwrap();

    let restored = common::server();
    restored.load(&file).unwrap();
    let widgets: Api<Widget> = Api::default_namespaced(restored.client());
    assert_eq!(widgets.get("keep").await.unwrap().spec.replicas, 4);

    let rules = server.recorder().rules();
    let created = (
        "test-operator".to_string(),
        "create".to_string(),
        "test.beeline.io".to_string(),
        "widgets".to_string(),
        String::new(),
    );
    assert!(rules.contains(&created), "{rules:?}");
    assert!(rules.iter().any(|r| r.1 == "create" && r.3 == "customresourcedefinitions"));
}

#[tokio::test]
async fn invalid_custom_resources_are_refused_naming_the_field() {
    let client = server().client();
    install_crds(&client).await;
    let widgets: Api<Widget> = Api::default_namespaced(client.clone());
    let bad = json!({"apiVersion": "test.beeline.io/v1", "kind": "Widget", "metadata": {"name": "bad"}, "spec": {"replicas": "many"}});
    let expect_invalid = |r: Result<Widget, kube::Error>| match r {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
            assert!(s.message.contains("spec.replicas"), "{}", s.message);
        }
        other => panic!("expected 422 Invalid, got {other:?}"),
    };
    // Through create (server-side apply creates) and through a patch of a valid object.
    expect_invalid(widgets.patch("bad", &PatchParams::apply("t"), &Patch::Apply(&bad)).await);
    assert!(widgets.get_opt("bad").await.unwrap().is_none());
    widgets.create(&PostParams::default(), &Widget::new("good", WidgetSpec { replicas: 1, note: None })).await.unwrap();
    expect_invalid(
        widgets.patch("good", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": "x"}}))).await,
    );
    let missing = json!({"spec": {"replicas": null}});
    match widgets.patch("good", &PatchParams::default(), &Patch::Merge(&missing)).await {
        Err(kube::Error::Api(s)) => assert!(s.code == 422 && s.message.contains("spec.replicas"), "{}", s.message),
        other => panic!("expected a required-field error, got {other:?}"),
    }
    assert_eq!(widgets.get("good").await.unwrap().spec.replicas, 1, "refused writes change nothing");
}

#[tokio::test]
async fn cluster_ips_follow_ip_family_policy_over_a_dual_stack_service_range() {
    let cidrs = beeline_apiserver::service_ips::ServiceCidrs::parse("10.96.0.0/16,fd00:10:96::/112").unwrap();
    let server = beeline_apiserver::ApiServer::new(beeline_apiserver::ServerConfig {
        service_cidrs: cidrs,
        ..beeline_apiserver::ServerConfig::default()
    });
    let services: Api<Service> = Api::default_namespaced(server.client());
    let create = |name: &str, extra: serde_json::Value| {
        let mut spec = json!({"ports": [{"port": 80}]});
        spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        serde_json::from_value::<Service>(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
    };
    let fields = |s: &Service| {
        let spec = s.spec.clone().unwrap();
        (spec.cluster_ips.unwrap(), spec.ip_families.unwrap(), spec.ip_family_policy.unwrap())
    };
    let pp = PostParams::default();

    let plain = services.create(&pp, &create("plain", json!({}))).await.unwrap();
    assert_eq!(fields(&plain), (vec!["10.96.0.10".into()], vec!["IPv4".into()], "SingleStack".into()));
    let v6 = create("v6", json!({"ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv6"]}));
    let v6 = services.create(&pp, &v6).await.unwrap();
    assert_eq!(fields(&v6), (vec!["fd00:10:96::a".into()], vec!["IPv6".into()], "SingleStack".into()));
    assert_eq!(v6.spec.as_ref().unwrap().cluster_ip.as_deref(), Some("fd00:10:96::a"));
    let dual = services.create(&pp, &create("dual", json!({"ipFamilyPolicy": "PreferDualStack"}))).await.unwrap();
    assert_eq!(
        fields(&dual),
        (
            vec!["10.96.0.11".into(), "fd00:10:96::b".into()],
            vec!["IPv4".into(), "IPv6".into()],
            "PreferDualStack".into()
        )
    );

    // Invalid family requests: kube-apiserver's 422 with the field named.
    let bad = create("bad", json!({"ipFamilies": ["IPv4", "IPv6"]}));
    match services.create(&pp, &bad).await {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 422, "{e:?}");
            assert!(e.message.contains("IP family policy must be RequireDualStack or PreferDualStack"), "{e:?}");
        }
        other => panic!("expected 422, got {other:?}"),
    }

    // A single-stack IPv4 cluster refuses IPv6 and RequireDualStack.
    let v4_only = beeline_apiserver::ApiServer::default();
    let services: Api<Service> = Api::default_namespaced(v4_only.client());
    for (name, extra, text) in [
        ("v6", json!({"ipFamilies": ["IPv6"]}), "not configured on this cluster"),
        ("req", json!({"ipFamilyPolicy": "RequireDualStack"}), "not configured for dual-stack services"),
    ] {
        match services.create(&pp, &create(name, extra)).await {
            Err(kube::Error::Api(e)) => assert!(e.code == 422 && e.message.contains(text), "{name}: {e:?}"),
            other => panic!("{name}: expected 422, got {other:?}"),
        }
    }
    let prefer = services.create(&pp, &create("prefer", json!({"ipFamilyPolicy": "PreferDualStack"}))).await.unwrap();
    assert_eq!(fields(&prefer).1, vec!["IPv4".to_string()], "PreferDualStack falls back to the one family");
}
