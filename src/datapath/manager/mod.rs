//! The map manager: controllers write rows into **desired tables** (one per BPF map, several owners
//! each); one writer per group of maps brings the pinned kernel maps to that state — ordered, retried,
//! repaired by periodic refresh, and pruning what nobody wants only after every owner's first full
//! pass, so an agent restart never blackholes traffic.
//!
//! ```text
//! controller ──replace_owner(rows)──▶ TableHandle ─┐ (Table + SyncState under a mutex)
//!                                                    ├─▶ GroupWriter ──▶ MapBackend (kernel | fake)
//! controller ──initial_pass_done()──▶ Owner ──▶ PruneGate
//! ```
//!
//! Pure parts: [`table`], [`ids`], [`gate`], and the planning half of [`writer`]. The I/O shells:
//! [`kernel`], [`writer::GroupWriter::run`].

pub mod backend;
pub mod fake;
pub mod gate;
pub mod ids;
pub mod kernel;
pub mod maps;
pub mod status;
pub mod table;
pub mod writer;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use backend::{BackendError, MapBackend};
use gate::PruneGate;
use status::{ManagerStatus, Metrics, TableStatus};
use table::{OwnerName, TableDiff};
use writer::{GroupWriter, MapState, Member, SyncState, TypedMember};

/// Kernel map types the manager syncs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    Hash,
    LruHash,
    /// Longest-prefix match; the kernel requires `BPF_F_NO_PREALLOC`. Rows are exact prefixes, so
    /// the manager's per-key semantics carry over unchanged (the datapath does the LPM lookup).
    LpmTrie,
}

impl MapKind {
    /// The `bpf_map_type` number.
    pub fn bpf_type(self) -> u32 {
        match self {
            MapKind::Hash => 1,     // BPF_MAP_TYPE_HASH
            MapKind::LruHash => 9,  // BPF_MAP_TYPE_LRU_HASH
            MapKind::LpmTrie => 11, // BPF_MAP_TYPE_LPM_TRIE
        }
    }
}

/// How a group's writer orders a pass (see [`writer::pass_steps`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOrder {
    /// Deletes first (frees space in full maps), then upserts.
    DeletesFirst,
    /// Upserts in ascending phase order, then deletes in descending order.
    MakeBeforeBreak,
}

/// A BPF map the manager owns: its pinned name, shape, types and write-ordering hook.
pub trait MapDef: Send + Sync + 'static {
    type Key: aya::Pod + Ord + Debug + Send + Sync;
    type Value: aya::Pod + PartialEq + Debug + Send + Sync;
    /// Pin name under the pin directory (also the kernel map name, truncated to 15 bytes).
    const NAME: &'static str;
    const KIND: MapKind;
    const MAX_ENTRIES: u32;
    const FLAGS: u32 = 0;

    /// Ordering hook: keys in lower phases are written first and deleted last.
    fn phase(_key: &Self::Key) -> u8 {
        0
    }

    /// One row for `beeline bpf <map> list`.
    fn row_json(key: &Self::Key, value: &Self::Value) -> serde_json::Value;
}

/// The shape of a kernel map, compared against what is pinned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapSpec {
    pub name: &'static str,
    pub kind: MapKind,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl MapSpec {
    pub fn of<M: MapDef>() -> Self {
        Self {
            name: M::NAME,
            kind: M::KIND,
            key_size: size_of::<M::Key>() as u32,
            value_size: size_of::<M::Value>() as u32,
            max_entries: M::MAX_ENTRIES,
            flags: M::FLAGS,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ManagerOptions {
    /// How long pruning waits for every owner's first full pass.
    pub initial_sync_timeout: Duration,
}

impl Default for ManagerOptions {
    fn default() -> Self {
        Self { initial_sync_timeout: Duration::from_secs(300) }
    }
}

type StatusSource = Box<dyn Fn() -> TableStatus + Send + Sync>;

/// One per agent. Cheap to clone.
#[derive(Clone)]
pub struct MapManager {
    gate: Arc<Mutex<PruneGate>>,
    metrics: Arc<Metrics>,
    tables: Arc<Mutex<Vec<StatusSource>>>,
}

impl MapManager {
    pub fn new(options: ManagerOptions) -> Self {
        Self {
            gate: Arc::new(Mutex::new(PruneGate::new(Instant::now(), options.initial_sync_timeout))),
            metrics: Arc::new(Metrics::default()),
            tables: Arc::default(),
        }
    }

    /// Registers a row owner; pruning waits for its [`Owner::initial_pass_done`]. Register every
    /// owner before starting the writers.
    pub fn register_owner(&self, name: &str) -> Owner {
        let name: OwnerName = Arc::from(name);
        self.gate.lock().unwrap().register(name.clone());
        Owner { name, gate: self.gate.clone() }
    }

    /// Starts a group of maps that share one writer, written in `order`.
    pub fn group(&self, name: &'static str, order: WriteOrder) -> GroupBuilder {
        GroupBuilder { manager: self.clone(), name, order, members: Vec::new(), notify: Arc::new(Notify::new()) }
    }

    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.metrics.register(registry);
    }

    pub fn status(&self) -> ManagerStatus {
        let (initial_sync, waiting_for, open) = {
            let mut gate = self.gate.lock().unwrap();
            let open = gate.check(Instant::now());
            (gate.state(), gate.waiting_for(), open)
        };
        let tables: Vec<TableStatus> = self.tables.lock().unwrap().iter().map(|f| f()).collect();
        let ready = open && tables.iter().all(|t| t.counts.pending == 0);
        ManagerStatus { initial_sync, waiting_for, ready, tables }
    }
}

/// A controller's identity as a row owner.
#[derive(Clone)]
pub struct Owner {
    name: OwnerName,
    gate: Arc<Mutex<PruneGate>>,
}

impl Owner {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This owner has submitted every row it wants at least once (its first full pass).
    pub fn initial_pass_done(&self) {
        self.gate.lock().unwrap().report_initial_pass(&self.name);
    }
}

pub struct GroupBuilder {
    manager: MapManager,
    name: &'static str,
    order: WriteOrder,
    members: Vec<Box<dyn Member>>,
    notify: Arc<Notify>,
}

impl GroupBuilder {
    /// Adds map `M` (in dependency order: maps others refer to first) and reads its current contents,
    /// which become the restored rows and are kept until the prune gate opens.
    pub fn add<M: MapDef>(
        &mut self,
        mut backend: impl MapBackend<M::Key, M::Value> + 'static,
    ) -> Result<TableHandle<M>, BackendError> {
        let restored = backend.dump()?;
        if !restored.is_empty() {
            tracing::info!(map = M::NAME, entries = restored.len(), "restored entries from the pinned map");
        }
        let state = Arc::new(Mutex::new(MapState {
            table: table::Table::default(),
            sync: SyncState::new(restored.iter().copied()),
        }));
        let source_state = state.clone();
        self.manager.tables.lock().unwrap().push(Box::new(move || {
            let guard = source_state.lock().unwrap();
            TableStatus { map: M::NAME, counts: guard.sync.counts(&guard.table) }
        }));
        self.members.push(Box::new(TypedMember::<M>::new(
            state.clone(),
            Box::new(backend),
            self.manager.metrics.clone(),
        )));
        Ok(TableHandle { state, notify: self.notify.clone(), restored: Arc::new(restored) })
    }

    /// The group's writer; drive it with [`GroupWriter::run`] (or `sync_once` in tests).
    pub fn build(self) -> GroupWriter {
        GroupWriter {
            name: self.name,
            order: self.order,
            members: self.members,
            gate: self.manager.gate.clone(),
            notify: self.notify,
            metrics: self.manager.metrics.clone(),
        }
    }
}

/// What controllers hold to write rows into one map's desired table.
pub struct TableHandle<M: MapDef> {
    state: Arc<Mutex<MapState<M::Key, M::Value>>>,
    notify: Arc<Notify>,
    restored: Arc<Vec<(M::Key, M::Value)>>,
}

impl<M: MapDef> Clone for TableHandle<M> {
    fn clone(&self) -> Self {
        Self { state: self.state.clone(), notify: self.notify.clone(), restored: self.restored.clone() }
    }
}

impl<M: MapDef> TableHandle<M> {
    /// Replaces `owner`'s whole contribution to this map. Conflicts (a key another owner holds) are
    /// logged and returned; the other owner's row stays in effect.
    pub fn replace_owner(
        &self,
        owner: &Owner,
        rows: impl IntoIterator<Item = (M::Key, M::Value)>,
    ) -> TableDiff<M::Key> {
        let rows: BTreeMap<M::Key, M::Value> = rows.into_iter().collect();
        let diff = {
            let mut guard = self.state.lock().unwrap();
            let diff = guard.table.replace_owner(&owner.name, rows);
            guard.sync.desired_changed(&diff.changed);
            diff
        };
        for c in &diff.conflicts {
            tracing::warn!(map = M::NAME, key = ?c.key, holder = %c.holder, claimants = ?c.claimants, "map key claimed by several owners");
        }
        if !diff.changed.is_empty() {
            self.notify.notify_one();
        }
        diff
    }

    /// The entries the pinned map held when the manager started (to restore IDs from).
    pub fn restored(&self) -> &[(M::Key, M::Value)] {
        &self.restored
    }

    /// The effective desired rows.
    pub fn desired(&self) -> BTreeMap<M::Key, M::Value> {
        self.state.lock().unwrap().table.iter().map(|(k, v)| (*k, *v)).collect()
    }

    pub fn status(&self) -> TableStatus {
        let guard = self.state.lock().unwrap();
        TableStatus { map: M::NAME, counts: guard.sync.counts(&guard.table) }
    }
}

#[cfg(test)]
mod tests;
