//! The real `beeline` binary run as `beeline-cni` (a symlink, as the runtime finds it in the CNI
//! bin dir) with CNI environment variables and the conflist's plugin config on stdin, against an
//! agent API served in this test on a temp socket. No network changes: ADD returns the IPAM result.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use beeline::agent::api::{self, ApiState};
use beeline::cni::install;
use beeline::cni::types::{CniError, CniResult, NetworkConfigList};
use beeline::controllers::agent::ipam_state::NodeIpam;
use beeline::ipam::Family;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

struct Fixture {
    plugin: PathBuf,
    plugin_config: Vec<u8>,
    ipam: Arc<NodeIpam>,
    token: CancellationToken,
    _dir: tempfile::TempDir,
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
    let state = Arc::new(ApiState {
        node_name: "n1".into(),
        config: beeline::config::Config::from_raw(&Default::default()).unwrap(),
        health: beeline::runtime::health::Telemetry::new("test").health,
        ipam: ipam.clone(),
        policy: Default::default(),
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
    Fixture { plugin, plugin_config, ipam, token, _dir: dir }
}

struct Invocation {
    code: i32,
    stdout: String,
}

async fn invoke(plugin: &Path, command: &str, container: &str, stdin: &[u8]) -> Invocation {
    let mut child = tokio::process::Command::new(plugin)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", "/var/run/netns/test-unused")
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
    let f = fixture().await;

    // VERSION.
    let v = invoke(&f.plugin, "VERSION", "x", br#"{"cniVersion":"1.0.0"}"#).await;
    assert_eq!(v.code, 0);
    let v: Value = serde_json::from_str(&v.stdout).unwrap();
    assert_eq!(v["cniVersion"], "1.0.0");
    assert!(v["supportedVersions"].as_array().unwrap().contains(&json!("1.1.0")));

    // Before the node has its CIDR: STATUS says not available, ADD says try again later, at once.
    let err = error_of(&invoke(&f.plugin, "STATUS", "x", &f.plugin_config).await);
    assert_eq!(err.code.0, 50, "{err:?}");
    let err = error_of(&invoke(&f.plugin, "ADD", "c1", &f.plugin_config).await);
    assert_eq!(err.code.0, 11, "{err:?}");
    assert!(err.msg.contains("try again later"), "{err:?}");

    f.ipam.set_cidrs(&["10.0.42.0/29".parse().unwrap()]).unwrap();
    let ok = invoke(&f.plugin, "STATUS", "x", &f.plugin_config).await;
    assert_eq!((ok.code, ok.stdout.as_str()), (0, ""));

    // ADD: the IPAM result shape, interfaces empty until the datapath sets up the veth.
    let add = invoke(&f.plugin, "ADD", "c1", &f.plugin_config).await;
    assert_eq!(add.code, 0, "{}", add.stdout);
    let result: CniResult = serde_json::from_str(&add.stdout).unwrap();
    assert_eq!(result.cni_version.as_deref(), Some("1.1.0"));
    assert!(result.interfaces.is_empty());
    assert_eq!(result.ips.len(), 1);
    let address = result.ips[0].address;
    assert_eq!(address.prefix_len(), 32);
    assert!("10.0.42.0/29".parse::<ipnet::IpNet>().unwrap().contains(&address.addr()));
    assert_eq!(result.ips[0].gateway, Some("10.0.42.1".parse().unwrap()), "gateway is the router address");
    assert_eq!(result.routes[0].dst.to_string(), "0.0.0.0/0");
    let owner = f.ipam.listing().allocations.into_iter().find(|a| a.ip == address.addr()).unwrap().owner;
    assert_eq!(owner.to_string(), "default/pod-c1", "owner from CNI_ARGS");
    let again: CniResult =
        serde_json::from_str(&invoke(&f.plugin, "ADD", "c1", &f.plugin_config).await.stdout).unwrap();
    assert_eq!(again.ips, result.ips, "a repeated ADD returns the same address");

    // CHECK with the ADD's result as prevResult.
    let mut with_prev: Value = serde_json::from_slice(&f.plugin_config).unwrap();
    with_prev["prevResult"] = serde_json::from_str(&add.stdout).unwrap();
    let with_prev = serde_json::to_vec(&with_prev).unwrap();
    let check = invoke(&f.plugin, "CHECK", "c1", &with_prev).await;
    assert_eq!(check.code, 0, "{}", check.stdout);
    let err = error_of(&invoke(&f.plugin, "CHECK", "other", &with_prev).await);
    assert_eq!(err.code.0, 3, "{err:?}");

    // Fill the /29 (router, health, c1 + three more) and see the exhaustion error.
    for c in ["c2", "c3", "c4"] {
        assert_eq!(invoke(&f.plugin, "ADD", c, &f.plugin_config).await.code, 0);
    }
    let err = error_of(&invoke(&f.plugin, "ADD", "c5", &f.plugin_config).await);
    assert_eq!(err.code.0, 100, "{err:?}");
    assert!(err.msg.contains("IPv4: 6/6 allocated from 10.0.42.0/29"), "{err:?}");

    // DEL releases; DEL twice and DEL of an unknown container are success.
    for _ in 0..2 {
        let del = invoke(&f.plugin, "DEL", "c1", &f.plugin_config).await;
        assert_eq!((del.code, del.stdout.as_str()), (0, ""));
    }
    assert_eq!(invoke(&f.plugin, "DEL", "never-added", &f.plugin_config).await.code, 0);
    assert!(f.ipam.listing().allocations.iter().all(|a| a.ip != address.addr()));
    assert_eq!(f.ipam.listing().status, ["IPv4: 5/6 allocated from 10.0.42.0/29"]);

    // GC keeps the valid attachments and releases the rest.
    let mut gc: Value = serde_json::from_slice(&f.plugin_config).unwrap();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c2", "ifname": "eth0"}]);
    let gc = invoke(&f.plugin, "GC", "", &serde_json::to_vec(&gc).unwrap()).await;
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
    let err = error_of(&invoke(&f.plugin, "ADD", "c1", b"{oops").await);
    assert_eq!(err.code.0, 6);
    // An agent socket that nobody serves: try again later (code 11), naming the socket.
    let mut conf: Value = serde_json::from_slice(&f.plugin_config).unwrap();
    conf["agent-socket"] = json!("/nonexistent/beeline.sock");
    let err = error_of(&invoke(&f.plugin, "ADD", "c1", &serde_json::to_vec(&conf).unwrap()).await);
    assert_eq!(err.code.0, 11);
    assert!(err.details.contains("/nonexistent/beeline.sock"), "{err:?}");
}
