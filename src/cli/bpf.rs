//! `beeline bpf ...`: read the pinned maps and manage the pinned datapath directly (no agent
//! needed, so it works while the agent is down).

use std::{collections::BTreeMap, path::PathBuf};

use super::{print_structured, Output};
use crate::{datapath, runtime::args::ConfigArgs};

#[derive(Debug, clap::Args)]
pub struct BpfArgs {
    #[command(subcommand)]
    pub command: BpfCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum BpfCommand {
    /// Per-endpoint packet counters (`beeline_ep_stats`).
    #[command(name = "ep-stats", subcommand)]
    EpStats(EpStatsCommand),
    /// Detach every beeline program and remove the pinned links and maps (stop the agent first).
    Uninstall(PinDirArgs),
}

#[derive(Debug, clap::Subcommand)]
pub enum EpStatsCommand {
    List {
        #[command(flatten)]
        pins: PinDirArgs,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
}

#[derive(Debug, clap::Args)]
pub struct PinDirArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The pin directory (default: `<bpf-root>/beeline` from the configuration).
    #[arg(long)]
    pub pin_dir: Option<PathBuf>,
}

impl PinDirArgs {
    fn resolve(&self) -> Result<PathBuf, Box<dyn std::error::Error + Send + Sync>> {
        match &self.pin_dir {
            Some(dir) => Ok(dir.clone()),
            None => Ok(self.config.load()?.0.pin_dir()),
        }
    }
}

#[derive(Debug, serde::Serialize)]
struct EpStatsRow {
    ifindex: u32,
    ifname: Option<String>,
    packets: u64,
    bytes: u64,
}

pub fn run(args: BpfArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    match args.command {
        BpfCommand::EpStats(EpStatsCommand::List { pins, output }) => {
            let stats = datapath::loader::read_pinned_endpoint_stats(&pins.resolve()?)?;
            let rows = rows(&stats);
            if !print_structured(output, &rows)? {
                print!("{}", render(&rows));
            }
        }
        BpfCommand::Uninstall(pins) => {
            let report = datapath::uninstall(&pins.resolve()?)?;
            for link in &report.links_unpinned {
                println!("unpinned link {}", link.display());
            }
            for filter in &report.netlink_filters_removed {
                println!("removed clsact filter {filter}");
            }
            if let Some(dir) = &report.pin_dir_removed {
                println!("removed {}", dir.display());
            }
        }
    }
    Ok(())
}

fn rows(stats: &BTreeMap<u32, beeline_common::EndpointStats>) -> Vec<EpStatsRow> {
    stats
        .iter()
        .map(|(ifindex, s)| EpStatsRow {
            ifindex: *ifindex,
            ifname: ifname(*ifindex),
            packets: s.packets,
            bytes: s.bytes,
        })
        .collect()
}

fn render(rows: &[EpStatsRow]) -> String {
    let mut out = format!("{:<8} {:<16} {:>12} {:>14}\n", "IFINDEX", "INTERFACE", "PACKETS", "BYTES");
    for r in rows {
        let name = r.ifname.as_deref().unwrap_or("-");
        out.push_str(&format!("{:<8} {:<16} {:>12} {:>14}\n", r.ifindex, name, r.packets, r.bytes));
    }
    out
}

/// The interface name for `ifindex` in this process's namespace, if it exists here.
fn ifname(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has IF_NAMESIZE bytes as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    Some(unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lists_every_row() {
        let rows = vec![
            EpStatsRow { ifindex: 7, ifname: Some("lxc0".into()), packets: 3, bytes: 294 },
            EpStatsRow { ifindex: 9, ifname: None, packets: 1, bytes: 60 },
        ];
        let text = render(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].starts_with("7") && lines[1].contains("lxc0") && lines[1].ends_with("294"));
        assert!(lines[2].contains(" - ") && lines[2].ends_with("60"));
    }
}
