//! Driving a whole lab from a test, as a user does: `beeline lab up|apply|down` and kubectl through
//! the lab's kubeconfig. [`LabDir`] owns the lab's state directory and runs `lab down` on drop, so a
//! failing test leaves nothing behind; [`Made`] records what a lab made so a test can assert that
//! `down` removed all of it.
//!
//! Each lab derives its names from its state directory, so labs of concurrently running tests
//! never collide. Bringing a lab up costs seconds: group a scenario's assertions into one lab.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use beeline::lab::{plan::LabPlan, probe};

pub const BIN: &str = env!("CARGO_BIN_EXE_beeline");
pub const KUBECTL: &str = "/usr/bin/kubectl";

/// `examples/lab/<name>`: the values files a user passes to `lab up --values`.
pub fn values(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/lab").join(name).to_string_lossy().into_owned()
}

/// Runs `cmd`, panicking with its output unless it succeeds.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `check` every 200 ms (each poll usually runs kubectl) until it returns `Some`, at most
/// `timeout`; panics with `what`.
pub fn poll<T>(what: &str, timeout: Duration, check: impl FnMut() -> Option<T>) -> T {
    super::wait_every(what, timeout, Duration::from_millis(200), check)
}

/// A lab's state directory; `lab down` on drop, so a failing test leaves nothing behind.
pub struct LabDir {
    parent: tempfile::TempDir,
    pub path: PathBuf,
}

impl Default for LabDir {
    fn default() -> Self {
        Self::new()
    }
}

impl LabDir {
    pub fn new() -> LabDir {
        let parent = tempfile::Builder::new().prefix("bl-lab-test").tempdir().unwrap();
        let path = parent.path().join("lab");
        LabDir { parent, path }
    }

    /// A scratch directory beside the lab's state (for manifests); removed with the test.
    pub fn scratch(&self) -> &Path {
        self.parent.path()
    }

    pub fn arg(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// `beeline lab <verb> --state-dir <this lab>`.
    pub fn beeline(&self, verb: &str) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(["lab", verb, "--state-dir", self.arg()]).env_remove("KUBECONFIG");
        cmd
    }

    pub fn up(&self, nodes: usize, values_file: &str) -> Output {
        let n = nodes.to_string();
        run(self.beeline("up").args(["--nodes", &n, "--values", &values(values_file), "--timeout", "30"]))
    }

    /// `beeline lab apply -f` of `yaml`, written to a scratch file named `name`.
    pub fn apply(&self, name: &str, yaml: &str) -> Output {
        let manifest = self.scratch().join(name);
        std::fs::write(&manifest, yaml).unwrap();
        run(self.beeline("apply").arg("-f").arg(&manifest))
    }

    pub fn plan(&self) -> LabPlan {
        beeline::lab::cluster::read_plan(&self.path).unwrap()
    }

    pub fn kubectl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl(&all)).unwrap()
    }

    pub fn kubectl(&self, args: &[&str]) -> String {
        let kubeconfig = self.path.join("kubeconfig");
        stdout(&run(Command::new(KUBECTL).arg("--kubeconfig").arg(kubeconfig).args(args).arg("--request-timeout=10s")))
    }

    /// `beeline connectivity test --keep` against this lab (its workloads stay for the test's
    /// own checks); every check must pass.
    pub fn connectivity_test(&self) -> Output {
        let out = Command::new(BIN)
            .args(["connectivity", "test", "--state-dir", self.arg(), "--keep"])
            .env_remove("KUBECONFIG")
            .output()
            .unwrap();
        assert!(out.status.success(), "connectivity test:\n{}\n{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
        out
    }

    /// Waits until exactly `count` pods match `selector` and all are Running with an address;
    /// returns them.
    pub fn running_pods(&self, selector: &str, count: usize, timeout: Duration) -> Vec<serde_json::Value> {
        poll(&format!("{count} Running pods with addresses for {selector}"), timeout, || {
            let pods = self.kubectl_json(&["get", "pods", "-A", "-l", selector]);
            let items = pods["items"].as_array().cloned().unwrap_or_default();
            let running =
                items.iter().filter(|p| p["status"]["phase"] == "Running" && p["status"]["podIP"].is_string()).count();
            (items.len() == count && running == count).then_some(items)
        })
    }
}

/// Runs `args` inside the network namespace `netns` (nsenter keeps bpffs and /sys as they are).
pub fn in_netns(netns: &str, args: &[&str]) -> Output {
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{netns}"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("nsenter {netns} {args:?}: {e}"))
}

/// Two pings from `pod`'s network namespace to `to`; both must be answered.
pub fn ping_from_pod(pod: &serde_json::Value, to: std::net::IpAddr) {
    let out = in_netns(&pod_netns(pod), &["ping", "-c", "2", "-W", "2", "-i", "0.2", &to.to_string()]);
    let m = &pod["metadata"];
    assert!(
        out.status.success(),
        "{}/{} cannot ping {to}:\n{}{}",
        m["namespace"].as_str().unwrap_or_default(),
        m["name"].as_str().unwrap_or_default(),
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The network namespace the lab's kubelet made for `pod` (a Pod object as kubectl returns it).
pub fn pod_netns(pod: &serde_json::Value) -> String {
    pod["metadata"]["annotations"]["beeline.io/lab-netns"]
        .as_str()
        .unwrap_or_else(|| panic!("pod without a lab netns annotation: {pod}"))
        .to_string()
}

impl Drop for LabDir {
    fn drop(&mut self) {
        let _ = self.beeline("down").output();
    }
}

/// What a lab made, read from its plan before `down` removes it.
pub struct Made {
    pub namespaces: Vec<String>,
    pub pin_root: PathBuf,
    pub pids: Vec<u32>,
    pub marker: String,
    pub state_dir: PathBuf,
}

impl Made {
    pub fn of(plan: &LabPlan) -> Made {
        let mut namespaces: Vec<String> = plan.nodes.iter().map(|n| n.netns.clone()).collect();
        namespaces.push(plan.underlay_netns.clone());
        namespaces.push(plan.outside_netns.clone());
        // Pod sandboxes made by the kubelet emulation.
        namespaces.extend(
            std::fs::read_dir("/run/netns")
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("{}-pod-", plan.prefix))),
        );
        let mut pids: Vec<u32> = std::iter::once("supervisor".to_string())
            .chain(plan.processes.iter().map(|p| p.name.clone()))
            .filter_map(|name| probe::read_pid(&plan.pid_file(&name)))
            .collect();
        // Everything inside the node namespaces, whether or not it has a pid file.
        for ns in &namespaces {
            pids.extend(probe::netns_pids(ns));
        }
        pids.sort_unstable();
        pids.dedup();
        Made {
            namespaces,
            pin_root: plan.pin_root.clone(),
            pids,
            marker: plan.state_dir.to_string_lossy().into_owned(),
            state_dir: plan.state_dir.clone(),
        }
    }

    pub fn assert_gone(&self) {
        for ns in &self.namespaces {
            assert!(!Path::new("/run/netns").join(ns).exists(), "namespace {ns} left behind");
        }
        assert!(!self.pin_root.exists(), "pins left behind under {}", self.pin_root.display());
        for pid in &self.pids {
            assert!(!probe::is_ours(*pid, &self.marker), "process {pid} of the lab still running");
        }
        assert!(!self.state_dir.exists(), "state {} left behind", self.state_dir.display());
        assert_no_process_mentions(&self.marker);
    }
}

/// `lab down`, then asserts that nothing the lab made is left: namespaces, pins, processes,
/// state, and links in the host namespace.
pub fn down_and_assert_gone(lab: &LabDir) {
    let plan = lab.plan();
    let made = Made::of(&plan);
    run(&mut lab.beeline("down"));
    made.assert_gone();
    let links = stdout(&run(Command::new("ip").args(["-o", "link", "show"])));
    assert!(!links.contains(&plan.prefix), "links of {} left in the host namespace:\n{links}", plan.prefix);
}

/// No process on the machine has the lab's state directory in its command line (every lab
/// process has: the supervisor, the operator, the agents).
pub fn assert_no_process_mentions(marker: &str) {
    let ours: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid| probe::is_ours(*pid, marker))
        .collect();
    assert!(ours.is_empty(), "processes of the lab still running: {ours:?}");
}
