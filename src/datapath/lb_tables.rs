//! Typed access to the load balancer's datapath-side maps through their pins: the node LB settings
//! and the maps only the datapath writes — conntrack and ClientIP affinity — for `beeline bpf ct
//! list` and tests. The rows maps (services, backends, rev-NAT, affinity-match, Maglev, source
//! ranges) belong to the map manager.

use std::path::Path;

use aya::maps::{Array, HashMap, Map, MapData};
use beeline_common::lb::{
    map_names, Ct4Entry, Ct4Tuple, Ct6Entry, Ct6Tuple, Lb4AffinityKey, LbAffinityValue, LbConfig,
};

use super::{loader::DatapathError, pins::PinLayout};

fn open(pin_dir: &Path, name: &'static str) -> Result<MapData, DatapathError> {
    MapData::from_pin(PinLayout::new(pin_dir).map(name)).map_err(|e| DatapathError::map(name, e))
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |e| DatapathError::map(name, e)
}

/// Writes the node's LB settings (default algorithm, Maglev table size).
pub fn write_lb_config(pin_dir: &Path, config: &LbConfig) -> Result<(), DatapathError> {
    let name = map_names::LB_CONFIG;
    let mut map: Array<MapData, LbConfig> = Array::try_from(Map::Array(open(pin_dir, name)?)).map_err(map_err(name))?;
    map.set(0, config, 0).map_err(map_err(name))
}

pub fn read_lb_config(pin_dir: &Path) -> Result<LbConfig, DatapathError> {
    let name = map_names::LB_CONFIG;
    let map: Array<MapData, LbConfig> = Array::try_from(Map::Array(open(pin_dir, name)?)).map_err(map_err(name))?;
    map.get(&0, 0).map_err(map_err(name))
}

fn dump<K: aya::Pod, V: aya::Pod>(pin_dir: &Path, name: &'static str) -> Result<Vec<(K, V)>, DatapathError> {
    let data = open(pin_dir, name)?;
    let map = Map::from_map_data(data).map_err(map_err(name))?;
    let map: HashMap<MapData, K, V> = HashMap::try_from(map).map_err(map_err(name))?;
    let mut rows = Vec::new();
    for row in map.iter() {
        match row {
            Ok(row) => rows.push(row),
            // Evicted or expired between "next key" and "lookup": gone, as the dump should say.
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(DatapathError::map(name, e)),
        }
    }
    Ok(rows)
}

/// Every conntrack entry (expired ones included: they linger until overwritten or evicted).
pub fn list_ct(pin_dir: &Path) -> Result<Vec<(Ct4Tuple, Ct4Entry)>, DatapathError> {
    dump(pin_dir, map_names::CT4)
}

/// Every IPv6 conntrack entry (`beeline_ct6_global`), expired ones included.
pub fn list_ct6(pin_dir: &Path) -> Result<Vec<(Ct6Tuple, Ct6Entry)>, DatapathError> {
    dump(pin_dir, map_names::CT6)
}

/// Every ClientIP affinity entry.
pub fn list_affinity(pin_dir: &Path) -> Result<Vec<(Lb4AffinityKey, LbAffinityValue)>, DatapathError> {
    dump(pin_dir, map_names::LB4_AFFINITY)
}

fn upsert<K: aya::Pod, V: aya::Pod>(
    pin_dir: &Path,
    name: &'static str,
    key: &K,
    value: &V,
) -> Result<(), DatapathError> {
    let map = Map::from_map_data(open(pin_dir, name)?).map_err(map_err(name))?;
    let mut map: HashMap<MapData, K, V> = HashMap::try_from(map).map_err(map_err(name))?;
    map.insert(key, value, 0).map_err(map_err(name))
}

/// Writes an affinity entry (tests age entries this way instead of sleeping).
pub fn upsert_affinity(pin_dir: &Path, key: &Lb4AffinityKey, value: &LbAffinityValue) -> Result<(), DatapathError> {
    upsert(pin_dir, map_names::LB4_AFFINITY, key, value)
}

/// Writes a conntrack entry (tests of the conntrack GC plant expired and live entries this way).
pub fn upsert_ct(pin_dir: &Path, key: &Ct4Tuple, value: &Ct4Entry) -> Result<(), DatapathError> {
    upsert(pin_dir, map_names::CT4, key, value)
}

/// Writes an IPv6 conntrack entry (tests plant entries this way).
pub fn upsert_ct6(pin_dir: &Path, key: &Ct6Tuple, value: &Ct6Entry) -> Result<(), DatapathError> {
    upsert(pin_dir, map_names::CT6, key, value)
}

/// The monotonic clock the datapath stamps entries with (`bpf_ktime_get_ns`, CLOCK_MONOTONIC), in
/// seconds.
pub fn monotonic_secs() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64
}
