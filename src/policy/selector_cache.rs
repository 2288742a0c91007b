//! The selector cache: every distinct selector in use, with the identities it selects, kept up to date as
//! identities come and go. Identity churn reports exactly which selectors changed, so only the endpoints
//! whose policy uses those selectors are recomputed.

use std::collections::{BTreeMap, BTreeSet};

use super::identity::{Identity, NumericIdentity};
use super::selector::PeerSelector;

/// How one selector's selection changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SelectionDelta {
    pub added: BTreeSet<NumericIdentity>,
    pub removed: BTreeSet<NumericIdentity>,
}

/// Selectors whose selections changed in one identity update.
pub type SelectorChanges = BTreeMap<PeerSelector, SelectionDelta>;

#[derive(Debug, Default)]
pub struct SelectorCache {
    identities: BTreeMap<NumericIdentity, Identity>,
    selections: BTreeMap<PeerSelector, BTreeSet<NumericIdentity>>,
}

impl SelectorCache {
    pub fn new(identities: impl IntoIterator<Item = Identity>) -> Self {
        let mut cache = Self::default();
        cache.upsert_identities(identities);
        cache
    }

    pub fn identity(&self, id: NumericIdentity) -> Option<&Identity> {
        self.identities.get(&id)
    }

    pub fn identities(&self) -> impl Iterator<Item = &Identity> {
        self.identities.values()
    }

    /// The identities `selector` selects, computing and caching them on first use.
    pub fn select(&mut self, selector: &PeerSelector) -> &BTreeSet<NumericIdentity> {
        if !self.selections.contains_key(selector) {
            let selected = self.identities.values().filter(|i| selector.selects(i)).map(|i| i.id).collect();
            self.selections.insert(selector.clone(), selected);
        }
        &self.selections[selector]
    }

    /// Cached selectors and what they select (for `beeline policy selectors`).
    pub fn selectors(&self) -> impl Iterator<Item = (&PeerSelector, &BTreeSet<NumericIdentity>)> {
        self.selections.iter()
    }

    /// Adds or replaces identities (an identity's labels never change in practice, but a replace is
    /// handled as remove + add).
    pub fn upsert_identities(&mut self, identities: impl IntoIterator<Item = Identity>) -> SelectorChanges {
        let mut changes = SelectorChanges::new();
        for identity in identities {
            if self.identities.get(&identity.id) == Some(&identity) {
                continue;
            }
            for (selector, selected) in &mut self.selections {
                let was = selected.contains(&identity.id);
                let now = selector.selects(&identity);
                if was == now {
                    continue;
                }
                let delta = changes.entry(selector.clone()).or_default();
                if now {
                    selected.insert(identity.id);
                    record(&mut delta.added, &mut delta.removed, identity.id);
                } else {
                    selected.remove(&identity.id);
                    record(&mut delta.removed, &mut delta.added, identity.id);
                }
            }
            self.identities.insert(identity.id, identity);
        }
        changes.retain(|_, d| !d.added.is_empty() || !d.removed.is_empty());
        changes
    }

    pub fn remove_identities(&mut self, ids: impl IntoIterator<Item = NumericIdentity>) -> SelectorChanges {
        let mut changes = SelectorChanges::new();
        for id in ids {
            if self.identities.remove(&id).is_none() {
                continue;
            }
            for (selector, selected) in &mut self.selections {
                if selected.remove(&id) {
                    let delta = changes.entry(selector.clone()).or_default();
                    record(&mut delta.removed, &mut delta.added, id);
                }
            }
        }
        changes.retain(|_, d| !d.added.is_empty() || !d.removed.is_empty());
        changes
    }

    /// Drops cached selectors no policy uses any more.
    pub fn retain_selectors(&mut self, in_use: &BTreeSet<PeerSelector>) {
        self.selections.retain(|s, _| in_use.contains(s));
    }
}

/// Records `id` in `into`, cancelling an opposite change recorded earlier in the same update.
fn record(into: &mut BTreeSet<NumericIdentity>, opposite: &mut BTreeSet<NumericIdentity>, id: NumericIdentity) {
    if !opposite.remove(&id) {
        into.insert(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::identity::{pod_labels, reserved_identities, PodIdentitySource};
    use crate::policy::selector::{LabelMatcher, Requirement};

    fn pod(id: u32, labels: &[(&str, &str)]) -> Identity {
        let src = PodIdentitySource { namespace: "default", pod_labels: labels, ..Default::default() };
        Identity { id: NumericIdentity(id), labels: pod_labels(&src), cidrs: vec![] }
    }

    fn ids(raw: &[u32]) -> BTreeSet<NumericIdentity> {
        raw.iter().map(|i| NumericIdentity(*i)).collect()
    }

    #[test]
    fn identity_churn_reports_only_changed_selectors() {
        let empire = PeerSelector::Labels(LabelMatcher::default().with(Requirement::equals("org", "empire")));
        let alliance = PeerSelector::Labels(LabelMatcher::default().with(Requirement::equals("org", "alliance")));
        let host = PeerSelector::Labels(LabelMatcher::reserved("host"));
        let mut cache = SelectorCache::new(reserved_identities());
        cache.upsert_identities([pod(300, &[("org", "empire"), ("class", "tiefighter")])]);
        assert_eq!(cache.select(&empire), &ids(&[300]));
        assert_eq!(cache.select(&alliance), &ids(&[]));
        assert_eq!(cache.select(&host), &ids(&[1]));

        // A new empire identity changes only the empire selector.
        let changes = cache.upsert_identities([pod(301, &[("org", "empire"), ("class", "deathstar")])]);
        assert_eq!(changes.keys().collect::<Vec<_>>(), vec![&empire]);
        assert_eq!(changes[&empire], SelectionDelta { added: ids(&[301]), removed: ids(&[]) });
        assert_eq!(cache.select(&empire), &ids(&[300, 301]));

        // Re-adding an identical identity is a no-op.
        assert!(cache.upsert_identities([pod(301, &[("org", "empire"), ("class", "deathstar")])]).is_empty());

        // Add then remove in one update cancels out; a removal reports only selectors that held the id.
        let changes = cache.upsert_identities([pod(302, &[("org", "alliance")])]);
        assert_eq!(changes[&alliance].added, ids(&[302]));
        let changes = cache.remove_identities([NumericIdentity(300), NumericIdentity(999)]);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[&empire], SelectionDelta { added: ids(&[]), removed: ids(&[300]) });
        assert_eq!(cache.select(&empire), &ids(&[301]));

        // Garbage-collect unused selectors.
        cache.retain_selectors(&[host.clone()].into());
        assert_eq!(cache.selectors().count(), 1);
    }
}
