//! Reconcilers: a pure desired-state core (in `ipam`, `policy`, ...) fed by kube-runtime watchers, with
//! the result written to the Kubernetes API or the map manager. One module per controller.

pub mod operator;
