//! The services controller's watch loop: reflectors over Services, EndpointSlices, this node's Node
//! and the Pods on this node (for hostPorts) feed full passes of [`ServicesSync::sync`].
//!
//! - No pass runs before every reflector has listed once: the first pass is what lets the map
//!   manager prune rows nobody wants, so a pass over a partial view would tear down live Services.
//! - Changes are batched: the first change after a pass arms a timer of `debounce`; everything that
//!   arrives meanwhile is folded into the one pass that runs when it fires. (A timer armed by the
//!   first change, not reset by later ones, so constant churn cannot postpone passes forever.)
//! - Each pass recomputes everything from the caches ([`crate::services::desired_state`] is pure
//!   and cheap next to a kernel write); the map manager turns that into the minimal set of writes.

use std::fmt::Debug;
use std::hash::Hash;
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::services::ServicesSync;
use crate::services::Inputs;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the services watches ended")]
    WatchesEnded,
}

/// One reflector's event, reduced to what the loop needs: which cache, and whether it just finished
/// a (re)list.
pub(super) type WatchEvent = Result<(usize, bool), String>;

const WATCHED: [&str; 4] = ["Service", "EndpointSlice", "Node", "Pod"];

/// A reflector over `api` whose events carry `index`; errors name `kind`. Shared with the policy
/// controller's watch loop.
pub(super) fn reflect<K>(
    index: usize,
    kind: &'static str,
    api: Api<K>,
    config: watcher::Config,
) -> (Store<K>, BoxStream<'static, WatchEvent>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store::<K>();
    let stream = reflector::reflector(
        writer,
        // managedFields are never read here; dropping them roughly halves what the caches hold.
        watcher(api, config).modify(|o| o.meta_mut().managed_fields = None),
    )
    .default_backoff()
    .map(move |r| {
        r.map(|event| (index, matches!(event, watcher::Event::InitDone))).map_err(|e| format!("{kind} watch: {e}"))
    })
    .boxed();
    (store, stream)
}

pub(super) fn snapshot<K>(store: &Store<K>) -> Vec<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    store.state().iter().map(|o| o.as_ref().clone()).collect()
}

/// Runs until `shutdown`. `sync` is the only writer of the services owner's rows.
pub async fn run(
    client: Client,
    node_name: String,
    mut sync: ServicesSync,
    debounce: Duration,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let (services, s_watch) = reflect(0, WATCHED[0], Api::<Service>::all(client.clone()), watcher::Config::default());
    let (slices, e_watch) =
        reflect(1, WATCHED[1], Api::<EndpointSlice>::all(client.clone()), watcher::Config::default());
    let own_node = watcher::Config::default().fields(&format!("metadata.name={node_name}"));
    let (nodes, n_watch) = reflect(2, WATCHED[2], Api::<Node>::all(client.clone()), own_node);
    let on_node = watcher::Config::default().fields(&format!("spec.nodeName={node_name}"));
    let (pods, p_watch) = reflect(3, WATCHED[3], Api::<Pod>::all(client), on_node);
    let mut events = futures::stream::select_all([s_watch, e_watch, n_watch, p_watch]);

    let mut listed = [false; WATCHED.len()];
    let mut pass_at: Option<Instant> = None;
    loop {
        let all_listed = listed.iter().all(|l| *l);
        let timer = async {
            match pass_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            event = events.next() => match event {
                None => return Err(Error::WatchesEnded),
                Some(Err(e)) => tracing::warn!(error = %e, "watch error; retrying with backoff"),
                Some(Ok((index, init_done))) => {
                    if init_done && !listed[index] {
                        tracing::info!(kind = WATCHED[index], "cache synced");
                        listed[index] = true;
                    }
                    pass_at.get_or_insert_with(|| Instant::now() + debounce);
                }
            },
            _ = timer, if all_listed => {
                pass_at = None;
                let (services, slices, nodes, pods) =
                    (snapshot(&services), snapshot(&slices), snapshot(&nodes), snapshot(&pods));
                let inputs = Inputs { services: &services, endpoint_slices: &slices, nodes: &nodes, pods: &pods };
                let desired = sync.sync(&inputs);
                tracing::debug!(
                    frontends = desired.frontends.len(),
                    backends = desired.backends.len(),
                    "services pass submitted"
                );
            }
        }
    }
}

#[cfg(test)]
#[path = "services_watch_tests.rs"]
mod tests;
