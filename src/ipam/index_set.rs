//! A set of `u128` indices stored as disjoint, non-adjacent inclusive intervals.
//!
//! Memory is proportional to the number of runs, not to the size of the index space, so a pool of
//! 2^72 node CIDRs (an IPv6 /48 split into /120s) or a /64 node CIDR costs nothing until used; a
//! densely used range collapses into a single run.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexSet {
    /// start → end (inclusive). Invariant: runs are disjoint and never touch (end + 1 < next start).
    runs: BTreeMap<u128, u128>,
    /// Number of members; saturates at `u128::MAX` (only reachable when all 2^128 indices are in).
    len: u128,
}

impl IndexSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> u128 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Number of runs (for tests and diagnostics: memory use is proportional to this).
    pub fn run_count(&self) -> usize {
        self.runs.len()
    }

    /// The run containing `index`, if any.
    fn run_containing(&self, index: u128) -> Option<(u128, u128)> {
        let (&start, &end) = self.runs.range(..=index).next_back()?;
        (end >= index).then_some((start, end))
    }

    pub fn contains(&self, index: u128) -> bool {
        self.run_containing(index).is_some()
    }

    /// Whether any index of `range` is a member.
    pub fn intersects(&self, range: RangeInclusive<u128>) -> bool {
        let (lo, hi) = (*range.start(), *range.end());
        if self.contains(lo) {
            return true;
        }
        // A run starting inside (lo, hi] is the only other way to intersect.
        self.runs.range(lo..=hi).next().is_some()
    }

    /// Whether every index of `range` is a member.
    pub fn contains_range(&self, range: RangeInclusive<u128>) -> bool {
        matches!(self.run_containing(*range.start()), Some((_, end)) if end >= *range.end())
    }

    /// Adds `index`; returns false if it was already a member.
    pub fn insert(&mut self, index: u128) -> bool {
        if self.contains(index) {
            return false;
        }
        self.insert_range(index..=index);
        true
    }

    /// Adds every index of `range`; returns how many were newly added (saturating).
    pub fn insert_range(&mut self, range: RangeInclusive<u128>) -> u128 {
        let (mut lo, mut hi) = (*range.start(), *range.end());
        assert!(lo <= hi, "empty range");
        let mut already: u128 = 0;
        // Absorb a run that contains or touches `lo` from the left.
        if let Some((&start, &end)) = self.runs.range(..=lo).next_back() {
            if end >= lo || end.checked_add(1) == Some(lo) {
                lo = start;
                if end >= hi {
                    return 0; // fully contained already
                }
                already = already.saturating_add(end - start + 1);
                self.runs.remove(&start);
                hi = hi.max(end);
            }
        }
        // Absorb every run starting inside [lo, hi + 1].
        let upper = hi.saturating_add(1);
        let overlapping: Vec<(u128, u128)> = self.runs.range(lo..=upper).map(|(&s, &e)| (s, e)).collect();
        for (start, end) in overlapping {
            self.runs.remove(&start);
            already = already.saturating_add(end - start + 1);
            hi = hi.max(end);
        }
        self.runs.insert(lo, hi);
        // Newly added = size of merged run − members it swallowed.
        let merged = (hi - lo).saturating_add(1);
        let added = merged.saturating_sub(already);
        self.len = self.len.saturating_add(added);
        added
    }

    /// Removes `index`; returns false if it was not a member.
    pub fn remove(&mut self, index: u128) -> bool {
        self.remove_range(index..=index) == 1
    }

    /// Removes every index of `range`; returns how many were members (saturating).
    pub fn remove_range(&mut self, range: RangeInclusive<u128>) -> u128 {
        let (lo, hi) = (*range.start(), *range.end());
        assert!(lo <= hi, "empty range");
        // The run containing `lo` (it may start before it), then every run starting after `lo`
        // inside the range. A run starting exactly at `lo` is the containing run.
        let mut affected: Vec<(u128, u128)> = self.run_containing(lo).into_iter().collect();
        if let Some(next) = lo.checked_add(1).filter(|n| *n <= hi) {
            affected.extend(self.runs.range(next..=hi).map(|(&s, &e)| (s, e)));
        }
        let mut removed: u128 = 0;
        for (start, end) in affected {
            self.runs.remove(&start);
            let cut_lo = start.max(lo);
            let cut_hi = end.min(hi);
            removed = removed.saturating_add(cut_hi - cut_lo + 1);
            if start < cut_lo {
                self.runs.insert(start, cut_lo - 1);
            }
            if end > cut_hi {
                self.runs.insert(cut_hi + 1, end);
            }
        }
        self.len = self.len.saturating_sub(removed);
        removed
    }

    /// The smallest non-member in `from..=max`, if any. O(log runs): runs never touch, so the
    /// index after the run containing `from` is free.
    pub fn first_free_in(&self, from: u128, max: u128) -> Option<u128> {
        if from > max {
            return None;
        }
        let candidate = match self.run_containing(from) {
            None => from,
            Some((_, end)) => end.checked_add(1)?,
        };
        (candidate <= max).then_some(candidate)
    }

    /// Members in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u128> + '_ {
        self.runs.iter().flat_map(|(&s, &e)| s..=e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    use rand::{RngExt, SeedableRng};

    #[test]
    fn insert_merges_neighbours() {
        let mut set = IndexSet::new();
        assert!(set.insert(5));
        assert!(set.insert(7));
        assert_eq!(set.run_count(), 2);
        assert!(set.insert(6));
        assert_eq!(set.run_count(), 1, "5..=7 is one run");
        assert!(!set.insert(6));
        assert_eq!(set.len(), 3);
    }

    #[test]
    fn remove_splits_runs() {
        let mut set = IndexSet::new();
        assert_eq!(set.insert_range(0..=9), 10);
        assert!(set.remove(4));
        assert!(!set.remove(4));
        assert_eq!(set.run_count(), 2);
        assert_eq!(set.len(), 9);
        assert_eq!(set.first_free_in(0, 9), Some(4));
        assert_eq!(set.remove_range(0..=100), 9);
        assert!(set.is_empty());
        assert_eq!(set.len(), 0);
    }

    #[test]
    fn handles_the_top_of_the_index_space() {
        let mut set = IndexSet::new();
        assert_eq!(set.insert_range(u128::MAX - 1..=u128::MAX), 2);
        assert_eq!(set.first_free_in(u128::MAX - 1, u128::MAX), None);
        assert_eq!(set.first_free_in(0, u128::MAX), Some(0));
        assert!(set.contains_range(u128::MAX - 1..=u128::MAX));
        assert!(set.intersects(0..=u128::MAX));
        assert!(!set.intersects(0..=u128::MAX - 2));
    }

    #[test]
    fn insert_range_counts_only_new_members() {
        let mut set = IndexSet::new();
        set.insert(3);
        set.insert(10);
        assert_eq!(set.insert_range(0..=12), 11);
        assert_eq!(set.len(), 13);
        assert_eq!(set.run_count(), 1);
        assert_eq!(set.insert_range(2..=4), 0);
    }

    /// Random inserts/removals of single indices and ranges agree with a `BTreeSet` model.
    #[test]
    fn matches_a_btreeset_model_under_random_operations() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_1dea);
        for _round in 0..20 {
            let mut set = IndexSet::new();
            let mut model: BTreeSet<u128> = BTreeSet::new();
            for _op in 0..400 {
                let lo: u128 = rng.random_range(0..200);
                let hi: u128 = lo + rng.random_range(0..6);
                match rng.random_range(0..4) {
                    0 => assert_eq!(set.insert(lo), model.insert(lo)),
                    1 => assert_eq!(set.remove(lo), model.remove(&lo)),
                    2 => {
                        let expected = (lo..=hi).filter(|i| model.insert(*i)).count() as u128;
                        assert_eq!(set.insert_range(lo..=hi), expected);
                    }
                    _ => {
                        let expected = (lo..=hi).filter(|i| model.remove(i)).count() as u128;
                        assert_eq!(set.remove_range(lo..=hi), expected);
                    }
                }
                assert_eq!(set.len(), model.len() as u128);
                let from: u128 = rng.random_range(0..210);
                let expected_free = (from..=209).find(|i| !model.contains(i));
                assert_eq!(set.first_free_in(from, 209), expected_free);
                assert_eq!(set.intersects(lo..=hi), (lo..=hi).any(|i| model.contains(&i)));
            }
            assert_eq!(set.iter().collect::<Vec<_>>(), model.iter().copied().collect::<Vec<_>>());
            // Runs are maximal: no two touch.
            let runs: Vec<(u128, u128)> = set.runs.iter().map(|(&s, &e)| (s, e)).collect();
            for pair in runs.windows(2) {
                assert!(pair[0].1 + 1 < pair[1].0, "runs {pair:?} touch or overlap");
            }
        }
    }
}
