//! `beeline ipam`: the local agent's pod addresses and who holds them.

use std::path::PathBuf;

use super::{agent_client, print_structured, Output};
use crate::controllers::agent::ipam_state::IpamListing;

#[derive(Debug, clap::Args)]
pub struct IpamArgs {
    /// The agent's API socket.
    #[arg(long, env = "BEELINE_AGENT_SOCKET", default_value = "/run/beeline/beeline.sock")]
    pub socket: PathBuf,
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
}

pub async fn run(args: IpamArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let listing: IpamListing = agent_client::get_json(&args.socket, "/v1/ipam").await?;
    if !print_structured(args.output, &listing)? {
        print!("{}", render(&listing));
    }
    Ok(())
}

/// The status lines, then one row per allocation in address order.
pub fn render(listing: &IpamListing) -> String {
    let mut out = String::new();
    if !listing.ready {
        out.push_str(&format!("IPAM not ready: {}\n", listing.waiting_for));
        return out;
    }
    for line in &listing.status {
        out.push_str(&format!("{line}\n"));
    }
    let rows: Vec<(String, String, String)> = listing
        .allocations
        .iter()
        .map(|a| {
            let attachment = match &a.owner {
                crate::ipam::Owner::Endpoint { container_id, interface, .. } => {
                    format!("{}/{interface}", container_id.chars().take(12).collect::<String>())
                }
                _ => String::new(),
            };
            (a.ip.to_string(), a.owner.to_string(), attachment)
        })
        .collect();
    let w_ip = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max("ADDRESS".len());
    let w_owner = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max("OWNER".len());
    out.push_str(&format!("{:<w_ip$}  {:<w_owner$}  CONTAINER/IFNAME\n", "ADDRESS", "OWNER"));
    for (ip, owner, attachment) in rows {
        out.push_str(format!("{ip:<w_ip$}  {owner:<w_owner$}  {attachment}").trim_end());
        out.push('\n');
    }
    out
}
