//! ID allocation for IDs that packets and conntrack entries refer to (backend IDs, rev-NAT indexes,
//! endpoint IDs). IDs are restored from the pinned maps at start so an agent restart keeps every
//! in-flight connection pointing at the same backend; a restored ID is reused when the same key asks
//! again. Pure: no I/O.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("ID range {min}..={max} is exhausted")]
    Exhausted { min: u32, max: u32 },
    #[error("ID {id} is outside the range {min}..={max}")]
    OutOfRange { id: u32, min: u32, max: u32 },
    #[error("ID {id} is restored for two different keys")]
    Duplicate { id: u32 },
}

/// Hands out the smallest free ID in `min..=max` per key, stably.
#[derive(Debug, Clone)]
pub struct IdAllocator<K> {
    min: u32,
    max: u32,
    by_key: BTreeMap<K, u32>,
    used: BTreeSet<u32>,
    /// Where the search for a free ID starts; avoids quadratic scans when allocating in bulk.
    cursor: u32,
}

impl<K: Ord + Clone> IdAllocator<K> {
    /// An allocator over `min..=max` (`min` ≥ 1 keeps 0 free to mean "none", as in the datapath).
    pub fn new(min: u32, max: u32) -> Self {
        assert!(min <= max, "empty ID range");
        Self { min, max, by_key: BTreeMap::new(), used: BTreeSet::new(), cursor: min }
    }

    /// Records that `key` already holds `id` (read back from a pinned map).
    pub fn restore(&mut self, key: K, id: u32) -> Result<(), IdError> {
        if id < self.min || id > self.max {
            return Err(IdError::OutOfRange { id, min: self.min, max: self.max });
        }
        if let Some(existing) = self.by_key.get(&key) {
            if *existing == id {
                return Ok(());
            }
        }
        if self.used.contains(&id) {
            return Err(IdError::Duplicate { id });
        }
        if let Some(old) = self.by_key.insert(key, id) {
            self.used.remove(&old);
        }
        self.used.insert(id);
        Ok(())
    }

    /// The ID of `key`: its restored or earlier ID, else the next free one.
    pub fn allocate(&mut self, key: &K) -> Result<u32, IdError> {
        if let Some(id) = self.by_key.get(key) {
            return Ok(*id);
        }
        let span = u64::from(self.max - self.min) + 1;
        let mut candidate = self.cursor;
        for _ in 0..span {
            if !self.used.contains(&candidate) {
                self.used.insert(candidate);
                self.by_key.insert(key.clone(), candidate);
                self.cursor = if candidate == self.max { self.min } else { candidate + 1 };
                return Ok(candidate);
            }
            candidate = if candidate == self.max { self.min } else { candidate + 1 };
        }
        Err(IdError::Exhausted { min: self.min, max: self.max })
    }

    /// Frees `key`'s ID; returns it.
    pub fn release(&mut self, key: &K) -> Option<u32> {
        let id = self.by_key.remove(key)?;
        self.used.remove(&id);
        Some(id)
    }

    pub fn get(&self, key: &K) -> Option<u32> {
        self.by_key.get(key).copied()
    }

    /// Every key holding an ID (restored or allocated), sorted.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.by_key.keys()
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_is_stable_per_key_and_skips_restored_ids() {
        struct Case {
            name: &'static str,
            restored: &'static [(&'static str, u32)],
            asks: &'static [&'static str],
            expect: &'static [u32],
        }
        let cases = [
            Case { name: "fresh", restored: &[], asks: &["a", "b", "a"], expect: &[1, 2, 1] },
            Case { name: "restored key keeps its id", restored: &[("b", 3)], asks: &["b", "a"], expect: &[3, 1] },
            Case { name: "new keys skip restored ids", restored: &[("x", 1), ("y", 2)], asks: &["a"], expect: &[3] },
            Case { name: "restore is idempotent", restored: &[("x", 2), ("x", 2)], asks: &["x"], expect: &[2] },
        ];
        for case in cases {
            let mut ids = IdAllocator::new(1, 10);
            for (k, id) in case.restored {
                ids.restore(*k, *id).unwrap();
            }
            let got: Vec<u32> = case.asks.iter().map(|k| ids.allocate(k).unwrap()).collect();
            assert_eq!(got, case.expect, "{}", case.name);
        }
    }

    #[test]
    fn exhaustion_release_and_range_errors() {
        let mut ids = IdAllocator::new(1, 2);
        assert_eq!(ids.allocate(&"a"), Ok(1));
        assert_eq!(ids.allocate(&"b"), Ok(2));
        assert_eq!(ids.allocate(&"c"), Err(IdError::Exhausted { min: 1, max: 2 }));
        assert_eq!(ids.release(&"a"), Some(1));
        assert_eq!(ids.allocate(&"c"), Ok(1));
        assert_eq!(ids.restore("d", 9), Err(IdError::OutOfRange { id: 9, min: 1, max: 2 }));
        assert_eq!(ids.restore("d", 2), Err(IdError::Duplicate { id: 2 }));
    }
}
