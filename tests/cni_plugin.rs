//! The real `beeline` binary run as `beeline-cni` (a symlink, as the runtime finds it in the CNI
//! bin dir) with CNI environment variables and the conflist's plugin config on stdin, against an
//! agent API served in this test on a temp socket (its endpoint datapath an in-memory fake: no
//! BPF here, see tests/cni_endpoints.rs for the real agent). ADD builds the veth pair in network
//! namespaces this test creates, so it runs as root.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

mod integration;

use beeline::agent::api::{self, ApiState};
use beeline::agent::endpoints::{fake::FakeDatapath, EndpointManager};
use beeline::cni::install;
use beeline::cni::network::host_ifname;
use beeline::cni::types::{CniError, CniResult, NetworkConfigList};
use beeline::controllers::agent::ipam_state::NodeIpam;
use beeline::datapath::netns::NetNs;
use beeline::ipam::Family;
use beeline::lab::topology::Topology;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

struct Fixture {
    plugin: PathBuf,
    plugin_config: Vec<u8>,
    ipam: Arc<NodeIpam>,
    endpoints: Arc<EndpointManager>,
    datapath: Arc<FakeDatapath>,
    token: CancellationToken,
    /// One pod namespace per container name, created on first use.
    topology: std::sync::Mutex<(Topology, std::collections::BTreeMap<String, PathBuf>)>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn netns(&self, container: &str) -> PathBuf {
        let mut guard = self.topology.lock().unwrap();
        let (topology, map) = &mut *guard;
        if let Some(path) = map.get(container) {
            return path.clone();
        }
        let ns = topology.namespace(&format!("p{}", map.len())).unwrap();
        map.insert(container.to_string(), ns.path());
        ns.path()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// The agent API on a temp socket, the conflist the agent writes, and the plugin symlink.
async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/beeline.sock");
    let ipam = Arc::new(NodeIpam::new(vec![Family::V4], &dir.path().join("state")));
    let datapath = Arc::new(FakeDatapath::default());
    let endpoints = Arc::new(EndpointManager::new(
        &dir.path().join("state"),
        datapath.clone(),
        ipam.clone(),
        Arc::new(beeline::agent::ipam_expiry::SystemClock),
    ));
    let state = Arc::new(ApiState {
        node_name: "n1".into(),
        config: beeline::config::Config::from_raw(&Default::default()).unwrap(),
        health: beeline::runtime::health::Telemetry::new("test").health,
        ipam: ipam.clone(),
        policy: Default::default(),
        endpoints: endpoints.clone(),
        endpoint_kube: None,
        multi_pool: None,
        crd: None,
    });
    let token = CancellationToken::new();
    tokio::spawn(api::serve(&socket, state, token.clone()).unwrap());

    let bin_dir = dir.path().join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let plugin = bin_dir.join("beeline-cni");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_beeline"), &plugin).unwrap();

    // What a runtime does: read the conflist, hand the plugin its entry with name and cniVersion.
    let conf_path = install::write_conflist(&dir.path().join("net.d"), &socket).unwrap();
    let list = NetworkConfigList::parse(&std::fs::read(conf_path).unwrap()).unwrap();
    let mut plugin_conf = serde_json::to_value(&list.plugins[0]).unwrap();
    plugin_conf["name"] = json!(list.name);
    plugin_conf["cniVersion"] = json!("1.1.0");
    let plugin_config = serde_json::to_vec(&plugin_conf).unwrap();
    let topology = std::sync::Mutex::new((Topology::new("cni"), Default::default()));
    Fixture { plugin, plugin_config, ipam, endpoints, datapath, token, topology, _dir: dir }
}

struct Invocation {
    code: i32,
    stdout: String,
}

async fn invoke(f: &Fixture, command: &str, container: &str, stdin: &[u8]) -> Invocation {
    let netns = f.netns(container);
    let mut child = tokio::process::Command::new(&f.plugin)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .env("CNI_ARGS", format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-{container}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).await.unwrap();
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("the plugin must not hang")
        .unwrap();
    Invocation { code: out.status.code().unwrap_or(-1), stdout: String::from_utf8_lossy(&out.stdout).into_owned() }
}

fn error_of(inv: &Invocation) -> CniError {
    assert_eq!(inv.code, 1, "expected failure, got {}", inv.stdout);
    serde_json::from_str(&inv.stdout).unwrap_or_else(|e| panic!("error JSON: {e}: {}", inv.stdout))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_check_del_status_gc_version_through_the_real_binary() {
    integration::require_root();
    let f = fixture().await;

    // VERSION.
    let v = invoke(&f, "VERSION", "x", br#"{"cniVersion":"1.0.0"}"#).await;
    assert_eq!(v.code, 0);
    let v: Value = serde_json::from_str(&v.stdout).unwrap();
    assert_eq!(v["cniVersion"], "1.0.0");
    assert!(v["supportedVersions"].as_array().unwrap().contains(&json!("1.1.0")));

    // Before the node has its CIDR: STATUS says not available, ADD says try again later, at once.
    let err = error_of(&invoke(&f, "STATUS", "x", &f.plugin_config).await);
    assert_eq!(err.code.0, 50, "{err:?}");
    let err = error_of(&invoke(&f, "ADD", "c1", &f.plugin_config).await);
    assert_eq!(err.code.0, 11, "{err:?}");
    assert!(err.msg.contains("try again later"), "{err:?}");

    f.ipam.set_cidrs(&["10.0.42.0/29".parse().unwrap()]).unwrap();
    let ok = invoke(&f, "STATUS", "x", &f.plugin_config).await;
    assert_eq!((ok.code, ok.stdout.as_str()), (0, ""));

    // ADD: host veth + eth0 in the pod, addresses on eth0 (interface 1), the endpoint registered.
    let add = invoke(&f, "ADD", "c1", &f.plugin_config).await;
    assert_eq!(add.code, 0, "{}", add.stdout);
    let result: CniResult = serde_json::from_str(&add.stdout).unwrap();
    assert_eq!(result.cni_version.as_deref(), Some("1.1.0"));
    let names: Vec<&str> = result.interfaces.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, [host_ifname("c1").as_str(), "eth0"]);
    assert_eq!(result.interfaces[1].sandbox.as_deref(), Some(f.netns("c1").to_str().unwrap()));
    assert_eq!(result.interfaces[0].sandbox, None, "the host side has no sandbox");
    assert_eq!(result.interfaces[1].mtu, Some(1450), "tunnel mode: 1500 - 50");
    assert_eq!(result.ips.len(), 1);
    assert_eq!(result.ips[0].interface, Some(1));
    let endpoint = f.endpoints.get("c1").expect("endpoint registered");
    assert_eq!(endpoint.spec.mac, result.interfaces[1].mac.clone().unwrap());
    assert_eq!(endpoint.spec.host_mac, result.interfaces[0].mac.clone().unwrap());
    assert!(f.datapath.attached.lock().unwrap().contains(&host_ifname("c1")));
    let address = result.ips[0].address;
    assert_eq!(address.prefix_len(), 32);
    assert!("10.0.42.0/29".parse::<ipnet::IpNet>().unwrap().contains(&address.addr()));
    assert_eq!(result.ips[0].gateway, Some("10.0.42.1".parse().unwrap()), "gateway is the router address");
    assert_eq!(result.routes[0].dst.to_string(), "0.0.0.0/0");
    let owner = f.ipam.listing().allocations.into_iter().find(|a| a.ip == address.addr()).unwrap().owner;
    assert_eq!(owner.to_string(), "default/pod-c1", "owner from CNI_ARGS");
    let again: CniResult = serde_json::from_str(&invoke(&f, "ADD", "c1", &f.plugin_config).await.stdout).unwrap();
    assert_eq!(again.ips, result.ips, "a repeated ADD returns the same address");
    assert_eq!(f.endpoints.get("c1").unwrap().id, endpoint.id, "and keeps the endpoint ID");
    let add = Invocation { code: 0, stdout: serde_json::to_string(&again).unwrap() };

    // CHECK with the ADD's result as prevResult.
    let mut with_prev: Value = serde_json::from_slice(&f.plugin_config).unwrap();
    with_prev["prevResult"] = serde_json::from_str(&add.stdout).unwrap();
    let with_prev = serde_json::to_vec(&with_prev).unwrap();
    let check = invoke(&f, "CHECK", "c1", &with_prev).await;
    assert_eq!(check.code, 0, "{}", check.stdout);
    let err = error_of(&invoke(&f, "CHECK", "other", &with_prev).await);
    assert_eq!(err.code.0, 3, "{err:?}");
    // CHECK notices a missing route in the pod.
    NetNs::open_path(&f.netns("c1"))
        .unwrap()
        .run(|| beeline::datapath::netns::run_ip(&["route", "del", "default"]))
        .unwrap()
        .unwrap();
    let err = error_of(&invoke(&f, "CHECK", "c1", &with_prev).await);
    assert!(err.details.contains("default route via 10.0.42.1"), "{err:?}");

    // Fill the /29 (router, health, c1 + three more) and see the exhaustion error.
    for c in ["c2", "c3", "c4"] {
        assert_eq!(invoke(&f, "ADD", c, &f.plugin_config).await.code, 0);
    }
    let err = error_of(&invoke(&f, "ADD", "c5", &f.plugin_config).await);
    assert_eq!(err.code.0, 100, "{err:?}");
    assert!(err.msg.contains("IPv4: 6/6 allocated from 10.0.42.0/29"), "{err:?}");

    // DEL releases; DEL twice and DEL of an unknown container are success.
    for _ in 0..2 {
        let del = invoke(&f, "DEL", "c1", &f.plugin_config).await;
        assert_eq!((del.code, del.stdout.as_str()), (0, ""));
    }
    assert_eq!(invoke(&f, "DEL", "never-added", &f.plugin_config).await.code, 0);
    assert!(f.ipam.listing().allocations.iter().all(|a| a.ip != address.addr()));
    assert!(f.endpoints.get("c1").is_none() && !f.datapath.attached.lock().unwrap().contains(&host_ifname("c1")));
    assert_eq!(beeline::datapath::attach::ifindex(&host_ifname("c1")), None, "host veth deleted");
    assert_eq!(f.ipam.listing().status, ["IPv4: 5/6 allocated from 10.0.42.0/29"]);

    // GC keeps the valid attachments and releases the rest.
    let mut gc: Value = serde_json::from_slice(&f.plugin_config).unwrap();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c2", "ifname": "eth0"}]);
    let gc = invoke(&f, "GC", "", &serde_json::to_vec(&gc).unwrap()).await;
    assert_eq!(gc.code, 0, "{}", gc.stdout);
    let pods: Vec<String> = f
        .ipam
        .listing()
        .allocations
        .iter()
        .map(|a| a.owner.to_string())
        .filter(|o| o.starts_with("default/"))
        .collect();
    assert_eq!(pods, ["default/pod-c2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_agent_and_bad_input_are_cni_errors() {
    integration::require_root();
    let f = fixture().await;
    // A bad environment names the variable (code 4).
    let out = tokio::process::Command::new(&f.plugin)
        .env_clear()
        .env("CNI_COMMAND", "ADD")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let err: CniError = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(err.code.0, 4);
    assert!(err.details.contains("CNI_CONTAINERID"), "{err:?}");
    // Malformed stdin (code 6).
    let err = error_of(&invoke(&f, "ADD", "c1", b"{oops").await);
    assert_eq!(err.code.0, 6);
    // An agent socket that nobody serves: try again later (code 11), naming the socket.
    let mut conf: Value = serde_json::from_slice(&f.plugin_config).unwrap();
    conf["agent-socket"] = json!("/nonexistent/beeline.sock");
    let err = error_of(&invoke(&f, "ADD", "c1", &serde_json::to_vec(&conf).unwrap()).await);
    assert_eq!(err.code.0, 11);
    assert!(err.details.contains("/nonexistent/beeline.sock"), "{err:?}");
}
