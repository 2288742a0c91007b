//! The agent's reconcilers.

pub mod node_ipam;
