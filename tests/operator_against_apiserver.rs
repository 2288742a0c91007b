//! The operator's start-up against the in-memory Kubernetes API: CRD installation (first install
//! and an idempotent re-install, as on upgrade) and two replicas electing exactly one leader.

use std::time::Duration;

use beeline::operator::{
    crd_install::{self, InstallOptions},
    leader::{ElectionConfig, LeaderElector},
};
use beeline_apiserver::{ApiServer, ServerConfig};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn installs_every_crd_and_reinstalls_idempotently() {
    let server = ApiServer::new(ServerConfig::default());
    let client = server.client_as("operator");
    let crds = beeline::crds::all();
    let options = InstallOptions { timeout: Duration::from_secs(20), ..Default::default() };
    crd_install::install(&client, &crds, &options).await.expect("first install");
    crd_install::install(&client, &crds, &options).await.expect("re-install (upgrade) is idempotent");

    // Only what the ClusterRole grants: apply (patch) by name, plus list/watch when waiting.
    for access in server.accesses().into_iter().filter(|a| a.client == "operator") {
        assert_eq!(access.resource, "customresourcedefinitions", "{access:?}");
        assert!(["patch", "list", "watch"].contains(&access.verb.as_str()), "{access:?}");
    }

    let api: Api<CustomResourceDefinition> = Api::all(client);
    for crd in &crds {
        let name = crd.metadata.name.as_deref().unwrap();
        let stored = api.get(name).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        let managers: Vec<_> =
            stored.metadata.managed_fields.iter().flatten().filter_map(|m| m.manager.as_deref()).collect();
        assert!(managers.contains(&crd_install::FIELD_MANAGER), "{name} managed by {managers:?}");
        let established = stored
            .status
            .and_then(|s| s.conditions)
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Established" && c.status == "True");
        assert!(established, "{name} is Established");
    }
}

#[tokio::test]
async fn two_replicas_elect_exactly_one_leader() {
    let server = ApiServer::new(ServerConfig::default());
    let namespace = k8s_openapi::api::core::v1::Namespace {
        metadata: kube::api::ObjectMeta { name: Some("beeline-system".into()), ..Default::default() },
        ..Default::default()
    };
    Api::all(server.client()).create(&kube::api::PostParams::default(), &namespace).await.unwrap();
    let shutdown = CancellationToken::new();
    let mut replicas = Vec::new();
    for id in ["replica-a", "replica-b"] {
        let mut config = ElectionConfig::new("beeline-system", id);
        config.retry_period = Duration::from_millis(100);
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(LeaderElector::new(server.client(), config).run(tx, shutdown.clone()));
        replicas.push((rx, task));
    }
    // Bounded wait for a leader, then a few renew periods to see that it stays alone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !replicas.iter().any(|(rx, _)| *rx.borrow()) {
        assert!(tokio::time::Instant::now() < deadline, "no leader elected within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..10 {
        let leaders = replicas.iter().filter(|(rx, _)| *rx.borrow()).count();
        assert_eq!(leaders, 1, "exactly one leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    for (_, task) in replicas {
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("stops").unwrap().expect("clean shutdown");
    }
}
