use super::*;
use crate::controllers::test_util::eventually;
use beeline_apiserver::ApiServer;
use k8s_openapi::api::core::v1::{NodeCondition, NodeStatus};
use kube::api::ObjectMeta;

fn node(name: &str, ready: bool) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([(HOSTNAME_LABEL.to_string(), name.to_string())].into()),
            ..Default::default()
        },
        spec: None,
        status: Some(NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

fn pod_with_selector(selector: Option<&str>) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "p"},
        "spec": {"containers": [], "nodeSelector": selector.map(|n| json!({HOSTNAME_LABEL: n}))}
    }))
    .unwrap()
}

#[test]
fn scheduler_round_robins_over_ready_nodes_and_honours_the_hostname_selector() {
    let nodes = [node("b", true), node("a", true), node("down", false)];
    let mut cursor = 0;
    let free = pod_with_selector(None);
    let picks: Vec<String> = (0..4).map(|_| pick_node(&free, &nodes, &mut cursor).unwrap()).collect();
    assert_eq!(picks, ["a", "b", "a", "b"]);
    let pinned = pod_with_selector(Some("b"));
    assert_eq!(pick_node(&pinned, &nodes, &mut cursor).unwrap(), "b");
    assert_eq!(pick_node(&pinned, &nodes, &mut cursor).unwrap(), "b");
    let err = pick_node(&pod_with_selector(Some("down")), &nodes, &mut cursor).unwrap_err();
    assert!(err.contains("0/3 nodes are available"), "{err}");
}

async fn setup() -> (ApiServer, Client) {
    let server = ApiServer::default();
    let client = server.client();
    for name in ["kind-control-plane", "kind-worker"] {
        Api::<Node>::all(client.clone()).create(&PostParams::default(), &node(name, true)).await.unwrap();
    }
    (server, client)
}

fn deployment(replicas: i32, image: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"nodeSelector": {HOSTNAME_LABEL: "kind-worker"},
                                       "containers": [{"name": "web", "image": image,
                                                       "ports": [{"name": "http", "containerPort": 8080}]}]}}}
    }))
    .unwrap()
}

/// What a kubelet reports for a running pod.
async fn run_pods(client: &Client, first_ip: u8) {
    let pods = Api::<Pod>::namespaced(client.clone(), "default");
    for (i, p) in pods.list(&ListParams::default()).await.unwrap().items.iter().enumerate() {
        if p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some() {
            continue;
        }
        let ip = format!("10.0.1.{}", usize::from(first_ip) + i);
        let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                                       "conditions": [{"type": "Ready", "status": "True"}]}});
        pods.patch_status(&p.name_any(), &PatchParams::default(), &Patch::Merge(status)).await.unwrap();
    }
}

async fn list_rv(client: &Client) -> String {
    Api::<Pod>::all(client.clone()).list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap()
}

#[tokio::test]
async fn deployment_to_pods_to_endpointslices_through_the_api() {
    let (_server, client) = setup().await;
    let mut c = Controllers::default();
    let deployments = Api::<Deployment>::namespaced(client.clone(), "default");
    let pods = Api::<Pod>::namespaced(client.clone(), "default");
    let rs_api = Api::<ReplicaSet>::namespaced(client.clone(), "default");
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), "default");
    deployments.create(&PostParams::default(), &deployment(2, "echo:1")).await.unwrap();
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
    }))
    .unwrap();
    Api::<Service>::namespaced(client.clone(), "default").create(&PostParams::default(), &svc).await.unwrap();

    c.pass(&client).await.unwrap();
    let listed = pods.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(listed.len(), 2);
    for p in &listed {
        assert_eq!(p.spec.as_ref().unwrap().node_name.as_deref(), Some("kind-worker"), "pinned by nodeSelector");
        assert!(p.labels().contains_key(super::super::workloads::POD_TEMPLATE_HASH));
    }
    let placeholder = slices.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(placeholder.len(), 1);
    assert!(placeholder[0].endpoints.is_empty(), "no pod has an address yet");

    run_pods(&client, 10).await;
    c.pass(&client).await.unwrap();
    let listed = slices.list(&ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}=web"))).await.unwrap().items;
    assert_eq!(listed.len(), 1, "the placeholder is replaced: {listed:#?}");
    let mut addrs: Vec<String> = listed[0].endpoints.iter().map(|e| e.addresses[0].clone()).collect();
    addrs.sort();
    assert_eq!(addrs, ["10.0.1.10", "10.0.1.11"]);
    assert_eq!(listed[0].ports.as_ref().unwrap()[0].port, Some(8080), "named targetPort resolved");
    assert_eq!(listed[0].endpoints[0].node_name.as_deref(), Some("kind-worker"));
    c.pass(&client).await.unwrap(); // ReplicaSet status reaches the Deployment one pass later
    assert_eq!(deployments.get("web").await.unwrap().status.unwrap().ready_replicas, Some(2));

    // Converged: another pass writes nothing.
    let before = list_rv(&client).await;
    c.pass(&client).await.unwrap();
    assert_eq!(list_rv(&client).await, before, "an idle pass must not write");

    // Scale down: one pod goes, and with it its endpoint.
    deployments.patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 1}}))).await.unwrap();
    c.pass(&client).await.unwrap();
    c.pass(&client).await.unwrap();
    assert_eq!(pods.list(&ListParams::default()).await.unwrap().items.len(), 1);
    assert_eq!(slices.list(&ListParams::default()).await.unwrap().items[0].endpoints.len(), 1);

    // Rollout: a new template gets a new ReplicaSet; the old one is scaled to zero.
    deployments
        .replace("web", &PostParams::default(), &{
            let mut d = deployment(1, "echo:2");
            d.metadata.resource_version = deployments.get("web").await.unwrap().metadata.resource_version;
            d
        })
        .await
        .unwrap();
    c.pass(&client).await.unwrap();
    c.pass(&client).await.unwrap();
    let sets = rs_api.list(&ListParams::default()).await.unwrap().items;
    let mut replicas: Vec<i32> = sets.iter().map(|rs| rs.spec.as_ref().unwrap().replicas.unwrap()).collect();
    replicas.sort();
    assert_eq!(replicas, [0, 1]);
    let remaining = pods.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(remaining.len(), 1);
    let new_rs = sets.iter().find(|rs| rs.spec.as_ref().unwrap().replicas == Some(1)).unwrap();
    assert!(controlled_by(&remaining[0].metadata, new_rs.metadata.uid.as_deref().unwrap()));

    // Deleting the Deployment garbage-collects its ReplicaSets and pods; the Service's slice empties.
    deployments.delete("web", &DeleteParams::default()).await.unwrap();
    eventually("pods collected", 40, || async { pods.list(&ListParams::default()).await.unwrap().items.is_empty() })
        .await;
    c.pass(&client).await.unwrap();
    assert!(slices.list(&ListParams::default()).await.unwrap().items[0].endpoints.is_empty());

    // Deleting the Service removes its slices (owner references).
    Api::<Service>::namespaced(client.clone(), "default").delete("web", &DeleteParams::default()).await.unwrap();
    assert!(slices.list(&ListParams::default()).await.unwrap().items.is_empty());
}
