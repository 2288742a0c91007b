//! Watch streams: newline-delimited JSON events over a chunked body, from a snapshot (ADDED for
//! every current object) or from a resourceVersion (replaying the event log), then live events,
//! periodic BOOKMARKs, and an `ERROR` 410 event when the watcher falls too far behind.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use crate::errors::ApiError;
use crate::resources::ResourceType;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::storage::{EventType, StoredEvent, WatchStart};

/// What a watch request asked for.
pub struct WatchRequest {
    pub rt: ResourceType,
    pub version: String,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub bookmarks: bool,
    pub send_initial_events: bool,
    pub timeout: Duration,
    pub bookmark_interval: Duration,
    /// Render objects as one-row meta.k8s.io Tables (kubectl get -w).
    pub table: bool,
}

impl WatchRequest {
    fn matches(&self, obj: &Value) -> bool {
        let ns_ok = self
            .namespace
            .as_deref()
            .is_none_or(|ns| obj.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("") == ns);
        ns_ok && self.labels.matches(obj) && self.fields.matches(obj)
    }

    fn render(&self, mut obj: Value) -> Value {
        obj["apiVersion"] = json!(self.rt.api_version(&self.version));
        if self.table {
            crate::http::table(&self.rt, &self.version, vec![obj], None)
        } else {
            obj
        }
    }

    fn event_line(&self, kind: &str, obj: Value) -> Bytes {
        let mut line = serde_json::to_vec(&json!({"type": kind, "object": self.render(obj)})).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj = json!({"kind": self.rt.kind, "apiVersion": self.rt.api_version(&self.version), "metadata": metadata});
        let mut line = serde_json::to_vec(&json!({"type": "BOOKMARK", "object": obj})).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }

    /// The event this watcher sees for a stored change, given its selectors: an object entering
    /// the selection is ADDED, one leaving it is DELETED.
    fn translate(&self, ev: &StoredEvent) -> Option<Bytes> {
        if ev.key != self.rt.key() {
            return None;
        }
        let now = self.matches(&ev.object);
        let before = ev.prev.as_ref().map_or(now, |p| self.matches(p));
        let kind = match (ev.kind, before, now) {
            (EventType::Added, _, true) => "ADDED",
            (EventType::Deleted, _, true) => "DELETED",
            (EventType::Modified, true, true) => "MODIFIED",
            (EventType::Modified, false, true) => "ADDED",
            (EventType::Modified, true, false) => "DELETED",
            _ => return None,
        };
        Some(self.event_line(kind, ev.object.clone()))
    }
}

fn error_line(err: &ApiError) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": "ERROR", "object": err.to_status()})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// Runs one watch, writing lines into `tx` until the client goes away or the timeout passes.
pub async fn run(
    req: WatchRequest,
    start: Result<WatchStart, ApiError>,
    mut rx: broadcast::Receiver<Arc<StoredEvent>>,
    tx: mpsc::Sender<Bytes>,
) {
    let start = match start {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send(error_line(&e)).await;
            return;
        }
    };
    let mut last_rv = match start {
        WatchStart::Snapshot { objects, rv } => {
            for o in objects.into_iter().filter(|o| req.matches(o)) {
                if tx.send(req.event_line("ADDED", o)).await.is_err() {
                    return;
                }
            }
            if req.send_initial_events && tx.send(req.bookmark(rv, true)).await.is_err() {
                return;
            }
            rv
        }
        WatchStart::Replay { events, rv } => {
            for ev in events {
                if let Some(line) = req.translate(&ev) {
                    if tx.send(line).await.is_err() {
                        return;
                    }
                }
            }
            rv
        }
    };
    let deadline = tokio::time::Instant::now() + req.timeout;
    let mut ticker = tokio::time::interval(req.bookmark_interval);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            _ = tokio::time::sleep_until(deadline) => return,
            _ = ticker.tick(), if req.bookmarks => {
                if tx.send(req.bookmark(last_rv, false)).await.is_err() {
                    return;
                }
            }
            received = rx.recv() => match received {
                Ok(ev) => {
                    last_rv = last_rv.max(ev.rv);
                    if let Some(line) = req.translate(&ev) {
                        if tx.send(line).await.is_err() {
                            return;
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let _ = tx.send(error_line(&ApiError::gone("the watcher fell too far behind; relist"))).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}
