//! The kernel backends: a pinned BPF hash map ([`KernelMap`]) or LPM trie ([`KernelLpmMap`]),
//! opened through aya.
//!
//! Maps are pinned by name under one bpffs directory. At start the manager reopens the pin when its
//! shape (type, key/value size, max entries, flags) matches the definition — keeping the entries the
//! datapath is forwarding on — and otherwise replaces it with a new, empty map (with a warning: the
//! layout changed, the old entries cannot be read as the new types).

use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use aya::maps::{lpm_trie, HashMap, LpmTrie, Map, MapData, MapError};

use super::backend::{BackendError, MapBackend};
use super::{MapDef, MapSpec};

/// Kernel map names are at most 15 bytes (BPF_OBJ_NAME_LEN 16 with the NUL).
fn kernel_name(name: &str) -> &str {
    &name[..name.len().min(15)]
}

fn err(map: &str, op: &'static str, e: impl std::fmt::Display) -> BackendError {
    BackendError::Syscall { map: map.to_string(), op, message: e.to_string() }
}

/// The shape of the pinned map at `path`, as the kernel reports it.
pub fn pinned_spec(path: &Path, name: &'static str) -> Result<MapSpec, BackendError> {
    let data = MapData::from_pin(path).map_err(|e| err(name, "open pin", e))?;
    let info = data.info().map_err(|e| err(name, "map info", e))?;
    let kind = match info.map_type() {
        Ok(aya::maps::MapType::Hash) => super::MapKind::Hash,
        Ok(aya::maps::MapType::LruHash) => super::MapKind::LruHash,
        Ok(aya::maps::MapType::LpmTrie) => super::MapKind::LpmTrie,
        other => return Err(err(name, "map info", format!("unsupported map type {other:?}"))),
    };
    Ok(MapSpec {
        name,
        kind,
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
        flags: info.map_flags(),
    })
}

/// Creates a new map of `spec` and pins it at `path` (which must not exist).
fn create_pinned(spec: &MapSpec, path: &Path) -> Result<MapData, BackendError> {
    let obj = aya_obj::Map::new_from_params(
        spec.kind.bpf_type(),
        spec.key_size,
        spec.value_size,
        spec.max_entries,
        spec.flags,
    );
    let data = MapData::create(obj, kernel_name(spec.name), None).map_err(|e| err(spec.name, "create", e))?;
    data.pin(path).map_err(|e| err(spec.name, "pin", e))?;
    Ok(data)
}

/// Opens the map pinned at `pin_dir/spec.name`, creating it (or replacing it when its shape differs).
pub fn open_or_create(pin_dir: &Path, spec: &MapSpec) -> Result<MapData, BackendError> {
    let path = pin_dir.join(spec.name);
    if path.exists() {
        match pinned_spec(&path, spec.name) {
            Ok(pinned) if pinned == *spec => {
                return MapData::from_pin(&path).map_err(|e| err(spec.name, "open pin", e));
            }
            Ok(pinned) => {
                tracing::warn!(map = spec.name, ?pinned, wanted = ?spec, "pinned map has a different shape; recreating it empty");
            }
            Err(e) => tracing::warn!(map = spec.name, error = %e, "pinned map unreadable; recreating it"),
        }
        std::fs::remove_file(&path).map_err(|e| err(spec.name, "unpin", e))?;
    } else {
        std::fs::create_dir_all(pin_dir).map_err(|e| err(spec.name, "create pin dir", e))?;
    }
    create_pinned(spec, &path)
}

/// A typed pinned hash map.
pub struct KernelMap<K, V> {
    name: &'static str,
    path: PathBuf,
    map: HashMap<MapData, K, V>,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K: aya::Pod, V: aya::Pod> KernelMap<K, V> {
    fn from_data(name: &'static str, path: PathBuf, data: MapData) -> Result<Self, BackendError> {
        let map = Map::from_map_data(data).map_err(|e| err(name, "open", e))?;
        let map = HashMap::try_from(map).map_err(|e| err(name, "open", e))?;
        Ok(Self { name, path, map, _types: PhantomData })
    }

    /// Opens (or creates) the map of definition `M` under `pin_dir`.
    pub fn open_or_create<M: MapDef<Key = K, Value = V>>(pin_dir: &Path) -> Result<Self, BackendError> {
        let spec = MapSpec::of::<M>();
        let data = open_or_create(pin_dir, &spec)?;
        Self::from_data(M::NAME, pin_dir.join(M::NAME), data)
    }

    /// Opens an existing pin read-write without checking or creating anything (debug CLI, tests).
    pub fn open_pinned<M: MapDef<Key = K, Value = V>>(pin_dir: &Path) -> Result<Self, BackendError> {
        let path = pin_dir.join(M::NAME);
        let data = MapData::from_pin(&path).map_err(|e| err(M::NAME, "open pin", e))?;
        Self::from_data(M::NAME, path, data)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, key: &K) -> Result<Option<V>, BackendError> {
        match self.map.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(err(self.name, "lookup", e)),
        }
    }
}

fn is_enoent(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound | MapError::ElementNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

impl<K: aya::Pod + Send, V: aya::Pod + Send> MapBackend<K, V> for KernelMap<K, V> {
    fn upsert(&mut self, key: &K, value: &V) -> Result<(), BackendError> {
        self.map.insert(key, value, 0).map_err(|e| err(self.name, "update", e))
    }

    fn delete(&mut self, key: &K) -> Result<(), BackendError> {
        match self.map.remove(key) {
            Ok(()) => Ok(()),
            Err(e) if is_enoent(&e) => Ok(()),
            Err(e) => Err(err(self.name, "delete", e)),
        }
    }

    fn dump(&mut self) -> Result<Vec<(K, V)>, BackendError> {
        let mut rows = Vec::new();
        for item in self.map.iter() {
            match item {
                Ok(row) => rows.push(row),
                // An entry deleted between "next key" and "lookup" (the datapath or another writer):
                // it is gone, which is what the dump should say.
                Err(e) if is_enoent(&e) => {}
                Err(e) => return Err(err(self.name, "dump", e)),
            }
        }
        Ok(rows)
    }
}

/// A map key that is an LPM trie key: a prefix length followed by the data the trie matches on.
/// The manager keys rows by the whole key (so `/24` and `/32` of one address are two rows); the
/// kernel API wants the two parts apart ([`lpm_trie::Key`]).
pub trait LpmKey: aya::Pod {
    type Data: aya::Pod;
    fn to_lpm(&self) -> lpm_trie::Key<Self::Data>;
    fn from_lpm(key: &lpm_trie::Key<Self::Data>) -> Self;
}

/// `LpmKey` for a `#[repr(C)]` key of the shape `{ prefixlen: u32, data: $data }`.
macro_rules! lpm_key {
    ($key:ty, $data:ty) => {
        impl LpmKey for $key {
            type Data = $data;

            fn to_lpm(&self) -> lpm_trie::Key<Self::Data> {
                lpm_trie::Key::new(self.prefixlen, self.data)
            }

            fn from_lpm(key: &lpm_trie::Key<Self::Data>) -> Self {
                Self { prefixlen: key.prefix_len(), data: key.data() }
            }
        }
    };
}

lpm_key!(beeline_common::ipcache::IpcacheKey, beeline_common::ipcache::IpcacheLpmData);
lpm_key!(beeline_common::policy::PolicyKey, beeline_common::policy::PolicyLpmData);
lpm_key!(beeline_common::lb::Lb4SrcRangeKey, beeline_common::lb::Lb4SrcRangeData);

/// A typed pinned LPM trie.
pub struct KernelLpmMap<K: LpmKey, V> {
    name: &'static str,
    map: LpmTrie<MapData, K::Data, V>,
}

impl<K: LpmKey, V: aya::Pod> KernelLpmMap<K, V> {
    fn from_data(name: &'static str, data: MapData) -> Result<Self, BackendError> {
        let map = Map::from_map_data(data).map_err(|e| err(name, "open", e))?;
        let map = LpmTrie::try_from(map).map_err(|e| err(name, "open", e))?;
        Ok(Self { name, map })
    }

    /// Opens (or creates) the trie of definition `M` under `pin_dir`.
    pub fn open_or_create<M: MapDef<Key = K, Value = V>>(pin_dir: &Path) -> Result<Self, BackendError> {
        let data = open_or_create(pin_dir, &MapSpec::of::<M>())?;
        Self::from_data(M::NAME, data)
    }

    /// Opens an existing pin read-write without checking or creating anything (debug CLI, tests).
    pub fn open_pinned<M: MapDef<Key = K, Value = V>>(pin_dir: &Path) -> Result<Self, BackendError> {
        let data = MapData::from_pin(pin_dir.join(M::NAME)).map_err(|e| err(M::NAME, "open pin", e))?;
        Self::from_data(M::NAME, data)
    }

    /// Longest-prefix match of `key`, as the datapath sees it.
    pub fn lookup(&self, key: &K) -> Result<Option<V>, BackendError> {
        match self.map.get(&key.to_lpm(), 0) {
            Ok(v) => Ok(Some(v)),
            Err(e) if is_enoent(&e) => Ok(None),
            Err(e) => Err(err(self.name, "lookup", e)),
        }
    }
}

impl<K: LpmKey + Send, V: aya::Pod + Send> MapBackend<K, V> for KernelLpmMap<K, V>
where
    K::Data: Send,
{
    fn upsert(&mut self, key: &K, value: &V) -> Result<(), BackendError> {
        self.map.insert(&key.to_lpm(), value, 0).map_err(|e| err(self.name, "update", e))
    }

    fn delete(&mut self, key: &K) -> Result<(), BackendError> {
        match self.map.remove(&key.to_lpm()) {
            Ok(()) => Ok(()),
            Err(e) if is_enoent(&e) => Ok(()),
            Err(e) => Err(err(self.name, "delete", e)),
        }
    }

    fn dump(&mut self) -> Result<Vec<(K, V)>, BackendError> {
        let mut rows = Vec::new();
        for item in self.map.iter() {
            match item {
                Ok((k, v)) => rows.push((K::from_lpm(&k), v)),
                Err(e) if is_enoent(&e) => {}
                Err(e) => return Err(err(self.name, "dump", e)),
            }
        }
        Ok(rows)
    }
}
