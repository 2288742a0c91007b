//! Conntrack garbage collection: the agent deletes expired entries from the pinned conntrack map
//! on an interval, as Cilium's CT GC does.
//!
//! The map is an LRU, so a full map never refuses a new flow — but without GC it fills with dead
//! entries, and under pressure the kernel evicts the least recently used entry, which may be a live
//! long-idle connection (an idle SSH session, a database connection pool). Deleting the expired
//! entries keeps room for the live ones, and makes `beeline bpf ct list` show what is alive.
//! Both families' tables are collected (`beeline_ct4_global`, `beeline_ct6_global`) in one pass.
//!
//! Interval (Cilium's `conntrack-gc-interval`): a fixed value, or `0` for a dynamic one that
//! starts at 5 minutes, shortens when a pass deleted a large share of the map's capacity (down to
//! 10 s) and lengthens when it deleted little (up to `conntrack-gc-max-interval`, 12 h by default).

use std::{path::Path, time::Duration};

use aya::maps::{HashMap, Map, MapData};
use beeline_common::lb::{map_names, Ct4Entry, Ct4Tuple, Ct6Tuple};
use prometheus_client::{metrics::counter::Counter, metrics::gauge::Gauge, registry::Registry};
use tokio_util::sync::CancellationToken;

use super::{lb_tables::monotonic_secs, loader::DatapathError, pins::PinLayout};

/// The dynamic interval's bounds and start (Cilium's defaults).
pub const STARTING_INTERVAL: Duration = Duration::from_secs(5 * 60);
pub const MIN_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_INTERVAL: Duration = Duration::from_secs(12 * 3600);

/// `conntrack-gc-interval` / `conntrack-gc-max-interval` as configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcSchedule {
    /// `Some` for a fixed interval; `None` (configured `0`) for the dynamic one.
    pub fixed: Option<Duration>,
    pub max: Duration,
}

impl GcSchedule {
    pub fn from_config(interval: Duration, max_interval: Duration) -> Self {
        let max = if max_interval.is_zero() { DEFAULT_MAX_INTERVAL } else { max_interval.max(MIN_INTERVAL) };
        Self { fixed: (!interval.is_zero()).then_some(interval), max }
    }

    pub fn first(&self) -> Duration {
        self.fixed.unwrap_or(STARTING_INTERVAL.min(self.max))
    }

    /// The interval after a pass that deleted `deleted` of `capacity` entries. A large share
    /// (> 25 %) means entries die faster than we collect: shorten in proportion (a pass that
    /// deleted 60 % runs again after 40 % of the time). A small share (< 5 %) means we run too
    /// often: lengthen by half. In between the interval is right.
    pub fn next(&self, previous: Duration, deleted: usize, capacity: usize) -> Duration {
        if let Some(fixed) = self.fixed {
            return fixed;
        }
        let ratio = if capacity == 0 { 0.0 } else { deleted as f64 / capacity as f64 };
        let next = if ratio > 0.25 {
            previous.mul_f64(1.0 - ratio.min(0.9))
        } else if ratio < 0.05 {
            previous.mul_f64(1.5)
        } else {
            previous
        };
        Duration::from_secs(next.as_secs().clamp(MIN_INTERVAL.as_secs(), self.max.as_secs()))
    }
}

/// The keys of entries past their lifetime at `now` (monotonic seconds, the datapath's clock).
/// (IPv6 entries are the same `ct_entry`, so this serves both tuples.)
pub fn expired<K: Copy>(entries: &[(K, Ct4Entry)], now: u64) -> Vec<K> {
    entries.iter().filter(|(_, e)| u64::from(e.lifetime) < now).map(|(t, _)| *t).collect()
}

/// What one pass saw and did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassStats {
    pub alive: usize,
    pub deleted: usize,
    pub capacity: usize,
}

impl std::ops::Add for PassStats {
    type Output = PassStats;
    fn add(self, o: PassStats) -> PassStats {
        PassStats {
            alive: self.alive + o.alive,
            deleted: self.deleted + o.deleted,
            capacity: self.capacity + o.capacity,
        }
    }
}

/// One GC pass over the pinned conntrack maps under `pin_dir` (IPv4, and IPv6 when pinned: a
/// datapath pinned by an older agent has no IPv6 table yet, which is not an error).
pub fn collect(pin_dir: &Path) -> Result<PassStats, DatapathError> {
    let v4 = collect_map::<Ct4Tuple>(pin_dir, map_names::CT4)?;
    if !PinLayout::new(pin_dir).map(map_names::CT6).exists() {
        return Ok(v4);
    }
    Ok(v4 + collect_map::<Ct6Tuple>(pin_dir, map_names::CT6)?)
}

/// One pass over one table. An entry that vanished between the walk and the delete (evicted, or
/// collected by a concurrent pass) is not an error.
fn collect_map<K: aya::Pod>(pin_dir: &Path, name: &'static str) -> Result<PassStats, DatapathError> {
    let err = |e| DatapathError::map(name, e);
    let data = MapData::from_pin(PinLayout::new(pin_dir).map(name)).map_err(err)?;
    let capacity = data.info().map(|i| i.max_entries() as usize).unwrap_or(0);
    let mut map: HashMap<MapData, K, Ct4Entry> =
        HashMap::try_from(Map::from_map_data(data).map_err(err)?).map_err(err)?;
    let entries: Vec<(K, Ct4Entry)> = map.iter().filter_map(Result::ok).collect();
    let dead = expired(&entries, monotonic_secs());
    let mut deleted = 0;
    for key in &dead {
        match map.remove(key) {
            Ok(()) => deleted += 1,
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(err(e)),
        }
    }
    Ok(PassStats { alive: entries.len() - dead.len(), deleted, capacity })
}

/// `<prefix>_conntrack_gc_*` metrics.
#[derive(Clone, Default)]
pub struct GcMetrics {
    pub deleted: Counter,
    pub runs: Counter,
    pub errors: Counter,
    pub alive: Gauge,
}

impl GcMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register("conntrack_gc_entries_deleted", "Expired conntrack entries deleted", self.deleted.clone());
        registry.register("conntrack_gc_runs", "Conntrack GC passes", self.runs.clone());
        registry.register("conntrack_gc_errors", "Conntrack GC passes that failed", self.errors.clone());
        registry.register(
            "conntrack_entries_alive",
            "Live conntrack entries after the last GC pass",
            self.alive.clone(),
        );
    }
}

/// Registers the metrics and starts the GC task of the agent.
pub fn start(
    config: &crate::config::Config,
    telemetry: &crate::runtime::health::Telemetry,
    runner: &mut crate::runtime::runner::Runner,
) {
    let metrics = GcMetrics::default();
    metrics.register(&mut telemetry.registry.write().expect("registry lock"));
    let schedule = GcSchedule::from_config(config.conntrack_gc_interval, config.conntrack_gc_max_interval);
    let (pin_dir, token) = (config.pin_dir(), runner.shutdown_token());
    runner.spawn("conntrack-gc", async move {
        run(pin_dir, schedule, metrics, token).await;
        Ok(())
    });
}

/// Runs GC passes until `shutdown`. A failed pass (map not pinned yet, say) is logged, counted
/// and retried at the minimum interval; it never stops the agent.
pub async fn run(pin_dir: std::path::PathBuf, schedule: GcSchedule, metrics: GcMetrics, shutdown: CancellationToken) {
    let mut interval = schedule.first();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let dir = pin_dir.clone();
        let span = tracing::info_span!("conntrack_gc");
        let result = tokio::task::spawn_blocking(move || span.in_scope(|| collect(&dir))).await;
        metrics.runs.inc();
        interval = match result {
            Ok(Ok(stats)) => {
                metrics.deleted.inc_by(stats.deleted as u64);
                metrics.alive.set(stats.alive as i64);
                let next = schedule.next(interval, stats.deleted, stats.capacity);
                tracing::debug!(deleted = stats.deleted, alive = stats.alive, next = ?next, "conntrack GC pass");
                next
            }
            Ok(Err(e)) => {
                metrics.errors.inc();
                tracing::warn!(error = %e, "conntrack GC pass failed");
                MIN_INTERVAL
            }
            Err(e) => {
                metrics.errors.inc();
                tracing::warn!(error = %e, "conntrack GC task failed");
                MIN_INTERVAL
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(lifetime: u32) -> Ct4Entry {
        Ct4Entry { lifetime, ..Default::default() }
    }

    fn tuple(sport: u16) -> Ct4Tuple {
        Ct4Tuple { sport, ..Default::default() }
    }

    #[test]
    fn expired_keeps_entries_whose_lifetime_is_now_or_later() {
        let entries = [(tuple(1), entry(99)), (tuple(2), entry(100)), (tuple(3), entry(101)), (tuple(4), entry(0))];
        let dead: Vec<u16> = expired(&entries, 100).iter().map(|t| t.sport).collect();
        assert_eq!(dead, [1, 4]);
    }

    #[test]
    fn dynamic_interval_follows_the_share_of_capacity_deleted() {
        let s = GcSchedule::from_config(Duration::ZERO, Duration::ZERO);
        let min = |m: u64| Duration::from_secs(m * 60);
        // (previous, deleted, capacity) → next
        let cases = [
            (min(5), 0, 1000, Duration::from_secs(450)),   // nothing dead: back off ×1.5
            (min(5), 10, 1000, Duration::from_secs(450)),  // 1 %: back off
            (min(5), 100, 1000, min(5)),                   // 10 %: right
            (min(5), 600, 1000, min(2)),                   // 60 %: 40 % of the time
            (min(5), 1000, 1000, Duration::from_secs(30)), // all: capped at 90 % shorter
            (Duration::from_secs(12), 900, 1000, MIN_INTERVAL),
            (Duration::from_secs(11 * 3600), 0, 1000, DEFAULT_MAX_INTERVAL),
            (min(5), 5, 0, Duration::from_secs(450)), // unknown capacity: treated as little deleted
        ];
        for (previous, deleted, capacity, want) in cases {
            assert_eq!(s.next(previous, deleted, capacity), want, "{previous:?} {deleted}/{capacity}");
        }
        assert_eq!(s.first(), STARTING_INTERVAL);
    }

    #[test]
    fn a_fixed_interval_never_changes_and_max_bounds_the_dynamic_one() {
        let fixed = GcSchedule::from_config(Duration::from_secs(30), Duration::ZERO);
        assert_eq!(fixed.first(), Duration::from_secs(30));
        assert_eq!(fixed.next(Duration::from_secs(30), 1000, 1000), Duration::from_secs(30));
        let capped = GcSchedule::from_config(Duration::ZERO, Duration::from_secs(60));
        assert_eq!(capped.first(), Duration::from_secs(60), "the start never exceeds the max");
        assert_eq!(capped.next(Duration::from_secs(60), 0, 10), Duration::from_secs(60));
        let tiny = GcSchedule::from_config(Duration::ZERO, Duration::from_secs(1));
        assert_eq!(tiny.max, MIN_INTERVAL, "a max below the minimum is raised to it");
    }
}
