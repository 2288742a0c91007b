//! Layer 4: the real `beeline agent` restarting on a live veth. Traffic keeps flowing on the
//! pinned program and maps while no agent runs, the next agent swaps its program in atomically
//! (same link, new program, no datagram lost, counters kept), and `beeline bpf uninstall`
//! removes every link and pin.

mod integration;

use std::{net::SocketAddr, path::Path, time::Duration};

use aya::programs::links::{FdLink, PinnedLink};
use beeline::datapath::attach::tcx_programs;
use integration::{
    ifindex_in, pinned_packets, require_root, state_dir, traffic, AgentLayout, AgentProcess, BpffsDir, Direction,
    PodOnNode, Topology,
};

const BEELINE: &str = env!("CARGO_BIN_EXE_beeline");
const READY: Duration = Duration::from_secs(30);
const STOP: Duration = Duration::from_secs(10);

/// (link id, program id) of the pinned link, as the kernel reports them.
fn pinned_link(pin: &Path) -> (u32, u32) {
    let link = FdLink::from(PinnedLink::from_pin(pin).unwrap_or_else(|e| panic!("{}: {e}", pin.display())));
    let info = link.info().expect("link info");
    (info.id(), info.program_id())
}

fn attached_ids(pair: &PodOnNode) -> Vec<u32> {
    let programs = pair.node.run(|| tcx_programs(&pair.host_if, Direction::Ingress)).unwrap().unwrap();
    programs.iter().map(|p| p.id).collect()
}

fn udp(pair: &PodOnNode, port: u16, count: u32) {
    let server = SocketAddr::new(pair.node_addr, port);
    let got = traffic::udp_exchange(&pair.pod, pair.pod_addr, &pair.node, server, count, 64).unwrap();
    assert_eq!(got, count, "UDP datagrams lost");
}

#[test]
fn agent_restart_keeps_traffic_and_maps_then_uninstall_removes_everything() {
    require_root();
    let mut topo = Topology::new("restart");
    let pair = topo.pod_on_node("10.210.0").unwrap();
    let bpffs = BpffsDir::new("restart");
    let state = state_dir();
    let layout = AgentLayout { bpf_root: bpffs.path().to_path_buf(), state_dir: state.path().to_path_buf() };
    let pin_dir = layout.pin_dir();
    let link_pin = layout.from_container_link(&pair.host_if);
    let host_ifindex = ifindex_in(&pair.node, &pair.host_if);
    let binary = Path::new(BEELINE);

    // 1. First agent: creates and pins the link; traffic moves the counter.
    let mut agent = AgentProcess::spawn(binary, &pair.node, layout.clone(), &[&pair.host_if]).unwrap();
    agent.wait_ready(READY).unwrap();
    integration::register_pod_endpoint(&topo, &pin_dir, &pair);
    let (link_id, first_program) = pinned_link(&link_pin);
    assert_eq!(attached_ids(&pair), vec![first_program]);
    udp(&pair, 42000, 10);
    let with_agent = pinned_packets(&pin_dir, host_ifindex);
    assert!(with_agent >= 10, "counter did not move with the agent running: {with_agent}");

    // 2. The agent exits cleanly; the link, program and map stay and keep counting.
    let status = agent.stop(STOP).unwrap();
    assert!(status.success(), "agent exit: {status}\n{}", agent.log_text());
    assert!(link_pin.exists() && pin_dir.join("beeline_ep_stats").exists(), "pins must outlive the agent");
    assert_eq!(attached_ids(&pair), vec![first_program], "program detached when the agent exited");
    udp(&pair, 42001, 10);
    let without_agent = pinned_packets(&pin_dir, host_ifindex);
    assert!(without_agent >= with_agent + 10, "no counting without the agent: {with_agent} -> {without_agent}");

    // 3. A second agent starts while a UDP stream runs: same link, new program, nothing lost.
    let stream = traffic::UdpStream::start(
        &pair.pod,
        pair.pod_addr,
        &pair.node,
        SocketAddr::new(pair.node_addr, 42002),
        Duration::from_millis(5),
        Duration::from_secs(60),
    )
    .unwrap();
    let mut agent = AgentProcess::spawn(binary, &pair.node, layout.clone(), &[&pair.host_if]).unwrap();
    agent.wait_ready(READY).unwrap();
    std::thread::sleep(Duration::from_millis(200)); // some traffic on the new program too
    let report = stream.stop().unwrap();
    assert!(report.sent > 0);
    assert!(report.lost.is_empty(), "datagrams lost across the restart: {:?} of {}", report.lost, report.sent);
    let (same_link, second_program) = pinned_link(&link_pin);
    assert_eq!(same_link, link_id, "the link must be updated, not recreated");
    assert_ne!(second_program, first_program, "the new agent's program must replace the old one");
    assert_eq!(attached_ids(&pair), vec![second_program], "exactly one program on the interface");
    let after_restart = pinned_packets(&pin_dir, host_ifindex);
    assert!(
        after_restart >= without_agent + u64::from(report.sent),
        "map contents lost or packets uncounted: {without_agent} + {} sent -> {after_restart}",
        report.sent
    );
    assert!(agent.log_text().contains("Replaced"), "agent log should record the replacement:\n{}", agent.log_text());

    // 4. Stop it and uninstall with the CLI: links detached, pins gone, traffic still flows.
    let status = agent.stop(STOP).unwrap();
    assert!(status.success(), "agent exit: {status}");
    let out =
        pair.node.command(binary).unwrap().args(["bpf", "uninstall", "--pin-dir"]).arg(&pin_dir).output().unwrap();
    assert!(out.status.success(), "uninstall failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("unpinned link"));
    assert!(!pin_dir.exists(), "pin directory left behind");
    assert_eq!(attached_ids(&pair), Vec::<u32>::new(), "a program is still attached after uninstall");
    udp(&pair, 42003, 5);
}

#[test]
fn ep_stats_list_reads_the_pinned_map_without_an_agent() {
    require_root();
    let mut topo = Topology::new("epstats");
    let pair = topo.pod_on_node("10.211.0").unwrap();
    let bpffs = BpffsDir::new("epstats");
    let state = state_dir();
    let layout = AgentLayout { bpf_root: bpffs.path().to_path_buf(), state_dir: state.path().to_path_buf() };
    let mut agent = AgentProcess::spawn(Path::new(BEELINE), &pair.node, layout.clone(), &[&pair.host_if]).unwrap();
    agent.wait_ready(READY).unwrap();
    integration::register_pod_endpoint(&topo, &bpffs.pin_dir(), &pair);
    agent.stop(STOP).unwrap();
    udp(&pair, 42010, 7);

    let out = pair
        .node
        .command(BEELINE)
        .unwrap()
        .args(["bpf", "ep-stats", "list", "-o", "json", "--pin-dir"])
        .arg(bpffs.pin_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().expect("a JSON array");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["ifname"], pair.host_if.as_str(), "ifindex resolved inside the node namespace");
    assert_eq!(rows[0]["ifindex"], ifindex_in(&pair.node, &pair.host_if));
    assert!(rows[0]["packets"].as_u64().unwrap() >= 7, "{rows:?}");
}
