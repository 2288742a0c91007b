//! `kubectl kustomize manifests/` renders offline into the expected objects, and the agent and operator
//! manifests carry what the issue requires.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

/// Runs kubectl once (shared by the tests) with a deadline, so a wedged binary fails instead of hanging.
fn kustomize() -> Vec<Value> {
    static RENDERED: OnceLock<Vec<Value>> = OnceLock::new();
    RENDERED.get_or_init(render).clone()
}

fn render() -> Vec<Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests");
    let child = Command::new("/usr/bin/kubectl")
        .arg("kustomize")
        .arg(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("/usr/bin/kubectl must be installed for this test");
    let id = child.id();
    // Collect the output on a thread (the pipe must be drained while kubectl runs).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(output) => output.expect("kubectl output"),
        Err(_) => {
            // Kill the process we started, by its id.
            let _ = Command::new("kill").arg("-9").arg(id.to_string()).status();
            panic!("kubectl kustomize did not finish within 120s");
        }
    };
    assert!(output.status.success(), "kubectl kustomize failed: {}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).expect("utf-8");
    serde_saphyr::from_str_multiple(&text).expect("kustomize output parses as YAML documents")
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind}/{name} not rendered"))
}

#[test]
fn kustomize_renders_the_expected_objects() {
    let docs = kustomize();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for d in &docs {
        *kinds.entry(d["kind"].as_str().expect("every document has a kind").to_string()).or_default() += 1;
    }
    let want: BTreeMap<String, usize> = [
        ("ClusterRole", 2),
        ("ClusterRoleBinding", 2),
        ("ConfigMap", 1),
        ("CustomResourceDefinition", 7),
        ("DaemonSet", 1),
        ("Deployment", 1),
        ("Namespace", 1),
        ("Role", 1),
        ("RoleBinding", 1),
        ("ServiceAccount", 2),
    ]
    .into_iter()
    .map(|(k, n)| (k.to_string(), n))
    .collect();
    assert_eq!(kinds, want);

    // The rendered CRDs are the generated ones.
    for crd in beeline::crds::all() {
        let name = crd.metadata.name.clone().unwrap();
        let rendered = find(&docs, "CustomResourceDefinition", &name);
        let rendered: CustomResourceDefinition = serde_json::from_value(rendered.clone()).expect("a valid CRD");
        assert_eq!(rendered.spec, crd.spec, "{name}");
    }
}

#[test]
fn agent_daemonset_has_host_access_it_needs() {
    let docs = kustomize();
    let ds = find(&docs, "DaemonSet", "beeline-agent");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["privileged"], true);
    let mounts: BTreeMap<&str, &Value> =
        c["volumeMounts"].as_array().unwrap().iter().map(|m| (m["mountPath"].as_str().unwrap(), m)).collect();
    assert_eq!(mounts["/sys/fs/bpf"]["mountPropagation"], "Bidirectional");
    for path in ["/etc/cni/net.d", "/opt/cni/bin", "/run/beeline"] {
        assert!(mounts.contains_key(path), "{path} mounted");
    }
    assert_eq!(mounts["/var/run/netns"]["mountPropagation"], "HostToContainer");
    // The agent's state dir (IPAM and endpoint state) lives under the mounted /run/beeline.
    let state_dir = beeline::config::Config::from_raw(&Default::default()).unwrap().state_dir;
    assert!(state_dir.starts_with("/run/beeline"), "{}", state_dir.display());
    let volumes: BTreeMap<&str, &Value> =
        pod["volumes"].as_array().unwrap().iter().map(|v| (v["name"].as_str().unwrap(), v)).collect();
    for (mount, host) in [("netns", "/var/run/netns"), ("run", "/run/beeline"), ("bpf-maps", "/sys/fs/bpf")] {
        assert_eq!(volumes[mount]["hostPath"]["path"], host, "{mount}");
    }
    let env = c["env"].as_array().unwrap();
    let node_name = env.iter().find(|e| e["name"] == "K8S_NODE_NAME").expect("K8S_NODE_NAME");
    assert_eq!(node_name["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(c[probe]["httpGet"]["host"], "127.0.0.1", "{probe}");
    }
}

#[test]
fn configmap_uses_cilium_keys_the_config_loader_accepts() {
    let docs = kustomize();
    let cm = find(&docs, "ConfigMap", "cilium-config");
    let data = cm["data"].as_object().unwrap();
    for key in [
        "ipam",
        "routing-mode",
        "tunnel-protocol",
        "kube-proxy-replacement",
        "auto-direct-node-routes",
        "ipv4-native-routing-cidr",
        "cluster-pool-ipv4-cidr",
        "cluster-pool-ipv4-mask-size",
        "enable-ipv4",
        "enable-ipv6",
    ] {
        assert!(data.contains_key(key), "{key}");
    }
    // The agent and operator mount this ConfigMap as a directory: write it out and load it.
    let dir = tempfile::tempdir().unwrap();
    for (k, v) in data {
        std::fs::write(dir.path().join(k), v.as_str().unwrap()).unwrap();
    }
    let sources = beeline::config::Sources { config_dir: Some(dir.path().to_path_buf()), ..Default::default() };
    let raw = sources.collect().expect("ConfigMap directory reads");
    assert_eq!(raw.len(), data.len(), "every key read");
    sources.load().expect("the shipped cilium-config is a valid beeline configuration");
}

#[test]
fn operator_runs_with_leader_election_rbac() {
    let docs = kustomize();
    let role = find(&docs, "Role", "beeline-operator-leader-election");
    let rules = role["rules"].as_array().unwrap();
    assert!(rules.iter().any(|r| r["resources"][0] == "leases" && r["apiGroups"][0] == "coordination.k8s.io"));
    let cr = find(&docs, "ClusterRole", "beeline-operator");
    let patch_names: Vec<&str> = cr["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["resources"][0] == "customresourcedefinitions")
        .filter_map(|r| r["resourceNames"].as_array())
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let mut want: Vec<String> = beeline::crds::all().into_iter().map(|c| c.metadata.name.unwrap()).collect();
    want.sort();
    let mut got: Vec<String> = patch_names.iter().map(|s| s.to_string()).collect();
    got.sort();
    assert_eq!(got, want, "the operator may patch exactly the CRDs it installs");
    let dep = find(&docs, "Deployment", "beeline-operator");
    assert_eq!(dep["spec"]["template"]["spec"]["serviceAccountName"], "beeline-operator");
}
