//! The agent's reconcilers.

pub mod ipam_state;
pub mod node_ipam;
pub mod remote;
pub mod remote_endpoints;
pub mod remote_nodes;
pub mod services;
pub mod services_watch;
