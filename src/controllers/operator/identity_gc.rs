//! Identity garbage collection (CRD identity mode), as Cilium's operator does it: every
//! `identity-gc-interval`, each `CiliumIdentity` that no `CiliumEndpoint` refers to
//! (`status.identity.id`) and has not been referred to for `identity-heartbeat-timeout` is deleted.
//!
//! "Last referred to" is a heartbeat the operator keeps in memory ([`IdentityGc`], pure, clock
//! passed in): an identity the operator has never seen in use gets its first heartbeat when first
//! seen, so a freshly started (or newly elected) operator never deletes an identity before a whole
//! timeout has passed — an agent may have allocated it a moment ago and not yet published the
//! endpoint. Deletes carry the object's UID as a precondition, so an identity deleted and recreated
//! by an agent meanwhile is never removed by mistake.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams, Preconditions};
use kube::runtime::watcher;
use kube::Client;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::Config;
use crate::controllers::watch::{snapshot, WatchError, Watches};
use crate::crds::{CiliumEndpoint, CiliumIdentity};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityGcOptions {
    pub interval: Duration,
    pub heartbeat_timeout: Duration,
}

impl IdentityGcOptions {
    pub fn from_config(config: &Config) -> Self {
        Self { interval: config.identity_gc_interval, heartbeat_timeout: config.identity_heartbeat_timeout }
    }
}

/// An identity object as the GC sees it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct IdentityRef {
    /// The object name: the numeric identity.
    pub name: String,
    pub uid: Option<String>,
}

/// Heartbeats of the identities, between passes. Pure.
#[derive(Debug)]
pub struct IdentityGc {
    heartbeat_timeout: Duration,
    last_used: BTreeMap<String, Instant>,
}

impl IdentityGc {
    pub fn new(heartbeat_timeout: Duration) -> Self {
        Self { heartbeat_timeout, last_used: BTreeMap::new() }
    }

    /// One pass at `now`: refreshes the heartbeat of every identity in `in_use` (numeric IDs as
    /// strings, like the object names) and returns the identities to delete.
    pub fn pass(&mut self, identities: &[IdentityRef], in_use: &BTreeSet<String>, now: Instant) -> Vec<IdentityRef> {
        let existing: BTreeSet<&str> = identities.iter().map(|i| i.name.as_str()).collect();
        // Forget identities that are gone (deleted by us or anyone else).
        self.last_used.retain(|name, _| existing.contains(name.as_str()));
        let mut delete = Vec::new();
        for identity in identities {
            if in_use.contains(&identity.name) {
                self.last_used.insert(identity.name.clone(), now);
                continue;
            }
            let last = *self.last_used.entry(identity.name.clone()).or_insert(now);
            if now.saturating_duration_since(last) >= self.heartbeat_timeout {
                delete.push(identity.clone());
            }
        }
        delete.sort();
        delete
    }

    /// A delete went through: the heartbeat is dropped so a recreated identity starts afresh.
    pub fn deleted(&mut self, name: &str) {
        self.last_used.remove(name);
    }
}

/// The identity IDs the endpoints refer to.
pub fn identities_in_use(endpoints: &[CiliumEndpoint]) -> BTreeSet<String> {
    endpoints
        .iter()
        .filter_map(|ep| ep.status.as_ref()?.identity.as_ref())
        .filter(|i| i.id > 0)
        .map(|i| i.id.to_string())
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Watch(#[from] WatchError),
}

/// How long after listing the first pass waits (folding the initial burst of watch events).
const FIRST_PASS_DELAY: Duration = Duration::from_secs(1);

/// Runs the GC until `shutdown`: a pass once both caches listed, then every `interval`.
/// `clock` gives "now" (tests pass a controllable one).
pub async fn run(
    client: Client,
    options: IdentityGcOptions,
    clock: impl Fn() -> Instant,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    tracing::info!(interval = ?options.interval, heartbeat_timeout = ?options.heartbeat_timeout, "identity GC started");
    let mut watches = Watches::new("identity-gc");
    let identities =
        watches.add("CiliumIdentity", Api::<CiliumIdentity>::all(client.clone()), watcher::Config::default());
    let endpoints =
        watches.add("CiliumEndpoint", Api::<CiliumEndpoint>::all(client.clone()), watcher::Config::default());
    let api: Api<CiliumIdentity> = Api::all(client);
    let gc = std::sync::Arc::new(std::sync::Mutex::new(IdentityGc::new(options.heartbeat_timeout)));
    let interval = options.interval;
    watches
        .run(FIRST_PASS_DELAY, shutdown, || {
            let refs: Vec<IdentityRef> = snapshot(&identities)
                .into_iter()
                .filter_map(|i| Some(IdentityRef { name: i.metadata.name?, uid: i.metadata.uid }))
                .collect();
            let in_use = identities_in_use(&snapshot(&endpoints));
            let delete = gc.lock().unwrap().pass(&refs, &in_use, clock());
            let (api, gc) = (api.clone(), gc.clone());
            let span = tracing::info_span!("identity_gc", identities = refs.len(), expired = delete.len());
            async move {
                for identity in delete {
                    let params = DeleteParams {
                        preconditions: Some(Preconditions { uid: identity.uid.clone(), resource_version: None }),
                        ..Default::default()
                    };
                    match api.delete(&identity.name, &params).await {
                        Ok(_) => {
                            tracing::info!(identity = %identity.name, "deleted unused CiliumIdentity");
                            gc.lock().unwrap().deleted(&identity.name);
                        }
                        // Gone already, or recreated (UID mismatch): nothing to do.
                        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                        Err(e) => tracing::warn!(identity = %identity.name, error = %e, "deleting CiliumIdentity failed; next pass retries"),
                    }
                }
                Some(interval)
            }
            .instrument(span)
        })
        .await?;
    Ok(())
}

#[cfg(test)]
#[path = "identity_gc_tests.rs"]
mod tests;
