//! The agent's local endpoint manager: what happens when the CNI plugin registers a pod's
//! endpoint after setting up its network, and when it removes it again.
//!
//! Register: assign an endpoint ID, attach `from_container` (TCX, pinned link) to the host veth,
//! write the `beeline_lxc` rows (ifindex, MACs, endpoint ID, identity), persist
//! `<state-dir>/endpoints.json`. Remove: detach (unpin), delete the rows, persist, release the
//! pod's addresses. At start the state file is restored: endpoints whose veth still exists are
//! re-attached (the program swapped in place) and their rows rewritten; the others are dropped.
//!
//! The kernel is behind [`EndpointDatapath`] so the logic is tested without BPF; the real one
//! loads the datapath lazily, at the first endpoint (agents without pods need no BPF).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use beeline_common::endpoint::EndpointInfo;

use super::endpoint_core::{endpoint_rows, CoreError, Endpoint, EndpointRequest, EndpointTable};
use super::ipam_expiry::{Attachment, Clock, PendingAllocations, PENDING_TTL};
use crate::controllers::agent::ipam_state::{write_atomically, NodeIpamError};
use crate::controllers::agent::local_endpoints::{self, LocalEndpoint, LocalEndpointsRx, LocalEndpointsTx};
use crate::controllers::agent::pod_ipam::PodIpam;
use crate::datapath::{agent::AgentDatapath, loader::programs, Direction, PinLayout};
use crate::ipam::Owner;

pub const STATE_FILE: &str = "endpoints.json";

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("invalid endpoint registration: {0}")]
    Invalid(String),
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error("{ip} is not allocated to container {container_id} ({ifname}); allocate it first (it may have expired)")]
    NotAllocated { ip: IpAddr, container_id: String, ifname: String },
    #[error("datapath for endpoint {container_id} ({host_ifname}): {reason}")]
    Datapath { container_id: String, host_ifname: String, reason: String },
    #[error("cannot save the endpoint state to {path}: {source}")]
    Persist { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Ipam(#[from] NodeIpamError),
}

/// The kernel side of an endpoint.
pub trait EndpointDatapath: Send + Sync {
    /// Attaches `from_container` to the host veth (replacing our previous program there).
    fn attach(&self, host_ifname: &str) -> Result<(), String>;
    /// Removes what [`Self::attach`] left (the pinned link); nothing there is success.
    fn detach(&self, host_ifname: &str) -> Result<(), String>;
    fn upsert_row(&self, ip: IpAddr, info: &EndpointInfo) -> Result<(), String>;
    /// Removing a missing row is success.
    fn remove_row(&self, ip: IpAddr) -> Result<(), String>;
    /// The ifindex of a host interface, `None` when it does not exist.
    fn ifindex(&self, ifname: &str) -> Option<u32>;
}

/// The real datapath: programs and maps pinned under `pin_dir`, loaded on first use (or handed
/// over by the agent's start-up when it loaded them already).
pub struct KernelDatapath {
    datapath: AgentDatapath,
}

impl KernelDatapath {
    /// Over the agent's loaded datapath (loaded at start, see `datapath::agent::start`).
    pub fn new(datapath: AgentDatapath) -> Self {
        Self { datapath }
    }
}

impl EndpointDatapath for KernelDatapath {
    fn attach(&self, host_ifname: &str) -> Result<(), String> {
        self.datapath.attach_endpoint(host_ifname).map(drop).map_err(|e| e.to_string())
    }

    fn detach(&self, host_ifname: &str) -> Result<(), String> {
        let pin =
            PinLayout::new(self.datapath.pin_dir()).link(programs::FROM_CONTAINER, Direction::Ingress, host_ifname);
        match std::fs::remove_file(&pin) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("removing {}: {e}", pin.display())),
        }
    }

    fn upsert_row(&self, ip: IpAddr, info: &EndpointInfo) -> Result<(), String> {
        crate::datapath::tables::upsert_endpoint(self.datapath.pin_dir(), ip, info).map_err(|e| e.to_string())
    }

    fn remove_row(&self, ip: IpAddr) -> Result<(), String> {
        match crate::datapath::tables::remove_endpoint(self.datapath.pin_dir(), ip) {
            Ok(()) => Ok(()),
            // A missing row (or a map never created): nothing to remove.
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn ifindex(&self, ifname: &str) -> Option<u32> {
        crate::datapath::attach::ifindex(ifname)
    }
}

fn is_not_found(e: &crate::datapath::DatapathError) -> bool {
    use aya::maps::MapError;
    match e {
        crate::datapath::DatapathError::Map { source, .. } => match source.as_ref() {
            MapError::KeyNotFound | MapError::ElementNotFound => true,
            MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
            _ => false,
        },
        _ => false,
    }
}

/// What `DELETE /v1/endpoint/{containerID}` did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RemoveOutcome {
    /// The endpoint that was removed; `null` when none was registered (success all the same).
    pub removed: Option<Endpoint>,
    /// Addresses released back to the node's pool.
    pub released: Vec<IpAddr>,
}

pub struct EndpointManager {
    state_file: PathBuf,
    table: Mutex<EndpointTable>,
    datapath: Arc<dyn EndpointDatapath>,
    /// Whichever allocator serves this node's IPAM mode.
    ipam: Arc<dyn PodIpam>,
    clock: Arc<dyn Clock>,
    pending: Mutex<PendingAllocations>,
    /// The registered endpoints as the policy controller reads them, republished on every change.
    published: LocalEndpointsTx,
    /// Whether [`Self::publish`] ran (restore or a registration): subscribers joining later must
    /// still see a first value, as that is what tells the policy controller the set is known.
    has_published: AtomicBool,
}

impl EndpointManager {
    pub fn new(
        state_dir: &Path,
        datapath: Arc<dyn EndpointDatapath>,
        ipam: Arc<dyn PodIpam>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            state_file: state_dir.join(STATE_FILE),
            table: Mutex::new(EndpointTable::default()),
            datapath,
            ipam,
            clock,
            pending: Mutex::new(PendingAllocations::new(PENDING_TTL)),
            published: local_endpoints::channel().0,
            has_published: AtomicBool::new(false),
        }
    }

    /// The local endpoints as the policy controller wants them. The receiver sees a change once
    /// the set is known (right away when it already is: after [`Self::restore`]).
    pub fn subscribe(&self) -> LocalEndpointsRx {
        let mut rx = self.published.subscribe();
        if self.has_published.load(Ordering::SeqCst) {
            rx.mark_changed();
        }
        rx
    }

    /// Publishes `table`'s endpoints (called with the table lock held, so publications follow the
    /// order of the changes).
    fn publish(&self, table: &EndpointTable) {
        let endpoints = table
            .endpoints
            .values()
            .map(|e| {
                let local = LocalEndpoint {
                    id: e.id,
                    identity: e.identity,
                    labels: local_endpoints::own_labels(&e.identity_labels),
                    namespace: e.spec.namespace.clone(),
                    pod: e.spec.pod.clone(),
                };
                (e.id, local)
            })
            .collect();
        self.has_published.store(true, Ordering::SeqCst);
        // `send_replace` stores the value even while nobody subscribes yet.
        self.published.send_replace(Arc::new(endpoints));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, EndpointTable> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn datapath_err(endpoint: &Endpoint, reason: String) -> EndpointError {
        EndpointError::Datapath {
            container_id: endpoint.container_id.clone(),
            host_ifname: endpoint.spec.host_ifname.clone(),
            reason,
        }
    }

    fn save(&self, table: &EndpointTable) -> Result<(), EndpointError> {
        let text = serde_json::to_vec_pretty(table).expect("endpoint state serialises");
        write_atomically(&self.state_file, &text)
            .map_err(|source| EndpointError::Persist { path: self.state_file.clone(), source })
    }

    pub fn list(&self) -> Vec<Endpoint> {
        self.lock().endpoints.values().cloned().collect()
    }

    pub fn get(&self, container_id: &str) -> Option<Endpoint> {
        self.lock().get(container_id).cloned()
    }

    /// Whether an endpoint is registered for the attachment: its addresses must not be released.
    pub fn holds(&self, container_id: &str, ifname: &str) -> bool {
        self.lock().holds(container_id, ifname)
    }

    /// Registers (or re-registers) the endpoint of `container_id` with `identity`. Its addresses
    /// must be allocated to the attachment.
    pub fn register(
        &self,
        container_id: &str,
        spec: EndpointRequest,
        identity: u32,
        identity_labels: Vec<String>,
    ) -> Result<Endpoint, EndpointError> {
        if spec.host_ifname.is_empty() || spec.ifname.is_empty() || spec.ips.is_empty() {
            return Err(EndpointError::Invalid("hostIfname, ifname and ips are required".into()));
        }
        let mut table = self.lock();
        let held = self.ipam.attachment_ips(container_id, &spec.ifname);
        if let Some(ip) = spec.ips.iter().find(|ip| !held.contains(ip)) {
            return Err(EndpointError::NotAllocated {
                ip: *ip,
                container_id: container_id.to_string(),
                ifname: spec.ifname.clone(),
            });
        }
        let endpoint = table.plan(container_id, spec, identity, identity_labels)?;
        let rows = endpoint_rows(&endpoint)?;
        self.datapath.attach(&endpoint.spec.host_ifname).map_err(|r| Self::datapath_err(&endpoint, r))?;
        for (ip, info) in &rows {
            self.datapath.upsert_row(*ip, info).map_err(|r| Self::datapath_err(&endpoint, r))?;
        }
        if let Some(previous) = table.get(container_id) {
            for ip in previous.spec.ips.iter().filter(|ip| !endpoint.spec.ips.contains(ip)) {
                self.datapath.remove_row(*ip).map_err(|r| Self::datapath_err(&endpoint, r))?;
            }
        }
        let mut next = table.clone();
        next.insert(endpoint.clone());
        self.save(&next)?;
        *table = next;
        self.publish(&table);
        tracing::info!(container = %container_id, id = endpoint.id, identity, host_ifname = %endpoint.spec.host_ifname, "endpoint registered");
        Ok(endpoint)
    }

    /// Removes the endpoint of `container_id` and releases its addresses. Idempotent.
    pub fn remove(&self, container_id: &str) -> Result<RemoveOutcome, EndpointError> {
        let mut table = self.lock();
        let Some(endpoint) = table.get(container_id).cloned() else {
            return Ok(RemoveOutcome { removed: None, released: Vec::new() });
        };
        self.unwire(&endpoint)?;
        let mut next = table.clone();
        next.remove(container_id);
        self.save(&next)?;
        *table = next;
        self.publish(&table);
        let released = self.ipam.release(container_id, &endpoint.spec.ifname)?;
        tracing::info!(container = %container_id, id = endpoint.id, ?released, "endpoint removed");
        Ok(RemoveOutcome { removed: Some(endpoint), released })
    }

    fn unwire(&self, endpoint: &Endpoint) -> Result<(), EndpointError> {
        for (ip, _) in endpoint_rows(endpoint)? {
            self.datapath.remove_row(ip).map_err(|r| Self::datapath_err(endpoint, r))?;
        }
        self.datapath.detach(&endpoint.spec.host_ifname).map_err(|r| Self::datapath_err(endpoint, r))
    }

    /// Restores the state file (agent start). Endpoints whose host veth still exists with the
    /// same ifindex are re-attached and their rows rewritten; the others (the pod went while the
    /// agent was down) are unwired and dropped, their addresses left to expiry. Returns warnings.
    pub fn restore(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let saved: EndpointTable = match std::fs::read(&self.state_file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                warnings.push(format!("ignoring unreadable endpoint state {}: {e}", self.state_file.display()));
                EndpointTable::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => EndpointTable::default(),
            Err(e) => {
                warnings.push(format!("cannot read endpoint state {}: {e}", self.state_file.display()));
                EndpointTable::default()
            }
        };
        let mut table = self.lock();
        for endpoint in saved.endpoints.into_values() {
            let present = self.datapath.ifindex(&endpoint.spec.host_ifname) == Some(endpoint.spec.host_ifindex);
            let rewired = present
                .then(|| {
                    self.datapath.attach(&endpoint.spec.host_ifname)?;
                    for (ip, info) in endpoint_rows(&endpoint).map_err(|e| e.to_string())? {
                        self.datapath.upsert_row(ip, &info)?;
                    }
                    Ok::<_, String>(())
                })
                .transpose();
            match rewired {
                Ok(Some(())) => {
                    table.insert(endpoint);
                }
                Ok(None) => {
                    warnings.push(format!(
                        "dropping endpoint {} ({}): its veth {} is gone",
                        endpoint.id, endpoint.container_id, endpoint.spec.host_ifname
                    ));
                    if let Err(e) = self.unwire(&endpoint) {
                        warnings.push(e.to_string());
                    }
                }
                Err(e) => {
                    warnings.push(format!("cannot restore endpoint {} ({}): {e}", endpoint.id, endpoint.container_id));
                }
            }
        }
        if let Err(e) = self.save(&table) {
            warnings.push(e.to_string());
        }
        self.publish(&table);
        warnings
    }

    /// One expiry pass: releases addresses that have had no endpoint for [`PENDING_TTL`].
    /// Holds the table lock, so a registration cannot interleave with the release of its address.
    pub fn expire_pending(&self) -> Vec<(Attachment, Vec<IpAddr>)> {
        let table = self.lock();
        let unregistered: BTreeSet<Attachment> = self
            .ipam
            .listing()
            .allocations
            .into_iter()
            .filter_map(|a| match a.owner {
                Owner::Endpoint { container_id, interface, .. } if !table.holds(&container_id, &interface) => {
                    Some((container_id, interface))
                }
                _ => None,
            })
            .collect();
        let due = self.pending.lock().unwrap_or_else(|p| p.into_inner()).observe(self.clock.now(), &unregistered);
        let mut out = Vec::new();
        for (container_id, ifname) in due {
            match self.ipam.release(&container_id, &ifname) {
                Ok(released) => {
                    tracing::warn!(container = %container_id, %ifname, ?released, "released addresses whose endpoint never registered");
                    out.push(((container_id, ifname), released));
                }
                Err(e) => tracing::warn!(container = %container_id, error = %e, "cannot release an expired allocation"),
            }
        }
        out
    }

    /// Runs [`Self::expire_pending`] every `period` until `shutdown`.
    pub async fn run_expiry(
        self: Arc<Self>,
        period: std::time::Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    let me = self.clone();
                    let _ = tokio::task::spawn_blocking(move || me.expire_pending()).await;
                }
            }
        }
    }
}

/// An in-memory [`EndpointDatapath`] for tests without BPF: records attachments and rows.
#[cfg(any(test, feature = "testing"))]
pub mod fake {
    use std::collections::{BTreeMap, BTreeSet};
    use std::net::IpAddr;
    use std::sync::Mutex;

    use beeline_common::endpoint::EndpointInfo;

    #[derive(Debug, Default)]
    pub struct FakeDatapath {
        pub attached: Mutex<BTreeSet<String>>,
        pub rows: Mutex<BTreeMap<IpAddr, EndpointInfo>>,
        /// Interfaces that "exist" for [`super::EndpointDatapath::ifindex`]; `None`: every name, ifindex 1.
        pub interfaces: Mutex<Option<BTreeMap<String, u32>>>,
        /// Makes the next attach fail with this reason.
        pub fail_attach: Mutex<Option<String>>,
    }

    impl super::EndpointDatapath for FakeDatapath {
        fn attach(&self, host_ifname: &str) -> Result<(), String> {
            if let Some(reason) = self.fail_attach.lock().unwrap().take() {
                return Err(reason);
            }
            self.attached.lock().unwrap().insert(host_ifname.to_string());
            Ok(())
        }
        fn detach(&self, host_ifname: &str) -> Result<(), String> {
            self.attached.lock().unwrap().remove(host_ifname);
            Ok(())
        }
        fn upsert_row(&self, ip: IpAddr, info: &EndpointInfo) -> Result<(), String> {
            self.rows.lock().unwrap().insert(ip, *info);
            Ok(())
        }
        fn remove_row(&self, ip: IpAddr) -> Result<(), String> {
            self.rows.lock().unwrap().remove(&ip);
            Ok(())
        }
        fn ifindex(&self, ifname: &str) -> Option<u32> {
            match &*self.interfaces.lock().unwrap() {
                Some(map) => map.get(ifname).copied(),
                None => Some(1),
            }
        }
    }
}

#[cfg(test)]
#[path = "endpoints_tests.rs"]
mod tests;
