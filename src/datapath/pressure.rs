//! Map pressure (entries / max entries) of every pinned map, as `cilium status`' "BPF Maps" and
//! `cilium_bpf_map_pressure`. Only maps whose entries come and go are reported (hash, LRU hash,
//! LPM trie): arrays are preallocated and always "full".

use std::path::Path;

use aya::maps::{MapData, MapType};

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MapPressure {
    pub name: String,
    pub entries: u64,
    pub max_entries: u64,
}

impl MapPressure {
    /// entries / max (0 for a map without room, which the kernel does not create).
    pub fn pressure(&self) -> f64 {
        if self.max_entries == 0 {
            0.0
        } else {
            self.entries as f64 / self.max_entries as f64
        }
    }
}

fn counted(map_type: MapType) -> bool {
    matches!(
        map_type,
        MapType::Hash | MapType::PerCpuHash | MapType::LruHash | MapType::LruPerCpuHash | MapType::LpmTrie
    )
}

/// Every countable map pinned in `pin_dir`, by name. A map that cannot be read is skipped with a
/// warning: pressure is diagnostics, not a reason to fail the caller.
pub fn read_all(pin_dir: &Path) -> std::io::Result<Vec<MapPressure>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(pin_dir)?.flatten() {
        let path = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue; // the links directory
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        match read_one(&path) {
            Ok(Some((entries, max_entries))) => out.push(MapPressure { name, entries, max_entries }),
            Ok(None) => {}
            Err(e) => tracing::warn!(map = %name, error = %e, "cannot read map pressure"),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// (entries, max) of the map pinned at `path`, `None` when it is not a countable kind.
fn read_one(path: &Path) -> Result<Option<(u64, u64)>, Box<dyn std::error::Error + Send + Sync>> {
    let map = MapData::from_pin(path)?;
    let info = map.info()?;
    if !info.map_type().is_ok_and(counted) {
        return Ok(None);
    }
    use std::os::fd::{AsFd, AsRawFd};
    let fd = map.fd().as_fd().as_raw_fd();
    let entries = count_keys(fd, info.key_size() as usize, u64::from(info.max_entries()))?;
    Ok(Some((entries, u64::from(info.max_entries()))))
}

/// Walks the keys with `BPF_MAP_GET_NEXT_KEY` (the map's key type is not known here, so not
/// through aya's typed iterators). Bounded by `max` + 1 steps: a map changing under the walk can
/// restart it, and the count is a snapshot either way.
fn count_keys(fd: i32, key_size: usize, max: u64) -> std::io::Result<u64> {
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
    #[repr(C)]
    struct Attr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        next_key: u64,
        flags: u64,
    }
    let mut key = vec![0u8; key_size.max(1)];
    let mut next = vec![0u8; key_size.max(1)];
    let mut count = 0u64;
    let mut first = true;
    while count <= max {
        let attr = Attr {
            map_fd: fd as u32,
            _pad: 0,
            // A null key asks for the first key.
            key: if first { 0 } else { key.as_ptr() as u64 },
            next_key: next.as_mut_ptr() as u64,
            flags: 0,
        };
        // SAFETY: attr points at buffers of the map's key size that outlive the call.
        let rc = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_MAP_GET_NEXT_KEY, &attr as *const Attr, std::mem::size_of::<Attr>())
        };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            return if err.raw_os_error() == Some(libc::ENOENT) { Ok(count) } else { Err(err) };
        }
        count += 1;
        first = false;
        std::mem::swap(&mut key, &mut next);
    }
    Ok(count)
}

/// (frontends, backends) programmed in the IPv4 load-balancer maps: a frontend is a services row
/// with backend slot 0 (its master entry), a backend a row of the backends map.
pub fn lb4_programmed(pin_dir: &Path) -> Result<(u64, u64), Box<dyn std::error::Error + Send + Sync>> {
    use aya::maps::{HashMap, Map};
    use beeline_common::lb::{map_names, Lb4Backend, Lb4BackendKey, Lb4Key, Lb4Service};
    let pins = super::pins::PinLayout::new(pin_dir);
    let services: HashMap<MapData, Lb4Key, Lb4Service> =
        HashMap::try_from(Map::HashMap(MapData::from_pin(pins.map(map_names::LB4_SERVICES))?))?;
    let frontends = services.keys().filter_map(Result::ok).filter(|k| k.backend_slot == 0).count() as u64;
    let backends: HashMap<MapData, Lb4BackendKey, Lb4Backend> =
        HashMap::try_from(Map::HashMap(MapData::from_pin(pins.map(map_names::LB4_BACKENDS))?))?;
    Ok((frontends, backends.keys().filter_map(Result::ok).count() as u64))
}

/// [`lb4_programmed`] for the IPv6 maps.
pub fn lb6_programmed(pin_dir: &Path) -> Result<(u64, u64), Box<dyn std::error::Error + Send + Sync>> {
    use aya::maps::{HashMap, Map};
    use beeline_common::lb::{map_names, Lb6Backend, Lb6BackendKey, Lb6Key, Lb6Service};
    let pins = super::pins::PinLayout::new(pin_dir);
    let services: HashMap<MapData, Lb6Key, Lb6Service> =
        HashMap::try_from(Map::HashMap(MapData::from_pin(pins.map(map_names::LB6_SERVICES))?))?;
    let frontends = services.keys().filter_map(Result::ok).filter(|k| k.backend_slot == 0).count() as u64;
    let backends: HashMap<MapData, Lb6BackendKey, Lb6Backend> =
        HashMap::try_from(Map::HashMap(MapData::from_pin(pins.map(map_names::LB6_BACKENDS))?))?;
    Ok((frontends, backends.keys().filter_map(Result::ok).count() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_is_entries_over_max() {
        let cases = [(0, 100, 0.0), (25, 100, 0.25), (100, 100, 1.0), (3, 0, 0.0)];
        for (entries, max_entries, want) in cases {
            let p = MapPressure { name: "m".into(), entries, max_entries };
            assert_eq!(p.pressure(), want, "{entries}/{max_entries}");
        }
    }

    #[test]
    fn only_maps_whose_entries_vary_are_counted() {
        assert!(counted(MapType::Hash) && counted(MapType::LruHash) && counted(MapType::LpmTrie));
        assert!(!counted(MapType::Array) && !counted(MapType::PerCpuArray) && !counted(MapType::RingBuf));
    }
}
