//! `beeline lab`: a cluster on one machine out of network namespaces. First form: `lab demo`,
//! one node and one pod namespace with the real agent attaching `from_container`.

pub mod agent;
pub mod demo;
pub mod topology;
pub mod traffic;

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
}

pub async fn run(args: LabArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    match args.command {
        // Namespace work is blocking and thread-bound (setns): off the async runtime.
        LabCommand::Demo(a) => tokio::task::spawn_blocking(move || demo::run(a)).await?,
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
