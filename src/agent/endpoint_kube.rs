//! The API-server side of local endpoints: a pod's security identity (labels from its Pod and
//! Namespace → a cluster-wide `CiliumIdentity` ≥ 256, created by agents, reused for the same
//! labels) and the `CiliumEndpoint` the agent publishes for each endpoint (owned by the Pod, so it
//! goes with it; deleted when the endpoint is removed).
//!
//! Identity allocation: an identity with exactly the pod's `security-labels` is reused; otherwise
//! the agent creates one named by the smallest free number ≥ 256 and, when another agent took that
//! number first (409 Conflict), looks again (it may now exist with our labels) and retries with
//! the next. Allocation within one agent is serialised and cached, so a burst of pods with the
//! same labels creates one identity. (Garbage collection of unused identities is the operator's.)

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::Client;

use super::endpoint_core::Endpoint;
use crate::crds::cilium_endpoint::{
    AddressPair, CiliumEndpoint, EndpointIdentity, EndpointNetworking, EndpointPolicy, EndpointStatus,
};
use crate::crds::CiliumIdentity;
use crate::policy::identity::{
    keys, pod_labels, security_label_map, Label, LabelSet, NumericIdentity, PodIdentitySource,
};

/// How many numbers to try before giving up on a create (each conflict means another agent was faster).
const CREATE_ATTEMPTS: usize = 16;

/// The existing identity with exactly `labels`, if any.
pub fn find_identity(existing: &[CiliumIdentity], labels: &BTreeMap<String, String>) -> Option<u32> {
    existing.iter().filter(|i| &i.security_labels == labels).filter_map(CiliumIdentity::numeric_id).min()
}

/// The smallest cluster identity (≥ 256) not in `used`.
pub fn next_free_identity(used: &BTreeSet<u32>) -> u32 {
    (NumericIdentity::MIN_CLUSTER..).find(|id| !used.contains(id)).expect("u32 space is not exhausted")
}

/// The `CiliumEndpoint` of `endpoint`: named after the pod, owned by it, with the endpoint ID,
/// identity, addresses, node IP and state, and the policy enforcement the policy controller last
/// computed for it (`None` before its first pass over the endpoint).
pub fn cilium_endpoint(
    endpoint: &Endpoint,
    pod_uid: &str,
    node_ip: Option<IpAddr>,
    policy: Option<EndpointPolicy>,
) -> CiliumEndpoint {
    let addressing = endpoint
        .spec
        .ips
        .iter()
        .map(|ip| match ip {
            IpAddr::V4(v4) => AddressPair { ipv4: Some(v4.to_string()), ipv6: None },
            IpAddr::V6(v6) => AddressPair { ipv4: None, ipv6: Some(v6.to_string()) },
        })
        .collect();
    CiliumEndpoint {
        api_version: CiliumEndpoint::API_VERSION.into(),
        kind: CiliumEndpoint::KIND.into(),
        metadata: ObjectMeta {
            name: Some(endpoint.spec.pod.clone()),
            namespace: Some(endpoint.spec.namespace.clone()),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Pod".into(),
                name: endpoint.spec.pod.clone(),
                uid: pod_uid.to_string(),
                ..Default::default()
            }]),
            ..Default::default()
        },
        status: Some(EndpointStatus {
            id: Some(i64::from(endpoint.id)),
            identity: Some(EndpointIdentity {
                id: i64::from(endpoint.identity),
                labels: endpoint.identity_labels.clone(),
            }),
            networking: Some(EndpointNetworking { addressing, node: node_ip.map(|ip| ip.to_string()) }),
            state: Some(endpoint.state.clone()),
            policy,
            ..Default::default()
        }),
    }
}

fn labels_of(meta: &ObjectMeta) -> Vec<(String, String)> {
    meta.labels.clone().unwrap_or_default().into_iter().collect()
}

pub struct EndpointKube {
    client: Client,
    node_name: String,
    cluster: String,
    /// Label set → identity, for identities this agent resolved (serialises allocation too).
    identities: tokio::sync::Mutex<BTreeMap<LabelSet, u32>>,
    node_ip: tokio::sync::OnceCell<Option<IpAddr>>,
}

impl EndpointKube {
    /// The API client (the status endpoint asks it for the server's version).
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn new(client: Client, node_name: &str, cluster: &str) -> Self {
        Self {
            client,
            node_name: node_name.to_string(),
            cluster: cluster.to_string(),
            identities: tokio::sync::Mutex::new(BTreeMap::new()),
            node_ip: tokio::sync::OnceCell::new(),
        }
    }

    async fn pod(&self, namespace: &str, name: &str) -> Option<Pod> {
        if namespace.is_empty() || name.is_empty() {
            return None;
        }
        match Api::<Pod>::namespaced(self.client.clone(), namespace).get_opt(name).await {
            Ok(pod) => pod,
            Err(e) => {
                tracing::warn!(pod = %format!("{namespace}/{name}"), error = %e, "cannot read the pod");
                None
            }
        }
    }

    /// The pod's identity and its labels; `init` when the pod or the API server is not available
    /// (the endpoint then works, with the identity Cilium gives endpoints whose labels are unknown).
    #[tracing::instrument(level = "info", skip(self))]
    pub async fn resolve_identity(&self, namespace: &str, pod: &str) -> (u32, Vec<String>) {
        let init = (NumericIdentity::INIT.0, vec![Label::reserved("init").to_string()]);
        let Some(pod) = self.pod(namespace, pod).await else { return init };
        let ns_labels = match Api::<Namespace>::all(self.client.clone()).get_opt(namespace).await {
            Ok(ns) => ns.map(|n| labels_of(&n.metadata)).unwrap_or_default(),
            Err(e) => {
                tracing::warn!(%namespace, error = %e, "cannot read the namespace; its labels are left out");
                Vec::new()
            }
        };
        let pod_own = labels_of(&pod.metadata);
        let pod_own: Vec<(&str, &str)> = pod_own.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let ns_labels: Vec<(&str, &str)> = ns_labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let account =
            pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into());
        let labels = pod_labels(&PodIdentitySource {
            namespace,
            pod_labels: &pod_own,
            namespace_labels: &ns_labels,
            service_account: &account,
            cluster: &self.cluster,
        });
        let text: Vec<String> = labels.iter().map(ToString::to_string).collect();
        match self.allocate(namespace, &labels).await {
            Ok(id) => (id, text),
            Err(e) => {
                tracing::warn!(error = %e, "cannot allocate an identity; the endpoint starts as init");
                init
            }
        }
    }

    async fn allocate(&self, namespace: &str, labels: &LabelSet) -> Result<u32, kube::Error> {
        let mut cache = self.identities.lock().await;
        if let Some(id) = cache.get(labels) {
            return Ok(*id);
        }
        let api: Api<CiliumIdentity> = Api::all(self.client.clone());
        let wanted = security_label_map(labels);
        let mut attempts = 0;
        loop {
            let existing = api.list(&ListParams::default()).await?.items;
            if let Some(id) = find_identity(&existing, &wanted) {
                cache.insert(labels.clone(), id);
                return Ok(id);
            }
            let used: BTreeSet<u32> = existing.iter().filter_map(CiliumIdentity::numeric_id).collect();
            let id = next_free_identity(&used);
            let mut identity = CiliumIdentity::new(id, wanted.clone());
            identity.metadata.labels = Some([(keys::POD_NAMESPACE.to_string(), namespace.to_string())].into());
            match api.create(&PostParams::default(), &identity).await {
                Ok(_) => {
                    tracing::info!(id, labels = ?wanted, "created identity");
                    cache.insert(labels.clone(), id);
                    return Ok(id);
                }
                Err(kube::Error::Api(s)) if s.code == 409 && attempts + 1 < CREATE_ATTEMPTS => attempts += 1,
                Err(e) => return Err(e),
            }
        }
    }

    async fn node_ip(&self) -> Option<IpAddr> {
        *self
            .node_ip
            .get_or_init(|| async {
                let node = Api::<Node>::all(self.client.clone()).get_opt(&self.node_name).await.ok().flatten()?;
                let addresses = node.status?.addresses?;
                let internal = addresses.iter().find(|a| a.type_ == "InternalIP").or(addresses.first())?;
                internal.address.parse().ok()
            })
            .await
    }

    /// Creates or replaces the endpoint's `CiliumEndpoint`. Failures are logged: the endpoint
    /// works without it (other nodes learn it later). `policy`: the policy controller's latest
    /// enforcement for it, so a replace never drops what the controller wrote.
    #[tracing::instrument(level = "info", skip_all, fields(pod = %format!("{}/{}", endpoint.spec.namespace, endpoint.spec.pod)))]
    pub async fn publish(&self, endpoint: &Endpoint, policy: Option<EndpointPolicy>) {
        let Some(pod) = self.pod(&endpoint.spec.namespace, &endpoint.spec.pod).await else {
            tracing::info!("no Pod object: no CiliumEndpoint published");
            return;
        };
        let uid = pod.metadata.uid.unwrap_or_default();
        let mut cep = cilium_endpoint(endpoint, &uid, self.node_ip().await, policy);
        let api: Api<CiliumEndpoint> = Api::namespaced(self.client.clone(), &endpoint.spec.namespace);
        let result = match api.create(&PostParams::default(), &cep).await {
            Err(kube::Error::Api(s)) if s.code == 409 => match api.get(&endpoint.spec.pod).await {
                Ok(current) => {
                    cep.metadata.resource_version = current.metadata.resource_version;
                    api.replace(&endpoint.spec.pod, &PostParams::default(), &cep).await
                }
                Err(e) => Err(e),
            },
            other => other,
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot publish the CiliumEndpoint");
        }
    }

    /// Deletes the endpoint's `CiliumEndpoint` (already gone is fine).
    pub async fn unpublish(&self, endpoint: &Endpoint) {
        if endpoint.spec.namespace.is_empty() || endpoint.spec.pod.is_empty() {
            return;
        }
        let api: Api<CiliumEndpoint> = Api::namespaced(self.client.clone(), &endpoint.spec.namespace);
        match api.delete(&endpoint.spec.pod, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => tracing::warn!(error = %e, "cannot delete the CiliumEndpoint"),
        }
    }
}

#[cfg(test)]
#[path = "endpoint_kube_tests.rs"]
mod tests;
