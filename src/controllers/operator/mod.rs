//! Controllers the operator runs while it holds the leader lease.

pub mod lb_ipam;
