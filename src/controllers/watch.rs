//! The watch loop of controllers that recompute a whole desired state per pass: reflectors keep caches of the kinds a controller reads, and
//! full passes over those caches run
//! - only after every reflector has listed once: a controller's first pass is what lets the map
//!   manager prune rows nobody wants, so a pass over a partial view would tear down live state;
//! - batched: the first change after a pass arms a timer of `debounce`; everything that arrives
//!   meanwhile is folded into the one pass that runs when it fires (armed by the first change, not
//!   reset by later ones, so constant churn cannot postpone passes forever);
//! - again after the delay a pass asks for (a retry of work that failed, e.g. a route).
//!
//! Each pass recomputes everything from the caches: the pure cores are cheap next to a kernel
//! write, and the map manager turns whole tables into the minimal set of writes.

use std::fmt::Debug;
use std::hash::Hash;
use std::time::Duration;

use futures::stream::{BoxStream, SelectAll, StreamExt};
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Resource;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::runtime::controllers::Outcome;

/// Between two passes of a level-triggered loop: waits for the next change, or — after a pass that
/// asked to run again (`retry`) — at most that long (a change cuts the wait short). `false` once
/// `shutdown` fires, so the caller can return.
pub async fn next_pass(changed: &tokio::sync::Notify, retry: Option<Duration>, shutdown: &CancellationToken) -> bool {
    let wait = async {
        match retry {
            None => changed.notified().await,
            Some(d) => {
                let _ = tokio::time::timeout(d, changed.notified()).await;
            }
        }
    };
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = wait => true,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("the {0} watches ended")]
    Ended(&'static str),
}

/// One reflector's event, reduced to what the loop needs: which cache, and whether it just finished
/// a (re)list.
type WatchEvent = Result<(usize, bool), String>;

/// The reflectors of one controller.
pub struct Watches {
    controller: &'static str,
    kinds: Vec<&'static str>,
    events: SelectAll<BoxStream<'static, WatchEvent>>,
}

impl Watches {
    pub fn new(controller: &'static str) -> Self {
        Self { controller, kinds: Vec::new(), events: SelectAll::new() }
    }

    /// Adds a reflector over `api` (filtered by `config`) and returns its cache.
    pub fn add<K>(&mut self, kind: &'static str, api: Api<K>, config: watcher::Config) -> Store<K>
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
    {
        let index = self.kinds.len();
        self.kinds.push(kind);
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
        self.events.push(stream);
        store
    }

    /// Adds an in-process input published on a `tokio::sync::watch` channel (e.g. the endpoint
    /// manager's local endpoints). It counts as listed at its first value published after `rx` was
    /// subscribed (a publisher that has nothing to restore still publishes once), and each later
    /// value arms a pass like an object change. Read the values through a clone of `rx`.
    pub fn add_channel<T: Send + Sync + 'static>(&mut self, kind: &'static str, rx: watch::Receiver<T>) {
        let index = self.kinds.len();
        self.kinds.push(kind);
        let stream = futures::stream::unfold(rx, move |mut rx| async move {
            // A dropped sender ends the stream; the other inputs keep the loop running.
            rx.changed().await.ok().map(|()| (Ok((index, true)), rx))
        })
        .boxed();
        self.events.push(stream);
    }

    /// Runs passes until `shutdown`. A pass resolves to when it wants to run again without a
    /// change (a retry, or a periodic pass), if at all; changes arriving before then do not run it
    /// earlier.
    pub async fn run<F, Fut>(
        mut self,
        debounce: Duration,
        shutdown: CancellationToken,
        mut pass: F,
    ) -> Result<(), WatchError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<Duration>>,
    {
        let mut listed = vec![false; self.kinds.len()];
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
                event = self.events.next() => match event {
                    None => return Err(WatchError::Ended(self.controller)),
                    Some(Err(e)) => tracing::warn!(controller = self.controller, error = %e, "watch error; retrying with backoff"),
                    Some(Ok((index, init_done))) => {
                        if init_done && !listed[index] {
                            tracing::info!(controller = self.controller, kind = self.kinds[index], "cache synced");
                            listed[index] = true;
                        }
                        pass_at.get_or_insert_with(|| Instant::now() + debounce);
                    }
                },
                _ = timer, if all_listed => {
                    let start = std::time::Instant::now();
                    let again = pass().await;
                    // These passes hand their errors to the map manager (retried there), so a
                    // pass itself ends done or asking to run again.
                    let outcome = if again.is_some() { Outcome::RequeueAfter } else { Outcome::Success };
                    crate::runtime::controllers::global().record(self.controller, start.elapsed(), outcome);
                    pass_at = again.map(|retry| Instant::now() + retry);
                }
            }
        }
    }
}

/// The cached objects, cloned out of the store.
pub fn snapshot<K>(store: &Store<K>) -> Vec<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    store.state().iter().map(|o| o.as_ref().clone()).collect()
}
