//! The container runtime's side of CNI (what containerd does through libcni), for the lab's
//! kubelet: find the network configuration, build each plugin's stdin and environment, execute
//! the plugin binaries from `CNI_PATH`, and cache ADD results for DEL.
//!
//! As libcni: the first `.conflist`/`.conf`/`.json` file of the conf dir by name is the network;
//! each plugin of the list gets its own object with the list's `cniVersion` and `name` injected
//! and, after the first, the previous plugin's result as `prevResult`; DEL runs the list in
//! reverse with the cached ADD result as `prevResult`. The environment is `CNI_COMMAND`,
//! `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_PATH` and `CNI_ARGS` carrying the pod's
//! identity (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`, `K8S_POD_INFRA_CONTAINER_ID`, `K8S_POD_UID`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::datapath::netns::NetNs;

/// How long one plugin execution may take before it is killed (the runtime's own timeout).
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CniFailure {
    /// No network configuration yet: the node's agent has not written its conflist.
    #[error("network is not ready: no CNI configuration file in {0}")]
    NoConfig(PathBuf),
    #[error("invalid CNI configuration {path}: {reason}")]
    BadConfig { path: PathBuf, reason: String },
    /// The plugin failed; `message` is its error's `msg: details` (what kubelet events show).
    #[error("plugin type=\"{plugin}\" failed ({command}): {message}")]
    Plugin { plugin: String, command: String, message: String },
}

/// One pod attachment, as the runtime knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    pub pod_namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
}

/// Where a node's runtime finds its CNI pieces.
#[derive(Clone, Debug)]
pub struct CniDirs {
    pub conf_dir: PathBuf,
    pub bin_dir: PathBuf,
    /// ADD results, one file per container ID (libcni's `/var/lib/cni/results`).
    pub cache_dir: PathBuf,
}

/// The container ID the lab uses for a pod: its UID without dashes (a valid CNI identifier).
pub fn container_id(pod_uid: &str) -> String {
    pod_uid.chars().filter(|c| c.is_ascii_alphanumeric()).collect()
}

/// The first configuration file by name, as libcni orders them.
pub fn pick_config(names: &[String]) -> Option<&String> {
    let mut candidates: Vec<&String> =
        names.iter().filter(|n| n.ends_with(".conflist") || n.ends_with(".conf") || n.ends_with(".json")).collect();
    candidates.sort();
    candidates.into_iter().next()
}

/// A `.conf` (single plugin) becomes a one-plugin list, as libcni does.
pub fn as_list(conf: Value) -> Value {
    if conf.get("plugins").is_some() {
        return conf;
    }
    let mut plugin = conf.clone();
    if let Some(m) = plugin.as_object_mut() {
        m.remove("cniVersion");
        m.remove("name");
    }
    serde_json::json!({"cniVersion": conf["cniVersion"], "name": conf["name"], "plugins": [plugin]})
}

/// The stdin of one plugin of `list`: its object plus `cniVersion`, `name` and `prevResult`.
pub fn plugin_stdin(list: &Value, plugin: &Value, prev_result: Option<&Value>) -> Vec<u8> {
    let mut conf = plugin.clone();
    if let Some(m) = conf.as_object_mut() {
        m.insert("cniVersion".into(), list["cniVersion"].clone());
        m.insert("name".into(), list["name"].clone());
        match prev_result {
            Some(prev) => m.insert("prevResult".into(), prev.clone()),
            None => m.remove("prevResult"),
        };
    }
    serde_json::to_vec(&conf).expect("serialisable")
}

/// The CNI environment for `command` on `att`.
pub fn environment(command: &str, att: &Attachment, cni_path: &Path) -> Vec<(String, String)> {
    let args = format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
        att.pod_namespace, att.pod_name, att.container_id, att.pod_uid
    );
    [
        ("CNI_COMMAND", command.to_string()),
        ("CNI_CONTAINERID", att.container_id.clone()),
        ("CNI_NETNS", att.netns.display().to_string()),
        ("CNI_IFNAME", att.ifname.clone()),
        ("CNI_ARGS", args),
        ("CNI_PATH", cni_path.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The message of a plugin's error output (`msg: details`), or its raw output.
pub fn error_message(stdout: &[u8], stderr: &[u8], status: &str) -> String {
    match serde_json::from_slice::<Value>(stdout) {
        Ok(v) if v.get("msg").is_some() => {
            let msg = v["msg"].as_str().unwrap_or_default();
            match v["details"].as_str().filter(|d| !d.is_empty()) {
                Some(details) => format!("{msg}: {details}"),
                None => msg.to_string(),
            }
        }
        _ => {
            let out = String::from_utf8_lossy(stdout);
            let err = String::from_utf8_lossy(stderr);
            format!("{status}: {} {}", out.trim(), err.trim()).trim().to_string()
        }
    }
}

/// The addresses of an ADD result (`ips[].address`, prefix stripped).
pub fn result_ips(result: &Value) -> Vec<std::net::IpAddr> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
        .collect()
}

/// The cached attachments in `cache_dir` (see [`Runtime::cached`]).
pub fn cached_in(cache_dir: &Path) -> Vec<(String, Option<PathBuf>)> {
    let Ok(dir) = std::fs::read_dir(cache_dir) else { return Vec::new() };
    let mut out: Vec<(String, Option<PathBuf>)> = dir
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let id = name.strip_suffix(".json")?.to_string();
            let result: Option<Value> = std::fs::read(e.path()).ok().and_then(|b| serde_json::from_slice(&b).ok());
            let sandbox = result.as_ref().and_then(|r| {
                r["interfaces"].as_array()?.iter().find_map(|i| i["sandbox"].as_str().map(PathBuf::from))
            });
            Some((id, sandbox))
        })
        .collect();
    out.sort();
    out
}

/// A node's runtime: executes plugins from inside the node's network namespace (where the agent
/// and its socket live, and where the plugin creates the host side of the pod's interface).
pub struct Runtime {
    pub node_netns: String,
    pub dirs: CniDirs,
}

impl Runtime {
    fn load_list(&self) -> Result<(PathBuf, Value), CniFailure> {
        let names: Vec<String> = std::fs::read_dir(&self.dirs.conf_dir)
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let name = pick_config(&names).ok_or_else(|| CniFailure::NoConfig(self.dirs.conf_dir.clone()))?;
        let path = self.dirs.conf_dir.join(name);
        let bad = |reason: String| CniFailure::BadConfig { path: path.clone(), reason };
        let text = std::fs::read(&path).map_err(|e| bad(e.to_string()))?;
        let conf: Value = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
        let list = as_list(conf);
        if list["plugins"].as_array().is_none_or(|p| p.is_empty()) {
            return Err(bad("no plugins".into()));
        }
        Ok((path, list))
    }

    /// Whether a usable network configuration exists (checked before a sandbox is made, as a
    /// kubelet waits for `NetworkReady` before creating pod sandboxes).
    pub fn check_config(&self) -> Result<(), CniFailure> {
        self.load_list().map(|_| ())
    }

    fn cache_file(&self, container_id: &str) -> PathBuf {
        self.dirs.cache_dir.join(format!("{container_id}.json"))
    }

    /// Every attachment whose ADD result is cached (ADDed and not yet successfully DELed): its
    /// container ID and the sandbox the result names.
    pub fn cached(&self) -> Vec<(String, Option<PathBuf>)> {
        cached_in(&self.dirs.cache_dir)
    }

    /// ADD through the whole list; the last plugin's result (also cached for DEL).
    pub fn add(&self, att: &Attachment) -> Result<Value, CniFailure> {
        let (_, list) = self.load_list()?;
        let mut prev: Option<Value> = None;
        for plugin in list["plugins"].as_array().expect("checked") {
            let stdin = plugin_stdin(&list, plugin, prev.as_ref());
            let out = self.exec("ADD", plugin, &stdin, att)?;
            prev = Some(out);
        }
        let result = prev.expect("at least one plugin");
        let _ = std::fs::create_dir_all(&self.dirs.cache_dir);
        let _ = std::fs::write(self.cache_file(&att.container_id), serde_json::to_vec(&result).expect("json"));
        Ok(result)
    }

    /// DEL through the list in reverse, with the cached ADD result; idempotent like the spec asks.
    pub fn del(&self, att: &Attachment) -> Result<(), CniFailure> {
        let (_, list) = self.load_list()?;
        let cached: Option<Value> =
            std::fs::read(self.cache_file(&att.container_id)).ok().and_then(|b| serde_json::from_slice(&b).ok());
        for plugin in list["plugins"].as_array().expect("checked").iter().rev() {
            let stdin = plugin_stdin(&list, plugin, cached.as_ref());
            self.exec("DEL", plugin, &stdin, att)?;
        }
        let _ = std::fs::remove_file(self.cache_file(&att.container_id));
        Ok(())
    }

    fn exec(&self, command: &str, plugin: &Value, stdin: &[u8], att: &Attachment) -> Result<Value, CniFailure> {
        let plugin_type = plugin["type"].as_str().unwrap_or_default().to_string();
        let fail = |message: String| CniFailure::Plugin {
            plugin: plugin_type.clone(),
            command: command.to_lowercase(),
            message,
        };
        // CNI_PATH lookup: the plugin's `type` names a binary in one of the path's directories.
        let binary = self.dirs.bin_dir.join(&plugin_type);
        if plugin_type.contains('/') || !binary.is_file() {
            return Err(fail(format!(
                "failed to find plugin \"{plugin_type}\" in path [{}]",
                self.dirs.bin_dir.display()
            )));
        }
        let ns = NetNs::open(&self.node_netns).map_err(|e| fail(e.to_string()))?;
        let mut cmd = ns.command(&binary).map_err(|e| fail(e.to_string()))?;
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(environment(command, att, &self.dirs.bin_dir))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| fail(format!("cannot execute {}: {e}", binary.display())))?;
        if let Some(mut input) = child.stdin.take() {
            let _ = input.write_all(stdin);
        }
        let deadline = Instant::now() + PLUGIN_TIMEOUT;
        while child.try_wait().map_err(|e| fail(e.to_string()))?.is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!("timed out after {PLUGIN_TIMEOUT:?}")));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
        if !out.status.success() {
            return Err(fail(error_message(&out.stdout, &out.stderr, &out.status.to_string())));
        }
        if out.stdout.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&out.stdout).map_err(|e| fail(format!("invalid result: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn att() -> Attachment {
        Attachment {
            container_id: container_id("0b1c-22d3"),
            netns: "/run/netns/bl-x-pod-1".into(),
            ifname: "eth0".into(),
            pod_namespace: "default".into(),
            pod_name: "web-1".into(),
            pod_uid: "0b1c-22d3".into(),
        }
    }

    #[test]
    fn environment_carries_the_pod_identity_like_a_kubelet_runtime() {
        let env: std::collections::BTreeMap<String, String> =
            environment("ADD", &att(), Path::new("/opt/cni/bin")).into_iter().collect();
        assert_eq!(env["CNI_COMMAND"], "ADD");
        assert_eq!(env["CNI_CONTAINERID"], "0b1c22d3");
        assert_eq!(env["CNI_NETNS"], "/run/netns/bl-x-pod-1");
        assert_eq!(env["CNI_IFNAME"], "eth0");
        assert_eq!(env["CNI_PATH"], "/opt/cni/bin");
        let args = crate::cni::env::CniArgs::parse(&env["CNI_ARGS"]).unwrap();
        assert_eq!(args.pod_namespace(), Some("default"));
        assert_eq!(args.pod_name(), Some("web-1"));
        assert_eq!(args.get("K8S_POD_INFRA_CONTAINER_ID"), Some("0b1c22d3"));
        assert_eq!(args.get("K8S_POD_UID"), Some("0b1c-22d3"));
    }

    #[test]
    fn plugin_stdin_injects_version_name_and_previous_result() {
        let list = json!({"cniVersion": "1.0.0", "name": "beeline", "plugins": [{"type": "a", "x": 1}, {"type": "b"}]});
        let first: Value = serde_json::from_slice(&plugin_stdin(&list, &list["plugins"][0], None)).unwrap();
        assert_eq!(first, json!({"type": "a", "x": 1, "cniVersion": "1.0.0", "name": "beeline"}));
        let prev = json!({"ips": [{"address": "10.0.1.5/32"}]});
        let second: Value = serde_json::from_slice(&plugin_stdin(&list, &list["plugins"][1], Some(&prev))).unwrap();
        assert_eq!(second["prevResult"], prev);
        assert_eq!(result_ips(&prev), ["10.0.1.5".parse::<std::net::IpAddr>().unwrap()]);
    }

    #[test]
    fn config_choice_and_single_plugin_files() {
        let names = ["zz.conflist", "README", "10-b.conf", "05-beeline.conflist"].map(String::from);
        assert_eq!(pick_config(&names).map(String::as_str), Some("05-beeline.conflist"));
        assert_eq!(pick_config(&["x.txt".to_string()]), None);
        let list = as_list(json!({"cniVersion": "0.4.0", "name": "n", "type": "bridge", "bridge": "cni0"}));
        assert_eq!(list["plugins"], json!([{"type": "bridge", "bridge": "cni0"}]));
        assert_eq!(list["cniVersion"], "0.4.0");
    }

    #[test]
    fn plugin_errors_read_like_kubelet_events() {
        let out = br#"{"cniVersion":"1.1.0","code":11,"msg":"cannot reach the beeline agent","details":"connect: no such file"}"#;
        assert_eq!(error_message(out, b"", "exit status: 1"), "cannot reach the beeline agent: connect: no such file");
        assert_eq!(error_message(b"", b"segfault", "signal: 11"), "signal: 11:  segfault");
    }
}
