//! (b) connection path and (c) throughput on beeline: one node namespace with the datapath loaded
//! and `from_container` attached (TCX) on the host side of every pod's veth, a client pod and three
//! backend pods plugged in like Cilium's CNI does it, the LB maps programmed through the map
//! manager with N services whose last one is backed by the three pods. The baseline's `tcpbench`
//! serves in the backend pods and measures from the client pod.
//!
//! ```text
//!  client pod 10.246.0.10 ─veth─┐                 ┌─veth─ backend pod 10.246.0.11 (tcpbench server :8080, sink :5201)
//!                               node ns (datapath, ├─veth─ backend pod 10.246.0.12
//!                               router 10.246.0.1) └─veth─ backend pod 10.246.0.13
//! ```
//!
//! The per-packet service LB in `from_container` is detected in the embedded eBPF object (it must
//! reference the LB maps); without it the ClusterIP cells are reported as pending and only the
//! pod-to-pod floor is measured.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use beeline::bench::fixtures::{cluster_ip, Shape, BULK_PORT, SERVICE_PORT, TARGET_PORT};
use beeline::bench::report::{ConnCell, ThroughputCell, BEELINE};
use beeline::bench::tcpbench::{parse_crr, summarize, CrrRun};
use beeline::datapath::devices::{self, NodeDevicesSpec};
use beeline::datapath::loader::programs::FROM_CONTAINER;
use beeline::datapath::{tables, AttachMode};
use beeline::lab::topology::RoutedPod;
use beeline_common::{datapath::DatapathConfig, endpoint::EndpointInfo};

use crate::integration::{ifindex_in, traffic, BpffsDir, Datapath, Direction, Topology};
use crate::programming::Programmer;
use crate::{Args, Budget};

const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 246, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 246, 0, 10);
const BACKENDS: [Ipv4Addr; 3] =
    [Ipv4Addr::new(10, 246, 0, 11), Ipv4Addr::new(10, 246, 0, 12), Ipv4Addr::new(10, 246, 0, 13)];
const MTU: u32 = 1500;
/// A tcpbench client never runs longer than this (it also arms alarm()).
const CLIENT_MAX_S: u32 = 10;

/// Whether the embedded eBPF object does per-packet service LB: its programs then reference the
/// LB services map by name.
pub fn lb_in_datapath() -> bool {
    let name = beeline_common::lb::map_names::LB4_SERVICES.as_bytes();
    beeline::datapath::bpf_object().windows(name.len()).any(|w| w == name)
}

/// A child process killed and reaped on drop.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Everything the measurement creates; fields drop in order: servers, maps writer, programs,
/// pins (unpinning the TCX links), then the namespaces.
struct Node {
    _servers: Vec<ChildGuard>,
    programmer: Programmer,
    _datapath: Datapath,
    _bpffs: BpffsDir,
    client: RoutedPod,
    backends: Vec<RoutedPod>,
    _topo: Topology,
}

fn io_err(what: &str) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

impl Node {
    fn build(tcpbench: &Path, server_max_s: u64) -> Result<Node, String> {
        let mut topo = Topology::new("svcbench");
        let node = topo.namespace("node").map_err(io_err("node namespace"))?;
        let spec = NodeDevicesSpec { router_ip: Some(ROUTER), router_ip6: None, tunnel: None };
        node.run(|| devices::ensure(&spec)).map_err(io_err("enter node"))?.map_err(|e| format!("node devices: {e}"))?;
        let bpffs = BpffsDir::new("svcbench");
        let pin = bpffs.pin_dir();
        let mut datapath = Datapath::load(&pin).map_err(|e| format!("loading the datapath: {e}"))?;
        let config = DatapathConfig {
            router_ip: tables::be(ROUTER),
            node_ip: tables::be(ROUTER),
            pod_cidr_prefix_len: 0,
            ..Default::default()
        };
        tables::write_config(&pin, &config).map_err(|e| format!("datapath config: {e}"))?;
        // The node's LB settings, as the agent writes them (random selection by default).
        let lb_config = beeline_common::lb::LbConfig {
            algorithm: beeline_common::lb::LB_ALG_RANDOM,
            maglev_table_size: beeline::services::frontends::DEFAULT_MAGLEV_TABLE_SIZE,
        };
        beeline::datapath::lb_tables::write_lb_config(&pin, &lb_config).map_err(|e| format!("LB config: {e}"))?;
        let mut pods = Vec::new();
        for (i, addr) in std::iter::once(CLIENT).chain(BACKENDS).enumerate() {
            let host_if = format!("lxc{i}");
            let role = if i == 0 { "client".to_string() } else { format!("backend{i}") };
            let pod = topo.routed_pod(&node, &role, &host_if, addr, ROUTER, MTU).map_err(io_err("pod"))?;
            let info = EndpointInfo {
                ifindex: ifindex_in(&node, &host_if),
                lxc_id: i as u16 + 1,
                mac: topo.mac(&pod.ns, "eth0").map_err(io_err("pod MAC"))?,
                node_mac: topo.mac(&node, &host_if).map_err(io_err("veth MAC"))?,
                sec_id: 1000 + i as u32,
                ..Default::default()
            };
            tables::upsert_endpoint(&pin, addr.into(), &info).map_err(|e| format!("endpoint {addr}: {e}"))?;
            node.run(|| datapath.attach(FROM_CONTAINER, &host_if, Direction::Ingress, AttachMode::Tcx))
                .map_err(io_err("enter node"))?
                .map_err(|e| format!("attach from_container to {host_if}: {e}"))?;
            pods.push(pod);
        }
        // After the loader: an LB map the eBPF object pins is reopened, not replaced.
        let programmer = Programmer::open(&pin)?;
        let client = pods.remove(0);
        let mut servers = Vec::new();
        for pod in &pods {
            let child = pod
                .ns
                .command(tcpbench)
                .map_err(io_err("tcpbench server"))?
                .args(["server", &TARGET_PORT.to_string(), &server_max_s.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(io_err("tcpbench server"))?;
            servers.push(ChildGuard(child));
        }
        std::thread::sleep(Duration::from_millis(300));
        Ok(Node {
            _servers: servers,
            programmer,
            _datapath: datapath,
            _bpffs: bpffs,
            client,
            backends: pods,
            _topo: topo,
        })
    }

    /// One `tcpbench crr` run from the client pod.
    fn crr(&self, tcpbench: &Path, dst: Ipv4Addr, port: u16, count: u32, warmup: u32) -> Result<CrrRun, String> {
        let out = self
            .client
            .ns
            .command(tcpbench)
            .map_err(io_err("tcpbench"))?
            .args(["crr", &dst.to_string(), &port.to_string(), &count.to_string(), &warmup.to_string()])
            .arg(CLIENT_MAX_S.to_string())
            .output()
            .map_err(io_err("tcpbench"))?;
        let line = String::from_utf8_lossy(&out.stdout);
        let run = parse_crr(line.trim())
            .map_err(|e| format!("{e} (stderr: {})", String::from_utf8_lossy(&out.stderr).trim()))?;
        if !out.status.success() || run.n == 0.0 {
            return Err(format!("no connection to {dst}:{port} succeeded ({})", line.trim()));
        }
        Ok(run)
    }

    fn cell(
        &self,
        args: &Args,
        tcpbench: &Path,
        dst: Ipv4Addr,
        port: u16,
        budget: &Budget,
    ) -> Result<Vec<CrrRun>, String> {
        // Functional check first (as the baseline does): a few connections must all succeed.
        let check = self.crr(tcpbench, dst, port, 20, 0)?;
        if check.errors > 0.0 {
            return Err(format!("{} of 20 connections to {dst}:{port} failed", check.errors));
        }
        let mut runs = Vec::new();
        for _ in 0..args.runs.max(1) {
            budget.check("connection run")?;
            runs.push(self.crr(tcpbench, dst, port, args.conns, args.warmup)?);
        }
        Ok(runs)
    }

    fn sinks(&self) -> Result<Vec<TcpListener>, String> {
        self.backends
            .iter()
            .map(|pod| {
                let addr = SocketAddr::new(IpAddr::V4(pod.addr), BULK_PORT);
                pod.ns.run(|| TcpListener::bind(addr)).map_err(io_err("enter pod"))?.map_err(io_err("bulk sink"))
            })
            .collect()
    }

    fn bulk(&self, dst: Ipv4Addr, secs: u64) -> Result<f64, String> {
        let dst = SocketAddr::new(IpAddr::V4(dst), BULK_PORT);
        let report = traffic::tcp_bulk(&self.client.ns, dst, self.sinks()?, Duration::from_secs(secs))
            .map_err(|e| format!("bulk transfer to {dst}: {e}"))?;
        Ok(report.gbit_per_s())
    }
}

pub struct Output {
    pub connections: Vec<ConnCell>,
    pub throughput: Vec<ThroughputCell>,
    pub pending: Vec<String>,
}

fn conn_cell(n: u32, target: &str, runs: Result<Vec<CrrRun>, String>) -> ConnCell {
    match runs {
        Ok(runs) => {
            ConnCell { system: BEELINE.into(), n, target: target.into(), summary: summarize(&runs), note: None }
        }
        Err(e) => ConnCell {
            system: BEELINE.into(),
            n,
            target: target.into(),
            summary: None,
            note: Some(format!("failed: {e}")),
        },
    }
}

pub fn measure(args: &Args, tcpbench: &Path, budget: &Budget) -> Result<Output, String> {
    let lb = lb_in_datapath();
    eprintln!("(b) beeline connection path: N = {:?}; service LB in the eBPF object: {lb}", args.dp_n);
    let node = Node::build(tcpbench, budget.remaining().as_secs() + 60)?;
    let mut out = Output { connections: Vec::new(), throughput: Vec::new(), pending: Vec::new() };
    let pending_lb =
        "pending: the per-packet service LB in from_container is not in this build (branch wip/lb not merged yet)";

    // The floor: client pod → backend pod IP, no service.
    out.connections.push(conn_cell(0, "pod-ip", node.cell(args, tcpbench, BACKENDS[0], TARGET_PORT, budget)));

    let mut node = node;
    for &n in &args.dp_n {
        // A stop keeps what was measured so far (the caller writes it).
        if let Err(e) = budget.check("connection path") {
            out.pending.push(e);
            return Ok(out);
        }
        let objects = Shape::new(n, args.backends).with_probe(n - 1, BACKENDS.to_vec()).objects();
        let t = node.programmer.pass(&objects)?;
        eprintln!("    N={n}: programmed in {:.1} ms", t.total() * 1e3);
        if lb {
            out.connections.push(conn_cell(
                n,
                "last",
                node.cell(args, tcpbench, cluster_ip(n - 1), SERVICE_PORT, budget),
            ));
        } else {
            out.connections.push(ConnCell {
                system: BEELINE.into(),
                n,
                target: "last".into(),
                summary: None,
                note: Some(pending_lb.into()),
            });
        }
    }
    if !lb {
        out.pending.push(format!(
            "beeline connection path to a ClusterIP (b) and pod-to-service throughput (c): {pending_lb}. \
             The maps were programmed at every N and the pod-to-pod floor was measured; rerun the same \
             command once the LB datapath is on main."
        ));
    }

    // (c) alternating, so drift on the shared machine hits both paths alike.
    let probe = cluster_ip(args.dp_n.last().copied().unwrap_or(1) - 1);
    let (mut pod, mut svc) = (Vec::new(), Vec::new());
    let mut notes: (Option<String>, Option<String>) = (None, None);
    for _ in 0..args.throughput_reps {
        if let Err(e) = budget.check("throughput") {
            out.pending.push(e);
            break;
        }
        match node.bulk(BACKENDS[0], args.throughput_secs) {
            Ok(g) => pod.push(g),
            Err(e) => notes.0 = Some(format!("failed: {e}")),
        }
        if lb {
            match node.bulk(probe, args.throughput_secs) {
                Ok(g) => svc.push(g),
                Err(e) => notes.1 = Some(format!("failed: {e}")),
            }
        }
    }
    let n = args.dp_n.last().copied().unwrap_or(1);
    out.throughput.push(ThroughputCell {
        path: "pod-to-pod".into(),
        gbit_s: pod,
        seconds_each: args.throughput_secs as f64,
        note: notes.0,
    });
    out.throughput.push(ThroughputCell {
        path: "pod-to-service".into(),
        gbit_s: svc,
        seconds_each: args.throughput_secs as f64,
        note: if lb {
            notes.1.or(Some(format!("ClusterIP of the last of {n} services")))
        } else {
            Some(pending_lb.into())
        },
    });
    Ok(out)
}
