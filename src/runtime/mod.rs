//! Process plumbing shared by the agent and the operator: logging, the Kubernetes client, the
//! controller runner, health/metrics endpoints and shutdown.

pub mod args;
pub mod connectivity;
pub mod health;
pub mod kubeclient;
pub mod logging;
pub mod runner;
pub mod shutdown;
