//! Process plumbing shared by the agent and the operator: logging, the Kubernetes client, the
//! controller runner, health/metrics endpoints and shutdown.

pub mod args;
pub mod connectivity;
pub mod controllers;
pub mod health;
pub mod kubeclient;
pub mod logging;
pub mod runner;
pub mod shutdown;

/// This machine's (or network namespace's UTS) host name, as the kernel reports it.
pub fn hostname() -> std::io::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/hostname")?.trim().to_string())
}
