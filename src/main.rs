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
    /// Show flows the datapath saw (`hubble observe`): pods, identities, verdicts.
    Observe(cli::observe::ObserveArgs),
    /// List the local agent's pod address allocations.
    Ipam(cli::ipam::IpamArgs),
    /// The local agent's network policies and the selectors' identities (`get`, `selectors`).
    Policy(cli::policy::PolicyArgs),
    /// The local agent's endpoints with their identity and policy enforcement (`list`).
    Endpoint(cli::policy::EndpointArgs),
    /// The services the datapath balances (`beeline service list`), from the pinned LB maps.
    Service(cli::service::ServiceArgs),
    /// Read the pinned BPF maps directly (`beeline bpf lb list`) and remove the datapath.
    Bpf(cli::bpf::BpfArgs),
    /// A cluster on this machine out of network namespaces (root).
    Lab(lab::LabArgs),
    /// Connectivity checks against a lab (`beeline connectivity test`), like `cilium connectivity test`.
    Connectivity(lab::connectivity::ConnectivityArgs),
    /// Write the cilium.io CRDs generated from the Rust types (one YAML file per kind).
    Crdgen(CrdgenArgs),
}

#[derive(clap::Args)]
struct CrdgenArgs {
    /// Directory to write `<plural>.yaml` files into.
    #[arg(long, default_value = "manifests/crds")]
    out_dir: std::path::PathBuf,
}

/// `beeline crdgen`: regenerate `manifests/crds/`.
fn crdgen(args: &CrdgenArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    std::fs::create_dir_all(&args.out_dir)?;
    for (name, yaml) in beeline::crds::render_all()? {
        let path = args.out_dir.join(name);
        std::fs::write(&path, yaml).map_err(|e| format!("writing {}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
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
    if let Command::Crdgen(args) = &cli.command {
        if let Err(e) = crdgen(args) {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
        return;
    }
    logging::init(cli.log_format, &cli.log_level);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Agent(args) => agent::run(args).await,
            Command::Operator(args) => operator::run(args).await,
            Command::Status(args) => cli::status::run(args).await,
            Command::Observe(args) => cli::observe::run(args).await,
            Command::Bpf(args) => cli::bpf::run(args).await,
            Command::Service(args) => cli::service::run(args).await,
            Command::Lab(args) => lab::run(args).await,
            Command::Connectivity(args) => lab::connectivity::run(args).await,
            Command::Ipam(args) => cli::ipam::run(args).await,
            Command::Policy(args) => cli::policy::run_policy(args).await,
            Command::Endpoint(args) => cli::policy::run_endpoint(args).await,
            Command::Cni | Command::Crdgen(_) => unreachable!("handled above"),
        }
    });
    if let Err(e) = result {
        // One line on stderr whatever the log format: this is what `kubectl logs` shows last.
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
