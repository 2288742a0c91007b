//! CRD installation at operator start, against a scripted API server: the server-side-apply
//! requests for every cilium.io CRD, waiting for Established, and the refusals.

mod operator_fixtures;

use std::time::Duration;

use beeline::operator::crd_install::{self, CrdInstallError, InstallOptions};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use operator_fixtures::{mock_client, respond_json, respond_status, respond_unreachable, respond_watch, ApiServer};
use serde_json::{json, Value};

const CRDS_PATH: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";

fn options(timeout_secs: u64, attempts: u32) -> InstallOptions {
    InstallOptions {
        timeout: Duration::from_secs(timeout_secs),
        apply_attempts: attempts,
        initial_backoff: Duration::from_millis(500),
    }
}

fn name(crd: &CustomResourceDefinition) -> String {
    crd.metadata.name.clone().unwrap()
}

/// The CRD as the API server returns it: what was applied, plus status conditions.
fn with_status(crd: &CustomResourceDefinition, conditions: &[(&str, &str, &str)]) -> Value {
    let mut v = serde_json::to_value(crd).unwrap();
    v["metadata"]["resourceVersion"] = json!("7");
    let conds: Vec<Value> = conditions
        .iter()
        .map(|(t, s, r)| json!({"type": t, "status": s, "reason": r, "message": format!("{r} message")}))
        .collect();
    v["status"] = json!({"conditions": conds, "acceptedNames": {"kind": "", "plural": ""}, "storedVersions": []});
    v
}

fn established(crd: &CustomResourceDefinition) -> Value {
    with_status(crd, &[("NamesAccepted", "True", "NoConflicts"), ("Established", "True", "InitialNamesAccepted")])
}

fn installing(crd: &CustomResourceDefinition) -> Value {
    with_status(crd, &[("NamesAccepted", "True", "NoConflicts"), ("Established", "False", "Installing")])
}

/// Asserts the next request is a server-side apply of `crd` by the operator's field manager.
async fn expect_apply(api: &mut ApiServer, crd: &CustomResourceDefinition) -> operator_fixtures::Responder {
    let (seen, responder) = api.expect("PATCH", &format!("{CRDS_PATH}/{}", name(crd))).await;
    assert_eq!(seen.content_type.as_deref(), Some("application/apply-patch+yaml"), "{seen:?}");
    assert_eq!(seen.query.get("fieldManager").map(String::as_str), Some("beeline-operator"));
    assert_eq!(seen.query.get("force").map(String::as_str), Some("true"));
    assert_eq!(seen.body, serde_json::to_value(crd).unwrap(), "the applied object is the generated CRD");
    assert_eq!(seen.body["apiVersion"], "apiextensions.k8s.io/v1");
    assert_eq!(seen.body["kind"], "CustomResourceDefinition");
    responder
}

/// Asserts the next request is the watcher's initial list of the one CRD named `crd`.
async fn expect_list(api: &mut ApiServer, crd: &str) -> operator_fixtures::Responder {
    let (seen, responder) = api.expect("GET", CRDS_PATH).await;
    assert!(!seen.is_watch(), "expected a list: {seen:?}");
    assert_eq!(seen.query.get("fieldSelector").map(String::as_str), Some(format!("metadata.name={crd}").as_str()));
    responder
}

async fn expect_watch(api: &mut ApiServer, crd: &str) -> operator_fixtures::Responder {
    let (seen, responder) = api.expect("GET", CRDS_PATH).await;
    assert!(seen.is_watch(), "expected a watch: {seen:?}");
    assert_eq!(seen.query.get("fieldSelector").map(String::as_str), Some(format!("metadata.name={crd}").as_str()));
    responder
}

fn crd_list(items: Vec<Value>) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinitionList",
        "metadata": {"resourceVersion": "10"}, "items": items,
    })
}

type Install = tokio::task::JoinHandle<Result<(), CrdInstallError>>;

fn start_install(options: InstallOptions) -> (Vec<CustomResourceDefinition>, Install, ApiServer) {
    let (client, api) = mock_client();
    let crds = beeline::crds::all();
    let to_install = crds.clone();
    let task = tokio::spawn(async move { crd_install::install(&client, &to_install, &options).await });
    (crds, task, api)
}

#[tokio::test(start_paused = true)]
async fn applies_all_seven_crds_with_server_side_apply() {
    let (crds, install, mut api) = start_install(options(60, 3));
    assert_eq!(crds.len(), 7);
    for crd in &crds {
        let responder = expect_apply(&mut api, crd).await;
        respond_json(responder, 200, &established(crd));
    }
    install.await.unwrap().expect("install succeeds");
    // Already Established on apply: no watch is needed, and nothing else is sent.
    api.expect_no_more_requests().await;
}

#[tokio::test(start_paused = true)]
async fn waits_until_each_crd_is_established() {
    let (crds, install, mut api) = start_install(options(60, 3));
    // The first two are new: the API server accepts them but has not established them yet.
    for (i, crd) in crds.iter().enumerate() {
        let responder = expect_apply(&mut api, crd).await;
        respond_json(responder, 200, &if i < 2 { installing(crd) } else { established(crd) });
    }
    // First CRD: still installing when listed, Established by a later watch event.
    let first = name(&crds[0]);
    respond_json(expect_list(&mut api, &first).await, 200, &crd_list(vec![installing(&crds[0])]));
    respond_watch(expect_watch(&mut api, &first).await, &[("MODIFIED", established(&crds[0]))]);
    // Second CRD: Established by the time it is listed.
    let second = name(&crds[1]);
    respond_json(expect_list(&mut api, &second).await, 200, &crd_list(vec![established(&crds[1])]));
    install.await.unwrap().expect("install succeeds");
}

#[tokio::test(start_paused = true)]
async fn refuses_when_forbidden_and_names_the_crd() {
    let (crds, install, mut api) = start_install(options(60, 3));
    let responder = expect_apply(&mut api, &crds[0]).await;
    respond_status(
        responder,
        403,
        "Forbidden",
        "customresourcedefinitions.apiextensions.k8s.io \"ciliumnodes.cilium.io\" is forbidden: User \
         \"system:serviceaccount:beeline-system:beeline-operator\" cannot patch resource",
    );
    let err = install.await.unwrap().expect_err("forbidden must refuse the start");
    assert!(matches!(err, CrdInstallError::Forbidden { .. }), "{err:?}");
    assert_eq!(err.crd(), "ciliumnodes.cilium.io");
    let message = err.to_string();
    assert!(message.starts_with("cannot install CRD ciliumnodes.cilium.io: forbidden"), "{message}");
    assert!(message.contains("cannot patch resource"), "carries the API server's reason: {message}");
    // A forbidden apply is not retried, and the other CRDs are not attempted.
    api.expect_no_more_requests().await;
}

#[tokio::test(start_paused = true)]
async fn refuses_when_a_crd_never_becomes_established() {
    let (crds, install, mut api) = start_install(options(20, 3));
    for crd in &crds {
        let responder = expect_apply(&mut api, crd).await;
        respond_json(responder, 200, &installing(crd));
    }
    let first = name(&crds[0]);
    let stuck = with_status(
        &crds[0],
        &[("NamesAccepted", "False", "ListKindConflict"), ("Established", "False", "NotAccepted")],
    );
    respond_json(expect_list(&mut api, &first).await, 200, &crd_list(vec![stuck]));
    // The watch stays open and silent until the deadline.
    let _open_watch = expect_watch(&mut api, &first).await;
    let started = tokio::time::Instant::now();
    let err = install.await.unwrap().expect_err("never Established must refuse the start");
    assert!(started.elapsed() <= Duration::from_secs(20), "bounded by the install timeout");
    assert!(matches!(err, CrdInstallError::NotEstablished { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.starts_with("CRD ciliumnodes.cilium.io did not become Established within 20s"), "{message}");
    assert!(message.contains("NamesAccepted=False (ListKindConflict"), "says what blocks it: {message}");
}

#[tokio::test(start_paused = true)]
async fn refuses_when_the_api_server_stays_unreachable() {
    let (crds, install, mut api) = start_install(options(60, 3));
    for _ in 0..3 {
        respond_unreachable(expect_apply(&mut api, &crds[0]).await);
    }
    let err = install.await.unwrap().expect_err("unreachable must refuse the start");
    assert!(matches!(err, CrdInstallError::Unreachable { attempts: 3, .. }), "{err:?}");
    assert!(err
        .to_string()
        .starts_with("cannot install CRD ciliumnodes.cilium.io: API server unreachable after 3 attempts"));
    api.expect_no_more_requests().await;
}

#[tokio::test(start_paused = true)]
async fn retries_transient_failures() {
    let (crds, install, mut api) = start_install(options(60, 3));
    respond_status(expect_apply(&mut api, &crds[0]).await, 503, "ServiceUnavailable", "etcd leader changed");
    respond_unreachable(expect_apply(&mut api, &crds[0]).await);
    for crd in &crds {
        let responder = expect_apply(&mut api, crd).await;
        respond_json(responder, 200, &established(crd));
    }
    install.await.unwrap().expect("install succeeds after retries");
}

#[tokio::test(start_paused = true)]
async fn a_crd_deleted_while_waiting_is_reported() {
    let (crds, install, mut api) = start_install(options(60, 3));
    for (i, crd) in crds.iter().enumerate() {
        let responder = expect_apply(&mut api, crd).await;
        respond_json(responder, 200, &if i == 0 { installing(crd) } else { established(crd) });
    }
    respond_json(expect_list(&mut api, &name(&crds[0])).await, 200, &crd_list(vec![]));
    let err = install.await.unwrap().expect_err("deleted must refuse the start");
    assert!(matches!(err, CrdInstallError::Deleted { .. }), "{err:?}");
    assert_eq!(err.crd(), "ciliumnodes.cilium.io");
}
