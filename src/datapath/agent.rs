//! The agent's datapath start-up: load the object with pinned maps and attach `from_container`
//! to the configured interfaces. Until endpoints are managed by controllers, the interfaces are
//! listed by flag.

use std::path::Path;

use super::{attach::AttachMode, loader::programs, Attachment, Datapath, DatapathError, Direction};

#[derive(Clone, Debug, Default, clap::Args)]
pub struct DatapathArgs {
    /// Attach `from_container` (tc ingress) to this interface at start (repeatable). The link is
    /// pinned under `<bpf-root>/beeline` and stays attached after the agent exits; a restarted
    /// agent replaces the program atomically.
    #[arg(
        long = "datapath-interface",
        value_name = "IFNAME",
        env = "BEELINE_DATAPATH_INTERFACES",
        value_delimiter = ','
    )]
    pub interfaces: Vec<String>,
    /// How to attach tc programs.
    #[arg(long = "datapath-attach-mode", value_enum, default_value_t)]
    pub attach_mode: AttachMode,
}

/// Loads and attaches when interfaces are configured; `None` otherwise (no BPF needed then).
pub fn start(args: &DatapathArgs, pin_dir: &Path) -> Result<Option<(Datapath, Vec<Attachment>)>, DatapathError> {
    if args.interfaces.is_empty() {
        return Ok(None);
    }
    let mut datapath = Datapath::load(pin_dir)?;
    let mut attachments = Vec::new();
    for ifname in &args.interfaces {
        attachments.push(datapath.attach(programs::FROM_CONTAINER, ifname, Direction::Ingress, args.attach_mode)?);
    }
    Ok(Some((datapath, attachments)))
}
