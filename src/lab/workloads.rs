//! The Deployment and ReplicaSet emulation (kube-controller-manager's two controllers), pure:
//! typed objects in, the writes that bring them to their desired state out. The I/O loop is
//! [`super::controllers`].
//!
//! A Deployment owns one ReplicaSet per distinct pod template, named `<deployment>-<hash>` where
//! the hash (`pod-template-hash` label) is over the template. A ReplicaSet owns Pods made from its
//! template (`generateName: <rs>-`). Rollouts are deliberately simple: the ReplicaSet of the
//! current template gets all the replicas at once and the older ones are scaled to zero (like
//! `strategy: Recreate`, without waiting); old ReplicaSets are kept, as `revisionHistoryLimit`
//! would keep them.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

/// The label that ties a ReplicaSet and its Pods to one template of a Deployment.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// Kubernetes' "safe" alphabet for generated name parts (no vowels, no confusable digits).
const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The `pod-template-hash` of a template: FNV-1a over its JSON, spelled in the safe alphabet.
pub fn template_hash(template: &PodTemplateSpec) -> String {
    let json = serde_json::to_vec(template).expect("templates serialise");
    let mut n = super::plan::fnv1a(&json);
    let mut out = String::new();
    loop {
        out.push(SAFE_ALPHABET[(n % SAFE_ALPHABET.len() as u32) as usize] as char);
        n /= SAFE_ALPHABET.len() as u32;
        if n == 0 {
            break;
        }
    }
    out
}

/// The controller owner reference Kubernetes' controllers put on what they create.
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> Option<OwnerReference> {
    owner.controller_owner_ref(&())
}

/// Whether `object` is controlled by the object with `uid`.
pub fn controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    meta.owner_references.iter().flatten().any(|r| r.controller == Some(true) && r.uid == uid)
}

/// `matchLabels` (and `In`/`NotIn`/`Exists`/`DoesNotExist` expressions) against `labels`.
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = selector.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    by_labels && by_expressions
}

/// Whether a pod counts towards its ReplicaSet: not being deleted and not finished.
pub fn is_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// Whether the pod's `Ready` condition is `True`.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// What the Deployment controller writes for one Deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentActions {
    /// The ReplicaSet of the current template, when it does not exist yet.
    pub create: Option<ReplicaSet>,
    /// `(replicaset, replicas)` for owned ReplicaSets whose `spec.replicas` must change.
    pub scale: Vec<(String, i32)>,
    /// The status the Deployment should report (written only when it differs).
    pub status: DeploymentStatus,
}

/// The Deployment controller for one Deployment and the ReplicaSets it controls.
pub fn reconcile_deployment(deployment: &Deployment, owned: &[ReplicaSet]) -> DeploymentActions {
    let spec = deployment.spec.clone().unwrap_or_default();
    let desired = spec.replicas.unwrap_or(1);
    let hash = template_hash(&spec.template);
    let name = format!("{}-{hash}", deployment.name_any());
    let current = owned.iter().find(|rs| rs.metadata.name.as_deref() == Some(&name));
    let mut scale = Vec::new();
    for rs in owned {
        let want = if rs.metadata.name.as_deref() == Some(&name) { desired } else { 0 };
        if rs.spec.as_ref().and_then(|s| s.replicas) != Some(want) {
            scale.push((rs.name_any(), want));
        }
    }
    let create = current.is_none().then(|| {
        let mut template = spec.template.clone();
        let labels = template.metadata.get_or_insert_with(Default::default).labels.get_or_insert_with(Default::default);
        labels.insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let rs_labels = labels.clone();
        let mut selector = spec.selector.clone();
        selector.match_labels.get_or_insert_with(Default::default).insert(POD_TEMPLATE_HASH.into(), hash.clone());
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: deployment.metadata.namespace.clone(),
                labels: Some(rs_labels),
                owner_references: controller_ref(deployment).map(|r| vec![r]),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(desired),
                selector,
                template: Some(template),
                min_ready_seconds: None,
            }),
            status: None,
        }
    });
    let sum = |f: fn(&ReplicaSet) -> Option<i32>| owned.iter().filter_map(f).sum::<i32>();
    let replicas = sum(|rs| rs.status.as_ref().map(|s| s.replicas));
    let ready = sum(|rs| rs.status.as_ref().and_then(|s| s.ready_replicas));
    let updated = current.and_then(|rs| rs.status.as_ref()).map_or(0, |s| s.replicas);
    let available = ready >= desired;
    let status = DeploymentStatus {
        observed_generation: deployment.metadata.generation,
        replicas: Some(replicas),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(ready),
        unavailable_replicas: Some((desired - ready).max(0)),
        conditions: Some(vec![DeploymentCondition {
            type_: "Available".into(),
            status: if available { "True" } else { "False" }.into(),
            reason: Some(if available { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" }.into()),
            message: Some(format!("{ready} of {desired} replicas ready")),
            ..Default::default()
        }]),
        ..Default::default()
    };
    DeploymentActions { create, scale, status }
}

/// What the ReplicaSet controller writes for one ReplicaSet.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaSetActions {
    /// New pods (with `generateName`), as many as are missing.
    pub create: Vec<Pod>,
    /// Names of pods to delete, when there are too many.
    pub delete: Vec<String>,
    pub status: k8s_openapi::api::apps::v1::ReplicaSetStatus,
}

/// The ReplicaSet controller for one ReplicaSet and the pods it controls.
pub fn reconcile_replicaset(rs: &ReplicaSet, owned: &[Pod]) -> ReplicaSetActions {
    let spec = rs.spec.clone().unwrap_or_default();
    let desired = spec.replicas.unwrap_or(1).max(0) as usize;
    let mut active: Vec<&Pod> = owned.iter().filter(|p| is_active(p)).collect();
    let mut create = Vec::new();
    let mut delete = Vec::new();
    if active.len() < desired {
        let template = spec.template.clone().unwrap_or_default();
        let template_meta = template.metadata.unwrap_or_default();
        for _ in active.len()..desired {
            create.push(Pod {
                metadata: ObjectMeta {
                    generate_name: Some(format!("{}-", rs.name_any())),
                    namespace: rs.metadata.namespace.clone(),
                    labels: template_meta.labels.clone(),
                    annotations: template_meta.annotations.clone(),
                    owner_references: controller_ref(rs).map(|r| vec![r]),
                    ..Default::default()
                },
                spec: template.spec.clone(),
                status: None,
            });
        }
    } else if active.len() > desired {
        // Like Kubernetes: unscheduled pods go first, then pods that are not ready, then the newest.
        active.sort_by_key(|p| {
            let scheduled = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
            (scheduled, is_ready(p), std::cmp::Reverse(p.metadata.creation_timestamp.clone()))
        });
        delete = active.iter().take(active.len() - desired).map(|p| p.name_any()).collect();
    }
    let ready = owned.iter().filter(|p| is_active(p) && is_ready(p)).count() as i32;
    let status = k8s_openapi::api::apps::v1::ReplicaSetStatus {
        replicas: owned.iter().filter(|p| is_active(p)).count() as i32,
        ready_replicas: Some(ready),
        available_replicas: Some(ready),
        fully_labeled_replicas: None,
        observed_generation: rs.metadata.generation,
        ..Default::default()
    };
    ReplicaSetActions { create, delete, status }
}

#[cfg(test)]
#[path = "workloads_tests.rs"]
mod tests;
