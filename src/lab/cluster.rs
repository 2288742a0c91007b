//! `beeline lab up | down | status`: a long-running lab of N node namespaces.
//!
//! `up` computes the [`LabPlan`], writes it to `<state>/lab.json` before creating anything,
//! builds the namespaces (nodes on an underlay bridge in its own namespace), then starts the
//! supervisor (`lab supervise`, detached: own session, output to its log) which serves the API and
//! runs the operator and agents. `up` returns once every process reports ready (or tears down
//! what it made and fails). `down` finds everything from the plan — or, if `up` crashed before
//! writing it, from the names derived from the state directory — and removes it.

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use super::{
    plan::{LabPlan, LabRequest, NODE_UPLINK},
    probe, supervisor,
    topology::Topology,
    values,
};
use crate::datapath::netns::{NetNs, NETNS_RUN_DIR};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub const DEFAULT_STATE_DIR: &str = "/run/beeline-lab";
const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

#[derive(Debug, Clone, clap::Args)]
pub struct StateArgs {
    /// Where the lab keeps its plan, kubeconfig, logs, pid files and per-node state. Several
    /// labs can run at once with different state directories.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

impl StateArgs {
    /// Absolute, so names derived from it do not depend on the working directory.
    pub fn absolute(&self) -> std::io::Result<PathBuf> {
        std::path::absolute(&self.state_dir)
    }
}

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// Number of nodes: one control-plane node and N-1 workers.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// A values file shaped like Cilium's Helm values (see examples/lab/).
    #[arg(long)]
    pub values: Option<PathBuf>,
    /// Cluster name; nodes are `<name>-control-plane`, `<name>-worker`, `<name>-worker2`, ...
    #[arg(long, default_value = "kind")]
    pub name: String,
    /// Seconds to wait for every process to be ready.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Keep what was made when `up` fails (for debugging); `lab down` removes it later.
    #[arg(long)]
    pub retain: bool,
}

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// The node whose agent to stop or start (`kind-worker`, ...).
    pub node: String,
}

/// `lab stop-agent` (`stop`) / `lab start-agent`: holds a node's agent stopped, as in the seeds'
/// resilience demo (its programs and maps stay pinned, so the node keeps forwarding), or releases
/// it; waits (bounded) until the agent is gone, or back and ready.
pub fn hold_agent(args: AgentArgs, stop: bool) -> Result<(), BoxError> {
    super::require_root("`beeline lab stop-agent/start-agent`")?;
    let plan = read_plan(&args.state.absolute()?)?;
    let marker = plan.state_dir.to_string_lossy().to_string();
    let name = format!("agent-{}", args.node);
    let process = plan.processes.iter().find(|p| p.name == name).ok_or_else(|| {
        let nodes: Vec<&str> = plan.nodes.iter().map(|n| n.name.as_str()).collect();
        format!("no node {:?} in lab {} (nodes: {})", args.node, plan.name, nodes.join(", "))
    })?;
    supervisor_running(&plan).ok_or("the lab supervisor is not running (lab status)")?;
    let hold = plan.hold_file(&name);
    let before = probe::read_pid(&plan.pid_file(&name)).filter(|pid| probe::is_ours(*pid, &marker));
    if stop {
        std::fs::write(&hold, "held by `beeline lab stop-agent`\n")?;
        if let Some(pid) = before {
            if !probe::wait_gone(pid, &marker, Duration::from_secs(20)) {
                return Err(format!("{name} (pid {pid}) still running after 20s").into());
            }
        }
        println!("{name} stopped (held until `beeline lab start-agent {}`)", args.node);
        return Ok(());
    }
    match std::fs::remove_file(&hold) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: {e}", hold.display()).into()),
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pid = probe::read_pid(&plan.pid_file(&name)).filter(|pid| probe::is_ours(*pid, &marker));
        if pid.is_some() && matches!(probe::http_get_in(&process.netns, process.health, "/readyz"), Ok((200, _))) {
            println!("{name} running and ready (pid {})", pid.unwrap_or_default());
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("{name} not ready 60s after its release; see {}", plan.log(&name).display()).into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn read_plan(state_dir: &Path) -> Result<LabPlan, BoxError> {
    let path = LabPlan::plan_file(state_dir);
    let text =
        std::fs::read(&path).map_err(|e| format!("no lab in {} ({}: {e})", state_dir.display(), path.display()))?;
    Ok(serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?)
}

fn supervisor_running(plan: &LabPlan) -> Option<u32> {
    let pid = probe::read_pid(&plan.pid_file("supervisor"))?;
    probe::is_ours(pid, &plan.state_dir.to_string_lossy()).then_some(pid)
}

pub fn up(args: UpArgs) -> Result<(), BoxError> {
    super::require_root("`beeline lab up`")?;
    let state_dir = args.state.absolute()?;
    let lab_values = match &args.values {
        Some(path) => values::load(path)?,
        None => values::LabValues::default(),
    };
    lab_values.validate(&Default::default())?;
    for path in &lab_values.ignored {
        println!("note: `{path}` in the values file has no effect in the lab");
    }
    let request = LabRequest {
        name: args.name.clone(),
        nodes: args.nodes,
        state_dir: state_dir.clone(),
        bpffs: PathBuf::from(DEFAULT_BPFFS),
        values: lab_values,
    };
    let plan = LabPlan::new(&request)?;
    if let Ok(existing) = read_plan(&state_dir) {
        if let Some(pid) = supervisor_running(&existing) {
            return Err(format!(
                "a lab is already running from {} (supervisor pid {pid}); `beeline lab down --state-dir {}` first",
                state_dir.display(),
                state_dir.display()
            )
            .into());
        }
    }
    let foreign = std::fs::read_dir(&state_dir).map(|mut d| d.next().is_some()).unwrap_or(false)
        && !LabPlan::plan_file(&state_dir).exists();
    if foreign {
        // `down` removes the whole state directory; never adopt one holding someone else's files.
        return Err(format!(
            "{} exists and is not a lab's state directory; choose an empty or new one",
            state_dir.display()
        )
        .into());
    }
    // Leftovers of a crashed run (state, namespaces, pins, processes) go first.
    let leftovers = down_at(&state_dir)?;
    if !leftovers.is_empty() {
        println!("cleaned up a previous lab in {} that was not shut down:", state_dir.display());
        for line in &leftovers {
            println!("  {line}");
        }
    }

    let started = Instant::now();
    let result = build_and_start(&plan, Duration::from_secs(args.timeout));
    if let Err(e) = result {
        eprintln!("lab up failed: {e}");
        print_log_tails(&plan);
        if args.retain {
            eprintln!("--retain: left as it is; `beeline lab down --state-dir {}` removes it", state_dir.display());
        } else {
            down_at(&state_dir)?;
        }
        return Err(e);
    }
    println!("lab {} is up in {:.1?} (state {})", plan.name, started.elapsed(), state_dir.display());
    print!("{}", status_report(&plan).text);
    println!(
        "\n  export KUBECONFIG={}\n  kubectl get nodes -o wide\n  beeline lab status --state-dir {sd}\n  beeline lab down --state-dir {sd}",
        plan.kubeconfig().display(),
        sd = state_dir.display()
    );
    Ok(())
}

fn build_and_start(plan: &LabPlan, timeout: Duration) -> Result<(), BoxError> {
    std::fs::create_dir_all(&plan.state_dir)?;
    // First, so that `down` finds everything below even if this process dies halfway.
    let plan_file = LabPlan::plan_file(&plan.state_dir);
    std::fs::write(&plan_file, serde_json::to_vec_pretty(plan)?)?;
    std::fs::create_dir_all(plan.logs_dir())?;
    std::fs::create_dir_all(plan.pids_dir())?;
    std::fs::write(plan.config_file(), plan.config_yaml())?;

    let mut topo = Topology::with_prefix(&plan.prefix);
    let result = (|| -> Result<(), BoxError> {
        topo.underlay()?;
        for node in &plan.nodes {
            let role = node.netns.strip_prefix(&format!("{}-", plan.prefix)).expect("netns names carry the prefix");
            let ns = topo.namespace(role)?;
            let cidrs = node.underlay_cidrs();
            let cidrs: Vec<&str> = cidrs.iter().map(String::as_str).collect();
            topo.connect_to_underlay(&ns, NODE_UPLINK, &cidrs)?;
            for dir in [node.cni_conf_dir(), node.cni_bin_dir()] {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::create_dir_all(&node.bpf_root)?;
            std::fs::write(node.kubeconfig(), super::plan::kubeconfig(&plan.name, &plan.api_url_for_nodes()))?;
        }
        let role = plan.outside_netns.strip_prefix(&format!("{}-", plan.prefix)).expect("netns names carry the prefix");
        let outside = topo.namespace(role)?;
        topo.connect_to_underlay(&outside, NODE_UPLINK, &[&super::plan::outside_cidr()])?;
        Ok(())
    })();
    // From here on the namespaces belong to the lab (and to `down`), not to this process.
    topo.keep();
    result?;
    spawn_supervisor(plan)?;
    wait_ready(plan, timeout)
}

/// Starts `lab supervise` detached (own session, output appended to its log) and records its pid.
fn spawn_supervisor(plan: &LabPlan) -> Result<(), BoxError> {
    let exe = std::env::current_exe()?;
    let log = std::fs::File::options().create(true).append(true).open(plan.log("supervisor"))?;
    let mut cmd = std::process::Command::new(&exe);
    cmd.args(["lab", "supervise", "--state-dir"])
        .arg(&plan.state_dir)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid(2) is async-signal-safe; a new session detaches the supervisor from the
    // caller's terminal and process group, so it outlives `up` and ^C in that shell.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    probe::write_pid(&plan.pid_file("supervisor"), child.id())?;
    // Not waited for: it is reparented to init when `up` exits. Dropping `Child` does not kill it.
    drop(child);
    Ok(())
}

/// `beeline lab restart`: stops the supervisor gracefully (it saves the API and stops its
/// processes) and starts a new one on the same namespaces, which restores every API object.
pub fn restart(args: StateArgs) -> Result<(), BoxError> {
    super::require_root("`beeline lab restart`")?;
    let state_dir = args.absolute()?;
    let plan = read_plan(&state_dir)?;
    let marker = state_dir.to_string_lossy().to_string();
    if let Some(pid) = supervisor_running(&plan) {
        let killed = probe::stop(pid, &marker, Duration::from_secs(30));
        println!("stopped the supervisor (pid {pid}{})", if killed { ", killed" } else { "" });
    }
    let _ = std::fs::remove_file(supervisor::ready_marker(&plan));
    spawn_supervisor(&plan)?;
    wait_ready(&plan, Duration::from_secs(60))?;
    println!("lab {} restarted; API objects restored from {}", plan.name, supervisor::snapshot_file(&plan).display());
    Ok(())
}

/// Polls (bounded) until the API answers and every process's `/readyz` is 200.
fn wait_ready(plan: &LabPlan, timeout: Duration) -> Result<(), BoxError> {
    let deadline = Instant::now() + timeout;
    let marker = supervisor::ready_marker(plan);
    loop {
        if supervisor_running(plan).is_none() {
            return Err("the lab supervisor exited".into());
        }
        if marker.exists() {
            let report = status_report(plan);
            if report.healthy {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("not ready after {timeout:?}:\n{}", report.text).into());
            }
        } else if Instant::now() >= deadline {
            return Err(format!("the API server did not start within {timeout:?}").into());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn print_log_tails(plan: &LabPlan) {
    let mut names = vec!["supervisor".to_string()];
    names.extend(plan.processes.iter().map(|p| p.name.clone()));
    for name in names {
        let path = plan.log(&name);
        let tail = probe::tail(&path, 15);
        if !tail.is_empty() {
            eprintln!("--- {} (last lines)\n{tail}", path.display());
        }
    }
}

/// What a health check of the lab found.
pub struct StatusReport {
    pub healthy: bool,
    pub text: String,
}

/// Nodes, processes, API reachability and readiness, as a user would check them.
pub fn status_report(plan: &LabPlan) -> StatusReport {
    use std::fmt::Write;
    let marker = plan.state_dir.to_string_lossy();
    let mut healthy = true;
    let mut out = String::new();
    let supervisor = supervisor_running(plan);
    healthy &= supervisor.is_some();
    let _ = writeln!(
        out,
        "supervisor: {}  (log {})",
        supervisor.map_or("NOT RUNNING".to_string(), |p| format!("running, pid {p}")),
        plan.log("supervisor").display()
    );
    let api = std::fs::read_to_string(supervisor::ready_marker(plan)).ok().and_then(|a| a.trim().parse().ok());
    let nodes_json = api.and_then(|addr| probe::http_get(addr, "/api/v1/nodes").ok());
    match (&api, &nodes_json) {
        (Some(addr), Some((200, _))) => {
            let _ = writeln!(
                out,
                "API server: reachable at http://{addr} (kubeconfig {}), nodes use {}",
                plan.kubeconfig().display(),
                plan.api_url_for_nodes()
            );
        }
        (Some(addr), other) => {
            healthy = false;
            let _ = writeln!(out, "API server: NOT REACHABLE at http://{addr}: {other:?}");
        }
        (None, _) => {
            healthy = false;
            let _ = writeln!(out, "API server: not started");
        }
    }
    let registered: Vec<serde_json::Value> = nodes_json
        .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
        .and_then(|v| v["items"].as_array().cloned())
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "{:<24} {:<32} {:<16} {:<11} {:<9} POD-CIDRS (Node.spec)",
        "NODE", "NETNS", "INTERNAL-IP", "REGISTERED", "CNI-CONF"
    );
    for node in &plan.nodes {
        let ns_ok = Path::new(NETNS_RUN_DIR).join(&node.netns).exists();
        healthy &= ns_ok;
        let object = registered.iter().find(|n| n["metadata"]["name"] == node.name.as_str());
        healthy &= object.is_some();
        let cidrs = object
            .and_then(|o| o["spec"]["podCIDRs"].as_array())
            .map(|a| a.iter().filter_map(|c| c.as_str()).collect::<Vec<_>>().join(","))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "-".into());
        // The agent writes its conflist once the node can allocate pod addresses (informational:
        // IPAM modes that wait for an external party legitimately have none yet).
        let conflist = conflist_present(&node.cni_conf_dir());
        let _ = writeln!(
            out,
            "{:<24} {:<32} {:<16} {:<11} {:<9} {cidrs}",
            node.name,
            if ns_ok { node.netns.clone() } else { format!("{} (MISSING)", node.netns) },
            node.ipv4,
            if object.is_some() { "yes" } else { "NO" },
            if conflist { "written" } else { "not yet" },
        );
    }
    if let Some(addr) = api {
        // CiliumNodes appear once the operator's IPAM (or the agents) create them.
        if let Ok((200, body)) = probe::http_get(addr, "/apis/cilium.io/v2/ciliumnodes") {
            let items = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["items"].as_array().cloned())
                .unwrap_or_default();
            let _ = writeln!(out, "CiliumNodes:{}", if items.is_empty() { " none yet" } else { "" });
            for item in items {
                let _ = writeln!(
                    out,
                    "  {:<24} podCIDRs {}",
                    item["metadata"]["name"].as_str().unwrap_or("?"),
                    item["spec"]["ipam"]["podCIDRs"]
                );
            }
        }
    }
    let _ = writeln!(out, "{:<28} {:<24} {:<8} {:<9} {:<10} LOG", "PROCESS", "NODE", "PID", "RESTARTS", "READY");
    for p in &plan.processes {
        let pid = probe::read_pid(&plan.pid_file(&p.name)).filter(|pid| probe::is_ours(*pid, &marker));
        let restarts = std::fs::read_to_string(plan.pids_dir().join(format!("{}.restarts", p.name)))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "-".into());
        let ready = match pid {
            None => "NOT RUNNING".to_string(),
            Some(_) => match probe::http_get_in(&p.netns, p.health, "/readyz?verbose") {
                Ok((200, _)) => "ready".to_string(),
                Ok((code, body)) => format!(
                    "NOT READY ({code}: {})",
                    body.lines().filter(|l| l.starts_with("[-]")).collect::<Vec<_>>().join("; ")
                ),
                Err(e) => format!("NOT READY ({e})"),
            },
        };
        healthy &= ready == "ready";
        let _ = writeln!(
            out,
            "{:<28} {:<24} {:<8} {:<9} {:<10} {}",
            p.name,
            p.node,
            pid.map_or("-".into(), |p| p.to_string()),
            restarts,
            ready,
            plan.log(&p.name).display()
        );
    }
    StatusReport { healthy, text: out }
}

pub fn status(args: StateArgs) -> Result<(), BoxError> {
    super::require_root("`beeline lab status`")?;
    let state_dir = args.absolute()?;
    let plan = read_plan(&state_dir)?;
    println!("lab {} (state {}, namespaces {}-*)", plan.name, state_dir.display(), plan.prefix);
    let report = status_report(&plan);
    print!("{}", report.text);
    if !report.healthy {
        return Err("the lab is not healthy (see above)".into());
    }
    Ok(())
}

pub fn down(args: StateArgs) -> Result<(), BoxError> {
    super::require_root("`beeline lab down`")?;
    let state_dir = args.absolute()?;
    let removed = down_at(&state_dir)?;
    if removed.is_empty() {
        println!("nothing to remove for {}", state_dir.display());
    } else {
        for line in removed {
            println!("{line}");
        }
    }
    Ok(())
}

/// Removes every process, namespace, pin and state file of the lab in `state_dir`; what was
/// removed, one line each. Idempotent. Works from the plan when there is one, otherwise from the
/// names derived from the state directory (a crash before the plan was written).
pub fn down_at(state_dir: &Path) -> Result<Vec<String>, BoxError> {
    let mut removed = Vec::new();
    let marker = state_dir.to_string_lossy().to_string();
    let plan = read_plan(state_dir).ok();
    let id = plan.as_ref().map_or_else(|| super::plan::lab_id(state_dir), |p| p.id.clone());
    let prefix = format!("bl-{id}");
    let pin_root =
        plan.as_ref().map_or_else(|| Path::new(DEFAULT_BPFFS).join("beeline-lab").join(&id), |p| p.pin_root.clone());

    // The supervisor stops its children gracefully; then whatever is left is killed.
    let pids_dir = state_dir.join("pids");
    if let Some(pid) = probe::read_pid(&pids_dir.join("supervisor.pid")) {
        if probe::is_ours(pid, &marker) {
            let killed = probe::stop(pid, &marker, Duration::from_secs(20));
            removed.push(format!("stopped the supervisor (pid {pid}{})", if killed { ", killed" } else { "" }));
        }
    }
    if let Ok(entries) = std::fs::read_dir(&pids_dir) {
        for entry in entries.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "pid")) {
            if let Some(pid) = probe::read_pid(&entry.path()) {
                if probe::is_ours(pid, &marker) {
                    probe::stop(pid, &marker, Duration::from_secs(5));
                    removed.push(format!("stopped {} (pid {pid})", entry.file_name().to_string_lossy()));
                }
            }
        }
    }
    let namespaces: Vec<String> = std::fs::read_dir(NETNS_RUN_DIR)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with(&format!("{prefix}-")))
                .collect()
        })
        .unwrap_or_default();
    // Anything still inside the lab's namespaces (orphans of a killed supervisor) is the lab's.
    for ns in &namespaces {
        for pid in probe::netns_pids(ns) {
            probe::signal(pid, libc::SIGKILL);
            removed.push(format!("killed pid {pid} left in {ns}"));
        }
    }
    // Pins: detach and unpin inside each node namespace (a clsact fallback lives there), then the rest.
    if let Ok(entries) = std::fs::read_dir(&pin_root) {
        for entry in entries.flatten() {
            let pin_dir = entry.path().join("beeline");
            if !pin_dir.exists() {
                continue;
            }
            let ns_name = format!("{prefix}-{}", entry.file_name().to_string_lossy());
            let result = match NetNs::open(&ns_name) {
                Ok(ns) => ns.run(|| crate::datapath::uninstall(&pin_dir)).map_err(|e| e.to_string())?.map(|_| ()),
                Err(_) => crate::datapath::uninstall(&pin_dir).map(|_| ()),
            };
            if let Err(e) = result {
                eprintln!("unpinning {}: {e}", pin_dir.display());
            }
        }
    }
    if pin_root.exists() {
        std::fs::remove_dir_all(&pin_root).map_err(|e| format!("removing {}: {e}", pin_root.display()))?;
        removed.push(format!("removed pins {}", pin_root.display()));
        if let Some(parent) = pin_root.parent() {
            let _ = std::fs::remove_dir(parent); // only when no other lab uses it
        }
    }
    for ns in &namespaces {
        wait_empty(ns);
        NetNs::delete(ns)?;
        removed.push(format!("deleted namespace {ns}"));
    }
    if LabPlan::plan_file(state_dir).exists() {
        std::fs::remove_dir_all(state_dir).map_err(|e| format!("removing {}: {e}", state_dir.display()))?;
        removed.push(format!("removed state {}", state_dir.display()));
    }
    Ok(removed)
}

/// Waits (bounded) for killed processes to leave a namespace before deleting it.
fn wait_empty(ns: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !probe::netns_pids(ns).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether a CNI network configuration exists in `dir` (what a container runtime looks for).
pub fn conflist_present(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().any(|e| e.path().extension().is_some_and(|x| x == "conflist" || x == "conf")))
        .unwrap_or(false)
}
