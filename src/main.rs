//! `beeline`: one binary, subcommands for every process and the debug CLI.
//! Invoked as `beeline-cni` (a symlink or copy in the CNI bin dir) it is the CNI plugin.

use clap::{Parser, Subcommand};

use beeline::{agent, cli, cni, lab, operator, runtime::logging};

#[derive(Parser)]
#[command(name = "beeline", version, about = "Cilium's networking model in Rust: eBPF datapath, agent and operator")]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "text", env = "BEELINE_LOG_FORMAT")]
    log_format: logging::LogFormat,
    /// Log level or filter (overridden by RUST_LOG).
    #[arg(long, global = true, default_value = "info", env = "BEELINE_LOG_LEVEL")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the per-node agent (DaemonSet).
    Agent(agent::AgentArgs),
    /// Run the cluster operator (Deployment).
    Operator(operator::OperatorArgs),
    /// Run as the CNI plugin (same as invoking the binary as `beeline-cni`).
    Cni,
    /// Show the local agent's status.
    Status(cli::status::StatusArgs),
    /// Read and manage the pinned BPF maps and programs.
    Bpf(cli::bpf::BpfArgs),
    /// A cluster on this machine out of network namespaces (root).
    Lab(lab::LabArgs),
}

fn main() {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let invoked_as = std::path::Path::new(&argv0).file_name().map(|n| n.to_string_lossy().into_owned());
    if invoked_as.as_deref() == Some("beeline-cni") {
        std::process::exit(cni::main());
    }

    let cli = Cli::parse();
    if let Command::Cni = cli.command {
        std::process::exit(cni::main());
    }
    logging::init(cli.log_format, &cli.log_level);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Agent(args) => agent::run(args).await,
            Command::Operator(args) => operator::run(args).await,
            Command::Status(args) => cli::status::run(args).await,
            Command::Bpf(args) => cli::bpf::run(args),
            Command::Lab(args) => lab::run(args).await,
            Command::Cni => unreachable!("handled above"),
        }
    });
    if let Err(e) = result {
        tracing::error!("{e}");
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
