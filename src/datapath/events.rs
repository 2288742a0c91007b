//! The kernel side of flow events: the pinned `beeline_events` ring buffer and the per-CPU count
//! of events it had no room for. Decoding and everything after it is [`crate::observe`].

use std::path::Path;

use aya::maps::{Map, MapData, PerCpuArray, RingBuf};
use beeline_common::events::{self, FlowEvent};

use super::{loader::DatapathError, pins::PinLayout};

fn open(pin_dir: &Path, name: &str) -> Result<MapData, DatapathError> {
    MapData::from_pin(PinLayout::new(pin_dir).map(name)).map_err(|e| DatapathError::map(name, e))
}

/// The ring buffer the programs write events into (one consumer at a time: the agent).
pub fn open_ring(pin_dir: &Path) -> Result<RingBuf<MapData>, DatapathError> {
    let name = events::RING_MAP_NAME;
    RingBuf::try_from(Map::RingBuf(open(pin_dir, name)?)).map_err(|e| DatapathError::map(name, e))
}

/// Every event waiting in `ring` right now, as raw records (decode with
/// [`crate::observe::decode::decode`]).
pub fn drain(ring: &mut RingBuf<MapData>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        out.push(item.to_vec());
    }
    out
}

/// Events lost to a full ring buffer, summed over CPUs.
pub fn read_lost(pin_dir: &Path) -> Result<u64, DatapathError> {
    let name = events::LOST_MAP_NAME;
    let map: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(open(pin_dir, name)?)).map_err(|e| DatapathError::map(name, e))?;
    let per_cpu = map.get(&0, 0).map_err(|e| DatapathError::map(name, e))?;
    Ok(per_cpu.iter().sum())
}

/// Forwarded packets and bytes per direction (`metric_dir::*`) from `beeline_metrics`, summed
/// over CPUs.
pub fn read_forwards(pin_dir: &Path) -> Result<Vec<(u32, beeline_common::datapath::DropStats)>, DatapathError> {
    let name = events::METRICS_MAP_NAME;
    let map: PerCpuArray<MapData, beeline_common::datapath::DropStats> =
        PerCpuArray::try_from(Map::PerCpuArray(open(pin_dir, name)?)).map_err(|e| DatapathError::map(name, e))?;
    let mut out = Vec::new();
    for dir in [events::metric_dir::INGRESS, events::metric_dir::EGRESS] {
        let per_cpu = map.get(&dir, 0).map_err(|e| DatapathError::map(name, e))?;
        let sum = per_cpu.iter().fold(beeline_common::datapath::DropStats::default(), |acc, s| {
            beeline_common::datapath::DropStats { packets: acc.packets + s.packets, bytes: acc.bytes + s.bytes }
        });
        out.push((dir, sum));
    }
    Ok(out)
}

/// Size of one record: the programs write nothing else.
pub const RECORD_SIZE: usize = std::mem::size_of::<FlowEvent>();
