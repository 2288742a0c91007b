//! `beeline policy get|selectors` and `beeline endpoint list`: the local agent's policy view.

use std::path::PathBuf;

use serde_json::Value;

use super::{agent_client, print_structured, Output};

#[derive(Debug, clap::Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    pub command: PolicyCommand,
    /// The agent's API socket.
    #[arg(long, global = true, env = "BEELINE_AGENT_SOCKET", default_value = "/run/beeline/beeline.sock")]
    pub socket: PathBuf,
    #[arg(short, long, global = true, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, clap::Subcommand)]
pub enum PolicyCommand {
    /// Every policy the agent knows and whether it was accepted (the `Valid` condition's text).
    Get,
    /// Each selector in use and the identities it selects.
    Selectors,
}

#[derive(Debug, clap::Args)]
pub struct EndpointArgs {
    #[command(subcommand)]
    pub command: EndpointCommand,
    /// The agent's API socket.
    #[arg(long, global = true, env = "BEELINE_AGENT_SOCKET", default_value = "/run/beeline/beeline.sock")]
    pub socket: PathBuf,
    #[arg(short, long, global = true, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, clap::Subcommand)]
pub enum EndpointCommand {
    /// Local endpoints: ID, identity, ingress/egress enforcement, pod.
    List,
}

type CliResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

pub async fn run_policy(args: PolicyArgs) -> CliResult {
    let (uri, render): (&str, fn(&Value) -> String) = match args.command {
        PolicyCommand::Get => ("/v1/policy", render_policies),
        PolicyCommand::Selectors => ("/v1/policy/selectors", render_selectors),
    };
    show(&args.socket, uri, args.output, render).await
}

pub async fn run_endpoint(args: EndpointArgs) -> CliResult {
    match args.command {
        EndpointCommand::List => {
            // The endpoint manager's endpoints, joined with the policy controller's enforcement.
            let endpoints: Value = agent_client::get_json(&args.socket, "/v1/endpoint").await?;
            let enforcement: Value = agent_client::get_json(&args.socket, "/v1/policy/endpoints").await?;
            let joined = join_enforcement(&endpoints, &enforcement);
            if !print_structured(args.output, &joined)? {
                print!("{}", render_endpoints(&joined));
            }
            Ok(())
        }
    }
}

/// One row per registered endpoint (`/v1/endpoint`) with its enforcement flags from the policy
/// controller (`/v1/policy/endpoints`); an endpoint the controller has not passed over yet is not
/// enforcing, as in the datapath (no row in the enforcement map).
pub fn join_enforcement(endpoints: &Value, enforcement: &Value) -> Value {
    let flags = |id: &Value, key: &str| {
        rows(enforcement).iter().find(|e| &e["id"] == id).and_then(|e| e[key].as_bool()).unwrap_or(false)
    };
    let joined = rows(endpoints)
        .iter()
        .map(|e| {
            let pod = match (e["namespace"].as_str(), e["pod"].as_str()) {
                (Some(ns), Some(pod)) if !ns.is_empty() => format!("{ns}/{pod}"),
                _ => text(&e["containerID"]),
            };
            serde_json::json!({
                "id": e["id"],
                "identity": e["identity"],
                "pod": pod,
                "ingress_enforcing": flags(&e["id"], "ingress_enforcing"),
                "egress_enforcing": flags(&e["id"], "egress_enforcing"),
                "state": e["state"],
            })
        })
        .collect();
    Value::Array(joined)
}

async fn show(socket: &std::path::Path, uri: &str, output: Output, render: fn(&Value) -> String) -> CliResult {
    let value: Value = agent_client::get_json(socket, uri).await?;
    if !print_structured(output, &value)? {
        print!("{}", render(&value));
    }
    Ok(())
}

fn rows(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or_default()
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Left-aligned columns, two spaces apart, trailing blanks trimmed.
fn table(header: &[&str], body: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &body {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in body {
        out.push_str(&line(row));
    }
    out
}

pub fn render_policies(value: &Value) -> String {
    let body = rows(value)
        .iter()
        .map(|p| {
            let valid = if p["valid"].as_bool() == Some(true) { "True" } else { "False" };
            vec![text(&p["policy"]), valid.to_string(), text(&p["message"])]
        })
        .collect();
    table(&["POLICY", "VALID", "MESSAGE"], body)
}

pub fn render_selectors(value: &Value) -> String {
    let body = rows(value)
        .iter()
        .map(|s| {
            let ids: Vec<String> = s["identities"].as_array().into_iter().flatten().map(text).collect();
            vec![text(&s["selector"]), ids.join(",")]
        })
        .collect();
    table(&["SELECTOR", "IDENTITIES"], body)
}

pub fn render_endpoints(value: &Value) -> String {
    let enabled = |v: &Value| if v.as_bool() == Some(true) { "Enabled" } else { "Disabled" }.to_string();
    let body = rows(value)
        .iter()
        .map(|e| {
            vec![
                text(&e["id"]),
                enabled(&e["ingress_enforcing"]),
                enabled(&e["egress_enforcing"]),
                text(&e["identity"]),
                text(&e["pod"]),
                text(&e["state"]),
            ]
        })
        .collect();
    // Cilium's `cilium endpoint list` column names.
    table(&["ENDPOINT", "POLICY (ingress)", "POLICY (egress)", "IDENTITY", "POD", "STATUS"], body)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn endpoint_list_joins_the_endpoint_manager_with_enforcement_like_cilium() {
        // `/v1/endpoint` rows (the endpoint manager's) and `/v1/policy/endpoints` rows; endpoint 12
        // has no policy row yet (not enforcing), the policy row of 99 has no endpoint any more.
        let endpoints = json!([
            {"id": 786, "containerID": "c1", "namespace": "default", "pod": "deathstar", "identity": 27476, "state": "ready"},
            {"id": 12, "containerID": "c2", "namespace": "", "pod": "", "identity": 5, "state": "ready"},
        ]);
        let enforcement = json!([
            {"id": 786, "identity": 27476, "pod": "default/deathstar", "ingress_enforcing": true, "egress_enforcing": false},
            {"id": 99, "identity": 1001, "pod": "default/gone", "ingress_enforcing": true, "egress_enforcing": true},
        ]);
        assert_eq!(
            render_endpoints(&join_enforcement(&endpoints, &enforcement)),
            "ENDPOINT  POLICY (ingress)  POLICY (egress)  IDENTITY  POD                STATUS\n\
             786       Enabled           Disabled         27476     default/deathstar  ready\n\
             12        Disabled          Disabled         5         c2                 ready\n"
        );
        assert_eq!(join_enforcement(&json!([]), &enforcement), json!([]));
    }

    #[test]
    fn policies_and_selectors_render_one_row_each() {
        let p = json!([{"policy": "CiliumNetworkPolicy default/bad", "valid": false, "message": "spec: invalid port"}]);
        assert_eq!(
            render_policies(&p),
            "POLICY                           VALID  MESSAGE\nCiliumNetworkPolicy default/bad  False  spec: invalid port\n"
        );
        let s = json!([{"selector": "{k8s:app In [client]}", "identities": [1001, 1002]}]);
        assert_eq!(render_selectors(&s), "SELECTOR               IDENTITIES\n{k8s:app In [client]}  1001,1002\n");
        assert_eq!(render_selectors(&json!([])), "SELECTOR  IDENTITIES\n");
    }
}
