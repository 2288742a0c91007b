//! The prune gate: entries found in the pinned maps at start that no owner wants are deleted only
//! after every registered owner reported its first full pass (or a timeout, logged). Until then the
//! datapath keeps forwarding on what the previous agent left. Pure except for logging.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::table::OwnerName;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GateState {
    /// Some owners have not finished their first pass; stale entries are kept.
    Waiting,
    /// Every owner finished its first pass.
    Complete,
    /// The timeout passed first; stale entries are pruned anyway.
    TimedOut,
}

#[derive(Debug)]
pub struct PruneGate {
    waiting: BTreeSet<OwnerName>,
    deadline: Instant,
    state: GateState,
}

impl PruneGate {
    pub fn new(now: Instant, timeout: Duration) -> Self {
        Self { waiting: BTreeSet::new(), deadline: now + timeout, state: GateState::Waiting }
    }

    /// An owner whose first full pass the gate waits for. Ignored once the gate is open.
    pub fn register(&mut self, owner: OwnerName) {
        if self.state == GateState::Waiting {
            self.waiting.insert(owner);
        }
    }

    /// `owner` has submitted all of its rows at least once.
    pub fn report_initial_pass(&mut self, owner: &OwnerName) {
        if self.waiting.remove(owner) {
            tracing::info!(owner = %owner, still_waiting = self.waiting.len(), "owner completed its first full pass");
        }
    }

    /// Whether pruning is allowed at `now`; moves the gate to its final state the first time it opens.
    pub fn check(&mut self, now: Instant) -> bool {
        if self.state == GateState::Waiting {
            if self.waiting.is_empty() {
                self.state = GateState::Complete;
                tracing::info!("initial sync complete: pruning stale map entries");
            } else if now >= self.deadline {
                self.state = GateState::TimedOut;
                let missing: Vec<&str> = self.waiting.iter().map(|o| &**o).collect();
                tracing::warn!(?missing, "initial sync timed out: pruning stale map entries without these owners");
            }
        }
        self.state != GateState::Waiting
    }

    pub fn state(&self) -> GateState {
        self.state
    }

    pub fn waiting_for(&self) -> Vec<String> {
        self.waiting.iter().map(|o| o.to_string()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn opens_when_every_owner_reported_or_at_the_deadline() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(10);
        struct Case {
            name: &'static str,
            reported: &'static [&'static str],
            at: u64,
            open: bool,
            state: GateState,
        }
        let cases = [
            Case { name: "nobody reported", reported: &[], at: 1, open: false, state: GateState::Waiting },
            Case { name: "one of two", reported: &["a"], at: 1, open: false, state: GateState::Waiting },
            Case { name: "both", reported: &["a", "b"], at: 1, open: true, state: GateState::Complete },
            Case { name: "unknown owner", reported: &["z"], at: 1, open: false, state: GateState::Waiting },
            Case { name: "deadline", reported: &["a"], at: 10, open: true, state: GateState::TimedOut },
        ];
        for case in cases {
            let mut gate = PruneGate::new(t0, timeout);
            gate.register(Arc::from("a"));
            gate.register(Arc::from("b"));
            for o in case.reported {
                gate.report_initial_pass(&Arc::from(*o));
            }
            assert_eq!(gate.check(t0 + Duration::from_secs(case.at)), case.open, "{}", case.name);
            assert_eq!(gate.state(), case.state, "{}", case.name);
        }
    }

    #[test]
    fn once_open_stays_open() {
        let t0 = Instant::now();
        let mut gate = PruneGate::new(t0, Duration::from_secs(1));
        assert!(gate.check(t0), "no owners registered: nothing to wait for");
        gate.register(Arc::from("late"));
        assert!(gate.check(t0));
        assert!(gate.waiting_for().is_empty());
    }
}
