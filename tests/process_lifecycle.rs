//! `beeline agent` and `beeline operator` as real processes: they start against a kubeconfig,
//! answer `/healthz` and `/readyz`, report an unreachable API server as not ready (without dying),
//! refuse a bad configuration key by name, and stop cleanly on SIGTERM.
//!
//! The API server is beeline's in-memory Kubernetes API served over HTTP on loopback.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

mod integration;

use integration::{free_port, write_kubeconfig, BpffsDir, Proc, TestApiServer};

const BIN: &str = env!("CARGO_BIN_EXE_beeline");

/// `GET path` on 127.0.0.1:port; `None` while nothing listens.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    beeline::lab::probe::http_get(std::net::SocketAddr::from(([127, 0, 0, 1], port)), path).ok()
}

/// Polls until `GET path` answers `want`, for at most 20 s; returns the last body.
fn wait_for_status(port: u16, path: &str, want: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = None;
    while Instant::now() < deadline {
        last = http_get(port, path);
        if let Some((status, body)) = &last {
            if *status == want {
                return body.clone();
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{path} on port {port} never answered {want}; last answer: {last:?}");
}

fn spawn(args: &[&str]) -> Proc {
    Proc(
        Command::new(BIN)
            .args(args)
            .env_remove("KUBECONFIG")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn beeline"),
    )
}

#[test]
fn agent_serves_health_and_api_then_stops_on_sigterm() {
    let api = TestApiServer::start();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = write_kubeconfig(dir.path(), api.port);
    let health_port = free_port();
    let socket = dir.path().join("run/beeline.sock");
    let bpf = BpffsDir::new("health");
    let mut agent = spawn(&[
        "agent",
        "--set",
        &bpf.bpf_root_set(),
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--node-name",
        "node-a",
        "--set",
        &format!("agent-health-port={health_port}"),
        "--set",
        &format!("agent-socket-path={}", socket.display()),
        "--set",
        &format!("state-dir={}", dir.path().join("state").display()),
        "--set",
        &format!("cni-conf-dir={}", dir.path().join("net.d").display()),
        "--set",
        &format!("cni-bin-dir={}", dir.path().join("bin").display()),
        "--set",
        "tunnel-protocol=geneve",
    ]);
    assert_eq!(wait_for_status(health_port, "/healthz", 200), "ok\n");
    let ready = wait_for_status(health_port, "/readyz?verbose", 200);
    assert!(ready.contains("[+]kubernetes ok"), "{ready}");
    assert!(ready.contains("[+]datapath-maps ok"), "{ready}");
    let metrics = wait_for_status(health_port, "/metrics", 200);
    assert!(metrics.contains("# EOF"), "OpenMetrics output expected: {metrics}");
    assert!(metrics.contains("beeline_agent_bpf_map_sync_pass_seconds"), "map manager metrics expected: {metrics}");
    assert!(metrics.contains("beeline_agent_remote_routes_desired"), "remote-nodes metrics expected: {metrics}");
    // The agent created its LB and remote maps in its own bpffs directory.
    for map in [
        "beeline_lb4_services",
        "beeline_lb4_backends",
        "beeline_lb4_reverse_nat",
        "beeline_ipcache",
        "beeline_tunnel_map",
    ] {
        assert!(bpf.pin_dir().join(map).exists(), "{map} not pinned under {}", bpf.path().display());
    }

    // The unix-socket API answers the CLI.
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "agent socket must be private");
    let out = Command::new(BIN).args(["status", "--socket", socket.to_str().unwrap()]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("node-a") && text.contains("geneve"), "{text}");
    let out = Command::new(BIN).args(["status", "--socket", socket.to_str().unwrap(), "-o", "json"]).output().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status -o json is JSON");
    assert_eq!(json["node_name"], "node-a");
    assert_eq!(json["ready"], true);

    let status = agent.sigterm_and_wait();
    assert!(status.success(), "agent exited with {status}");
    assert!(!socket.exists(), "agent socket must be removed on shutdown");
}

#[test]
fn agent_reports_a_vanished_api_server_as_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on this port.
    let kubeconfig = write_kubeconfig(dir.path(), free_port());
    let health_port = free_port();
    let bpf = BpffsDir::new("vanished");
    let mut agent = spawn(&[
        "agent",
        "--set",
        &bpf.bpf_root_set(),
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--node-name",
        "node-b",
        "--set",
        &format!("agent-health-port={health_port}"),
        "--set",
        &format!("agent-socket-path={}", dir.path().join("s.sock").display()),
        "--set",
        &format!("state-dir={}", dir.path().join("state").display()),
        "--set",
        &format!("cni-conf-dir={}", dir.path().join("net.d").display()),
        "--set",
        &format!("cni-bin-dir={}", dir.path().join("bin").display()),
    ]);
    assert_eq!(wait_for_status(health_port, "/healthz", 200), "ok\n");
    // The connectivity check starts as "starting" and turns "unreachable" after its first probe.
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let body = wait_for_status(health_port, "/readyz", 503);
        if body.contains("[-]kubernetes failed: API server unreachable") || Instant::now() > deadline {
            break body;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(body.contains("[-]kubernetes failed: API server unreachable"), "{body}");
    assert!(
        body.contains(
            "[-]datapath-maps failed: waiting for the first full pass of: policy, remote-endpoints, remote-nodes, services"
        ),
        "{body}"
    );
    assert!(agent.sigterm_and_wait().success());
}

#[test]
fn operator_serves_health_then_stops_on_sigterm() {
    let api = TestApiServer::start();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = write_kubeconfig(dir.path(), api.port);
    let health_port = free_port();
    let mut operator = spawn(&[
        "operator",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--set",
        &format!("operator-health-addr=127.0.0.1:{health_port}"),
    ]);
    assert_eq!(wait_for_status(health_port, "/healthz", 200), "ok\n");
    let ready = wait_for_status(health_port, "/readyz?verbose", 200);
    assert!(ready.contains("[+]crds ok"), "CRDs installed into the in-memory API: {ready}");
    // The only replica wins the Lease (the in-memory API has kube-system, as a real cluster does).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = http_get(health_port, "/metrics").map(|(_, b)| b).unwrap_or_default();
        if metrics.contains("beeline_operator_is_leader 1") {
            break;
        }
        assert!(Instant::now() < deadline, "the operator never became leader: {metrics}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = operator.sigterm_and_wait();
    assert!(status.success(), "operator exited with {status}");
}

#[test]
fn operator_refuses_to_start_when_it_cannot_install_the_crds() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on this port.
    let kubeconfig = write_kubeconfig(dir.path(), free_port());
    let out = Command::new(BIN)
        .args(["operator", "--kubeconfig", kubeconfig.to_str().unwrap(), "--crd-install-timeout", "3"])
        .args(["--set", &format!("operator-health-addr=127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the operator must not start: {err}");
    assert!(
        err.contains("cannot install CRD ciliumnodes.cilium.io: API server unreachable after"),
        "stderr must name the CRD and the reason: {err}"
    );
}

#[test]
fn a_bad_config_key_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("routing-mod"), "native").unwrap();
    for (cmd, extra) in [
        ("agent", vec!["--set", "tunnel-protcol=geneve"]),
        ("operator", vec!["--config-dir", dir.path().to_str().unwrap()]),
        ("agent", vec!["--set", "routing-mode=bgp"]),
    ] {
        let out = Command::new(BIN).arg(cmd).args(&extra).env_remove("KUBECONFIG").output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{cmd} {extra:?} must fail");
        let named = match extra[1] {
            "tunnel-protcol=geneve" => "unknown configuration key `tunnel-protcol` (did you mean `tunnel-protocol`?)",
            "routing-mode=bgp" => "invalid value \"bgp\" for configuration key `routing-mode`",
            _ => "unknown configuration key `routing-mod` (did you mean `routing-mode`?)",
        };
        assert!(err.contains(named), "{cmd} {extra:?}: stderr does not name the key: {err}");
    }
}
