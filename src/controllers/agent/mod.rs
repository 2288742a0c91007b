//! The agent's reconcilers.

pub mod crd_ipam;
pub mod ipam_state;
pub mod local_endpoints;
pub mod multi_pool;
pub mod node_ipam;
pub mod own_node;
pub mod pod_ipam;
pub mod policy_state;
pub mod policy_watch;
pub mod remote;
pub mod remote_endpoints;
pub mod remote_nodes;
pub mod services;
pub mod services_watch;
