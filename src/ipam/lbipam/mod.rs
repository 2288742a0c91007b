//! LB-IPAM's pure core: from `CiliumLoadBalancerIPPool`s and Services to the addresses and status
//! conditions each should have. No I/O; the operator controller feeds it and writes the result.
//!
//! The function is stateless: the current allocations are read back from the Services'
//! `status.loadBalancer.ingress`, so an operator restart (or any re-run) adopts what is there instead
//! of reshuffling, and running it on its own output changes nothing.
//!
//! Semantics follow Cilium's operator (`operator/pkg/lbipam`); where Cilium's behaviour depends on
//! event order, this core fixes a deterministic order instead (see [`desired::desired_state`]).

pub mod addr;
pub mod block;
pub mod desired;
pub mod pool;
pub mod service;
pub mod status;

#[cfg(test)]
mod desired_tests;
#[cfg(test)]
mod property_tests;

pub use block::{parse_block, BlockError, IpRange};
pub use desired::{desired_state, DesiredState, PoolOutcome, ServiceOutcome};
pub use pool::{Conflict, PoolView};
pub use service::{classify, LbIpamConfig, Responsibility, ServiceKey, ServiceRequest};
pub use status::DesiredCondition;

/// Service condition: whether every requested address (or family) is assigned.
pub const CONDITION_REQUEST_SATISFIED: &str = "cilium.io/IPAMRequestSatisfied";
/// Pool condition: the newer of two overlapping pools (or a pool overlapping itself) is disabled.
pub const CONDITION_POOL_CONFLICT: &str = "cilium.io/PoolConflict";
/// Pool conditions whose message is a count of addresses (status `Unknown`, as in Cilium).
pub const CONDITION_IPS_TOTAL: &str = "cilium.io/IPsTotal";
pub const CONDITION_IPS_AVAILABLE: &str = "cilium.io/IPsAvailable";
pub const CONDITION_IPS_USED: &str = "cilium.io/IPsUsed";
/// Pool condition beeline adds: whether every block parses (Cilium's operator only logs errors).
pub const CONDITION_BLOCKS_VALID: &str = "beeline.io/BlocksValid";

/// Requested addresses, comma-separated (and its older alias).
pub const ANNOTATION_IPS: &str = "lbipam.cilium.io/ips";
pub const ANNOTATION_IPS_ALIAS: &str = "io.cilium/lb-ipam-ips";
pub const ANNOTATION_SHARING_KEY: &str = "lbipam.cilium.io/sharing-key";
pub const ANNOTATION_SHARING_KEY_ALIAS: &str = "io.cilium/lb-ipam-sharing-key";
pub const ANNOTATION_SHARING_CROSS_NAMESPACE: &str = "lbipam.cilium.io/sharing-cross-namespace";
pub const ANNOTATION_SHARING_CROSS_NAMESPACE_ALIAS: &str = "io.cilium/lb-ipam-sharing-cross-namespace";

/// Labels LB-IPAM adds to a Service's own for `serviceSelector` matching; always the real values.
pub const LABEL_SERVICE_NAMESPACE: &str = "io.kubernetes.service.namespace";
pub const LABEL_SERVICE_NAME: &str = "io.kubernetes.service.name";

/// `IPAMRequestSatisfied` reasons (Cilium's strings).
pub mod reason {
    pub const SATISFIED: &str = "satisfied";
    pub const NO_POOL: &str = "no_pool";
    pub const OUT_OF_IPS: &str = "out_of_ips";
    pub const POOL_SELECTOR_MISMATCH: &str = "pool_selector_mismatch";
    pub const ALREADY_ALLOCATED: &str = "already_allocated";
    pub const ALREADY_ALLOCATED_INCOMPATIBLE: &str = "already_allocated_incompatible_service";
    /// `PoolConflict` reasons.
    pub const CIDR_OVERLAP: &str = "cidr_overlap";
    pub const RESOLVED: &str = "resolved";
    /// Count conditions carry no reason in Cilium beyond this placeholder.
    pub const NO_REASON: &str = "noreason";
    /// `BlocksValid` reasons.
    pub const VALID: &str = "valid";
    pub const INVALID_BLOCK: &str = "invalid_block";
}
