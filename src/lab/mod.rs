//! `beeline lab`: a cluster on one machine out of network namespaces. `lab up|status|down` keeps
//! one running (nodes, in-memory API, operator, agents); `lab demo` is the datapath walkthrough
//! (one node and one pod namespace with the real agent attaching `from_container`).

pub mod agent;
pub mod apply;
pub mod cluster;
pub mod cni_runtime;
pub mod connectivity;
pub mod controllers;
pub mod demo;
pub mod endpointslices;
pub mod kubelet;
pub mod plan;
pub mod podserver;
pub mod probe;
pub mod supervisor;
pub mod topology;
pub mod traffic;
pub mod values;
pub mod workloads;

#[derive(Debug, clap::Args)]
pub struct LabArgs {
    #[command(subcommand)]
    pub command: LabCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum LabCommand {
    /// Build a node + pod topology, run the agent, send real packets, show the program attached
    /// and its counters moving (also across an agent restart), then tear everything down.
    Demo(demo::DemoArgs),
    /// Start a lab: N node namespaces on an underlay bridge, the in-memory Kubernetes API, the
    /// operator and one agent per node; returns once all are ready.
    Up(cluster::UpArgs),
    /// Nodes, processes, API reachability and readiness of a running lab (non-zero if unhealthy).
    Status(cluster::StateArgs),
    /// Stop every process and remove every namespace, pin and state file of a lab (idempotent;
    /// also cleans up after a crashed `up`).
    Down(cluster::StateArgs),
    /// Server-side apply manifests (files or directories, multi-document YAML) to the lab's API.
    Apply(apply::ApplyArgs),
    /// Run a command inside a pod's network namespace: `beeline lab exec POD -- curl ...`.
    Exec(apply::ExecArgs),
    /// Restart the lab's supervisor (API objects are kept: saved on stop, restored on start).
    Restart(cluster::StateArgs),
    /// Stop a node's agent and keep it stopped (the supervisor does not restart it); the node's
    /// datapath keeps forwarding with its pinned programs and maps.
    StopAgent(cluster::AgentArgs),
    /// Start a node's agent stopped by `stop-agent` again; returns once it is ready.
    StartAgent(cluster::AgentArgs),
    /// The lab's long-running process (started by `lab up`; not for direct use).
    #[command(hide = true)]
    Supervise(cluster::StateArgs),
}

pub async fn run(args: LabArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    match args.command {
        // Namespace work is blocking and thread-bound (setns): off the async runtime.
        LabCommand::Demo(a) => tokio::task::spawn_blocking(move || demo::run(a)).await?,
        LabCommand::Up(a) => tokio::task::spawn_blocking(move || cluster::up(a)).await?,
        LabCommand::Status(a) => tokio::task::spawn_blocking(move || cluster::status(a)).await?,
        LabCommand::Down(a) => tokio::task::spawn_blocking(move || cluster::down(a)).await?,
        LabCommand::Apply(a) => apply::apply(a).await,
        LabCommand::Exec(a) => apply::exec(a).await,
        LabCommand::Restart(a) => tokio::task::spawn_blocking(move || cluster::restart(a)).await?,
        LabCommand::StopAgent(a) => tokio::task::spawn_blocking(move || cluster::hold_agent(a, true)).await?,
        LabCommand::StartAgent(a) => tokio::task::spawn_blocking(move || cluster::hold_agent(a, false)).await?,
        LabCommand::Supervise(a) => supervisor::run(&a.absolute()?).await,
    }
}

/// Root is required for namespaces and BPF; say so plainly instead of failing deep inside.
pub fn require_root(what: &str) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(format!("{what} needs root (network namespaces, BPF); run it with sudo"));
    }
    Ok(())
}
