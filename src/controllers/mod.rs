//! Reconcilers, one module each: `operator/` for the cluster-wide ones, `agent/` for the per-node ones.
//! Each pairs a pure desired-state function (in `ipam`, `policy`, `services`, ...) with thin
//! kube-runtime wiring whose output goes to the Kubernetes API or the map manager.

pub mod agent;
pub mod operator;
pub mod watch;

#[cfg(test)]
pub(crate) mod test_util;
