//! The agent's flow pipeline (thin I/O shell over [`crate::observe`]): reads the datapath's
//! `beeline_events` ring buffer as it becomes readable, decodes and enriches each event with the
//! latest cluster snapshot, counts it in Prometheus metrics, keeps it in the flow ring, and serves
//! the ring on the local API (`GET /v1/flows?last=N[&follow=true]`, newline-delimited JSON).

use std::{
    path::Path,
    sync::{Arc, RwLock},
    time::Duration,
};

use axum::{
    body::Body,
    extract::{Query, State},
    http::header,
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;

use crate::crds::{cilium_endpoint::CiliumEndpoint, cilium_node::CiliumNode};
use crate::datapath::{events, DatapathError};
use crate::observe::{decode, flow, snapshot, store::FlowStore};
use crate::runtime::runner::Runner;

/// How often the enrichment snapshot is rebuilt from the API server.
const SNAPSHOT_PERIOD: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowLabels {
    /// `trace`, `drop`, `policy-verdict`.
    pub r#type: String,
    pub verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub reason: String,
    /// `ingress` (into a pod, policy) / `egress` (out of a pod) / `unknown`.
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    pub direction: String,
    pub verdict: String,
    pub match_type: String,
}

/// Hubble-style flow metrics (`hubble_flows_processed_total`, `hubble_drop_total`,
/// `hubble_policy_verdicts_total`).
#[derive(Clone, Default)]
pub struct FlowMetrics {
    pub flows: Family<FlowLabels, Counter>,
    pub drops: Family<DropLabels, Counter>,
    pub policy_verdicts: Family<VerdictLabels, Counter>,
    pub decode_errors: Counter,
    /// Events the datapath could not queue (ring buffer full), from `beeline_events_lost`.
    pub lost_events: Gauge,
}

impl FlowMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("hubble");
        r.register("flows_processed", "Flows seen by the datapath, by event type and verdict", self.flows.clone());
        r.register("drop", "Packets dropped by the datapath, by reason and direction", self.drops.clone());
        r.register("policy_verdicts", "Policy decisions on new flows", self.policy_verdicts.clone());
        r.register("decode_errors", "Datapath event records that could not be decoded", self.decode_errors.clone());
        r.register("lost_events", "Datapath events lost to a full ring buffer", self.lost_events.clone());
    }

    pub fn observe(&self, f: &flow::Flow) {
        self.flows.get_or_create(&FlowLabels { r#type: f.event_type.clone(), verdict: f.verdict.clone() }).inc();
        match f.event_type.as_str() {
            "drop" => {
                // A drop's direction is known when a pod is on one side: leaving it is egress.
                let direction = if !f.source.pod_name.is_empty() {
                    "egress"
                } else if !f.destination.pod_name.is_empty() {
                    "ingress"
                } else {
                    "unknown"
                };
                let labels = DropLabels { reason: f.drop_reason_desc.clone(), direction: direction.into() };
                self.drops.get_or_create(&labels).inc();
            }
            "policy-verdict" => {
                let labels = VerdictLabels {
                    direction: f.traffic_direction.to_lowercase(),
                    verdict: f.policy_verdict.to_lowercase(),
                    match_type: f.observation_point.trim_start_matches("policy-verdict:").to_string(),
                };
                self.policy_verdicts.get_or_create(&labels).inc();
            }
            _ => {}
        }
    }
}

/// Monotonic clock (what `bpf_ktime_get_ns` reads) → Unix time, in nanoseconds.
fn boot_offset_ns() -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec on our stack.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let mono = i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec);
    let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i128);
    wall.unwrap_or(0) - mono
}

/// A stored flow with the event it came from (to enrich it again on read).
#[derive(Clone, Debug)]
pub struct Observed {
    pub event: decode::DatapathEvent,
    pub flow: flow::Flow,
}

/// Whether enrichment missed something a later snapshot may know: an endpoint without a pod
/// whose address the snapshot did not have yet, or a translated service without its name.
fn incomplete(f: &flow::Flow) -> bool {
    let unnamed = |ep: &flow::FlowEndpoint| ep.pod_name.is_empty() && ep.identity != 1 && ep.identity != 6;
    unnamed(&f.source)
        || unnamed(&f.destination)
        || (!f.original_destination.is_empty() && f.destination_service.is_none())
}

pub struct Flows {
    pub store: FlowStore<Observed>,
    snapshot: Arc<RwLock<flow::Snapshot>>,
}

impl Flows {
    /// The newest `n` flows, those enrichment left incomplete enriched again with today's snapshot.
    pub fn last(&self, n: usize) -> Vec<flow::Flow> {
        let snap = self.snapshot.read().expect("snapshot lock");
        let again = |o: Observed| {
            if incomplete(&o.flow) {
                flow::Flow { time_ns: o.flow.time_ns, ..flow::enrich(&o.event, &snap) }
            } else {
                o.flow
            }
        };
        self.store.last(n).into_iter().map(again).collect()
    }
}

pub struct Observer {
    pub flows: Arc<Flows>,
    snapshot: Arc<RwLock<flow::Snapshot>>,
    pub metrics: FlowMetrics,
}

impl Observer {
    pub fn new(node_name: &str, metrics: FlowMetrics) -> Observer {
        let snap =
            flow::Snapshot { node_name: node_name.into(), boot_offset_ns: boot_offset_ns(), ..Default::default() };
        let snapshot = Arc::new(RwLock::new(snap));
        let store = FlowStore::new(crate::observe::store::DEFAULT_CAPACITY);
        Observer { flows: Arc::new(Flows { store, snapshot: snapshot.clone() }), snapshot, metrics }
    }

    /// Decodes, enriches, counts and stores one record.
    pub fn ingest(&self, record: &[u8]) {
        match decode::decode(record) {
            Ok(ev) => {
                let flow = flow::enrich(&ev, &self.snapshot.read().expect("snapshot lock"));
                self.metrics.observe(&flow);
                self.flows.store.push(Observed { event: ev, flow });
            }
            Err(e) => {
                self.metrics.decode_errors.inc();
                tracing::warn!(error = %e, "undecodable datapath event");
            }
        }
    }
}

/// Starts the ring-buffer reader and the snapshot refresher; returns the API routes.
pub fn start(
    pin_dir: &Path,
    node_name: &str,
    client: kube::Client,
    registry: &mut Registry,
    runner: &mut Runner,
    token: CancellationToken,
) -> Result<Router, DatapathError> {
    let metrics = FlowMetrics::default();
    metrics.register(registry);
    let observer = Arc::new(Observer::new(node_name, metrics));
    let ring = events::open_ring(pin_dir)?;
    let reader = observer.clone();
    let reader_token = token.clone();
    runner.spawn("flow-reader", async move {
        // SAFETY: `ring` owns its file descriptor and moves into the AsyncFd, so the descriptor
        // stays open (and is not reused) for as long as it is registered.
        let mut fd = unsafe { AsyncFd::register(ring) }.map_err(|e| e.into_parts().1)?;
        loop {
            let mut guard = tokio::select! {
                _ = reader_token.cancelled() => return Ok(()),
                guard = fd.readable_mut() => guard?,
            };
            for record in events::drain(guard.get_inner_mut()) {
                reader.ingest(&record);
            }
            guard.clear_ready();
        }
    });
    let refresher = observer.clone();
    let node = node_name.to_string();
    let pin_dir = pin_dir.to_path_buf();
    runner.spawn("flow-snapshot", async move {
        loop {
            match events::read_lost(&pin_dir) {
                Ok(lost) => {
                    refresher.metrics.lost_events.set(lost as i64);
                }
                Err(e) => tracing::debug!(error = %e, "lost-events counter not read"),
            }
            match fetch_snapshot(&client, &node).await {
                Ok(mut snap) => {
                    snap.boot_offset_ns = boot_offset_ns();
                    *refresher.snapshot.write().expect("snapshot lock") = snap;
                }
                Err(e) => tracing::debug!(error = %e, "flow enrichment snapshot not refreshed"),
            }
            tokio::select! {
                _ = token.cancelled() => return Ok(()),
                _ = tokio::time::sleep(SNAPSHOT_PERIOD) => {}
            }
        }
    });
    Ok(routes(observer.flows.clone()))
}

#[tracing::instrument(level = "debug", skip(client))]
async fn fetch_snapshot(client: &kube::Client, node: &str) -> Result<flow::Snapshot, kube::Error> {
    let lp = Default::default();
    let ceps = Api::<CiliumEndpoint>::all(client.clone()).list(&lp).await?.items;
    let services = Api::<Service>::all(client.clone()).list(&lp).await?.items;
    let nodes = Api::<CiliumNode>::all(client.clone()).list(&lp).await?.items;
    Ok(snapshot::build(node, &ceps, &services, &nodes))
}

#[derive(Debug, serde::Deserialize)]
struct FlowsQuery {
    last: Option<usize>,
    #[serde(default)]
    follow: bool,
}

/// `GET /v1/flows`: the ring (all of it, or the newest `last`) as newline-delimited JSON; with
/// `follow=true` the response stays open and every new flow follows as it arrives.
pub fn routes(store: Arc<Flows>) -> Router {
    Router::new().route("/v1/flows", get(flows)).route("/v1/flows/count", get(count)).with_state(store)
}

async fn count(State(flows): State<Arc<Flows>>) -> Json<usize> {
    Json(flows.store.len())
}

fn ndjson(flow: &flow::Flow) -> String {
    let mut line = serde_json::to_string(flow).expect("flows serialize");
    line.push('\n');
    line
}

async fn flows(State(flows): State<Arc<Flows>>, Query(q): Query<FlowsQuery>) -> Response {
    // Subscribe before reading the ring: nothing pushed in between is lost to a follower.
    let live = q.follow.then(|| flows.store.subscribe());
    let past: String = flows.last(q.last.unwrap_or(usize::MAX)).iter().map(ndjson).collect();
    let body = match live {
        None => Body::from(past),
        Some(rx) => {
            let first = futures::stream::once(async move { Ok::<_, std::convert::Infallible>(past) });
            let rest = futures::stream::unfold(rx, |mut rx| async move {
                loop {
                    match rx.recv().await {
                        Ok(observed) => return Some((Ok(ndjson(&observed.flow)), rx)),
                        // A slow follower skips what it missed (Hubble's "lost events").
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                    }
                }
            });
            Body::from_stream(futures::StreamExt::chain(first, rest))
        }
    };
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::tables::be;
    use beeline_common::events::{kind, point, FlowEvent};

    fn record(ev: &FlowEvent) -> Vec<u8> {
        // SAFETY: POD without padding.
        unsafe { std::slice::from_raw_parts((ev as *const FlowEvent).cast::<u8>(), size_of::<FlowEvent>()) }.to_vec()
    }

    #[test]
    fn flows_are_counted_stored_and_named_once_the_snapshot_knows_the_pods() {
        let observer = Observer::new("node-a", FlowMetrics::default());
        let ev = FlowEvent {
            kind: kind::TRACE,
            point: point::TO_ENDPOINT,
            protocol: 17,
            saddr: be("10.0.1.2".parse().unwrap()),
            daddr: be("10.0.1.3".parse().unwrap()),
            sport: 5000,
            dport: 53,
            ..Default::default()
        };
        observer.ingest(&record(&ev));
        observer.ingest(&[0u8; 3]);
        assert_eq!(observer.metrics.decode_errors.get(), 1);
        let labels = FlowLabels { r#type: "trace".into(), verdict: "FORWARDED".into() };
        assert_eq!(observer.metrics.flows.get_or_create(&labels).get(), 1);
        assert_eq!(observer.flows.last(10)[0].destination.pod_name, "", "not in the snapshot yet");
        let pod = |name: &str| flow::KnownEndpoint {
            namespace: "default".into(),
            pod_name: name.into(),
            identity: 300,
            ..Default::default()
        };
        {
            let mut snap = observer.snapshot.write().unwrap();
            snap.endpoints.insert("10.0.1.2".parse().unwrap(), pod("client"));
            snap.endpoints.insert("10.0.1.3".parse().unwrap(), pod("dns"));
        }
        let flows = observer.flows.last(10);
        assert_eq!(flows.len(), 1);
        assert_eq!((flows[0].source.pod_name.as_str(), flows[0].destination.pod_name.as_str()), ("client", "dns"));
        assert_eq!(flows[0].destination.identity, 300);
    }

    #[tokio::test]
    async fn the_api_serves_the_ring_and_follows_new_flows_as_ndjson() {
        let observer = Observer::new("node-a", FlowMetrics::default());
        let ev = |sport| FlowEvent { kind: kind::DROP, reason: 133, protocol: 17, sport, ..Default::default() };
        for port in [1, 2, 3] {
            observer.ingest(&record(&ev(port)));
        }
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let app = routes(observer.flows.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let ports = |text: &str| -> Vec<u16> {
            text.lines().map(|l| serde_json::from_str::<flow::Flow>(l).unwrap().l4.source_port).collect()
        };
        let all = crate::cli::agent_client::get_text(&socket, "/v1/flows").await.unwrap();
        assert_eq!(ports(&all), [1, 2, 3]);
        let last = crate::cli::agent_client::get_text(&socket, "/v1/flows?last=2").await.unwrap();
        assert_eq!(ports(&last), [2, 3]);
        // Follow: the newest flow, then what arrives later, line by line.
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let follow_socket = socket.clone();
        tokio::spawn(async move {
            crate::cli::agent_client::stream_lines(&follow_socket, "/v1/flows?last=1&follow=true", tx).await
        });
        let within = std::time::Duration::from_secs(5);
        let line = tokio::time::timeout(within, rx.recv()).await.expect("a line within 5 s").expect("stream open");
        assert_eq!(ports(&line), [3]);
        observer.ingest(&record(&ev(4)));
        let line = tokio::time::timeout(within, rx.recv()).await.expect("a line within 5 s").expect("stream open");
        assert_eq!(ports(&line), [4]);
    }
}
