//! The policy controller's view of this node's endpoints. The agent's endpoint manager (CNI ADD/DEL)
//! owns them; it publishes the current set on a [`tokio::sync::watch`] channel and the policy
//! controller recompiles whatever changed. Nothing here depends on how endpoints are created.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;

/// One local endpoint (pod) as policy needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalEndpoint {
    /// The endpoint ID (`EndpointInfo::lxc_id`, the key of its policy rows).
    pub id: u16,
    /// Its security identity.
    pub identity: u32,
    /// The pod's own labels (without source prefix).
    pub labels: BTreeMap<String, String>,
    pub namespace: String,
    pub pod: String,
}

/// Every local endpoint by ID.
pub type LocalEndpoints = Arc<BTreeMap<u16, LocalEndpoint>>;

/// The publishing side, held by the endpoint manager.
pub type LocalEndpointsTx = watch::Sender<LocalEndpoints>;
/// The subscribing side, held by the policy controller.
pub type LocalEndpointsRx = watch::Receiver<LocalEndpoints>;

/// A channel with no endpoints yet.
pub fn channel() -> (LocalEndpointsTx, LocalEndpointsRx) {
    watch::channel(Arc::default())
}

/// A pod's own labels recovered from its identity labels (`k8s:app=web`, ...): the `k8s` source
/// only, without the keys the identity derives from the namespace (`io.kubernetes.pod.namespace`,
/// `io.cilium.k8s.namespace.labels.*`), which the policy controller adds back from its Namespace
/// cache. Only used until the endpoint's CiliumIdentity is in that cache.
pub fn own_labels(identity_labels: &[String]) -> BTreeMap<String, String> {
    use crate::policy::identity::keys;
    identity_labels
        .iter()
        .filter_map(|l| l.strip_prefix("k8s:"))
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
        .filter(|(k, _)| *k != keys::POD_NAMESPACE && !k.starts_with(keys::NAMESPACE_LABELS_PREFIX))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_labels_keep_the_pods_k8s_labels_only() {
        type Case = (&'static [&'static str], &'static [(&'static str, &'static str)]);
        let cases: &[Case] = &[
            (&[], &[]),
            (&["reserved:init"], &[]),
            (
                &[
                    "k8s:app=web",
                    "k8s:io.kubernetes.pod.namespace=default",
                    "k8s:io.cilium.k8s.namespace.labels.team=a",
                    "k8s:io.cilium.k8s.policy.serviceaccount=default",
                    "k8s:flag",
                    "container:x=y",
                ],
                &[("app", "web"), ("flag", ""), ("io.cilium.k8s.policy.serviceaccount", "default")],
            ),
        ];
        for (input, want) in cases {
            let input: Vec<String> = input.iter().map(|s| s.to_string()).collect();
            let want: BTreeMap<String, String> = want.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            assert_eq!(own_labels(&input), want, "{input:?}");
        }
    }
}
