//! A `beeline agent` process running inside a node namespace, with its own state: bpffs root,
//! API socket, kubeconfig and log file. Used by the lab and by the real-kernel tests.

use std::{
    fs::File,
    io,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use crate::datapath::{netns::NetNs, Direction, PinLayout};

/// Per-node state of a lab agent.
#[derive(Clone, Debug)]
pub struct AgentLayout {
    /// The agent's `bpf-root`; its pin directory is `<bpf_root>/beeline`.
    pub bpf_root: PathBuf,
    /// Socket, kubeconfig and log live here.
    pub state_dir: PathBuf,
}

impl AgentLayout {
    pub fn pin_dir(&self) -> PathBuf {
        self.bpf_root.join("beeline")
    }

    pub fn pins(&self) -> PinLayout {
        PinLayout::new(self.pin_dir())
    }

    pub fn socket(&self) -> PathBuf {
        self.state_dir.join("agent.sock")
    }

    pub fn log(&self) -> PathBuf {
        self.state_dir.join("agent.log")
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.state_dir.join("kubeconfig")
    }

    /// The pin of `from_container`'s link on `ifname`.
    pub fn from_container_link(&self, ifname: &str) -> PathBuf {
        self.pins().link(crate::datapath::loader::programs::FROM_CONTAINER, Direction::Ingress, ifname)
    }
}

/// A running agent; killed (SIGKILL) on drop if still running, so a failing test leaves nothing.
#[derive(Debug)]
pub struct AgentProcess {
    child: Option<Child>,
    pub layout: AgentLayout,
}

/// A kubeconfig pointing at a closed local port: the agent starts and reports the API server as
/// unreachable (the lab's in-memory API server replaces this in a later issue).
const OFFLINE_KUBECONFIG: &str = "apiVersion: v1
kind: Config
clusters: [{name: lab, cluster: {server: \"https://127.0.0.1:1\"}}]
users: [{name: lab, user: {token: lab}}]
contexts: [{name: lab, context: {cluster: lab, user: lab}}]
current-context: lab
";

impl AgentProcess {
    /// Starts `binary agent` inside `ns` with `from_container` attached to `interfaces`.
    pub fn spawn(binary: &Path, ns: &NetNs, layout: AgentLayout, interfaces: &[&str]) -> io::Result<AgentProcess> {
        std::fs::create_dir_all(&layout.state_dir)?;
        std::fs::create_dir_all(&layout.bpf_root)?;
        std::fs::write(layout.kubeconfig(), OFFLINE_KUBECONFIG)?;
        let log = File::options().create(true).append(true).open(layout.log())?;
        let mut cmd = ns.command(binary)?;
        cmd.args(["--log-format", "json", "agent"])
            .arg("--node-name")
            .arg(ns.name())
            .arg("--kubeconfig")
            .arg(layout.kubeconfig())
            .arg("--set")
            .arg(format!("bpf-root={}", layout.bpf_root.display()))
            .arg("--set")
            .arg(format!("agent-socket-path={}", layout.socket().display()))
            // Everything the agent writes stays under this agent's own state directory, never in
            // the host's /run/beeline, /etc/cni/net.d or /opt/cni/bin.
            .arg("--set")
            .arg(format!("state-dir={}", layout.state_dir.join("state").display()))
            .arg("--set")
            .arg(format!("cni-conf-dir={}", layout.state_dir.join("cni/net.d").display()))
            .arg("--set")
            .arg(format!("cni-bin-dir={}", layout.state_dir.join("cni/bin").display()))
            .arg("--datapath-interface")
            .arg(interfaces.join(","))
            .env_remove("BEELINE_DATAPATH_INTERFACES")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd.spawn()?;
        Ok(AgentProcess { child: Some(child), layout })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits until the agent's API socket exists (it binds it after the datapath is attached),
    /// failing early if the process exits.
    pub fn wait_ready(&mut self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.layout.socket().exists() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    return Err(io::Error::other(format!(
                        "agent exited with {status} before becoming ready; log:\n{}",
                        self.log_text()
                    )));
                }
            }
            if Instant::now() >= deadline {
                return Err(io::Error::other(format!("agent not ready after {timeout:?}; log:\n{}", self.log_text())));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then waits (bounded) for a clean exit; SIGKILL if it does not come.
    pub fn stop(&mut self, timeout: Duration) -> io::Result<std::process::ExitStatus> {
        let Some(mut child) = self.child.take() else {
            return Err(io::Error::other("agent already stopped"));
        };
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::other(format!("agent ignored SIGTERM for {timeout:?}; killed")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.layout.log()).unwrap_or_default()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
