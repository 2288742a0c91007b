//! The services controller's watch loop: reflectors over Services, EndpointSlices, this node's Node
//! and the Pods on this node (for hostPorts) feed full passes of [`ServicesSync::sync`], with the
//! listing and batching rules of [`crate::controllers::watch`]. Each pass recomputes everything from the caches
//! ([`crate::services::desired_state`] is pure and cheap next to a kernel write).

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::watcher;
use kube::Client;
use tokio_util::sync::CancellationToken;

use super::services::ServicesSync;
use crate::controllers::watch::{snapshot, WatchError, Watches};
use crate::services::Inputs;

/// Runs until `shutdown`. `sync` is the only writer of the services owner's rows.
pub async fn run(
    client: Client,
    node_name: String,
    mut sync: ServicesSync,
    debounce: Duration,
    shutdown: CancellationToken,
) -> Result<(), WatchError> {
    let mut watches = Watches::new("services");
    let services = watches.add("Service", Api::<Service>::all(client.clone()), watcher::Config::default());
    let slices = watches.add("EndpointSlice", Api::<EndpointSlice>::all(client.clone()), watcher::Config::default());
    let own_node = watcher::Config::default().fields(&format!("metadata.name={node_name}"));
    let nodes = watches.add("Node", Api::<Node>::all(client.clone()), own_node);
    let on_node = watcher::Config::default().fields(&format!("spec.nodeName={node_name}"));
    let pods = watches.add("Pod", Api::<Pod>::all(client), on_node);
    watches
        .run(debounce, shutdown, || {
            let (services, slices, nodes, pods) =
                (snapshot(&services), snapshot(&slices), snapshot(&nodes), snapshot(&pods));
            let inputs = Inputs { services: &services, endpoint_slices: &slices, nodes: &nodes, pods: &pods };
            let desired = sync.sync(&inputs);
            tracing::debug!(
                frontends = desired.frontends.len(),
                backends = desired.backends.len(),
                "services pass submitted"
            );
            std::future::ready(None)
        })
        .await
}

#[cfg(test)]
#[path = "services_watch_tests.rs"]
mod tests;
