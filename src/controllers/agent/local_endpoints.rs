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
