//! The lab's kube-controller-manager and kube-scheduler: the Deployment, ReplicaSet and
//! EndpointSlice emulations ([`super::workloads`], [`super::endpointslices`]) and a scheduler,
//! run by the supervisor against its in-memory API.
//!
//! Level-triggered passes on a short period rather than watches: each pass lists what it needs
//! and writes only differences, so a missed event, a restart or a restored snapshot all converge
//! the same way, and a pass over converged state writes nothing. Within one pass the stages run
//! in dependency order (Deployments → ReplicaSets → scheduling → EndpointSlices), each on fresh
//! lists, so a new Deployment reaches scheduled pods in one pass.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::endpointslices::{self, MANAGED_BY, MANAGED_BY_LABEL, SERVICE_NAME_LABEL};
use super::workloads::{controlled_by, reconcile_deployment, reconcile_replicaset};

/// How often a pass runs.
pub const PERIOD: Duration = Duration::from_millis(300);
/// Field manager of the EndpointSlices this emulation applies.
pub const FIELD_MANAGER: &str = "endpointslice-controller";

/// The label a pod's `nodeSelector` uses to pin it to one node.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// Chooses a node for an unscheduled pod: the Ready, schedulable nodes whose labels match the
/// pod's `nodeSelector` (`kubernetes.io/hostname: <node>` pins it), round-robin by `cursor`.
/// `Err` is the reason it cannot be placed (the scheduler's FailedScheduling message).
pub fn pick_node(pod: &Pod, nodes: &[Node], cursor: &mut usize) -> Result<String, String> {
    let selector = pod.spec.as_ref().and_then(|s| s.node_selector.clone()).unwrap_or_default();
    let mut candidates: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.spec.as_ref().and_then(|s| s.unschedulable) != Some(true))
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter(|n| selector.iter().all(|(k, v)| n.labels().get(k) == Some(v)))
        .collect();
    if candidates.is_empty() {
        return Err(format!(
            "0/{} nodes are available: no Ready, schedulable node matches the node selector {selector:?}",
            nodes.len()
        ));
    }
    candidates.sort_by_key(|n| n.name_any());
    let node = candidates[*cursor % candidates.len()].name_any();
    *cursor = cursor.wrapping_add(1);
    Ok(node)
}

/// The controllers' state that lives across passes.
#[derive(Default)]
pub struct Controllers {
    schedule_cursor: usize,
}

impl Controllers {
    /// One pass of every controller.
    pub async fn pass(&mut self, client: &Client) -> Result<(), kube::Error> {
        deployments(client).instrument(tracing::debug_span!("deployments")).await?;
        replicasets(client).instrument(tracing::debug_span!("replicasets")).await?;
        self.schedule(client).instrument(tracing::debug_span!("scheduler")).await?;
        endpoint_slices(client).instrument(tracing::debug_span!("endpointslices")).await?;
        Ok(())
    }

    async fn schedule(&mut self, client: &Client) -> Result<(), kube::Error> {
        let nodes = Api::<Node>::all(client.clone()).list(&ListParams::default()).await?.items;
        let pods = Api::<Pod>::all(client.clone()).list(&ListParams::default()).await?.items;
        for pod in pods {
            let unscheduled = pod.spec.as_ref().is_some_and(|s| s.node_name.is_none());
            if !unscheduled || pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let api = Api::<Pod>::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
            let name = pod.name_any();
            let condition = match pick_node(&pod, &nodes, &mut self.schedule_cursor) {
                Ok(node) => {
                    // kube-scheduler posts a Binding; this API has no binding subresource, so the
                    // same effect (spec.nodeName) is a patch.
                    api.patch(&name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"nodeName": node}})))
                        .await?;
                    tracing::info!(pod = %format!("{}/{name}", pod.namespace().unwrap_or_default()), %node, "scheduled");
                    json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": now()})
                }
                Err(reason) => json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                      "message": reason, "lastTransitionTime": now()}),
            };
            let already = pod.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| {
                c.iter().any(|c| c.type_ == "PodScheduled" && Some(c.status.as_str()) == condition["status"].as_str())
            });
            if !already {
                let status = json!({"status": {"conditions": [condition]}});
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(status)).await?;
            }
        }
        Ok(())
    }
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().round(k8s_openapi::jiff::Unit::Second).unwrap_or_default().to_string()
}

/// Runs passes every [`PERIOD`] until `shutdown`; a failed pass is logged and retried next period.
pub async fn run(client: Client, shutdown: CancellationToken) {
    let mut controllers = Controllers::default();
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                if let Err(e) = controllers.pass(&client).await {
                    tracing::warn!(error = %e, "controller pass failed; retrying");
                }
            }
        }
    }
}

async fn deployments(client: &Client) -> Result<(), kube::Error> {
    let all = Api::<Deployment>::all(client.clone()).list(&ListParams::default()).await?.items;
    let replicasets = Api::<ReplicaSet>::all(client.clone()).list(&ListParams::default()).await?.items;
    for d in all {
        let ns = d.namespace().unwrap_or_default();
        let uid = d.metadata.uid.clone().unwrap_or_default();
        let owned: Vec<ReplicaSet> =
            replicasets.iter().filter(|rs| controlled_by(&rs.metadata, &uid)).cloned().collect();
        let actions = reconcile_deployment(&d, &owned);
        let rs_api = Api::<ReplicaSet>::namespaced(client.clone(), &ns);
        if let Some(rs) = &actions.create {
            rs_api.create(&PostParams::default(), rs).await?;
            tracing::info!(deployment = %format!("{ns}/{}", d.name_any()), replicaset = %rs.name_any(), "created ReplicaSet");
        }
        for (name, replicas) in &actions.scale {
            rs_api.patch(name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": replicas}}))).await?;
            tracing::info!(replicaset = %format!("{ns}/{name}"), replicas, "scaled ReplicaSet");
        }
        let status = serde_json::to_value(&actions.status).expect("serialisable");
        if d.status.as_ref().map(|s| serde_json::to_value(s).expect("serialisable")) != Some(status.clone()) {
            Api::<Deployment>::namespaced(client.clone(), &ns)
                .patch_status(&d.name_any(), &PatchParams::default(), &Patch::Merge(json!({ "status": status })))
                .await?;
        }
    }
    Ok(())
}

async fn replicasets(client: &Client) -> Result<(), kube::Error> {
    let all = Api::<ReplicaSet>::all(client.clone()).list(&ListParams::default()).await?.items;
    let pods = Api::<Pod>::all(client.clone()).list(&ListParams::default()).await?.items;
    for rs in all {
        let ns = rs.namespace().unwrap_or_default();
        let uid = rs.metadata.uid.clone().unwrap_or_default();
        let owned: Vec<Pod> = pods.iter().filter(|p| controlled_by(&p.metadata, &uid)).cloned().collect();
        let actions = reconcile_replicaset(&rs, &owned);
        let pod_api = Api::<Pod>::namespaced(client.clone(), &ns);
        for pod in &actions.create {
            let made = pod_api.create(&PostParams::default(), pod).await?;
            tracing::info!(replicaset = %format!("{ns}/{}", rs.name_any()), pod = %made.name_any(), "created Pod");
        }
        for name in &actions.delete {
            pod_api.delete(name, &DeleteParams::default()).await?;
            tracing::info!(replicaset = %format!("{ns}/{}", rs.name_any()), pod = %name, "deleted Pod");
        }
        let status = serde_json::to_value(&actions.status).expect("serialisable");
        if rs.status.as_ref().map(|s| serde_json::to_value(s).expect("serialisable")) != Some(status.clone()) {
            Api::<ReplicaSet>::namespaced(client.clone(), &ns)
                .patch_status(&rs.name_any(), &PatchParams::default(), &Patch::Merge(json!({ "status": status })))
                .await?;
        }
    }
    Ok(())
}

async fn endpoint_slices(client: &Client) -> Result<(), kube::Error> {
    let services = Api::<Service>::all(client.clone()).list(&ListParams::default()).await?.items;
    let pods = Api::<Pod>::all(client.clone()).list(&ListParams::default()).await?.items;
    let nodes = Api::<Node>::all(client.clone()).list(&ListParams::default()).await?.items;
    let managed = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let existing = Api::<EndpointSlice>::all(client.clone()).list(&managed).await?.items;
    for svc in services {
        let ns = svc.namespace().unwrap_or_default();
        let name = svc.name_any();
        let api = Api::<EndpointSlice>::namespaced(client.clone(), &ns);
        let desired = endpointslices::desired_slices(&svc, &pods, &nodes);
        let mine: Vec<&EndpointSlice> = existing
            .iter()
            .filter(|s| s.namespace().as_deref() == Some(&ns) && s.labels().get(SERVICE_NAME_LABEL) == Some(&name))
            .collect();
        for slice in &desired {
            let slice_name = slice.name_any();
            let current = mine.iter().find(|s| s.name_any() == slice_name);
            if current.is_some_and(|c| endpointslices::same_content(c, slice)) {
                continue;
            }
            let params = PatchParams::apply(FIELD_MANAGER).force();
            api.patch(&slice_name, &params, &Patch::Apply(slice)).await?;
            tracing::info!(service = %format!("{ns}/{name}"), slice = %slice_name, endpoints = slice.endpoints.len(), "EndpointSlice applied");
        }
        for stale in mine.iter().filter(|s| !desired.iter().any(|d| d.name_any() == s.name_any())) {
            api.delete(&stale.name_any(), &DeleteParams::default()).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "controllers_tests.rs"]
mod tests;
