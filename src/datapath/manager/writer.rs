//! The writer: brings one group of pinned maps to their desired tables.
//!
//! The pure core is [`SyncState`] (what we believe the kernel holds, which keys are dirty, per-key
//! retry state), [`pass_steps`] (the order of a pass) and [`retry_delay`]. [`GroupWriter::sync_once`]
//! runs one pass synchronously with an explicit clock, so tests drive it deterministically;
//! [`GroupWriter::run`] is the thin async loop around it (batching, retry timers, periodic refresh).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::backend::{BackendError, MapBackend};
use super::gate::PruneGate;
use super::status::{Counts, Metrics};
use super::table::Table;
use super::{MapDef, WriteOrder};

pub const RETRY_BASE: Duration = Duration::from_millis(50);
pub const RETRY_MAX: Duration = Duration::from_secs(60);

/// Delay before retry number `attempts` (1 = first retry): 50 ms doubling up to 60 s.
pub fn retry_delay(attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(20);
    RETRY_BASE.saturating_mul(1 << exp).min(RETRY_MAX)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OpKind {
    Delete,
    Upsert,
}

/// One step of a pass: every planned op of `kind` in `phase` of member `member`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub member: usize,
    pub kind: OpKind,
    pub phase: u8,
}

/// The order of a pass over a group's maps, given each member's planned `(kind, phase)` pairs.
///
/// Upserts go in ascending (member, phase) order — maps that others refer to first, then the keys a
/// map's ordering hook puts first. Deletes go in exactly the reverse order. `DeletesFirst` runs every
/// delete before any upsert, freeing space in full maps; `MakeBeforeBreak` runs upserts first so an
/// updated entry (e.g. a service master with a smaller count) is in place before what it stopped
/// referring to is removed.
pub fn pass_steps(order: WriteOrder, planned: &[BTreeSet<(OpKind, u8)>]) -> Vec<Step> {
    let mut upserts = Vec::new();
    for (member, set) in planned.iter().enumerate() {
        for (kind, phase) in set {
            if *kind == OpKind::Upsert {
                upserts.push(Step { member, kind: *kind, phase: *phase });
            }
        }
    }
    let mut deletes = Vec::new();
    for (member, set) in planned.iter().enumerate().rev() {
        for (kind, phase) in set.iter().rev() {
            if *kind == OpKind::Delete {
                deletes.push(Step { member, kind: *kind, phase: *phase });
            }
        }
    }
    match order {
        WriteOrder::DeletesFirst => deletes.into_iter().chain(upserts).collect(),
        WriteOrder::MakeBeforeBreak => upserts.into_iter().chain(deletes).collect(),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op<K, V> {
    Upsert(K, V),
    Delete(K),
}

impl<K, V> Op<K, V> {
    pub fn key(&self) -> &K {
        match self {
            Op::Upsert(k, _) | Op::Delete(k) => k,
        }
    }
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Upsert(..) => OpKind::Upsert,
            Op::Delete(_) => OpKind::Delete,
        }
    }
}

#[derive(Clone, Debug)]
struct Retry {
    attempts: u32,
    not_before: Instant,
}

/// What happened to one executed op, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recorded {
    pub pruned: bool,
}

/// Per map: what the kernel holds (as far as we know) and what still needs writing. Pure.
#[derive(Debug)]
pub struct SyncState<K, V> {
    kernel: BTreeMap<K, V>,
    /// Keys whose kernel entry may differ from the desired one.
    dirty: BTreeSet<K>,
    retry: BTreeMap<K, Retry>,
    /// Keys desired at some point since start: deleting them needs no prune gate.
    touched: BTreeSet<K>,
    last_error: Option<String>,
}

impl<K: Ord + Clone, V: Clone + PartialEq> SyncState<K, V> {
    /// State for a map whose kernel contents are `kernel` (read at start).
    pub fn new(kernel: impl IntoIterator<Item = (K, V)>) -> Self {
        let kernel: BTreeMap<K, V> = kernel.into_iter().collect();
        let dirty = kernel.keys().cloned().collect();
        Self { kernel, dirty, retry: BTreeMap::new(), touched: BTreeSet::new(), last_error: None }
    }

    /// The desired value of `keys` changed: write them at the next pass, backoff reset.
    pub fn desired_changed(&mut self, keys: &[K]) {
        for k in keys {
            self.retry.remove(k);
            self.dirty.insert(k.clone());
            self.touched.insert(k.clone());
        }
    }

    /// The ops due at `now`. Clean keys leave the dirty set; keys in backoff or stale keys waiting for
    /// the prune gate stay.
    pub fn plan(&mut self, table: &Table<K, V>, now: Instant, prune_allowed: bool) -> Vec<Op<K, V>> {
        let mut ops = Vec::new();
        let mut clean = Vec::new();
        for key in &self.dirty {
            let want = table.get(key);
            if want == self.kernel.get(key) {
                clean.push(key.clone());
                continue;
            }
            if self.retry.get(key).is_some_and(|r| r.not_before > now) {
                continue;
            }
            match want {
                Some(v) => ops.push(Op::Upsert(key.clone(), v.clone())),
                None if prune_allowed || self.touched.contains(key) => ops.push(Op::Delete(key.clone())),
                None => {}
            }
        }
        for key in clean {
            self.dirty.remove(&key);
            self.retry.remove(&key);
        }
        ops
    }

    /// Whether `op` is a retry of an earlier failure.
    pub fn is_retry(&self, key: &K) -> bool {
        self.retry.contains_key(key)
    }

    /// Records the outcome of `op`.
    pub fn record(
        &mut self,
        table: &Table<K, V>,
        op: &Op<K, V>,
        result: Result<(), &BackendError>,
        now: Instant,
    ) -> Recorded {
        let key = op.key();
        let still_wanted = match op {
            Op::Upsert(_, v) => table.get(key) == Some(v),
            Op::Delete(_) => table.get(key).is_none(),
        };
        match result {
            Ok(()) => {
                let pruned = matches!(op, Op::Delete(_)) && !self.touched.contains(key);
                match op {
                    Op::Upsert(k, v) => self.kernel.insert(k.clone(), v.clone()),
                    Op::Delete(k) => self.kernel.remove(k),
                };
                self.retry.remove(key);
                if still_wanted {
                    self.dirty.remove(key);
                }
                Recorded { pruned }
            }
            Err(e) => {
                self.last_error = Some(e.to_string());
                // A newer desired value already reset this key's backoff: keep it that way.
                if still_wanted {
                    let attempts = self.retry.get(key).map_or(1, |r| r.attempts + 1);
                    self.retry.insert(key.clone(), Retry { attempts, not_before: now + retry_delay(attempts) });
                }
                Recorded::default()
            }
        }
    }

    /// Replaces our belief about the kernel with a fresh dump; returns how many keys had drifted
    /// (differ from the desired table and were not already known to).
    pub fn reload(&mut self, table: &Table<K, V>, dump: Vec<(K, V)>) -> usize {
        let old = std::mem::replace(&mut self.kernel, dump.into_iter().collect());
        let mut drifted = 0;
        let keys: BTreeSet<K> = self.kernel.keys().chain(table.iter().map(|(k, _)| k)).cloned().collect();
        for key in keys {
            let now = self.kernel.get(&key);
            if table.get(&key) != now {
                if old.get(&key) != now && !self.dirty.contains(&key) {
                    drifted += 1;
                }
                self.dirty.insert(key);
            }
        }
        drifted
    }

    /// When the earliest backoff ends.
    pub fn next_retry(&self) -> Option<Instant> {
        self.retry.values().map(|r| r.not_before).min()
    }

    pub fn counts(&self, table: &Table<K, V>) -> Counts {
        let synced = table.iter().filter(|(k, v)| self.kernel.get(k) == Some(v)).count();
        let failed = self.retry.len();
        let stale = self.kernel.keys().filter(|k| table.get(k).is_none()).count();
        let pending = self.dirty.iter().filter(|k| !self.retry.contains_key(*k)).count();
        Counts {
            desired: table.len(),
            synced,
            pending,
            failed,
            stale,
            conflicts: table.conflicts().len(),
            last_error: self.last_error.clone(),
        }
    }

    /// What we believe the kernel holds.
    pub fn kernel(&self) -> &BTreeMap<K, V> {
        &self.kernel
    }
}

/// A map's desired table and sync state, shared between the controllers' handle and the writer.
#[derive(Debug)]
pub struct MapState<K, V> {
    pub table: Table<K, V>,
    pub sync: SyncState<K, V>,
}

/// One map inside a group writer, with its types erased.
pub(crate) trait Member: Send {
    fn name(&self) -> &'static str;
    /// Plans this pass's ops; returns their `(kind, phase)` pairs.
    fn plan(&mut self, now: Instant, prune_allowed: bool) -> BTreeSet<(OpKind, u8)>;
    /// Executes the planned ops of one step; returns how many failed.
    fn execute(&mut self, kind: OpKind, phase: u8, now: Instant) -> usize;
    /// Drops whatever was planned and not executed (a blocked step); those keys stay dirty.
    fn discard_plan(&mut self);
    /// Re-reads the kernel map; returns the number of drifted keys.
    fn refresh(&mut self) -> Result<usize, BackendError>;
    fn next_retry(&self) -> Option<Instant>;
    fn counts(&self) -> Counts;
}

/// A pass's planned ops of one map, by (kind, phase).
type Plan<K, V> = BTreeMap<(OpKind, u8), Vec<Op<K, V>>>;

pub(crate) struct TypedMember<M: MapDef> {
    pub state: Arc<Mutex<MapState<M::Key, M::Value>>>,
    pub backend: Box<dyn MapBackend<M::Key, M::Value>>,
    pub metrics: Arc<Metrics>,
    planned: Plan<M::Key, M::Value>,
}

impl<M: MapDef> TypedMember<M> {
    pub fn new(
        state: Arc<Mutex<MapState<M::Key, M::Value>>>,
        backend: Box<dyn MapBackend<M::Key, M::Value>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self { state, backend, metrics, planned: BTreeMap::new() }
    }
}

impl<M: MapDef> Member for TypedMember<M> {
    fn name(&self) -> &'static str {
        M::NAME
    }

    fn plan(&mut self, now: Instant, prune_allowed: bool) -> BTreeSet<(OpKind, u8)> {
        let mut guard = self.state.lock().unwrap();
        let MapState { table, sync } = &mut *guard;
        self.planned.clear();
        for op in sync.plan(table, now, prune_allowed) {
            if sync.is_retry(op.key()) {
                self.metrics.retry(M::NAME);
            }
            self.planned.entry((op.kind(), M::phase(op.key()))).or_default().push(op);
        }
        self.planned.keys().copied().collect()
    }

    fn execute(&mut self, kind: OpKind, phase: u8, now: Instant) -> usize {
        let Some(ops) = self.planned.remove(&(kind, phase)) else { return 0 };
        // The syscalls run without the lock so controllers are never blocked behind the kernel.
        let results: Vec<Result<(), BackendError>> = ops
            .iter()
            .map(|op| match op {
                Op::Upsert(k, v) => self.backend.upsert(k, v),
                Op::Delete(k) => self.backend.delete(k),
            })
            .collect();
        let mut guard = self.state.lock().unwrap();
        let MapState { table, sync } = &mut *guard;
        let mut failed = 0;
        for (op, result) in ops.iter().zip(&results) {
            let recorded = sync.record(table, op, result.as_ref().map(|_| ()), now);
            match result {
                Ok(()) => {
                    self.metrics.write(M::NAME);
                    if recorded.pruned {
                        self.metrics.prune(M::NAME);
                    }
                }
                Err(e) => {
                    failed += 1;
                    self.metrics.failure(M::NAME);
                    tracing::debug!(map = M::NAME, key = ?op.key(), error = %e, "map write failed, will retry");
                }
            }
        }
        failed
    }

    fn discard_plan(&mut self) {
        self.planned.clear();
    }

    fn refresh(&mut self) -> Result<usize, BackendError> {
        let dump = self.backend.dump()?;
        let mut guard = self.state.lock().unwrap();
        let MapState { table, sync } = &mut *guard;
        let drifted = sync.reload(table, dump);
        if drifted > 0 {
            tracing::warn!(map = M::NAME, drifted, "kernel map drifted from the desired table; repairing");
            self.metrics.drift(M::NAME, drifted as u64);
        }
        Ok(drifted)
    }

    fn next_retry(&self) -> Option<Instant> {
        self.state.lock().unwrap().sync.next_retry()
    }

    fn counts(&self) -> Counts {
        let guard = self.state.lock().unwrap();
        guard.sync.counts(&guard.table)
    }
}

/// The result of one pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    pub attempted_steps: usize,
    pub failed_ops: usize,
    /// Steps skipped because an earlier step of the same kind failed (they run on a later pass).
    pub blocked_steps: usize,
}

/// Tuning of the async loop.
#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// How long to wait after a change for more changes, so a burst becomes one pass.
    pub batch_delay: Duration,
    /// How often to re-read the kernel maps and repair drift.
    pub refresh_interval: Duration,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self { batch_delay: Duration::from_millis(10), refresh_interval: Duration::from_secs(300) }
    }
}

/// The single writer of a group of maps (usually one map; the LB maps form one group because their
/// writes are ordered across maps).
pub struct GroupWriter {
    pub(crate) name: &'static str,
    pub(crate) order: WriteOrder,
    pub(crate) members: Vec<Box<dyn Member>>,
    pub(crate) gate: Arc<Mutex<PruneGate>>,
    pub(crate) notify: Arc<Notify>,
    pub(crate) metrics: Arc<Metrics>,
}

impl GroupWriter {
    /// One pass at `now`. A failing step blocks later steps of the same kind (an entry is never
    /// written before what it refers to), not the other kind.
    pub fn sync_once(&mut self, now: Instant) -> PassReport {
        let started = Instant::now();
        let prune_allowed = self.gate.lock().unwrap().check(now);
        let planned: Vec<_> = self.members.iter_mut().map(|m| m.plan(now, prune_allowed)).collect();
        let mut report = PassReport::default();
        let mut blocked: BTreeSet<OpKind> = BTreeSet::new();
        for step in pass_steps(self.order, &planned) {
            if blocked.contains(&step.kind) {
                report.blocked_steps += 1;
                continue;
            }
            report.attempted_steps += 1;
            let failed = self.members[step.member].execute(step.kind, step.phase, now);
            if failed > 0 {
                report.failed_ops += failed;
                blocked.insert(step.kind);
            }
        }
        for m in &mut self.members {
            m.discard_plan();
        }
        self.metrics.pass(self.name, started.elapsed());
        report
    }

    /// Re-reads every member's kernel map; returns the total drift found (repaired by the next pass).
    pub fn refresh(&mut self) -> usize {
        let mut drifted = 0;
        for m in &mut self.members {
            match m.refresh() {
                Ok(n) => drifted += n,
                Err(e) => tracing::warn!(map = m.name(), error = %e, "refresh failed"),
            }
        }
        drifted
    }

    /// When a pass is next needed without any new change (earliest backoff end).
    pub fn next_retry(&self) -> Option<Instant> {
        self.members.iter().filter_map(|m| m.next_retry()).min()
    }

    /// Whether every member has nothing left to write right now (no dirty key outside backoff).
    pub fn idle(&self) -> bool {
        self.members.iter().all(|m| m.counts().pending == 0)
    }

    /// The async loop: a pass after each burst of changes, at retry deadlines, while the prune gate
    /// waits (to notice it opening) and after each periodic refresh. Returns on `shutdown`.
    pub async fn run(mut self, options: WriterOptions, shutdown: CancellationToken) {
        let notify = self.notify.clone();
        let mut refresh = tokio::time::interval(options.refresh_interval);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        refresh.tick().await; // the first tick is immediate; the start-up dump already happened
        let gate_poll = Duration::from_millis(500);
        tracing::info!(group = self.name, "map writer started");
        loop {
            self.sync_once(Instant::now());
            let gate_waiting = !self.gate.lock().unwrap().check(Instant::now());
            let wake = match (self.next_retry(), gate_waiting) {
                (Some(t), true) => Some(t.min(Instant::now() + gate_poll)),
                (Some(t), false) => Some(t),
                (None, true) => Some(Instant::now() + gate_poll),
                (None, false) => None,
            };
            let sleep = async {
                match wake {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = notify.notified() => {
                    // Batch: let the rest of a burst arrive before writing.
                    tokio::time::sleep(options.batch_delay).await;
                }
                _ = refresh.tick() => { self.refresh(); }
                _ = sleep => {}
            }
        }
        tracing::info!(group = self.name, "map writer stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_from_50ms_to_a_60s_cap() {
        let cases = [(1, 50), (2, 100), (3, 200), (5, 800), (11, 51_200), (12, 60_000), (40, 60_000)];
        for (attempts, ms) in cases {
            assert_eq!(retry_delay(attempts), Duration::from_millis(ms), "attempt {attempts}");
        }
    }

    fn set(pairs: &[(OpKind, u8)]) -> BTreeSet<(OpKind, u8)> {
        pairs.iter().copied().collect()
    }

    fn steps(v: Vec<Step>) -> Vec<(usize, OpKind, u8)> {
        v.into_iter().map(|s| (s.member, s.kind, s.phase)).collect()
    }

    #[test]
    fn pass_order_for_both_write_orders() {
        use OpKind::{Delete as D, Upsert as U};
        let planned = vec![set(&[(D, 0), (U, 0)]), set(&[(U, 0), (U, 1), (D, 0), (D, 1)])];
        assert_eq!(
            steps(pass_steps(WriteOrder::MakeBeforeBreak, &planned)),
            vec![(0, U, 0), (1, U, 0), (1, U, 1), (1, D, 1), (1, D, 0), (0, D, 0)]
        );
        assert_eq!(
            steps(pass_steps(WriteOrder::DeletesFirst, &planned)),
            vec![(1, D, 1), (1, D, 0), (0, D, 0), (0, U, 0), (1, U, 0), (1, U, 1)]
        );
        assert!(pass_steps(WriteOrder::DeletesFirst, &[set(&[]), set(&[])]).is_empty());
    }

    fn table(rows: &[(u32, u32)]) -> Table<u32, u32> {
        let mut t = Table::default();
        t.replace_owner(&Arc::from("o"), rows.iter().copied().collect());
        t
    }

    #[test]
    fn plan_writes_differences_and_holds_stale_keys_until_the_gate_opens() {
        let t0 = Instant::now();
        // Kernel (restored): 1=1 (still wanted), 2=2 (stale), 3=9 (wrong value).
        let mut sync = SyncState::new([(1, 1), (2, 2), (3, 9)]);
        let t = table(&[(1, 1), (3, 3), (4, 4)]);
        sync.desired_changed(&[1, 3, 4]);
        let ops = sync.plan(&t, t0, false);
        assert_eq!(ops, vec![Op::Upsert(3, 3), Op::Upsert(4, 4)], "stale key 2 kept while the gate is closed");
        for op in &ops {
            sync.record(&t, op, Ok(()), t0);
        }
        assert_eq!(sync.plan(&t, t0, false), vec![]);
        assert_eq!(sync.counts(&t).stale, 1);
        let ops = sync.plan(&t, t0, true);
        assert_eq!(ops, vec![Op::Delete(2)]);
        assert_eq!(sync.record(&t, &ops[0], Ok(()), t0), Recorded { pruned: true });
        let c = sync.counts(&t);
        assert_eq!((c.desired, c.synced, c.pending, c.failed, c.stale), (3, 3, 0, 0, 0));
    }

    #[test]
    fn withdrawn_keys_are_deleted_without_waiting_for_the_gate() {
        let t0 = Instant::now();
        let mut sync = SyncState::new([]);
        let mut t = table(&[(1, 1)]);
        sync.desired_changed(&[1]);
        for op in sync.plan(&t, t0, false) {
            sync.record(&t, &op, Ok(()), t0);
        }
        let diff = t.replace_owner(&Arc::from("o"), BTreeMap::new());
        sync.desired_changed(&diff.changed);
        let ops = sync.plan(&t, t0, false);
        assert_eq!(ops, vec![Op::Delete(1)]);
        assert_eq!(sync.record(&t, &ops[0], Ok(()), t0), Recorded { pruned: false });
    }

    #[test]
    fn failures_back_off_and_a_newer_value_resets_the_backoff() {
        let t0 = Instant::now();
        let err = BackendError::Injected { map: "m".into(), call: 1 };
        let mut sync = SyncState::new([]);
        let mut t = table(&[(1, 1)]);
        sync.desired_changed(&[1]);
        let op = sync.plan(&t, t0, true).remove(0);
        sync.record(&t, &op, Err(&err), t0);
        assert_eq!(sync.next_retry(), Some(t0 + Duration::from_millis(50)));
        assert!(sync.plan(&t, t0 + Duration::from_millis(49), true).is_empty(), "in backoff");
        let op = sync.plan(&t, t0 + Duration::from_millis(50), true).remove(0);
        sync.record(&t, &op, Err(&err), t0);
        assert_eq!(sync.next_retry(), Some(t0 + Duration::from_millis(100)), "second retry waits twice as long");
        assert_eq!(sync.counts(&t).failed, 1);
        assert!(sync.counts(&t).last_error.is_some());

        let diff = t.replace_owner(&Arc::from("o"), [(1, 2)].into_iter().collect());
        sync.desired_changed(&diff.changed);
        assert_eq!(sync.next_retry(), None);
        assert_eq!(sync.plan(&t, t0, true), vec![Op::Upsert(1, 2)], "new value written at once");
    }

    #[test]
    fn reload_finds_drift_and_marks_it_for_repair() {
        let t0 = Instant::now();
        let t = table(&[(1, 1), (2, 2)]);
        let mut sync = SyncState::new([(1, 1), (2, 2)]);
        sync.plan(&t, t0, true); // everything clean
        let drifted = sync.reload(&t, vec![(1, 7), (3, 3)]); // 1 changed, 2 deleted, 3 added behind our back
        assert_eq!(drifted, 3);
        let mut ops = sync.plan(&t, t0, true);
        ops.sort_by_key(|op| *op.key());
        assert_eq!(ops, vec![Op::Upsert(1, 1), Op::Upsert(2, 2), Op::Delete(3)]);
    }
}
