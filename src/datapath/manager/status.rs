//! Sync status (for `/readyz`, the agent API and the CLI) and Prometheus metrics.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::gate::GateState;

/// Per table row counts. `pending` are dirty rows not in backoff; `failed` are rows in backoff after
/// a failed write; `stale` are kernel rows no owner wants (pruned once the gate opens).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub desired: usize,
    pub synced: usize,
    pub pending: usize,
    pub failed: usize,
    pub stale: usize,
    pub conflicts: usize,
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TableStatus {
    pub map: &'static str,
    #[serde(flatten)]
    pub counts: Counts,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ManagerStatus {
    pub initial_sync: GateState,
    /// Owners the initial sync still waits for.
    pub waiting_for: Vec<String>,
    /// Initial sync done and nothing left to write except rows in backoff.
    pub ready: bool,
    pub tables: Vec<TableStatus>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    group: String,
}

fn pass_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 4.0, 10))
}

/// The manager's metrics, registered under `<process prefix>_bpf_map_*` (e.g. `beeline_agent_bpf_map_writes_total`).
pub struct Metrics {
    writes: Family<MapLabels, Counter>,
    failures: Family<MapLabels, Counter>,
    retries: Family<MapLabels, Counter>,
    prunes: Family<MapLabels, Counter>,
    drift: Family<MapLabels, Counter>,
    pass_seconds: Family<GroupLabels, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            writes: Family::default(),
            failures: Family::default(),
            retries: Family::default(),
            prunes: Family::default(),
            drift: Family::default(),
            pass_seconds: Family::new_with_constructor(pass_histogram),
        }
    }
}

fn labels(map: &str) -> MapLabels {
    MapLabels { map: map.to_string() }
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("bpf_map");
        r.register("writes", "Successful map updates and deletes", self.writes.clone());
        r.register("write_failures", "Failed map updates and deletes", self.failures.clone());
        r.register("retries", "Writes retried after a failure", self.retries.clone());
        r.register("prunes", "Stale entries deleted after the initial sync", self.prunes.clone());
        r.register("drift_repairs", "Entries found changed behind the manager's back", self.drift.clone());
        r.register("sync_pass_seconds", "Duration of one writer pass", self.pass_seconds.clone());
    }

    pub(crate) fn write(&self, map: &str) {
        self.writes.get_or_create(&labels(map)).inc();
    }
    pub(crate) fn failure(&self, map: &str) {
        self.failures.get_or_create(&labels(map)).inc();
    }
    pub(crate) fn retry(&self, map: &str) {
        self.retries.get_or_create(&labels(map)).inc();
    }
    pub(crate) fn prune(&self, map: &str) {
        self.prunes.get_or_create(&labels(map)).inc();
    }
    pub(crate) fn drift(&self, map: &str, n: u64) {
        self.drift.get_or_create(&labels(map)).inc_by(n);
    }
    pub(crate) fn pass(&self, group: &str, took: Duration) {
        self.pass_seconds.get_or_create(&GroupLabels { group: group.to_string() }).observe(took.as_secs_f64());
    }
}
