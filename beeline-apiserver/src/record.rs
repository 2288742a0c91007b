//! A record of which client did which verb on which resource, for comparing with RBAC rules.

use std::collections::BTreeSet;

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

/// The accesses seen so far, in order.
#[derive(Debug, Default)]
pub struct Recorder {
    accesses: std::sync::Mutex<Vec<Access>>,
}

impl Recorder {
    pub fn push(&self, access: Access) {
        self.accesses.lock().expect("recorder lock").push(access);
    }

    pub fn all(&self) -> Vec<Access> {
        self.accesses.lock().expect("recorder lock").clone()
    }

    /// The distinct (client, verb, group, resource, subresource) tuples, as RBAC rules see them.
    pub fn rules(&self) -> BTreeSet<(String, String, String, String, String)> {
        self.all().into_iter().map(|a| (a.client, a.verb, a.group, a.resource, a.subresource)).collect()
    }
}
