//! Desired tables: every owner (a controller) contributes a whole set of rows, and the table resolves
//! them into one desired value per key. Pure: no I/O, no clocks.
//!
//! A key claimed by two owners is a *conflict*: it is reported, and the owner that held the key first
//! keeps it (so a second controller can never silently overwrite a row another one depends on). When the
//! holder withdraws, the remaining claimant with the smallest name takes over, so no row is lost.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Name of a row owner (one per controller, e.g. "services", "endpoints").
pub type OwnerName = Arc<str>;

/// Two or more owners claim the same key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict<K> {
    pub key: K,
    /// The owner whose row is in effect.
    pub holder: OwnerName,
    /// Every owner claiming the key, holder included, sorted.
    pub claimants: Vec<OwnerName>,
}

/// What a `replace_owner` call changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableDiff<K> {
    /// Keys whose effective desired value changed (added, modified or removed), sorted.
    pub changed: Vec<K>,
    /// Conflicts on keys this owner claims, after the call.
    pub conflicts: Vec<Conflict<K>>,
}

#[derive(Clone, Debug)]
struct Claim<V> {
    holder: OwnerName,
    value: V,
}

/// The desired content of one BPF map, assembled from its owners' contributions.
#[derive(Debug)]
pub struct Table<K, V> {
    by_owner: BTreeMap<OwnerName, BTreeMap<K, V>>,
    claimants: BTreeMap<K, BTreeSet<OwnerName>>,
    desired: BTreeMap<K, Claim<V>>,
}

impl<K, V> Default for Table<K, V> {
    fn default() -> Self {
        Self { by_owner: BTreeMap::new(), claimants: BTreeMap::new(), desired: BTreeMap::new() }
    }
}

impl<K: Ord + Clone, V: Clone + PartialEq> Table<K, V> {
    /// Replaces `owner`'s whole contribution with `rows`, returning the keys whose desired value changed.
    pub fn replace_owner(&mut self, owner: &OwnerName, rows: BTreeMap<K, V>) -> TableDiff<K> {
        let old = self.by_owner.remove(owner).unwrap_or_default();
        let mut touched: BTreeSet<K> = BTreeSet::new();
        for key in old.keys() {
            if !rows.contains_key(key) {
                if let Some(set) = self.claimants.get_mut(key) {
                    set.remove(owner);
                    if set.is_empty() {
                        self.claimants.remove(key);
                    }
                }
                touched.insert(key.clone());
            }
        }
        for (key, value) in &rows {
            if old.get(key) != Some(value) {
                touched.insert(key.clone());
            }
            self.claimants.entry(key.clone()).or_default().insert(owner.clone());
        }
        if !rows.is_empty() {
            self.by_owner.insert(owner.clone(), rows);
        }

        let mut changed = Vec::new();
        for key in touched {
            let before = self.desired.get(&key).map(|c| c.value.clone());
            self.resolve(&key);
            let after = self.desired.get(&key).map(|c| &c.value);
            if before.as_ref() != after {
                changed.push(key);
            }
        }
        let conflicts = self.conflicts_of(owner);
        TableDiff { changed, conflicts }
    }

    /// Re-picks the holder of `key` after its claimants changed.
    fn resolve(&mut self, key: &K) {
        let Some(claimants) = self.claimants.get(key) else {
            self.desired.remove(key);
            return;
        };
        let holder = match self.desired.get(key) {
            Some(claim) if claimants.contains(&claim.holder) => claim.holder.clone(),
            _ => claimants.iter().next().expect("claimant sets are never empty").clone(),
        };
        let value = self.by_owner[&holder][key].clone();
        self.desired.insert(key.clone(), Claim { holder, value });
    }

    fn conflict_on(&self, key: &K) -> Option<Conflict<K>> {
        let claimants = self.claimants.get(key)?;
        if claimants.len() < 2 {
            return None;
        }
        Some(Conflict {
            key: key.clone(),
            holder: self.desired[key].holder.clone(),
            claimants: claimants.iter().cloned().collect(),
        })
    }

    fn conflicts_of(&self, owner: &OwnerName) -> Vec<Conflict<K>> {
        let Some(rows) = self.by_owner.get(owner) else { return Vec::new() };
        rows.keys().filter_map(|k| self.conflict_on(k)).collect()
    }

    /// Every current conflict, sorted by key.
    pub fn conflicts(&self) -> Vec<Conflict<K>> {
        self.claimants.iter().filter(|(_, c)| c.len() > 1).filter_map(|(k, _)| self.conflict_on(k)).collect()
    }

    /// The effective desired value of `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.desired.get(key).map(|c| &c.value)
    }

    /// Effective desired rows, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.desired.iter().map(|(k, c)| (k, &c.value))
    }

    pub fn len(&self) -> usize {
        self.desired.len()
    }

    pub fn is_empty(&self) -> bool {
        self.desired.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(name: &str) -> OwnerName {
        Arc::from(name)
    }

    fn rows(pairs: &[(u32, &str)]) -> BTreeMap<u32, String> {
        pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
    }

    fn desired(t: &Table<u32, String>) -> Vec<(u32, String)> {
        t.iter().map(|(k, v)| (*k, v.clone())).collect()
    }

    #[test]
    fn replace_owner_reports_exactly_the_changed_keys() {
        struct Case {
            name: &'static str,
            first: &'static [(u32, &'static str)],
            second: &'static [(u32, &'static str)],
            changed: &'static [u32],
        }
        let cases = [
            Case { name: "add to empty", first: &[], second: &[(1, "a"), (2, "b")], changed: &[1, 2] },
            Case { name: "no change", first: &[(1, "a")], second: &[(1, "a")], changed: &[] },
            Case { name: "modify one", first: &[(1, "a"), (2, "b")], second: &[(1, "a"), (2, "x")], changed: &[2] },
            Case { name: "remove one", first: &[(1, "a"), (2, "b")], second: &[(2, "b")], changed: &[1] },
            Case { name: "remove all", first: &[(1, "a"), (2, "b")], second: &[], changed: &[1, 2] },
        ];
        for case in cases {
            let mut t = Table::default();
            t.replace_owner(&owner("o"), rows(case.first));
            let diff = t.replace_owner(&owner("o"), rows(case.second));
            assert_eq!(diff.changed, case.changed, "{}", case.name);
            assert!(diff.conflicts.is_empty(), "{}", case.name);
            assert_eq!(desired(&t), rows(case.second).into_iter().collect::<Vec<_>>(), "{}", case.name);
        }
    }

    #[test]
    fn owners_contribute_disjoint_rows_independently() {
        let mut t = Table::default();
        t.replace_owner(&owner("endpoints"), rows(&[(1, "ep")]));
        t.replace_owner(&owner("nodes"), rows(&[(2, "node")]));
        let diff = t.replace_owner(&owner("endpoints"), rows(&[]));
        assert_eq!(diff.changed, vec![1]);
        assert_eq!(desired(&t), vec![(2, "node".to_string())]);
    }

    #[test]
    fn two_owners_on_one_key_is_a_conflict_and_the_first_holder_keeps_it() {
        let mut t = Table::default();
        t.replace_owner(&owner("zeta"), rows(&[(7, "from-zeta")]));
        let diff = t.replace_owner(&owner("alpha"), rows(&[(7, "from-alpha"), (8, "ok")]));
        assert_eq!(diff.changed, vec![8], "the conflicting row must not overwrite the holder's");
        assert_eq!(
            diff.conflicts,
            vec![Conflict { key: 7, holder: owner("zeta"), claimants: vec![owner("alpha"), owner("zeta")] }]
        );
        assert_eq!(t.get(&7).map(String::as_str), Some("from-zeta"));
        assert_eq!(t.conflicts().len(), 1);

        // The holder withdraws: the other claimant takes over, and the conflict is gone.
        let diff = t.replace_owner(&owner("zeta"), rows(&[]));
        assert_eq!(diff.changed, vec![7]);
        assert_eq!(t.get(&7).map(String::as_str), Some("from-alpha"));
        assert!(t.conflicts().is_empty());
    }

    #[test]
    fn identical_rows_from_two_owners_still_report_a_conflict() {
        let mut t = Table::default();
        t.replace_owner(&owner("a"), rows(&[(1, "same")]));
        let diff = t.replace_owner(&owner("b"), rows(&[(1, "same")]));
        assert!(diff.changed.is_empty());
        assert_eq!(diff.conflicts.len(), 1);
    }
}
