//! `beeline observe`: flows from the agent's ring, filtered like `hubble observe`. With
//! `--state-dir` (the lab), every node's agent is asked and the flows are merged by time — the
//! cluster-wide view Hubble Relay gives.

use std::path::PathBuf;

use super::{agent_client, Output};
use crate::observe::{filter::FlowFilter, flow::Flow, format};

#[derive(Debug, clap::Args)]
pub struct ObserveArgs {
    /// The agent's API socket.
    #[arg(long, env = "BEELINE_AGENT_SOCKET", default_value = "/run/beeline/beeline.sock")]
    pub socket: PathBuf,
    /// A lab's state directory: observe every node of the lab (merged by time).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// `[namespace/]pod-name` prefix of the source.
    #[arg(long)]
    pub from_pod: Option<String>,
    #[arg(long)]
    pub to_pod: Option<String>,
    /// Source or destination pod.
    #[arg(long)]
    pub pod: Option<String>,
    #[arg(long)]
    pub namespace: Option<String>,
    /// `key=value` label of the source or destination (repeatable, all must match).
    #[arg(long)]
    pub label: Vec<String>,
    /// FORWARDED or DROPPED.
    #[arg(long)]
    pub verdict: Option<String>,
    /// Event type: trace, drop, policy-verdict (repeatable).
    #[arg(short = 't', long = "type")]
    pub types: Vec<String>,
    #[arg(long)]
    pub protocol: Option<String>,
    #[arg(long)]
    pub port: Option<u16>,
    /// The newest N matching flows (Hubble's default is 20).
    #[arg(long, default_value_t = 20)]
    pub last: usize,
    /// Keep printing new flows as they arrive.
    #[arg(short, long)]
    pub follow: bool,
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
}

impl ObserveArgs {
    pub fn filter(&self) -> FlowFilter {
        FlowFilter {
            from_pod: self.from_pod.clone(),
            to_pod: self.to_pod.clone(),
            pod: self.pod.clone(),
            namespace: self.namespace.clone(),
            labels: self.label.clone(),
            verdict: self.verdict.clone(),
            types: self.types.clone(),
            protocol: self.protocol.clone(),
            port: self.port,
        }
    }

    fn sockets(&self) -> Result<Vec<PathBuf>, Box<dyn std::error::Error + Send + Sync>> {
        match &self.state_dir {
            None => Ok(vec![self.socket.clone()]),
            Some(dir) => Ok(crate::lab::cluster::read_plan(dir)?.nodes.iter().map(|n| n.agent_socket()).collect()),
        }
    }
}

/// The newest `last` flows matching `filter` from all `batches`, merged oldest first.
pub fn select(batches: Vec<Vec<Flow>>, filter: &FlowFilter, last: usize) -> Vec<Flow> {
    let mut all: Vec<Flow> = batches.into_iter().flatten().filter(|f| filter.matches(f)).collect();
    all.sort_by_key(|f| f.time_ns);
    let skip = all.len().saturating_sub(last);
    all.split_off(skip)
}

fn parse_lines(text: &str) -> Result<Vec<Flow>, serde_json::Error> {
    text.lines().filter(|l| !l.trim().is_empty()).map(serde_json::from_str).collect()
}

/// Every flow in the ring of the agent behind `socket`.
pub async fn fetch(socket: &std::path::Path) -> Result<Vec<Flow>, Box<dyn std::error::Error + Send + Sync>> {
    let text = agent_client::get_text(socket, "/v1/flows").await?;
    Ok(parse_lines(&text)?)
}

fn print(flow: &Flow, output: Output) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    match output {
        Output::Text => println!("{}", format::line(flow)),
        Output::Json => println!("{}", serde_json::to_string(flow)?),
        Output::Yaml => print!("---\n{}", serde_saphyr::to_string(flow)?),
    }
    Ok(())
}

pub async fn run(args: ObserveArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let filter = args.filter();
    let sockets = args.sockets()?;
    let mut batches = Vec::new();
    for socket in &sockets {
        batches.push(fetch(socket).await?);
    }
    let newest = batches.iter().flatten().map(|f| f.time_ns).max().unwrap_or(0);
    for flow in select(batches, &filter, args.last) {
        print(&flow, args.output)?;
    }
    if !args.follow {
        return Ok(());
    }
    // Follow every node; flows print as they arrive (already-printed ones are skipped by time).
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(1024);
    for socket in sockets {
        let tx = tx.clone();
        tokio::spawn(async move {
            if let Err(e) = agent_client::stream_lines(&socket, "/v1/flows?last=0&follow=true", tx).await {
                eprintln!("{}: {e}", socket.display());
            }
        });
    }
    drop(tx);
    while let Some(line) = rx.recv().await {
        let flow: Flow = serde_json::from_str(&line)?;
        if flow.time_ns > newest && filter.matches(&flow) {
            print(&flow, args.output)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(time_ns: i128, verdict: &str) -> Flow {
        Flow { time_ns, verdict: verdict.into(), ..Default::default() }
    }

    #[test]
    fn nodes_are_merged_by_time_filtered_then_cut_to_the_last_n() {
        let node_a = vec![flow(1, "FORWARDED"), flow(4, "DROPPED"), flow(6, "FORWARDED")];
        let node_b = vec![flow(2, "DROPPED"), flow(5, "FORWARDED"), flow(3, "FORWARDED")];
        let times = |v: Vec<Flow>| v.into_iter().map(|f| f.time_ns).collect::<Vec<_>>();
        let all = FlowFilter::default();
        assert_eq!(times(select(vec![node_a.clone(), node_b.clone()], &all, 100)), [1, 2, 3, 4, 5, 6]);
        assert_eq!(times(select(vec![node_a.clone(), node_b.clone()], &all, 2)), [5, 6]);
        let dropped = FlowFilter { verdict: Some("DROPPED".into()), ..Default::default() };
        // The last N applies to matching flows, as Hubble's --last does.
        assert_eq!(times(select(vec![node_a, node_b], &dropped, 1)), [4]);
    }

    #[test]
    fn ndjson_lines_parse_and_blank_lines_are_skipped() {
        let text = format!(
            "{}\n\n{}\n",
            serde_json::to_string(&flow(1, "X")).unwrap(),
            serde_json::to_string(&flow(2, "Y")).unwrap()
        );
        let flows = parse_lines(&text).unwrap();
        assert_eq!(flows.iter().map(|f| f.verdict.as_str()).collect::<Vec<_>>(), ["X", "Y"]);
        assert!(parse_lines("{not json").is_err());
    }
}
