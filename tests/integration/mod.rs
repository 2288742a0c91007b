//! Shared support for the real-kernel tests (BPF programs, namespaces, the agent).
//!
//! Use it from a test file with `mod integration;`. What lives where:
//! - the topology builder, agent process and traffic helpers are product code in `beeline::lab`
//!   (the lab builds the same topologies), re-exported here; extend them there;
//! - packet builders and `BPF_PROG_TEST_RUN` are `beeline::datapath::testing` (enabled for tests
//!   by the crate's `testing` feature);
//! - this module adds what only tests need: the root check, per-test bpffs directories and
//!   state directories that clean up on drop (also when the test panics), and bounded waiting.
//!
//! Tests that need root fail with a clear message when not run as root; they never skip.

#![allow(dead_code, unused_imports)] // each test binary uses a different subset

pub mod lab;

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

pub use beeline::{
    datapath::{netns::NetNs, testing::packet, Datapath, Direction},
    lab::{
        agent::{AgentLayout, AgentProcess},
        topology::{PodOnNode, Topology},
        traffic,
    },
};

/// Fails the test (never skips it) when not root.
pub fn require_root() {
    if let Err(msg) = beeline::lab::require_root("this test") {
        panic!("{msg}: real-kernel tests load BPF programs and create network namespaces");
    }
}

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// A bpffs directory of its own (`/sys/fs/bpf/bl-test-<label>-<pid>-<n>`), used as a `bpf-root`.
/// On drop: every beeline pin under it is removed (detaching pinned links) and the directory
/// deleted.
pub struct BpffsDir {
    path: PathBuf,
}

impl BpffsDir {
    pub fn new(label: &str) -> BpffsDir {
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(format!("/sys/fs/bpf/bl-test-{label}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {} (is bpffs mounted at /sys/fs/bpf?): {e}", path.display()));
        BpffsDir { path }
    }

    /// Use as the agent's `bpf-root`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `<bpf-root>/beeline`, what `Config::pin_dir()` gives for this root.
    pub fn pin_dir(&self) -> PathBuf {
        self.path.join("beeline")
    }
}

impl Drop for BpffsDir {
    fn drop(&mut self) {
        if let Err(e) = beeline::datapath::uninstall(&self.pin_dir()) {
            eprintln!("cleanup of {}: {e}", self.path.display());
        }
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("cleanup of {}: {e}", self.path.display());
            }
        }
    }
}

impl BpffsDir {
    /// The `--set` value that makes an agent pin under this directory.
    pub fn bpf_root_set(&self) -> String {
        format!("bpf-root={}", self.path.display())
    }
}

/// A local TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Writes `<dir>/kubeconfig` pointing at a plain-HTTP API server on 127.0.0.1:`port`.
pub fn write_kubeconfig(dir: &Path, port: u16) -> PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: http://127.0.0.1:{port}\ncontexts:\n- name: t\n  context:\n    cluster: t\n    user: t\ncurrent-context: t\nusers:\n- name: t\n  user: {{}}\n"
        ),
    )
    .expect("write kubeconfig");
    path
}

/// A state directory for an agent (socket, kubeconfig, log), removed on drop.
pub fn state_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("beeline-test-").tempdir().expect("temp dir")
}

/// Polls `check` every 20 ms until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, check: impl FnMut() -> Option<T>) -> T {
    wait_every(what, timeout, Duration::from_millis(20), check)
}

/// Polls `check` every `interval` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_every<T>(what: &str, timeout: Duration, interval: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(interval);
    }
}

/// `beeline_ep_stats[ifindex].packets` read from the pin (0 when the row does not exist yet).
pub fn pinned_packets(pin_dir: &Path, ifindex: u32) -> u64 {
    beeline::datapath::loader::read_pinned_endpoint_stats(pin_dir)
        .expect("read pinned beeline_ep_stats")
        .get(&ifindex)
        .map_or(0, |s| s.packets)
}

/// The ifindex of `ifname` inside `ns`.
pub fn ifindex_in(ns: &NetNs, ifname: &str) -> u32 {
    ns.run(|| beeline::datapath::attach::ifindex(ifname))
        .expect("enter namespace")
        .unwrap_or_else(|| panic!("no interface {ifname} in {}", ns.name()))
}

/// Registers the pod of `pair` as the endpoint behind its host-side veth (see
/// [`PodOnNode::register_endpoint`]).
pub fn register_pod_endpoint(topo: &Topology, pin_dir: &Path, pair: &PodOnNode) {
    pair.register_endpoint(topo, pin_dir).expect("register the pod's endpoint");
}

/// The in-memory Kubernetes API on 127.0.0.1, on its own runtime; stops when dropped.
pub struct TestApiServer {
    pub port: u16,
    pub server: beeline_apiserver::ApiServer,
    _runtime: tokio::runtime::Runtime,
}

impl TestApiServer {
    pub fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = beeline_apiserver::ApiServer::default();
        // As in a cluster, the CRDs exist before agents start (the operator installs them): the
        // agent's controllers watch CiliumNodes and CiliumEndpoints and write CiliumEndpoints.
        runtime.block_on(async {
            use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
            let crds: kube::Api<CustomResourceDefinition> = kube::Api::all(server.client());
            for crd in beeline::crds::all() {
                crds.create(&Default::default(), &crd).await.expect("create CRD");
            }
        });
        let serving = server.clone();
        runtime.spawn(async move { serving.serve(listener).await });
        Self { port, server, _runtime: runtime }
    }
}

/// Kills the child if the test fails before it stopped it.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    pub fn sigterm_and_wait(&mut self) -> std::process::ExitStatus {
        // SAFETY: plain kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM) failed");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "process did not stop within 15 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A datapath loaded into a bpffs directory of its own: the common part of the
/// `BPF_PROG_TEST_RUN` tests' fixtures (they `Deref` to it and add their own rows).
pub struct LoadedDatapath {
    pub bpffs: BpffsDir,
    pub datapath: Datapath,
}

impl LoadedDatapath {
    pub fn new(label: &str) -> LoadedDatapath {
        require_root();
        let bpffs = BpffsDir::new(label);
        let datapath = Datapath::load(&bpffs.pin_dir()).expect("load the datapath");
        LoadedDatapath { bpffs, datapath }
    }

    /// Runs `frame` through `program`: (verdict, the frame as the program left it).
    pub fn run(&self, program: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        let out = beeline::datapath::testing::test_run::run_tc(self.datapath.program(program).unwrap(), frame)
            .expect("test_run");
        (out.retval, out.data)
    }

    /// The drop counters, (reason, packets) by reason.
    pub fn drops(&self) -> Vec<(u32, u64)> {
        beeline::datapath::tables::read_drops(&self.bpffs.pin_dir())
            .unwrap()
            .into_iter()
            .map(|(r, s)| (r, s.packets))
            .collect()
    }
}

/// The two local pods of the policy and events tests: A sends (it sits on loopback, the device
/// test_run runs on), B is local behind an arbitrary ifindex.
pub mod two_pods {
    use beeline_common::endpoint::EndpointInfo;

    pub const LOOPBACK: u32 = 1;
    pub const EP_A: u32 = 11;
    pub const EP_B: u32 = 22;
    pub const ID_A: u32 = 51234;
    pub const ID_B: u32 = 40000;
    pub const B_IFINDEX: u32 = 4242;
    pub const MAC_A: [u8; 6] = [0x0a, 0, 0, 0, 0, 0x0a];
    pub const LXC_A: [u8; 6] = [0x1a, 0, 0, 0, 0, 0x0a];
    /// B's MACs, for fixtures that register B with MACs of its own.
    pub const MAC_B: [u8; 6] = [0x0a, 0, 0, 0, 0, 0x0b];
    pub const LXC_B: [u8; 6] = [0x1a, 0, 0, 0, 0, 0x0b];
    pub const A: &str = "10.0.1.2";
    pub const B: &str = "10.0.1.3";

    /// Writes both pods' endpoint rows.
    pub fn register(dp: &super::LoadedDatapath) {
        let pin = dp.bpffs.pin_dir();
        let ep = |ifindex, lxc_id: u32, sec_id| EndpointInfo {
            ifindex,
            lxc_id: lxc_id as u16,
            mac: MAC_A,
            node_mac: LXC_A,
            sec_id,
            ..Default::default()
        };
        beeline::datapath::tables::upsert_endpoint(&pin, A.parse().unwrap(), &ep(LOOPBACK, EP_A, ID_A)).unwrap();
        beeline::datapath::tables::upsert_endpoint(&pin, B.parse().unwrap(), &ep(B_IFINDEX, EP_B, ID_B)).unwrap();
    }
}

/// Writes the local endpoint row of IPv6 address `addr` straight into the pinned `beeline_lxc`
/// (the tables module writes IPv4 rows only, for now).
pub fn upsert_endpoint6(pin_dir: &Path, addr: std::net::Ipv6Addr, info: &beeline_common::endpoint::EndpointInfo) {
    use aya::maps::{HashMap, Map, MapData};
    use beeline_common::endpoint::{self, EndpointInfo, EndpointKey};
    let pin = beeline::datapath::pins::PinLayout::new(pin_dir).map(endpoint::MAP_NAME);
    let mut map: HashMap<_, EndpointKey, EndpointInfo> =
        HashMap::try_from(Map::HashMap(MapData::from_pin(pin).expect("open beeline_lxc"))).unwrap();
    map.insert(EndpointKey::ipv6(addr.octets()), info, 0).expect("insert the IPv6 endpoint row");
}

/// Writes the ipcache row of IPv6 prefix `addr`/`prefix_len` straight into the pinned
/// `beeline_ipcache` (the tables module writes IPv4 rows only, for now).
pub fn upsert_ipcache6(
    pin_dir: &Path,
    addr: std::net::Ipv6Addr,
    prefix_len: u32,
    info: &beeline_common::ipcache::RemoteEndpointInfo,
) {
    use aya::maps::{lpm_trie::Key, LpmTrie, Map, MapData};
    use beeline_common::ipcache::{self, IpcacheKey, IpcacheLpmData, RemoteEndpointInfo};
    let pin = beeline::datapath::pins::PinLayout::new(pin_dir).map(ipcache::MAP_NAME);
    let mut map: LpmTrie<_, IpcacheLpmData, RemoteEndpointInfo> =
        LpmTrie::try_from(Map::LpmTrie(MapData::from_pin(pin).expect("open beeline_ipcache"))).unwrap();
    let key = IpcacheKey::ipv6(addr.octets(), prefix_len);
    map.insert(&Key::new(key.prefixlen, key.data), info, 0).expect("insert the IPv6 ipcache row");
}
