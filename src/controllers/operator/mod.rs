//! The operator's reconcilers.

pub mod cluster_pool;
