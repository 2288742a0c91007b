//! Programs a [`DesiredLb`] straight into the pinned LB maps, for `test_run` tests of the datapath:
//! the rows the services controller would submit, without a map manager in between.

use std::path::Path;

use beeline_common::lb::{LbAffinityMatchKey, LbMaglevKey};

use crate::controllers::agent::services::source_range_key;
use crate::datapath::manager::backend::MapBackend;
use crate::datapath::manager::kernel::{KernelLpmMap, KernelMap};
use crate::datapath::manager::maps::{Lb4Backends, Lb4Maglev, Lb4RevNat, Lb4Services, Lb4SourceRange, LbAffinityMatch};
use crate::services::DesiredLb;

/// Writes every row of `desired` (in the manager's order: backends, rev-NAT, affinity-match and
/// Maglev, then services with the master entries last). Panics on failure (test support).
pub fn program(pin_dir: &Path, desired: &DesiredLb) {
    let mut backends = KernelMap::open_pinned::<Lb4Backends>(pin_dir).expect("backends map");
    for (k, v) in &desired.backends {
        backends.upsert(k, v).expect("backend row");
    }
    let mut rev_nat = KernelMap::open_pinned::<Lb4RevNat>(pin_dir).expect("rev-NAT map");
    for (k, v) in &desired.rev_nat {
        rev_nat.upsert(k, v).expect("rev-NAT row");
    }
    let mut affinity = KernelMap::open_pinned::<LbAffinityMatch>(pin_dir).expect("affinity-match map");
    for m in &desired.affinity_match {
        affinity
            .upsert(&LbAffinityMatchKey { backend_id: m.backend_id, rev_nat_id: m.rev_nat_id, pad: 0 }, &0)
            .expect("affinity-match row");
    }
    let mut maglev = KernelMap::open_pinned::<Lb4Maglev>(pin_dir).expect("Maglev map");
    for (rev_nat_id, table) in &desired.maglev {
        for (index, backend_id) in table.iter().enumerate() {
            let key = LbMaglevKey { rev_nat_id: *rev_nat_id, pad: 0, index: index as u32 };
            maglev.upsert(&key, backend_id).expect("Maglev row");
        }
    }
    let mut ranges = KernelLpmMap::open_pinned::<Lb4SourceRange>(pin_dir).expect("source-range map");
    for range in &desired.source_ranges {
        ranges.upsert(&source_range_key(range), &0).expect("source range");
    }
    let mut services = KernelMap::open_pinned::<Lb4Services>(pin_dir).expect("services map");
    let (masters, slots): (Vec<_>, Vec<_>) = desired.services.iter().partition(|(k, _)| k.backend_slot == 0);
    for (k, v) in slots.into_iter().chain(masters) {
        services.upsert(k, v).expect("service row");
    }
}

/// Moves the maps from `old` to `new` as the map manager would: writes `new`, then deletes the rows
/// of `old` that `new` no longer has. Conntrack and affinity stay as the datapath left them.
pub fn replace(pin_dir: &Path, old: &DesiredLb, new: &DesiredLb) {
    program(pin_dir, new);
    let mut services = KernelMap::open_pinned::<Lb4Services>(pin_dir).expect("services map");
    for k in old.services.keys().filter(|k| !new.services.contains_key(k)) {
        services.delete(k).expect("delete service row");
    }
    let mut backends = KernelMap::open_pinned::<Lb4Backends>(pin_dir).expect("backends map");
    for k in old.backends.keys().filter(|k| !new.backends.contains_key(k)) {
        backends.delete(k).expect("delete backend row");
    }
    let mut rev_nat = KernelMap::open_pinned::<Lb4RevNat>(pin_dir).expect("rev-NAT map");
    for k in old.rev_nat.keys().filter(|k| !new.rev_nat.contains_key(k)) {
        rev_nat.delete(k).expect("delete rev-NAT row");
    }
    let mut affinity = KernelMap::open_pinned::<LbAffinityMatch>(pin_dir).expect("affinity-match map");
    for m in old.affinity_match.difference(&new.affinity_match) {
        let key = LbAffinityMatchKey { backend_id: m.backend_id, rev_nat_id: m.rev_nat_id, pad: 0 };
        affinity.delete(&key).expect("delete affinity-match row");
    }
    let mut ranges = KernelLpmMap::open_pinned::<Lb4SourceRange>(pin_dir).expect("source-range map");
    for range in old.source_ranges.difference(&new.source_ranges) {
        ranges.delete(&source_range_key(range)).expect("remove source range");
    }
}
