//! Per-controller reconcile bookkeeping shared by every controller of a process: the
//! controller-runtime metrics (`controller_runtime_reconcile_total{controller,result}`,
//! `controller_runtime_reconcile_errors_total{controller}`,
//! `controller_runtime_reconcile_time_seconds{controller}`) and the health table behind
//! `beeline status`' "Controller Status: n/m healthy" (Cilium's controller list).
//!
//! One table per process ([`global`]): controllers record their passes without every constructor
//! threading a handle through, and the agent and operator register it on their registries.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, SystemTime},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};

/// How a pass ended, with controller-runtime's `result` label values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Done, but asked to run again after a delay (a periodic pass, or a retry of a write).
    RequeueAfter,
    Error(String),
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::RequeueAfter => "requeue_after",
            Outcome::Error(_) => "error",
        }
    }

    pub fn of<T, E: std::fmt::Display>(result: &Result<T, E>) -> Self {
        match result {
            Ok(_) => Outcome::Success,
            Err(e) => Outcome::Error(e.to_string()),
        }
    }
}

/// One controller's record, as `beeline status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ControllerStatus {
    pub name: String,
    pub success_count: u64,
    pub failure_count: u64,
    /// Failures since the last success: a controller is healthy while this is 0.
    pub consecutive_failures: u64,
    /// Unix seconds of the last pass that did not fail / that failed.
    pub last_success_unix: Option<u64>,
    pub last_failure_unix: Option<u64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_error: String,
}

impl ControllerStatus {
    pub fn healthy(&self) -> bool {
        self.consecutive_failures == 0
    }

    /// The record after one more pass ending with `outcome` at `now` (unix seconds).
    fn record(&mut self, outcome: &Outcome, now: u64) {
        match outcome {
            Outcome::Error(e) => {
                self.failure_count += 1;
                self.consecutive_failures += 1;
                self.last_failure_unix = Some(now);
                self.last_error = e.clone();
            }
            Outcome::Success | Outcome::RequeueAfter => {
                self.success_count += 1;
                self.consecutive_failures = 0;
                self.last_success_unix = Some(now);
            }
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    controller: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: String,
}

fn reconcile_histogram() -> Histogram {
    // 100 µs .. ~26 s: an in-memory pass up to a slow API server round trip.
    Histogram::new(exponential_buckets(0.0001, 4.0, 10))
}

#[derive(Clone)]
pub struct Controllers {
    table: Arc<Mutex<BTreeMap<String, ControllerStatus>>>,
    total: Family<ResultLabels, Counter>,
    errors: Family<ControllerLabels, Counter>,
    seconds: Family<ControllerLabels, Histogram, fn() -> Histogram>,
}

impl Default for Controllers {
    fn default() -> Self {
        Self {
            table: Arc::default(),
            total: Family::default(),
            errors: Family::default(),
            seconds: Family::new_with_constructor(reconcile_histogram),
        }
    }
}

impl Controllers {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("controller_runtime");
        r.register("reconcile", "Reconcile passes per controller and result", self.total.clone());
        r.register("reconcile_errors", "Reconcile passes that failed, per controller", self.errors.clone());
        r.register("reconcile_time_seconds", "Duration of reconcile passes, per controller", self.seconds.clone());
    }

    /// Records one pass of `controller` that took `elapsed`.
    pub fn record(&self, controller: &str, elapsed: Duration, outcome: Outcome) {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        self.record_at(controller, elapsed, outcome, now);
    }

    fn record_at(&self, controller: &str, elapsed: Duration, outcome: Outcome, now: u64) {
        let labels = ControllerLabels { controller: controller.to_string() };
        self.total.get_or_create(&ResultLabels { controller: controller.into(), result: outcome.label().into() }).inc();
        if matches!(outcome, Outcome::Error(_)) {
            self.errors.get_or_create(&labels).inc();
        }
        self.seconds.get_or_create(&labels).observe(elapsed.as_secs_f64());
        let mut table = self.table.lock().expect("controller table lock");
        let row = table
            .entry(controller.to_string())
            .or_insert_with(|| ControllerStatus { name: controller.to_string(), ..Default::default() });
        row.record(&outcome, now);
    }

    /// Every controller that ran at least one pass, by name.
    pub fn snapshot(&self) -> Vec<ControllerStatus> {
        self.table.lock().expect("controller table lock").values().cloned().collect()
    }
}

/// The process's controller table.
pub fn global() -> &'static Controllers {
    static GLOBAL: OnceLock<Controllers> = OnceLock::new();
    GLOBAL.get_or_init(Controllers::default)
}

/// Runs one pass of `controller` and records its duration and result in [`global`].
pub async fn timed<T, E: std::fmt::Display>(
    controller: &str,
    pass: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let start = std::time::Instant::now();
    let result = pass.await;
    global().record(controller, start.elapsed(), Outcome::of(&result));
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(c: &Controllers) -> String {
        let mut registry = Registry::with_prefix("beeline_agent");
        c.register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn passes_update_the_health_table() {
        // (outcomes in order, expected success, failure, consecutive failures, last error)
        let cases: &[(&[Outcome], u64, u64, u64, &str)] = &[
            (&[Outcome::Success], 1, 0, 0, ""),
            (&[Outcome::Error("api down".into())], 0, 1, 1, "api down"),
            (&[Outcome::Error("a".into()), Outcome::Error("b".into())], 0, 2, 2, "b"),
            (&[Outcome::Error("a".into()), Outcome::RequeueAfter], 1, 1, 0, "a"),
        ];
        for (outcomes, ok, failed, consecutive, last_error) in cases {
            let c = Controllers::default();
            for (i, o) in outcomes.iter().enumerate() {
                c.record_at("ipam", Duration::from_millis(3), o.clone(), 100 + i as u64);
            }
            let rows = c.snapshot();
            assert_eq!(rows.len(), 1);
            let row = &rows[0];
            assert_eq!(
                (row.success_count, row.failure_count, row.consecutive_failures, row.last_error.as_str()),
                (*ok, *failed, *consecutive, *last_error),
                "{outcomes:?}"
            );
            assert_eq!(row.healthy(), *consecutive == 0);
        }
    }

    #[test]
    fn metrics_use_controller_runtime_names_and_results() {
        let c = Controllers::default();
        c.record_at("services", Duration::from_millis(1), Outcome::Success, 1);
        c.record_at("services", Duration::from_millis(1), Outcome::Success, 2);
        c.record_at("policy", Duration::from_millis(1), Outcome::Error("x".into()), 3);
        c.record_at("policy", Duration::from_millis(1), Outcome::RequeueAfter, 4);
        let text = encode(&c);
        for line in [
            "beeline_agent_controller_runtime_reconcile_total{controller=\"services\",result=\"success\"} 2",
            "beeline_agent_controller_runtime_reconcile_total{controller=\"policy\",result=\"error\"} 1",
            "beeline_agent_controller_runtime_reconcile_total{controller=\"policy\",result=\"requeue_after\"} 1",
            "beeline_agent_controller_runtime_reconcile_errors_total{controller=\"policy\"} 1",
            "beeline_agent_controller_runtime_reconcile_time_seconds_count{controller=\"services\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
        assert!(!text.contains("reconcile_errors_total{controller=\"services\"}"), "{text}");
    }

    #[tokio::test]
    async fn timed_records_the_result_of_the_pass() {
        let ok: Result<(), String> = timed("timed-test-ok", async { Ok(()) }).await;
        assert!(ok.is_ok());
        let err: Result<(), String> = timed("timed-test-err", async { Err("boom".to_string()) }).await;
        assert!(err.is_err());
        let rows = global().snapshot();
        let find = |n: &str| rows.iter().find(|r| r.name == n).cloned().unwrap();
        assert!(find("timed-test-ok").healthy());
        assert_eq!(find("timed-test-err").last_error, "boom");
    }
}
