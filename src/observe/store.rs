//! The bounded ring of recent flows (Hubble's per-node flow buffer) and its followers.

use std::{collections::VecDeque, sync::Mutex};

use tokio::sync::broadcast;

use super::flow::Flow;

/// Hubble's default buffer (`hubble-event-buffer-capacity`) is 4095 flows.
pub const DEFAULT_CAPACITY: usize = 4095;

/// Generic over what is kept per flow: the agent keeps the raw event beside the flow, to enrich it
/// again when it is read (a pod's CiliumEndpoint may reach the snapshot after its first packet).
pub struct FlowStore<T = Flow> {
    ring: Mutex<VecDeque<T>>,
    capacity: usize,
    /// Followers (`?follow=true`); a slow one misses flows (`Lagged`) instead of holding memory.
    live: broadcast::Sender<T>,
}

impl<T: Clone> FlowStore<T> {
    pub fn new(capacity: usize) -> FlowStore<T> {
        let (live, _) = broadcast::channel(1024);
        FlowStore { ring: Mutex::new(VecDeque::with_capacity(capacity)), capacity: capacity.max(1), live }
    }

    /// Adds a flow, evicting the oldest when full.
    pub fn push(&self, flow: T) {
        let mut ring = self.ring.lock().expect("flow ring lock");
        if ring.len() == self.capacity {
            ring.pop_front();
        }
        ring.push_back(flow.clone());
        drop(ring);
        // No follower is not an error.
        let _ = self.live.send(flow);
    }

    /// The newest `n` flows, oldest first.
    pub fn last(&self, n: usize) -> Vec<T> {
        let ring = self.ring.lock().expect("flow ring lock");
        ring.iter().skip(ring.len().saturating_sub(n)).cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.ring.lock().expect("flow ring lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn subscribe(&self) -> broadcast::Receiver<T> {
        self.live.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(n: i128) -> Flow {
        Flow { time_ns: n, ..Default::default() }
    }

    #[test]
    fn the_ring_keeps_the_newest_and_answers_last_n_in_order() {
        let store = FlowStore::<Flow>::new(3);
        assert!(store.last(5).is_empty());
        for n in 1..=5 {
            store.push(flow(n));
        }
        let times = |v: Vec<Flow>| v.into_iter().map(|f| f.time_ns).collect::<Vec<_>>();
        assert_eq!(times(store.last(10)), [3, 4, 5]);
        assert_eq!(times(store.last(2)), [4, 5]);
        assert_eq!(times(store.last(0)), Vec::<i128>::new());
        assert_eq!(store.len(), 3);
    }

    #[test]
    fn followers_see_flows_pushed_after_they_subscribed() {
        let store = FlowStore::<Flow>::new(3);
        store.push(flow(1));
        let mut rx = store.subscribe();
        store.push(flow(2));
        assert_eq!(rx.try_recv().unwrap().time_ns, 2);
        assert!(rx.try_recv().is_err());
    }
}
