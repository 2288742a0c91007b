//! Expiry of pod addresses whose endpoint never registered: the CNI plugin allocates, sets up the
//! pod's network, then registers the endpoint. If it dies in between (or the runtime never sends
//! DEL), the address would be held forever; after [`PENDING_TTL`] without an endpoint it is
//! released. Pure: the caller observes the unregistered attachments with the current time of an
//! injectable [`Clock`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an allocation may stay without an endpoint (Cilium's IPAM uses 10 minutes too).
pub const PENDING_TTL: Duration = Duration::from_secs(600);

/// CNI's state key: (container ID, interface name).
pub type Attachment = (String, String);

/// Where "now" comes from: the system clock, or a hand-moved one in tests.
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock tests move by hand.
#[derive(Debug)]
pub struct ManualClock(Mutex<Instant>);

impl Default for ManualClock {
    fn default() -> Self {
        Self(Mutex::new(Instant::now()))
    }
}

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Unregistered allocations and when they were first seen without an endpoint.
#[derive(Debug, Default)]
pub struct PendingAllocations {
    since: BTreeMap<Attachment, Instant>,
    ttl: Duration,
}

impl PendingAllocations {
    pub fn new(ttl: Duration) -> Self {
        Self { since: BTreeMap::new(), ttl }
    }

    /// One pass: `unregistered` are the attachments holding addresses without an endpoint right
    /// now. New ones start their timer at `now`; ones no longer unregistered (registered or
    /// released) are forgotten, so a later re-allocation starts afresh. Returns those due for
    /// release (and forgets them).
    pub fn observe(&mut self, now: Instant, unregistered: &BTreeSet<Attachment>) -> Vec<Attachment> {
        self.since.retain(|att, _| unregistered.contains(att));
        for att in unregistered {
            self.since.entry(att.clone()).or_insert(now);
        }
        let due: Vec<Attachment> = self
            .since
            .iter()
            .filter(|(_, since)| now.saturating_duration_since(**since) >= self.ttl)
            .map(|(att, _)| att.clone())
            .collect();
        for att in &due {
            self.since.remove(att);
        }
        due
    }

    pub fn len(&self) -> usize {
        self.since.len()
    }

    pub fn is_empty(&self) -> bool {
        self.since.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att(c: &str) -> Attachment {
        (c.to_string(), "eth0".to_string())
    }

    #[test]
    fn allocations_expire_only_after_ttl_without_endpoint() {
        let t0 = Instant::now();
        let min = Duration::from_secs(60);
        // (minutes since t0, unregistered now, expected due)
        let steps: &[(u64, &[&str], &[&str])] = &[
            (0, &["a", "b"], &[]),
            (5, &["a", "b", "c"], &[]),
            // b registered: forgotten.
            (9, &["a", "c"], &[]),
            (10, &["a", "c"], &["a"]),
            // b unregistered again later (endpoint removed, address kept): a fresh timer.
            (12, &["b", "c"], &[]),
            (15, &["b", "c"], &["c"]),
            (21, &["b"], &[]),
            (22, &["b"], &["b"]),
            (40, &[], &[]),
        ];
        let mut pending = PendingAllocations::new(PENDING_TTL);
        for (minutes, unregistered, want) in steps {
            let set: BTreeSet<Attachment> = unregistered.iter().map(|c| att(c)).collect();
            let due = pending.observe(t0 + min * (*minutes as u32), &set);
            let want: Vec<Attachment> = want.iter().map(|c| att(c)).collect();
            assert_eq!(due, want, "at minute {minutes}");
        }
        assert!(pending.is_empty());
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::default();
        let t = clock.now();
        assert_eq!(clock.now(), t);
        clock.advance(PENDING_TTL);
        assert_eq!(clock.now() - t, PENDING_TTL);
    }
}
