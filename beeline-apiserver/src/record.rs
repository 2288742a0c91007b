//! A record of which client did which verb on which resource, for comparing with RBAC rules.

use std::collections::{BTreeSet, VecDeque};

/// How many accesses [`Recorder::all`] keeps: a long-running lab makes the same calls for hours,
/// so the log is a ring; the distinct RBAC tuples are kept in full beside it.
pub const KEEP_ACCESSES: usize = 100_000;

type RuleTuple = (String, String, String, String, String);

/// One API access, with RBAC's names for verb and resource.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Access {
    /// The `X-Beeline-Component` header if present, else the User-Agent.
    pub client: String,
    /// get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: String,
    pub group: String,
    pub resource: String,
    /// `status` or empty.
    pub subresource: String,
    pub namespace: String,
    pub name: String,
}

/// The most recent accesses in order (at most `capacity`), and every distinct RBAC tuple ever seen.
#[derive(Debug)]
pub struct Recorder {
    inner: std::sync::Mutex<Log>,
}

#[derive(Debug, Default)]
struct Log {
    recent: VecDeque<Access>,
    capacity: usize,
    rules: BTreeSet<RuleTuple>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::with_capacity(KEEP_ACCESSES)
    }
}

impl Recorder {
    pub fn with_capacity(capacity: usize) -> Self {
        Recorder { inner: std::sync::Mutex::new(Log { capacity, ..Log::default() }) }
    }

    pub fn push(&self, access: Access) {
        let mut log = self.inner.lock().expect("recorder lock");
        let rule = (
            access.client.clone(),
            access.verb.clone(),
            access.group.clone(),
            access.resource.clone(),
            access.subresource.clone(),
        );
        log.rules.insert(rule);
        if log.recent.len() == log.capacity {
            log.recent.pop_front();
        }
        if log.capacity > 0 {
            log.recent.push_back(access);
        }
    }

    /// The most recent accesses, oldest first.
    pub fn all(&self) -> Vec<Access> {
        self.inner.lock().expect("recorder lock").recent.iter().cloned().collect()
    }

    /// The distinct (client, verb, group, resource, subresource) tuples, as RBAC rules see them —
    /// all of them since start, also those that fell out of the ring.
    pub fn rules(&self) -> BTreeSet<RuleTuple> {
        self.inner.lock().expect("recorder lock").rules.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(verb: &str, name: &str) -> Access {
        Access {
            client: "agent".into(),
            verb: verb.into(),
            group: String::new(),
            resource: "pods".into(),
            subresource: String::new(),
            namespace: "default".into(),
            name: name.into(),
        }
    }

    #[test]
    fn keeps_the_most_recent_accesses_and_every_rule() {
        let recorder = Recorder::with_capacity(3);
        recorder.push(access("create", "a"));
        for i in 0..10 {
            recorder.push(access("get", &format!("p{i}")));
        }
        let names: Vec<String> = recorder.all().into_iter().map(|a| a.name).collect();
        assert_eq!(names, ["p7", "p8", "p9"], "a ring of the newest three");
        let verbs: Vec<String> = recorder.rules().into_iter().map(|r| r.1).collect();
        assert_eq!(verbs, ["create", "get"], "the create fell out of the ring but its rule stays");
    }
}
