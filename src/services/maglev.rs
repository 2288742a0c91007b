//! Maglev lookup tables (Eisenbud et al., NSDI 2016): every node computes the same table for the same
//! backend set, so a flow hashes to the same backend whichever node receives it, and a backend change
//! moves few entries. The hash must be stable across nodes, restarts and compiler versions, hence a
//! fixed FNV-1a rather than `std`'s hasher.

use super::model::BackendAddr;

pub(crate) fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Final avalanche (splitmix64's finaliser): FNV alone spreads similar strings poorly modulo M.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The lookup table of size `m` (a prime) over `backends` (backend ID, address): entry `i` is the
/// backend ID a flow hashing to `i` goes to. Empty if there are no backends.
pub fn lookup_table(backends: &[(u32, BackendAddr)], m: u32) -> Vec<u32> {
    if backends.is_empty() || m < 2 {
        return Vec::new();
    }
    // Preferences are derived from the backend's address (not its ID, which differs between nodes).
    let mut sorted: Vec<(u32, BackendAddr)> = backends.to_vec();
    sorted.sort_by_key(|(_, a)| *a);
    sorted.dedup_by_key(|(_, a)| *a);
    let m64 = u64::from(m);
    let prefs: Vec<(u64, u64)> = sorted
        .iter()
        .map(|(_, a)| {
            let name = a.to_string();
            let offset = fnv1a(0x5eed_0001, name.as_bytes()) % m64;
            let skip = fnv1a(0x5eed_0002, name.as_bytes()) % (m64 - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; sorted.len()];
    let mut table = vec![0u32; m as usize];
    let mut filled = vec![false; m as usize];
    let mut n = 0u32;
    // Each round every backend claims its next preferred free slot, so shares differ by at most one;
    // bounded: each claim fills one slot and each backend's permutation covers all m slots.
    'fill: loop {
        for (i, (offset, skip)) in prefs.iter().enumerate() {
            let mut c = (offset + next[i] * skip) % m64;
            while filled[c as usize] {
                next[i] += 1;
                c = (offset + next[i] * skip) % m64;
            }
            filled[c as usize] = true;
            table[c as usize] = sorted[i].0;
            next[i] += 1;
            n += 1;
            if n == m {
                break 'fill;
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::model::Proto;
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    fn be(i: u32) -> (u32, BackendAddr) {
        (
            100 + i,
            BackendAddr {
                ip: Ipv4Addr::new(10, 0, (i / 250) as u8, (i % 250) as u8 + 1).into(),
                port: 8080,
                proto: Proto::Tcp,
            },
        )
    }

    #[test]
    fn shares_are_even_and_every_entry_is_a_backend() {
        for (n, m) in [(1u32, 251u32), (3, 251), (7, 1021), (50, 16381)] {
            let backends: Vec<_> = (0..n).map(be).collect();
            let table = lookup_table(&backends, m);
            assert_eq!(table.len(), m as usize);
            let mut counts: BTreeMap<u32, u32> = BTreeMap::new();
            for id in &table {
                *counts.entry(*id).or_default() += 1;
            }
            assert_eq!(counts.len(), n as usize, "every backend gets entries (n={n})");
            let (min, max) = (counts.values().min().unwrap(), counts.values().max().unwrap());
            assert!(max - min <= 1, "n={n} m={m}: shares {min}..{max}");
        }
    }

    #[test]
    fn tables_depend_on_addresses_not_ids_or_order() {
        let a: Vec<_> = (0..5).map(be).collect();
        let mut b = a.clone();
        b.reverse();
        assert_eq!(lookup_table(&a, 251), lookup_table(&b, 251));
        // The same addresses under other IDs (another node) map the same slots to the same addresses.
        let renamed: Vec<_> = a.iter().map(|(id, addr)| (id + 1000, *addr)).collect();
        let t1 = lookup_table(&a, 251);
        let t2 = lookup_table(&renamed, 251);
        assert!(t1.iter().zip(&t2).all(|(x, y)| x + 1000 == *y));
    }

    #[test]
    fn removing_a_backend_moves_few_other_entries() {
        let m = 1021;
        let all: Vec<_> = (0..10).map(be).collect();
        let before = lookup_table(&all, m);
        let removed = all[3].0;
        let after = lookup_table(&[&all[..3], &all[4..]].concat(), m);
        let moved = before.iter().zip(&after).filter(|(b, a)| **b != removed && b != a).count();
        // The removed backend's ~m/10 entries must move; the others mostly stay (Maglev's promise).
        assert!(moved < m as usize / 10, "{moved} entries of surviving backends moved");
        assert!(!after.contains(&removed));
    }

    #[test]
    fn no_backends_no_table() {
        assert!(lookup_table(&[], 251).is_empty());
    }
}
