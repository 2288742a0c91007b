//! `beeline lab supervise`: the one long-lived process of a lab, started detached by `lab up`.
//!
//! It holds the in-memory Kubernetes API (listening on 127.0.0.1 for kubectl and on the
//! control-plane node's underlay address for the nodes — the second socket is bound from inside
//! that namespace and stays there), registers the Node objects, and runs the operator and one
//! agent per node as child processes inside their node namespaces, restarting any that exits
//! (as the kubelet would) with a growing delay. It also runs the lab's control loops against its
//! API: the controllers and scheduler ([`super::controllers`]) and one kubelet per node
//! ([`super::kubelet`]), and the "outside" server on the underlay. The API's objects are saved to
//! `<state>/api-snapshot.json` every few seconds and on exit, and loaded at start, so a restarted
//! supervisor (`lab restart`) keeps every object. SIGTERM (`lab down`) stops the kubelets (which
//! remove their pod sandboxes while the agents still answer CNI DEL), saves the API, stops the
//! children with SIGTERM, then exits.

use std::{
    fs::File,
    net::{SocketAddr, TcpListener},
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PostParams};

use tokio_util::sync::CancellationToken;

use super::{plan::LabPlan, plan::ProcessPlan, probe};
use crate::datapath::netns::NetNs;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The file `up` waits for: written last, once everything is started.
pub fn ready_marker(plan: &LabPlan) -> std::path::PathBuf {
    plan.state_dir.join("api-address")
}

/// Where the API's objects are kept across supervisor restarts.
pub fn snapshot_file(plan: &LabPlan) -> std::path::PathBuf {
    plan.state_dir.join("api-snapshot.json")
}

/// How often the API is saved while the lab runs.
const SNAPSHOT_PERIOD: Duration = Duration::from_secs(5);

/// The lab's IPv4 and IPv6 service ranges (kubeadm's IPv4 default and a ULA /112).
pub const SERVICE_CIDR_V4: &str = "10.96.0.0/16";
pub const SERVICE_CIDR_V6: &str = "fd00:10:96::/112";

/// The API server's `--service-cluster-ip-range` for the lab's families: IPv4, IPv6 or both
/// (IPv4 first, so single-stack Services of a dual-stack lab stay IPv4 as in most clusters).
pub fn service_cidrs(plan: &LabPlan) -> beeline_apiserver::service_ips::ServiceCidrs {
    let (v4, v6) =
        crate::config::Config::from_raw(&plan.config).map(|c| (c.enable_ipv4, c.enable_ipv6)).unwrap_or((true, false));
    let ranges: Vec<&str> = [(v4 || !v6, SERVICE_CIDR_V4), (v6, SERVICE_CIDR_V6)]
        .into_iter()
        .filter_map(|(on, cidr)| on.then_some(cidr))
        .collect();
    beeline_apiserver::service_ips::ServiceCidrs::parse(&ranges.join(",")).expect("the lab's service ranges are valid")
}

/// The in-memory API, restored from `snapshot` when there is one, with the lab's Node objects
/// registered (kept as they are when the snapshot has them).
pub async fn start_api(plan: &LabPlan, snapshot: &Path) -> Result<beeline_apiserver::ApiServer, BoxError> {
    let api = beeline_apiserver::ApiServer::new(beeline_apiserver::ServerConfig {
        service_cidrs: service_cidrs(plan),
        ..Default::default()
    });
    if snapshot.exists() {
        api.load(snapshot).map_err(|e| format!("restoring the API from {}: {e}", snapshot.display()))?;
        tracing::info!(snapshot = %snapshot.display(), "API objects restored");
    }
    let nodes: Api<Node> = Api::all(api.client_as("lab"));
    for node in plan.node_objects() {
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(api)
}

pub async fn run(state_dir: &Path) -> Result<(), BoxError> {
    let plan = super::cluster::read_plan(state_dir)?;
    let snapshot = snapshot_file(&plan);
    let api = start_api(&plan, &snapshot).await?;
    stop_orphans(&plan);
    // Sandboxes a crashed supervisor left behind. Those with a cached CNI ADD stay for the
    // kubelets, which DEL them first (so the agents release their addresses); the rest go now.
    let cached: std::collections::HashSet<String> = plan
        .nodes
        .iter()
        .flat_map(|n| super::cni_runtime::cached_in(&n.cni_cache_dir()))
        .filter_map(|(_, sandbox)| Some(sandbox?.file_name()?.to_string_lossy().into_owned()))
        .collect();
    for ns in super::kubelet::sweep_pod_namespaces(&plan.prefix, &cached) {
        tracing::info!(netns = %ns, "removed a stale pod namespace");
    }
    let host = TcpListener::bind("127.0.0.1:0")?;
    let host_addr = host.local_addr()?;
    let cp = plan.control_plane();
    let underlay_addr = SocketAddr::from((cp.ipv4, super::plan::API_PORT));
    let underlay = NetNs::open(&cp.netns)?
        .run(|| TcpListener::bind(underlay_addr))?
        .map_err(|e| format!("binding {underlay_addr} in {}: {e}", cp.netns))?;
    let mut servers = tokio::task::JoinSet::new();
    for listener in [host, underlay] {
        let api = api.clone();
        servers.spawn(async move { api.serve(listener).await });
    }
    tracing::info!(%host_addr, %underlay_addr, nodes = plan.nodes.len(), "in-memory Kubernetes API serving");

    let exe = std::env::current_exe()?;
    let mut children: Vec<Supervised> = plan.processes.iter().map(|p| Supervised::new(p.clone())).collect();
    for child in &mut children {
        child.start(&exe, &plan)?;
    }
    let loops = CancellationToken::new();
    tokio::spawn(super::controllers::run(api.client_as("kube-controller-manager"), loops.clone()));
    let mut kubelets = tokio::task::JoinSet::new();
    for node in &plan.nodes {
        let kubelet = super::kubelet::Kubelet::new(api.client_as("kubelet"), node.clone(), &plan.prefix);
        kubelets.spawn(kubelet.run(loops.clone()));
    }
    let _outside = start_outside(&plan);
    std::fs::write(plan.kubeconfig(), super::plan::kubeconfig(&plan.name, &format!("http://{host_addr}")))?;
    // Written last: `up` waits for this file.
    let marker = ready_marker(&plan);
    std::fs::write(marker.with_extension("tmp"), host_addr.to_string())?;
    std::fs::rename(marker.with_extension("tmp"), &marker)?;

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut save = tokio::time::interval(SNAPSHOT_PERIOD);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            Some(result) = servers.join_next() => {
                tracing::error!(?result, "an API listener stopped; shutting the lab's processes down");
                break;
            }
            _ = tick.tick() => {
                for child in &mut children {
                    child.check(&exe, &plan);
                }
            }
            _ = save.tick() => {
                if let Err(e) = api.save(&snapshot) {
                    tracing::warn!(error = %e, "cannot save the API snapshot");
                }
            }
        }
    }
    tracing::info!("stopping the kubelets (pod sandboxes go, pods stay in the API)");
    loops.cancel();
    let stopped =
        tokio::time::timeout(Duration::from_secs(15), async { while kubelets.join_next().await.is_some() {} }).await;
    if stopped.is_err() {
        tracing::warn!("kubelets did not stop within 15s; `lab down` removes what is left");
    }
    if let Err(e) = api.save(&snapshot) {
        tracing::warn!(error = %e, "cannot save the API snapshot");
    }
    tracing::info!("stopping the lab's processes");
    let stops: Vec<_> =
        children.into_iter().map(|mut c| std::thread::spawn(move || c.stop(Duration::from_secs(10)))).collect();
    for stop in stops {
        let _ = stop.join();
    }
    let _ = std::fs::remove_file(&marker);
    tracing::info!("lab supervisor stopped");
    Ok(())
}

/// Stops the operator and agents a crashed supervisor left running (they would hold the ports and
/// sockets the new children need); the datapath they programmed stays pinned.
fn stop_orphans(plan: &LabPlan) {
    let marker = plan.state_dir.to_string_lossy().to_string();
    for p in &plan.processes {
        if let Some(pid) = probe::read_pid(&plan.pid_file(&p.name)).filter(|pid| probe::is_ours(*pid, &marker)) {
            let killed = probe::stop(pid, &marker, Duration::from_secs(10));
            tracing::warn!(process = %p.name, pid, killed, "stopped a process a crashed supervisor left running");
        }
    }
}

/// The server in the lab's "outside" namespace (a host on the underlay that is not a node), the
/// target of pod-to-outside checks. Kept running while the returned value lives.
fn start_outside(plan: &LabPlan) -> Option<super::podserver::PodServer> {
    let identity = super::podserver::Identity {
        pod: "outside".into(),
        namespace: String::new(),
        node: plan.outside_netns.clone(),
    };
    let port = super::plan::OUTSIDE_PORT;
    match super::podserver::PodServer::start(&plan.outside_netns, identity, &[port], &[port]) {
        Ok(server) => Some(server),
        Err(e) => {
            tracing::warn!(netns = %plan.outside_netns, error = %e, "the outside server did not start");
            None
        }
    }
}

/// One child process and its restart state.
struct Supervised {
    plan: ProcessPlan,
    child: Option<Child>,
    restarts: u32,
    next_start: Option<Instant>,
    /// SIGTERM sent because a user holds the process stopped; its exit is not a crash.
    held: bool,
}

impl Supervised {
    fn new(plan: ProcessPlan) -> Self {
        Supervised { plan, child: None, restarts: 0, next_start: None, held: false }
    }

    fn start(&mut self, exe: &Path, lab: &LabPlan) -> std::io::Result<()> {
        let log_path = lab.log(&self.plan.name);
        let log = File::options().create(true).append(true).open(&log_path)?;
        let ns = NetNs::open(&self.plan.netns)?;
        let mut cmd = ns.command(exe)?;
        // A clean environment: `BEELINE_<KEY>` variables of the caller must not override the lab's config.
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()))
            .env("RUST_LOG", std::env::var_os("RUST_LOG").unwrap_or_else(|| "info".into()))
            .env("NO_COLOR", "1")
            .args(&self.plan.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd.spawn()?;
        probe::write_pid(&lab.pid_file(&self.plan.name), child.id())?;
        std::fs::write(lab.pids_dir().join(format!("{}.restarts", self.plan.name)), format!("{}\n", self.restarts))?;
        tracing::info!(process = %self.plan.name, pid = child.id(), netns = %self.plan.netns, log = %log_path.display(), "started");
        self.child = Some(child);
        Ok(())
    }

    /// Notices an exit and restarts after a delay that doubles per restart (1 s .. 30 s). A held
    /// process (its hold file exists) is sent SIGTERM once and left stopped; released, it starts
    /// at once (a user's stop is not a crash, so no back-off).
    fn check(&mut self, exe: &Path, lab: &LabPlan) {
        let hold = lab.hold_file(&self.plan.name).exists();
        if hold && !self.held {
            self.held = true;
            self.next_start = None;
            if let Some(child) = self.child.as_ref() {
                tracing::info!(process = %self.plan.name, pid = child.id(), "held stopped by the user; SIGTERM");
                probe::signal(child.id(), libc::SIGTERM);
            }
        }
        if let Some(child) = self.child.as_mut() {
            match child.try_wait() {
                Ok(Some(status)) if self.held => {
                    tracing::info!(process = %self.plan.name, %status, "stopped; held until released");
                    self.child = None;
                }
                Ok(Some(status)) => {
                    let delay = Duration::from_secs(1 << self.restarts.min(5)).min(Duration::from_secs(30));
                    tracing::warn!(process = %self.plan.name, %status, ?delay, "exited; restarting");
                    self.child = None;
                    self.restarts += 1;
                    self.next_start = Some(Instant::now() + delay);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(process = %self.plan.name, error = %e, "cannot poll"),
            }
        }
        if !hold && self.held && self.child.is_none() {
            tracing::info!(process = %self.plan.name, "released; starting");
            self.held = false;
            self.next_start = Some(Instant::now());
        }
        if self.child.is_none() && self.next_start.is_some_and(|t| Instant::now() >= t) {
            self.next_start = None;
            if let Err(e) = self.start(exe, lab) {
                tracing::error!(process = %self.plan.name, error = %e, "restart failed");
                self.next_start = Some(Instant::now() + Duration::from_secs(5));
            }
        }
    }

    fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else { return };
        probe::signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + grace;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    tracing::info!(process = %self.plan.name, %status, "stopped");
                    return;
                }
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                _ => break,
            }
        }
        tracing::warn!(process = %self.plan.name, "ignored SIGTERM; killing");
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;

    fn plan(state_dir: &Path) -> LabPlan {
        plan_with(state_dir, "{}")
    }

    fn plan_with(state_dir: &Path, values: &str) -> LabPlan {
        LabPlan::new(&super::super::plan::LabRequest {
            name: "kind".into(),
            nodes: 2,
            state_dir: state_dir.to_path_buf(),
            bpffs: "/sys/fs/bpf".into(),
            values: crate::lab::values::translate(&serde_saphyr::from_str(values).unwrap()).unwrap(),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn service_ranges_follow_the_labs_ip_families() {
        use beeline_apiserver::service_ips::ServiceCidrs;
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("{}", "10.96.0.0/16"),
            ("ipam: {mode: kubernetes}\nipv6: {enabled: true}", "10.96.0.0/16,fd00:10:96::/112"),
            (
                "ipam: {mode: kubernetes}\nipv4: {enabled: false}\nipv6: {enabled: true}\nroutingMode: native\nipv6NativeRoutingCIDR: fd00::/8",
                "fd00:10:96::/112",
            ),
        ];
        for (values, want) in cases {
            let plan = plan_with(dir.path(), values);
            assert_eq!(service_cidrs(&plan), ServiceCidrs::parse(want).unwrap(), "{values}");
        }
        // An IPv6-only lab's API hands a plain Service an IPv6 ClusterIP.
        let plan = plan_with(dir.path(), cases[2].0);
        let api = start_api(&plan, &dir.path().join("none.json")).await.unwrap();
        let services: Api<Service> = Api::default_namespaced(api.client());
        let svc = services.create(&PostParams::default(), &service("v6")).await.unwrap();
        let ip: std::net::IpAddr = svc.spec.unwrap().cluster_ip.unwrap().parse().unwrap();
        assert!(ip.is_ipv6(), "{ip}");
    }

    fn service(name: &str) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn a_restarted_supervisor_keeps_every_object_and_allocates_past_them() {
        let dir = tempfile::tempdir().unwrap();
        let plan = plan(dir.path());
        let snapshot = snapshot_file(&plan);
        let first = start_api(&plan, &snapshot).await.unwrap();
        let services: Api<Service> = Api::default_namespaced(first.client());
        let before = services.create(&PostParams::default(), &service("kept")).await.unwrap();
        first.save(&snapshot).unwrap();

        // Started again over the snapshot: Node registration does not conflict, objects are back.
        let second = start_api(&plan, &snapshot).await.unwrap();
        let nodes: Api<Node> = Api::all(second.client());
        assert_eq!(nodes.list(&Default::default()).await.unwrap().items.len(), 2);
        let services: Api<Service> = Api::default_namespaced(second.client());
        let kept = services.get("kept").await.unwrap();
        assert_eq!(kept.metadata.uid, before.metadata.uid);
        // A new Service gets neither the kept one's ClusterIP nor its NodePort.
        let new = services.create(&PostParams::default(), &service("new")).await.unwrap();
        let (a, b) = (kept.spec.unwrap(), new.spec.unwrap());
        assert_ne!(a.cluster_ip, b.cluster_ip);
        assert_ne!(a.ports.unwrap()[0].node_port, b.ports.unwrap()[0].node_port);
    }
}
