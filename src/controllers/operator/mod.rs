//! The operator's reconcilers; they run while this replica holds the leader lease.

pub mod cluster_pool;
pub mod identity_gc;
pub mod lb_ipam;
pub mod multi_pool;
