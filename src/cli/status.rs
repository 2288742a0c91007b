//! `beeline status`: the agent's view of its node.

use std::path::PathBuf;

use super::{agent_client, print_structured, Output};
use crate::agent::api::StatusResponse;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The agent's API socket.
    #[arg(long, env = "BEELINE_AGENT_SOCKET", default_value = "/run/beeline/beeline.sock")]
    pub socket: PathBuf,
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
}

pub async fn run(args: StatusArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let status: StatusResponse = agent_client::get_json(&args.socket, "/v1/status").await?;
    if !print_structured(args.output, &status)? {
        print!("{}", render(&status));
    }
    Ok(())
}

pub fn render(s: &StatusResponse) -> String {
    let mut out = String::new();
    out.push_str(&format!("Node:                   {}\n", s.node_name));
    out.push_str(&format!("Version:                {}\n", s.version));
    out.push_str(&format!("Ready:                  {}\n", if s.ready { "Ok" } else { "Not ready" }));
    for c in &s.checks {
        let state = if c.ok { "Ok".to_string() } else { format!("Failure: {}", c.message) };
        out.push_str(&format!("  {:<22}{state}\n", format!("{}:", c.name)));
    }
    out.push_str(&format!("Routing:                {} ({})\n", s.routing_mode, s.tunnel_protocol));
    out.push_str(&format!("IPAM:                   {}\n", s.ipam));
    for line in &s.ipam_status {
        out.push_str(&format!("  {line}\n"));
    }
    out.push_str(&format!("KubeProxyReplacement:   {}\n", if s.kube_proxy_replacement { "True" } else { "False" }));
    if let Some(d) = &s.kube_proxy_replacement_details {
        out.push_str("KubeProxyReplacement Details:\n");
        out.push_str(&format!("  Mode:                 {}\n", d.mode));
        out.push_str(&format!("  Backend Selection:    {}\n", d.backend_selection));
        out.push_str(&format!("  Session Affinity:     {}\n", d.session_affinity));
        out.push_str(&format!("  Protocols:            {}\n", d.protocols));
        out.push_str("  Services:\n");
        for (kind, state) in &d.services {
            out.push_str(&format!("  - {:<14}{state}\n", format!("{kind}:")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::api::KprDetails;

    #[test]
    fn status_shows_the_kube_proxy_replacement_details() {
        let status = StatusResponse {
            version: "0.1.0".into(),
            node_name: "node-a".into(),
            ready: true,
            checks: vec![],
            routing_mode: "tunnel".into(),
            tunnel_protocol: "vxlan".into(),
            ipam: "cluster-pool".into(),
            kube_proxy_replacement: true,
            ipam_status: vec![],
            kube_proxy_replacement_details: Some(KprDetails {
                mode: "SNAT".into(),
                backend_selection: "Random".into(),
                session_affinity: "Enabled".into(),
                protocols: "TCP, UDP".into(),
                services: vec![("NodePort".into(), "Enabled (Range: 30000-32767)".into())],
            }),
        };
        let text = render(&status);
        for line in [
            "KubeProxyReplacement:   True",
            "KubeProxyReplacement Details:",
            "  Mode:                 SNAT",
            "  Backend Selection:    Random",
            "  Session Affinity:     Enabled",
            "  - NodePort:     Enabled (Range: 30000-32767)",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
    }
}
