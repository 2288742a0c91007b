//! `beeline lab demo`: the datapath end to end on this machine, printed step by step.
//!
//! node namespace ── lxc0 ═══ veth ═══ eth0 ── pod namespace
//!                   └ from_container (TCX ingress), maps + link pinned under the node's bpffs dir
//!
//! Exits non-zero if anything a user would check is wrong (program not attached, counters not
//! moving, packets lost across the agent restart).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use super::{
    agent::{AgentLayout, AgentProcess},
    topology::Topology,
    traffic,
};
use crate::datapath::{
    attach::{ifindex, tcx_programs},
    loader::read_pinned_endpoint_stats,
    netns::NetNs,
    uninstall, Direction,
};

type DemoResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// The bpffs mount under which each lab node gets its own pin directory.
    #[arg(long, default_value = "/sys/fs/bpf")]
    pub bpffs: PathBuf,
    /// The pod subnet's first three octets (.1 is the node side, .2 the pod).
    #[arg(long, default_value = "10.244.250")]
    pub subnet: String,
    /// Echo requests per traffic step.
    #[arg(long, default_value_t = 5)]
    pub pings: u32,
}

pub fn run(args: DemoArgs) -> DemoResult<()> {
    super::require_root("`beeline lab demo`")?;
    let binary = std::env::current_exe()?;
    let mut topo = Topology::new("lab");
    let state = tempdir(topo.prefix())?;
    let layout = AgentLayout { bpf_root: args.bpffs.join(topo.prefix()), state_dir: state.clone() };
    // Everything below is undone by this guard, also on error: agent, pins, namespaces, files.
    let mut cleanup = Cleanup { agent: None, layout: layout.clone(), node: None, state };

    step("topology");
    let pair = topo.pod_on_node(&args.subnet)?;
    println!(
        "  namespaces {} (node) and {} (pod); veth {} <-> {}; node {}, pod {}",
        pair.node.name(),
        pair.pod.name(),
        pair.host_if,
        pair.pod_if,
        pair.node_addr,
        pair.pod_addr
    );
    cleanup.node = Some(NetNs::open(pair.node.name())?);

    step("agent start");
    let mut agent = AgentProcess::spawn(&binary, &pair.node, layout.clone(), &[&pair.host_if])?;
    agent.wait_ready(Duration::from_secs(60))?;
    println!(
        "  beeline agent pid {} in {}, log {}",
        agent.pid().unwrap_or(0),
        pair.node.name(),
        layout.log().display()
    );
    cleanup.agent = Some(agent);
    // What the CNI ADD would have told the agent: which pod sits behind the veth.
    pair.register_endpoint(&topo, &layout.pin_dir())?;
    let first = show_attached(&pair.node, &pair.host_if)?;
    println!("  pinned link {}", layout.from_container_link(&pair.host_if).display());
    let link_pin = layout.from_container_link(&pair.host_if);
    bpftool(&pair.node, &["link", "show", "pinned", &link_pin.to_string_lossy()]);
    bpftool(&pair.node, &["prog", "show", "id", &first.to_string()]);

    step("traffic: ping from the pod to the node");
    let host_ifindex = pair.node.run(|| ifindex(&pair.host_if))?.ok_or("host veth vanished")?;
    let before = packets(&layout.pin_dir(), host_ifindex)?;
    let (tx, rx) = traffic::ping(&pair.pod, pair.node_addr, args.pings)?;
    println!("  ping: {tx} transmitted, {rx} received");
    let after = packets(&layout.pin_dir(), host_ifindex)?;
    show_stats(&binary, &pair.node, &layout.pin_dir())?;
    check(rx == tx && tx > 0, format!("ping lost packets ({rx}/{tx})"))?;
    check(
        after >= before + u64::from(tx),
        format!("beeline_ep_stats[{host_ifindex}] moved {before} -> {after}, expected +{tx} or more"),
    )?;
    println!("  counter for ifindex {host_ifindex} ({}) moved {before} -> {after}", pair.host_if);

    step("agent stop: the pinned program keeps counting");
    let status = cleanup.agent.as_mut().expect("started").stop(Duration::from_secs(10))?;
    cleanup.agent = None;
    println!("  agent exited ({status}); the link and maps stay pinned");
    let before = packets(&layout.pin_dir(), host_ifindex)?;
    let (tx, rx) = traffic::ping(&pair.pod, pair.node_addr, args.pings)?;
    let after = packets(&layout.pin_dir(), host_ifindex)?;
    println!("  ping with no agent running: {tx} transmitted, {rx} received; counter {before} -> {after}");
    check(after >= before + u64::from(tx), "counters stopped while the agent was down")?;

    step("agent restart: atomic program replacement (BPF_LINK_UPDATE) under traffic");
    let server = SocketAddr::new(pair.node_addr, 40000);
    let stream = traffic::UdpStream::start(
        &pair.pod,
        pair.pod_addr,
        &pair.node,
        server,
        Duration::from_millis(5),
        Duration::from_secs(30),
    )?;
    let mut agent = AgentProcess::spawn(&binary, &pair.node, layout.clone(), &[&pair.host_if])?;
    let ready = agent.wait_ready(Duration::from_secs(60));
    cleanup.agent = Some(agent);
    std::thread::sleep(Duration::from_millis(200));
    let report = stream.stop()?;
    ready?;
    let second = show_attached(&pair.node, &pair.host_if)?;
    let kept = packets(&layout.pin_dir(), host_ifindex)?;
    println!(
        "  program {first} -> {second}; UDP stream during the restart: {} sent, {} received, {} lost",
        report.sent,
        report.received,
        report.lost.len()
    );
    println!("  counter after the restart: {kept} (was {after} before it: map contents kept)");
    check(second != first, "the program was not replaced")?;
    check(report.lost.is_empty(), format!("datagrams lost during the restart: {:?}", report.lost))?;
    check(kept >= after + u64::from(report.sent), "map contents were lost across the restart")?;

    step("teardown");
    drop(cleanup);
    topo.teardown()?;
    println!("  agent stopped, links unpinned, maps removed, namespaces deleted");
    println!("\nlab demo: all checks passed");
    Ok(())
}

fn step(title: &str) {
    println!("\n== {title}");
}

fn check(ok: bool, failure: impl Into<String>) -> DemoResult<()> {
    if ok {
        Ok(())
    } else {
        Err(failure.into().into())
    }
}

fn packets(pin_dir: &Path, ifindex: u32) -> DemoResult<u64> {
    Ok(read_pinned_endpoint_stats(pin_dir)?.get(&ifindex).map_or(0, |s| s.packets))
}

/// Prints the TCX programs on `ifname` and returns the id of ours.
fn show_attached(node: &NetNs, ifname: &str) -> DemoResult<u32> {
    let programs = node.run(|| tcx_programs(ifname, Direction::Ingress))??;
    for p in &programs {
        println!("  tcx/ingress {ifname}: prog id {} name {}", p.id, p.name);
    }
    programs
        .iter()
        .find(|p| p.name == crate::datapath::loader::programs::FROM_CONTAINER)
        .map(|p| p.id)
        .ok_or_else(|| format!("from_container is not attached to {ifname}").into())
}

/// What `bpftool` shows, when it is installed (optional: our own TCX query above is the check).
fn bpftool(node: &NetNs, args: &[&str]) {
    let Ok(mut cmd) = node.command("bpftool") else { return };
    match cmd.args(args).output() {
        Ok(out) if out.status.success() => {
            println!("  $ bpftool {}", args.join(" "));
            for line in String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.trim().is_empty()) {
                println!("    {line}");
            }
        }
        _ => println!("  (bpftool not available; skipping `bpftool {}`)", args.join(" ")),
    }
}

/// Runs the real `beeline bpf ep-stats list` inside the node namespace (so ifindexes resolve to
/// the node's interface names) and prints its output.
fn show_stats(binary: &Path, node: &NetNs, pin_dir: &Path) -> DemoResult<()> {
    let pin_dir = pin_dir.to_string_lossy();
    println!("  $ beeline bpf ep-stats list --pin-dir {pin_dir}   (inside the node namespace)");
    let out = node.command(binary)?.args(["bpf", "ep-stats", "list", "--pin-dir", &pin_dir]).output()?;
    check(out.status.success(), format!("ep-stats list failed: {}", String::from_utf8_lossy(&out.stderr)))?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("    {line}");
    }
    Ok(())
}

fn tempdir(prefix: &str) -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(prefix);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

struct Cleanup {
    agent: Option<AgentProcess>,
    layout: AgentLayout,
    node: Option<NetNs>,
    state: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            let _ = agent.stop(Duration::from_secs(10));
        }
        // Unpin inside the node namespace, where the clsact fallback (if used) lives.
        let pin_dir = self.layout.pin_dir();
        let result = match &self.node {
            Some(node) => {
                node.run(|| uninstall(&pin_dir)).map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string()))
            }
            None => uninstall(&pin_dir).map_err(|e| e.to_string()),
        };
        if let Err(e) = result {
            eprintln!("lab demo cleanup: {e}");
        }
        let _ = std::fs::remove_dir(&self.layout.bpf_root);
        let _ = std::fs::remove_dir_all(&self.state);
    }
}
