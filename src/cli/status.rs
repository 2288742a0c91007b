//! `beeline status`: the agent's view of its node.

use std::path::PathBuf;

use super::{agent_client, print_structured, Output};
use crate::agent::api::{EndpointSummary, StatusResponse};
use crate::datapath::pressure::MapPressure;
use crate::runtime::controllers::ControllerStatus;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The agent's API socket.
    #[arg(long, env = "BEELINE_AGENT_SOCKET", default_value = "/run/beeline/beeline.sock")]
    pub socket: PathBuf,
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
    /// One line per endpoint and per controller.
    #[arg(long)]
    pub verbose: bool,
    /// Every node of the lab whose state directory is `--state-dir`: one section per node; fails
    /// naming each node whose agent is unreachable or not ready.
    #[arg(long, requires = "state_dir")]
    pub all_nodes: bool,
    /// A lab's state directory (with `--all-nodes`).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

pub async fn run(args: StatusArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let Some(dir) = args.state_dir.as_ref().filter(|_| args.all_nodes) else {
        let status: StatusResponse = agent_client::get_json(&args.socket, "/v1/status").await?;
        if !print_structured(args.output, &status)? {
            print!("{}", render(&status, args.verbose));
        }
        return Ok(());
    };
    let mut nodes = Vec::new();
    for node in crate::lab::cluster::read_plan(dir)?.nodes {
        let status = agent_client::get_json::<StatusResponse>(&node.agent_socket(), "/v1/status").await;
        nodes.push((node.name, status.map_err(|e| e.to_string())));
    }
    let reachable: Vec<&StatusResponse> = nodes.iter().filter_map(|(_, s)| s.as_ref().ok()).collect();
    if !print_structured(args.output, &reachable)? {
        for (name, status) in &nodes {
            println!("=== {name} ===");
            match status {
                Ok(s) => print!("{}", render(s, args.verbose)),
                Err(e) => println!("Agent unreachable: {e}"),
            }
        }
    }
    all_nodes_verdict(&nodes).map_err(Into::into)
}

/// A node's name and its agent's answer (or why there was none).
type NodeStatus = (String, Result<StatusResponse, String>);

/// Fails naming every node whose agent did not answer or is not ready (with its failing checks).
fn all_nodes_verdict(nodes: &[NodeStatus]) -> Result<(), String> {
    let problems: Vec<String> = nodes
        .iter()
        .filter_map(|(name, status)| match status {
            Err(e) => Some(format!("{name}: agent unreachable ({e})")),
            Ok(s) if !s.ready => {
                let failing: Vec<String> =
                    s.checks.iter().filter(|c| !c.ok).map(|c| format!("{}: {}", c.name, c.message)).collect();
                Some(format!("{name}: not ready ({})", failing.join("; ")))
            }
            Ok(_) => None,
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join(", "))
    }
}

pub fn render(s: &StatusResponse, verbose: bool) -> String {
    let mut out = String::new();
    out.push_str(&format!("Node:                   {}\n", s.node_name));
    out.push_str(&format!("Version:                {}\n", s.version));
    let v = &s.versions;
    let or_unknown = |x: &str| if x.is_empty() { "unknown".to_string() } else { x.to_string() };
    out.push_str(&format!("Kernel:                 {}\n", or_unknown(&v.kernel)));
    out.push_str(&format!("Kubernetes:             {}\n", or_unknown(&v.kubernetes)));
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
    render_endpoints(&mut out, &s.endpoints, verbose);
    render_controllers(&mut out, &s.controllers, verbose);
    render_maps(&mut out, &s.bpf_maps);
    out
}

fn render_maps(out: &mut String, maps: &[MapPressure]) {
    out.push_str("BPF Maps:\n");
    out.push_str(&format!("  {:<32}{:>10}{:>10}{:>10}\n", "Name", "Entries", "Max", "Pressure"));
    for m in maps {
        let pct = format!("{:.1}%", m.pressure() * 100.0);
        out.push_str(&format!("  {:<32}{:>10}{:>10}{:>10}\n", m.name, m.entries, m.max_entries, pct));
    }
}

fn render_endpoints(out: &mut String, endpoints: &[EndpointSummary], verbose: bool) {
    let ready = endpoints.iter().filter(|e| e.state == crate::agent::endpoint_core::STATE_READY).count();
    out.push_str(&format!("Endpoints:              {} ({ready} ready)\n", endpoints.len()));
    if verbose {
        for e in endpoints {
            let ips: Vec<String> = e.ips.iter().map(ToString::to_string).collect();
            out.push_str(&format!(
                "  {:<6}{:<40}{:<32}identity {:<8}{}\n",
                e.id,
                e.pod,
                ips.join(","),
                e.identity,
                e.state
            ));
        }
    }
}

fn render_controllers(out: &mut String, controllers: &[ControllerStatus], verbose: bool) {
    let healthy = controllers.iter().filter(|c| c.healthy()).count();
    out.push_str(&format!("Controller Status:      {healthy}/{} healthy\n", controllers.len()));
    for c in controllers.iter().filter(|c| verbose || !c.healthy()) {
        let mut line = format!(
            "  {:<28}{} successes, {} failures ({} in a row)",
            c.name, c.success_count, c.failure_count, c.consecutive_failures
        );
        if !c.last_error.is_empty() {
            line.push_str(&format!(", last error: {}", c.last_error));
        }
        out.push_str(&line);
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::api::KprDetails;

    fn sample() -> StatusResponse {
        StatusResponse {
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
            versions: Default::default(),
            endpoints: vec![],
            controllers: vec![],
            bpf_maps: vec![MapPressure { name: "beeline_lxc".into(), entries: 3, max_entries: 16384 }],
        }
    }

    #[test]
    fn all_nodes_fails_naming_unreachable_and_unready_nodes() {
        let ready = sample();
        let mut unready = sample();
        unready.ready = false;
        unready.checks = vec![
            crate::agent::api::CheckStatus { name: "datapath".into(), ok: true, message: String::new() },
            crate::agent::api::CheckStatus { name: "bpf-maps".into(), ok: false, message: "syncing".into() },
        ];
        let cases: Vec<(Vec<NodeStatus>, Result<(), String>)> = vec![
            (vec![("a".into(), Ok(ready.clone())), ("b".into(), Ok(ready.clone()))], Ok(())),
            (
                vec![("a".into(), Ok(ready.clone())), ("b".into(), Err("connection refused".into()))],
                Err("b: agent unreachable (connection refused)".into()),
            ),
            (
                vec![("a".into(), Ok(unready)), ("b".into(), Err("no socket".into()))],
                Err("a: not ready (bpf-maps: syncing), b: agent unreachable (no socket)".into()),
            ),
        ];
        for (nodes, want) in cases {
            assert_eq!(all_nodes_verdict(&nodes), want);
        }
    }

    #[test]
    fn status_shows_the_kube_proxy_replacement_details() {
        let status = sample();
        let text = render(&status, false);
        for line in [
            "KubeProxyReplacement:   True",
            "KubeProxyReplacement Details:",
            "  Mode:                 SNAT",
            "  Backend Selection:    Random",
            "  Session Affinity:     Enabled",
            "  - NodePort:     Enabled (Range: 30000-32767)",
            "  beeline_lxc                              3     16384      0.0%",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
    }

    fn controller(name: &str, ok: u64, failed: u64, in_a_row: u64, last_error: &str) -> ControllerStatus {
        ControllerStatus {
            name: name.into(),
            success_count: ok,
            failure_count: failed,
            consecutive_failures: in_a_row,
            last_error: last_error.into(),
            ..Default::default()
        }
    }

    #[test]
    fn endpoints_and_controllers_are_counted_and_listed_when_verbose() {
        let endpoint = |id: u16, pod: &str, state: &str| EndpointSummary {
            id,
            pod: pod.into(),
            ips: vec!["10.0.1.5".parse().unwrap()],
            identity: 4711,
            state: state.into(),
        };
        let endpoints = [endpoint(12, "default/web-1", "ready"), endpoint(40, "default/client", "restoring")];
        let controllers = [controller("services", 9, 0, 0, ""), controller("node-ipam", 3, 2, 1, "api down")];
        // (verbose, lines that must be there, text that must not)
        let cases: [(bool, &[&str], &[&str]); 2] = [
            (
                false,
                &[
                    "Endpoints:              2 (1 ready)",
                    "Controller Status:      1/2 healthy",
                    "  node-ipam                   3 successes, 2 failures (1 in a row), last error: api down",
                ],
                &["default/web-1", "services  "],
            ),
            (
                true,
                &[
                    "  12    default/web-1                           10.0.1.5                        identity 4711    ready",
                    "  services                    9 successes, 0 failures (0 in a row)",
                ],
                &[],
            ),
        ];
        for (verbose, want, not) in cases {
            let mut out = String::new();
            render_endpoints(&mut out, &endpoints, verbose);
            render_controllers(&mut out, &controllers, verbose);
            for line in want {
                assert!(out.lines().any(|l| l == *line), "verbose={verbose}: missing {line:?} in:\n{out}");
            }
            for text in not {
                assert!(!out.contains(text), "verbose={verbose}: unexpected {text:?} in:\n{out}");
            }
        }
    }
}
