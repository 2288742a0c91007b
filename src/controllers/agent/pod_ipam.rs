//! What the rest of the agent needs of whichever allocator serves pods on this node, whatever the
//! IPAM mode: [`NodeIpam`] (cluster-pool, kubernetes), [`MultiPoolIpam`] (multi-pool) or
//! [`super::crd_ipam::CrdIpam`] (crd; implemented beside it).
//!
//! The CNI installer writes the conflist once [`PodIpam::is_ready`]; the datapath and the
//! CiliumNode publisher take the router (`CiliumInternalIP`) and health addresses from
//! [`PodIpam::addr_of`]; the endpoint manager checks and releases an attachment's addresses. Only
//! allocation differs per mode (multi-pool chooses a pool from the pod first), so it stays on the
//! concrete types.

use std::net::IpAddr;

use super::ipam_state::{IpamListing, NodeIpam, NodeIpamError};
use super::multi_pool::MultiPoolIpam;
use crate::ipam::{Family, Owner};

pub trait PodIpam: Send + Sync {
    /// Whether a pod can be given addresses now (the router address of every family exists).
    fn is_ready(&self) -> bool;
    /// Bumped on every change of the allocations or the node's CIDRs.
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64>;
    /// The address an owner holds in `family` (router: `CiliumInternalIP`, health: `spec.health`).
    fn addr_of(&self, family: Family, owner: &Owner) -> Option<IpAddr>;
    /// The addresses the attachment (container ID, interface) holds.
    fn attachment_ips(&self, container_id: &str, interface: &str) -> Vec<IpAddr>;
    /// Releases what the attachment holds; idempotent.
    fn release(&self, container_id: &str, interface: &str) -> Result<Vec<IpAddr>, NodeIpamError>;
    fn listing(&self) -> IpamListing;
}

impl PodIpam for NodeIpam {
    fn is_ready(&self) -> bool {
        NodeIpam::is_ready(self)
    }
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        NodeIpam::subscribe(self)
    }
    fn addr_of(&self, family: Family, owner: &Owner) -> Option<IpAddr> {
        NodeIpam::addr_of(self, family, owner)
    }
    fn attachment_ips(&self, container_id: &str, interface: &str) -> Vec<IpAddr> {
        NodeIpam::attachment_ips(self, container_id, interface)
    }
    fn release(&self, container_id: &str, interface: &str) -> Result<Vec<IpAddr>, NodeIpamError> {
        NodeIpam::release(self, container_id, interface)
    }
    fn listing(&self) -> IpamListing {
        NodeIpam::listing(self)
    }
}

impl PodIpam for MultiPoolIpam {
    fn is_ready(&self) -> bool {
        MultiPoolIpam::is_ready(self)
    }
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        MultiPoolIpam::subscribe(self)
    }
    fn addr_of(&self, family: Family, owner: &Owner) -> Option<IpAddr> {
        MultiPoolIpam::addr_of(self, family, owner)
    }
    fn attachment_ips(&self, container_id: &str, interface: &str) -> Vec<IpAddr> {
        MultiPoolIpam::attachment_ips(self, container_id, interface)
    }
    fn release(&self, container_id: &str, interface: &str) -> Result<Vec<IpAddr>, NodeIpamError> {
        MultiPoolIpam::release(self, container_id, interface)
    }
    fn listing(&self) -> IpamListing {
        MultiPoolIpam::listing(self)
    }
}
