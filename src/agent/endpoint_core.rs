//! The pure core of the agent's local endpoints: the table of registered endpoints keyed by
//! container ID, endpoint-ID assignment, the `beeline_lxc` row an endpoint needs, and the state
//! file's shape. No I/O; [`super::endpoints`] is the shell around it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use beeline_common::endpoint::EndpointInfo;
use serde::{Deserialize, Serialize};

/// Cilium's endpoint IDs are 16-bit and stay below 4096 (`maxID` of its endpoint ID pool); 0 is
/// never an endpoint.
pub const MAX_ENDPOINT_ID: u16 = 4095;

/// What the CNI plugin registers after it set up the pod's network: `PUT /v1/endpoint/{containerID}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointRequest {
    /// `K8S_POD_NAMESPACE` / `K8S_POD_NAME` from `CNI_ARGS` (empty outside Kubernetes).
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub pod: String,
    /// `CNI_IFNAME`: the pod-side interface (`eth0`).
    pub ifname: String,
    /// The host-side veth (`lxc…`), its ifindex and MAC.
    pub host_ifname: String,
    pub host_ifindex: u32,
    pub host_mac: String,
    /// MAC of the pod-side interface.
    pub mac: String,
    /// The pod's addresses (from its IPAM allocation).
    pub ips: Vec<IpAddr>,
    /// `CNI_NETNS`.
    #[serde(default)]
    pub netns: String,
}

/// A registered endpoint, as `GET /v1/endpoint` lists it and the state file keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// The endpoint ID (`lxc_id` in the endpoint map, `status.id` of the CiliumEndpoint).
    pub id: u16,
    #[serde(rename = "containerID")]
    pub container_id: String,
    #[serde(flatten)]
    pub spec: EndpointRequest,
    /// The numeric security identity in the endpoint row (5 = `init` until the pod's labels are known).
    pub identity: u32,
    /// The identity's labels (`k8s:app=web`, ...).
    #[serde(default)]
    pub identity_labels: Vec<String>,
    /// `ready` once attached and in the endpoint map.
    pub state: String,
}

pub const STATE_READY: &str = "ready";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CoreError {
    #[error("no free endpoint ID (all {MAX_ENDPOINT_ID} in use)")]
    NoFreeId,
    #[error("invalid MAC address {0:?}")]
    BadMac(String),
    #[error("{ip} is already used by endpoint {id} (container {container_id})")]
    IpInUse { ip: IpAddr, id: u16, container_id: String },
}

/// The registered endpoints by container ID.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointTable {
    pub endpoints: BTreeMap<String, Endpoint>,
}

impl EndpointTable {
    pub fn get(&self, container_id: &str) -> Option<&Endpoint> {
        self.endpoints.get(container_id)
    }

    /// The smallest ID no endpoint holds.
    pub fn free_id(&self) -> Result<u16, CoreError> {
        let used: std::collections::BTreeSet<u16> = self.endpoints.values().map(|e| e.id).collect();
        (1..=MAX_ENDPOINT_ID).find(|id| !used.contains(id)).ok_or(CoreError::NoFreeId)
    }

    /// The endpoint `container_id` becomes with `spec`: a re-registration keeps its ID (an ADD
    /// retried by the runtime must not renumber a live endpoint). Refuses an address another
    /// container's endpoint holds. Does not insert; [`Self::insert`] does once the datapath has it.
    pub fn plan(
        &self,
        container_id: &str,
        spec: EndpointRequest,
        identity: u32,
        identity_labels: Vec<String>,
    ) -> Result<Endpoint, CoreError> {
        for ip in &spec.ips {
            if let Some(other) = self.holder_of(*ip).filter(|e| e.container_id != container_id) {
                return Err(CoreError::IpInUse { ip: *ip, id: other.id, container_id: other.container_id.clone() });
            }
        }
        let id = match self.get(container_id) {
            Some(existing) => existing.id,
            None => self.free_id()?,
        };
        Ok(Endpoint {
            id,
            container_id: container_id.to_string(),
            spec,
            identity,
            identity_labels,
            state: STATE_READY.to_string(),
        })
    }

    pub fn insert(&mut self, endpoint: Endpoint) -> Option<Endpoint> {
        self.endpoints.insert(endpoint.container_id.clone(), endpoint)
    }

    pub fn remove(&mut self, container_id: &str) -> Option<Endpoint> {
        self.endpoints.remove(container_id)
    }

    /// The endpoint that holds `ip`.
    pub fn holder_of(&self, ip: IpAddr) -> Option<&Endpoint> {
        self.endpoints.values().find(|e| e.spec.ips.contains(&ip))
    }

    /// Whether the attachment (container ID, interface) is a registered endpoint.
    pub fn holds(&self, container_id: &str, ifname: &str) -> bool {
        self.get(container_id).is_some_and(|e| e.spec.ifname == ifname)
    }
}

/// `aa:bb:cc:dd:ee:ff` → bytes (the lab's parser), as the row needs it.
pub fn parse_mac(text: &str) -> Result<[u8; 6], CoreError> {
    crate::lab::topology::parse_mac(text).ok_or_else(|| CoreError::BadMac(text.to_string()))
}

/// The `beeline_lxc` rows of an endpoint: one per address of either family, all with the same
/// ifindex, MACs, endpoint ID and identity (Cilium keys `cilium_lxc` by each of the pod's IPs).
pub fn endpoint_rows(endpoint: &Endpoint) -> Result<Vec<(IpAddr, EndpointInfo)>, CoreError> {
    let info = EndpointInfo {
        ifindex: endpoint.spec.host_ifindex,
        lxc_id: endpoint.id,
        mac: parse_mac(&endpoint.spec.mac)?,
        node_mac: parse_mac(&endpoint.spec.host_mac)?,
        sec_id: endpoint.identity,
        ..Default::default()
    };
    Ok(endpoint.spec.ips.iter().map(|ip| (*ip, info)).collect())
}

#[cfg(test)]
#[path = "endpoint_core_tests.rs"]
mod tests;
