//! The RBAC manifests cover what the code calls: the real operator and agent binaries run against
//! the in-memory Kubernetes API (CRD installation, leader election, node IPAM, CiliumNode
//! registration, shutdown), the API records every request with the client's User-Agent, and each
//! recorded request must be allowed by that component's ClusterRole/Role in `manifests/` —
//! evaluated with RBAC's own matching rules
//! (apiGroups, resources with subresources, verbs, resourceNames, Role namespaces).

use std::{
    net::TcpListener,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use beeline_apiserver::{record::Access, ApiServer};
use serde_json::Value;

mod integration;

use integration::{free_port, write_kubeconfig, BpffsDir};

const BIN: &str = env!("CARGO_BIN_EXE_beeline");

/// One policy rule, with the namespace it applies in (`None` for a ClusterRole).
#[derive(Debug)]
struct Rule {
    namespace: Option<String>,
    groups: Vec<String>,
    resources: Vec<String>,
    verbs: Vec<String>,
    names: Vec<String>,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

fn documents(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.split("\n---")
        .filter(|d| d.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')))
        .map(|d| serde_saphyr::from_str::<Value>(d).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}

/// The rules bound to `service_account` by the (Cluster)RoleBindings in `path`.
fn rules_for(path: &str, service_account: &str) -> Vec<Rule> {
    let docs = documents(path);
    let bound: Vec<(String, String, Option<String>)> = docs
        .iter()
        .filter(|d| matches!(d["kind"].as_str(), Some("ClusterRoleBinding" | "RoleBinding")))
        .filter(|d| {
            d["subjects"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["kind"] == "ServiceAccount" && s["name"] == service_account)
        })
        .map(|d| {
            let ns = (d["kind"] == "RoleBinding").then(|| d["metadata"]["namespace"].as_str().unwrap().to_string());
            (d["roleRef"]["kind"].as_str().unwrap().to_string(), d["roleRef"]["name"].as_str().unwrap().to_string(), ns)
        })
        .collect();
    let mut rules = Vec::new();
    for (kind, name, namespace) in bound {
        let role = docs
            .iter()
            .find(|d| d["kind"] == kind.as_str() && d["metadata"]["name"] == name.as_str())
            .unwrap_or_else(|| panic!("{path}: binding refers to missing {kind} {name}"));
        for r in role["rules"].as_array().into_iter().flatten() {
            rules.push(Rule {
                namespace: namespace.clone(),
                groups: strings(&r["apiGroups"]),
                resources: strings(&r["resources"]),
                verbs: strings(&r["verbs"]),
                names: strings(&r["resourceNames"]),
            });
        }
    }
    rules
}

fn allows(rule: &Rule, a: &Access) -> bool {
    let resource =
        if a.subresource.is_empty() { a.resource.clone() } else { format!("{}/{}", a.resource, a.subresource) };
    let any = |list: &[String], want: &str| list.iter().any(|x| x == "*" || x == want);
    rule.namespace.as_ref().is_none_or(|ns| *ns == a.namespace)
        && any(&rule.groups, &a.group)
        && any(&rule.resources, &resource)
        && any(&rule.verbs, &a.verb)
        && (rule.names.is_empty() || (!a.name.is_empty() && rule.names.contains(&a.name)))
}

#[test]
fn rbac_allows_exactly_what_matters_and_checker_is_strict() {
    let rules = rules_for("manifests/rbac-operator.yaml", "beeline-operator");
    // The checker itself must refuse what the role does not grant.
    let forbidden = Access {
        client: "beeline-operator".into(),
        verb: "delete".into(),
        group: "apiextensions.k8s.io".into(),
        resource: "customresourcedefinitions".into(),
        subresource: String::new(),
        namespace: String::new(),
        name: "ciliumnodes.cilium.io".into(),
    };
    assert!(!rules.iter().any(|r| allows(r, &forbidden)), "deleting CRDs must not be granted");
    let other_lease = Access {
        verb: "update".into(),
        group: "coordination.k8s.io".into(),
        resource: "leases".into(),
        namespace: "beeline-system".into(),
        name: "someone-elses-lock".into(),
        ..forbidden.clone()
    };
    assert!(!rules.iter().any(|r| allows(r, &other_lease)), "only our own Lease may be updated");
}

/// Kills a child process on drop (a failing assertion must not leave it running).
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Child {
    fn stop(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        self.0.wait().unwrap()
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs the real operator and agent against the in-memory API until the node has its pod CIDR
/// and the agent has installed its CNI configuration, then stops both; every request either made
/// must be allowed by its component's RBAC.
#[test]
fn operator_and_agent_calls_are_covered_by_their_rbac() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let server = ApiServer::default();
    let s = server.clone();
    runtime.block_on(async move {
        use k8s_openapi::api::core::v1::{Namespace, Node};
        let client = s.client();
        let ns: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "beeline-system"}})).unwrap();
        kube::Api::<Namespace>::all(client.clone()).create(&Default::default(), &ns).await.unwrap();
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "node-a"},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.10"}]}
        }))
        .unwrap();
        kube::Api::<Node>::all(client).create(&Default::default(), &node).await.unwrap();
    });
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let s = server.clone();
    runtime.spawn(async move { s.serve(listener).await });

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = write_kubeconfig(dir.path(), port);
    let spawn = |args: &[String]| {
        Child(
            Command::new(BIN)
                .args(args)
                .env("POD_NAMESPACE", "beeline-system")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let kc = kubeconfig.to_str().unwrap().to_string();
    let mut operator = spawn(&[
        "operator".into(),
        "--kubeconfig".into(),
        kc.clone(),
        "--set".into(),
        format!("operator-health-addr=127.0.0.1:{}", free_port()),
    ]);
    let conf_dir = dir.path().join("net.d");
    let bpf = BpffsDir::new("rbac");
    let mut agent = spawn(&[
        "agent".into(),
        "--set".into(),
        bpf.bpf_root_set(),
        "--kubeconfig".into(),
        kc,
        "--node-name".into(),
        "node-a".into(),
        "--set".into(),
        format!("agent-health-port={}", free_port()),
        "--set".into(),
        format!("agent-socket-path={}", dir.path().join("agent.sock").display()),
        "--set".into(),
        format!("state-dir={}", dir.path().join("state").display()),
        "--set".into(),
        format!("cni-conf-dir={}", conf_dir.display()),
        "--set".into(),
        format!("cni-bin-dir={}", dir.path().join("bin").display()),
    ]);
    // The operator leads and allocates the node's CIDR; the agent then writes its conflist.
    wait_until("the agent installed its CNI configuration", || conf_dir.join("05-beeline.conflist").exists());
    std::thread::sleep(Duration::from_millis(500));
    assert!(agent.stop().success(), "agent failed");
    assert!(operator.stop().success(), "operator failed");

    let accesses = server.accesses();
    for (component, manifest) in
        [("beeline-operator", "manifests/rbac-operator.yaml"), ("beeline-agent", "manifests/rbac-agent.yaml")]
    {
        let rules = rules_for(manifest, component);
        let calls: Vec<&Access> = accesses.iter().filter(|a| a.client.starts_with(component)).collect();
        assert!(calls.len() >= 5, "{component}'s requests were not recorded under its User-Agent: {calls:?}");
        let denied: Vec<&&Access> = calls.iter().filter(|a| !rules.iter().any(|r| allows(r, a))).collect();
        assert!(denied.is_empty(), "requests {component}'s RBAC ({manifest}) does not allow: {denied:#?}");
    }
}
