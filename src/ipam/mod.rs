//! Pure IP address management: no I/O, no Kubernetes types. Controllers feed these allocators from
//! CiliumNode/Node objects and write their results back.
//!
//! - [`cluster_pool::ClusterCidrPool`]: the operator's per-node CIDRs out of cluster CIDRs
//!   (`cluster-pool` mode; multi-pool uses one per pool and family).
//! - [`node_alloc::AddressAllocator`]: the agent's pod addresses out of its node CIDRs.
//! - [`multi_pool`]: the operator's per-node CIDRs out of `CiliumPodIPPool`s (`multi-pool` mode);
//!   [`multi_pool_agent`]: the agent's pool choice, demand and CIDR release.
//! - [`crd_pool`]: the agent's addresses out of `CiliumNode.spec.ipam.pool` (`crd` mode).
//! - [`lbipam`]: LoadBalancer IPs for Services out of `CiliumLoadBalancerIPPool`s (operator).
//! - [`index_set::IndexSet`]: the sparse interval set both use, so pool size never drives memory.

pub mod addr;
pub mod cluster_pool;
pub mod crd_pool;
pub mod index_set;
pub mod lbipam;
pub mod multi_pool;
pub mod multi_pool_agent;
pub mod node_alloc;
pub mod podcidr;

pub use addr::Family;
pub use cluster_pool::{ClusterCidrPool, PoolError, Restored};
pub use node_alloc::{AddressAllocator, AllocatorStatus, IpamError, Owner, PodRef};
