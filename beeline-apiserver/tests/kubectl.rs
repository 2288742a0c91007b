//! The real `/usr/bin/kubectl` against the HTTP listener: get, get -o yaml, apply (client-side and
//! server-side), label, wait and delete, on a core type and on a custom resource.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::CustomResourceExt;
use serde_json::{json, Value};

struct Kubectl {
    home: tempfile::TempDir,
    server: String,
}

struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Kubectl {
    fn new(port: u16) -> Self {
        let home = tempfile::tempdir().expect("temp HOME");
        let server = format!("http://127.0.0.1:{port}");
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: {server}\ncontexts:\n- name: lab\n  context:\n    cluster: lab\n    user: lab\n    namespace: default\ncurrent-context: lab\nusers:\n- name: lab\n  user: {{}}\n"
        );
        std::fs::write(home.path().join("kubeconfig"), kubeconfig).expect("write kubeconfig");
        Kubectl { home, server }
    }

    fn file(&self, name: &str, content: &serde_json::Value) -> PathBuf {
        let path = self.home.path().join(name);
        std::fs::write(&path, serde_json::to_vec_pretty(content).unwrap()).unwrap();
        path
    }

    /// Runs kubectl (bounded by `timeout`) on a blocking thread so the server keeps serving.
    async fn run(&self, args: &[&str]) -> Output {
        let home: PathBuf = self.home.path().into();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let server = self.server.clone();
        let out = tokio::task::spawn_blocking(move || {
            Command::new("/usr/bin/timeout")
                .arg("60")
                .arg("/usr/bin/kubectl")
                .args(&args)
                .arg(format!("--cache-dir={}", home.join("cache").display()))
                .env_clear()
                .env("HOME", &home)
                .env("PATH", "/usr/bin:/bin")
                .env("KUBECONFIG", home.join("kubeconfig"))
                .output()
                .expect("run kubectl")
        })
        .await
        .unwrap();
        let o = Output {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into(),
            stderr: String::from_utf8_lossy(&out.stderr).into(),
        };
        let _ = server;
        o
    }

    async fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args).await;
        assert!(o.ok, "kubectl {args:?} failed\nstdout: {}\nstderr: {}", o.stdout, o.stderr);
        o.stdout
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

async fn start() -> (beeline_apiserver::ApiServer, Kubectl, tokio::task::JoinHandle<std::io::Result<()>>) {
    let server = server();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = server.spawn(listener);
    (server, Kubectl::new(port), handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_core_type_verbs() {
    let (server, k, handle) = start().await;
    let cm = |v: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c1", "namespace": "default"}, "data": {"k": v}});
    let f1 = k.file("cm1.json", &cm("v1"));
    assert!(k.ok(&["apply", "-f", path_str(&f1)]).await.contains("configmap/c1 created"));
    assert!(k.ok(&["apply", "-f", path_str(&f1)]).await.contains("configmap/c1 unchanged"));
    let f2 = k.file("cm2.json", &cm("v2"));
    assert!(k.ok(&["apply", "-f", path_str(&f2)]).await.contains("configmap/c1 configured"));

    let table = k.ok(&["get", "configmaps"]).await;
    assert!(table.starts_with("NAME") && table.contains("c1"), "{table}");
    let yaml = k.ok(&["get", "cm", "c1", "-o", "yaml"]).await;
    assert!(yaml.contains("k: v2") && yaml.contains("kind: ConfigMap"), "{yaml}");

    assert!(k.ok(&["label", "cm", "c1", "env=test"]).await.contains("configmap/c1 labeled"));
    assert_eq!(k.ok(&["get", "cm", "-l", "env=test", "-o", "name"]).await.trim(), "configmap/c1");
    assert_eq!(k.ok(&["get", "cm", "-l", "env!=test", "-o", "name"]).await.trim(), "");

    // Server-side apply on a core type, then a second manager's conflicting apply.
    let ss = k.file(
        "ss.json",
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ss"}, "data": {"a": "1"}}),
    );
    assert!(k.ok(&["apply", "--server-side", "-f", path_str(&ss)]).await.contains("serverside-applied"));
    let clash = k.file(
        "clash.json",
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ss"}, "data": {"a": "2"}}),
    );
    let o = k.run(&["apply", "--server-side", "--field-manager=other", "-f", path_str(&clash)]).await;
    assert!(!o.ok && o.stderr.contains("conflict"), "{}", o.stderr);
    k.ok(&["apply", "--server-side", "--field-manager=other", "--force-conflicts", "-f", path_str(&clash)]).await;
    assert_eq!(k.ok(&["get", "cm", "ss", "-o", "jsonpath={.data.a}"]).await, "2");

    // wait: a condition set later by another client is seen through the watch.
    let pod = k.file(
        "pod.json",
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
    );
    k.ok(&["apply", "-f", path_str(&pod)]).await;
    let pods: Api<Pod> = Api::default_namespaced(server.client());
    let setter = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let status = json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}});
        pods.patch_status("p", &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
    });
    assert!(k.ok(&["wait", "--for=condition=Ready", "pod/p", "--timeout=30s"]).await.contains("condition met"));
    setter.await.unwrap();
    let pods_table = k.ok(&["get", "pods"]).await;
    assert!(pods_table.contains("Running"), "{pods_table}");

    assert!(k.ok(&["delete", "cm", "c1"]).await.contains("deleted"));
    let o = k.run(&["get", "cm", "c1"]).await;
    assert!(!o.ok && o.stderr.contains("NotFound"), "{}", o.stderr);
    handle.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_custom_resource_verbs() {
    let (server, k, handle) = start().await;
    let crd = k.file("crd.json", &serde_json::to_value(Widget::crd()).unwrap());
    k.ok(&["apply", "--server-side", "-f", path_str(&crd)]).await;
    let waited = k.ok(&["wait", "--for=condition=Established", "crd/widgets.test.beeline.io", "--timeout=30s"]).await;
    assert!(waited.contains("condition met"), "{waited}");

    let w = |name: &str, replicas: i32| json!({"apiVersion": "test.beeline.io/v1", "kind": "Widget", "metadata": {"name": name}, "spec": {"replicas": replicas}});
    let a = k.file("a.json", &w("a", 1));
    assert!(k
        .ok(&["apply", "--server-side", "-f", path_str(&a)])
        .await
        .contains("widget.test.beeline.io/a serverside-applied"));
    let b = k.file("b.json", &w("b", 2));
    assert!(k.ok(&["apply", "-f", path_str(&b)]).await.contains("widget.test.beeline.io/b created"));
    let b3 = k.file("b3.json", &w("b", 3));
    assert!(k.ok(&["apply", "-f", path_str(&b3)]).await.contains("configured"));

    let list = k.ok(&["get", "widgets"]).await;
    assert!(list.contains("a") && list.contains("b"), "{list}");
    let short = k.ok(&["get", "wdg", "-o", "name"]).await;
    assert_eq!(short.lines().collect::<Vec<_>>(), ["widget.test.beeline.io/a", "widget.test.beeline.io/b"]);
    let yaml = k.ok(&["get", "widget", "b", "-o", "yaml"]).await;
    assert!(yaml.contains("replicas: 3") && yaml.contains("apiVersion: test.beeline.io/v1"), "{yaml}");

    // An invalid object is refused by the server with the field named.
    let bad = k.file("bad.json", &json!({"apiVersion": "test.beeline.io/v1", "kind": "Widget", "metadata": {"name": "bad"}, "spec": {"replicas": "x"}}));
    let o = k.run(&["apply", "-f", path_str(&bad)]).await;
    assert!(!o.ok && o.stderr.contains("Invalid") && o.stderr.contains("spec.replicas"), "{}", o.stderr);

    k.ok(&["label", "widget", "a", "tier=gold"]).await;
    assert_eq!(k.ok(&["get", "widgets", "-l", "tier=gold", "-o", "name"]).await.trim(), "widget.test.beeline.io/a");

    // The change made through kubectl is visible to a kube client.
    let widgets: Api<Widget> = Api::default_namespaced(server.client());
    assert_eq!(widgets.get("b").await.unwrap().spec.replicas, 3);

    assert!(k.ok(&["delete", "widget", "a", "b"]).await.contains("deleted"));
    assert_eq!(k.ok(&["get", "widgets", "-o", "name"]).await.trim(), "");
    // kubectl's requests are in the access record under its User-Agent.
    assert!(server
        .accesses()
        .iter()
        .any(|a| a.client.starts_with("kubectl") && a.verb == "patch" && a.resource == "widgets"));
    handle.abort();
}

/// The header and the cells of each row of `kubectl get` output, cut at the header's column
/// starts (so blank cells stay in place).
fn table_rows(out: &str) -> Vec<Vec<String>> {
    let header = out.lines().next().unwrap_or("");
    let starts: Vec<usize> = header
        .char_indices()
        .filter(|&(i, c)| c != ' ' && (i == 0 || header[..i].ends_with(' ')))
        .map(|(i, _)| i)
        .collect();
    out.lines()
        .map(|line| {
            let ends = starts.iter().skip(1).copied().chain([usize::MAX]);
            starts
                .iter()
                .zip(ends)
                .map(|(&a, b)| line.get(a..b.min(line.len())).unwrap_or("").trim().to_string())
                .collect()
        })
        .collect()
}

/// The row whose first cell is `name`, with the age cell (at `age_at`) checked and dropped.
fn row_without_age(rows: &[Vec<String>], name: &str, age_at: usize) -> Vec<String> {
    let mut row = rows.iter().find(|r| r.first().is_some_and(|n| n == name)).cloned().unwrap_or_default();
    assert!(row.len() > age_at, "no row {name} in {rows:?}");
    let age = row.remove(age_at);
    assert!(age.ends_with('s') && age[..age.len() - 1].parse::<u32>().is_ok(), "age {age:?} in {row:?}");
    row
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_prints_server_columns() {
    let (_server, k, handle) = start().await;

    // A Node: status from the Ready condition, roles from labels, INTERNAL-IP only with -o wide.
    let node = k.file(
        "node.json",
        &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1",
            "labels": {"node-role.kubernetes.io/control-plane": "", "kubernetes.io/hostname": "n1"}}}),
    );
    k.ok(&["apply", "-f", path_str(&node)]).await;
    let node_status = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}],
        "nodeInfo": {"kubeletVersion": "v1.31.0"}, "addresses": [{"type": "InternalIP", "address": "192.168.7.2"}]}});
    k.ok(&["patch", "node", "n1", "--subresource=status", "--type=merge", "-p", &node_status.to_string()]).await;
    let rows = table_rows(&k.ok(&["get", "nodes"]).await);
    assert_eq!(rows[0], ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]);
    assert_eq!(row_without_age(&rows, "n1", 3), ["n1", "Ready", "control-plane", "v1.31.0"]);
    let wide = table_rows(&k.ok(&["get", "nodes", "-o", "wide"]).await);
    assert_eq!(wide[0], ["NAME", "STATUS", "ROLES", "AGE", "VERSION", "INTERNAL-IP", "EXTERNAL-IP"]);
    assert_eq!(row_without_age(&wide, "n1", 3), ["n1", "Ready", "control-plane", "v1.31.0", "192.168.7.2", "<none>"]);

    // A LoadBalancer Service without ingress is <pending>; a ClusterIP one has <none>.
    let svc = |name: &str, ty: &str, port: Value| {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"type": ty, "clusterIP": "10.96.0.10", "ports": [port], "selector": {"app": "x"}}})
    };
    let lb = k.file("lb.json", &svc("lb", "LoadBalancer", json!({"port": 80, "protocol": "TCP", "nodePort": 30080})));
    k.ok(&["apply", "-f", path_str(&lb)]).await;
    let cip = k.file("cip.json", &svc("cip", "ClusterIP", json!({"port": 53, "protocol": "UDP"})));
    k.ok(&["apply", "-f", path_str(&cip)]).await;
    let rows = table_rows(&k.ok(&["get", "services"]).await);
    assert_eq!(rows[0], ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]);
    assert_eq!(row_without_age(&rows, "lb", 5), ["lb", "LoadBalancer", "10.96.0.10", "<pending>", "80:30080/TCP"]);
    assert_eq!(row_without_age(&rows, "cip", 5), ["cip", "ClusterIP", "10.96.0.10", "<none>", "53/UDP"]);

    // A custom resource: the CRD's printer columns, with condition filters, a priority-1 column
    // and a date column that the server humanizes. Missing values are blank, as with a real server.
    let crd = k.file("gadget-crd.json", &gadget_crd());
    k.ok(&["apply", "-f", path_str(&crd)]).await;
    k.ok(&["wait", "--for=condition=Established", "crd/gadgets.test.beeline.io", "--timeout=30s"]).await;
    for (name, replicas) in [("g1", 3), ("g2", 1)] {
        let g = k.file(
            &format!("{name}.json"),
            &json!({"apiVersion": "test.beeline.io/v1", "kind": "Gadget", "metadata": {"name": name},
                "spec": {"replicas": replicas, "parts": [{"name": format!("{name}-first")}]}}),
        );
        k.ok(&["apply", "-f", path_str(&g)]).await;
    }
    let status = json!({"status": {"conditions": [
        {"type": "Synced", "status": "False", "message": "wrong-one"},
        {"type": "Ready", "status": "True", "message": "all-good"}]}});
    k.ok(&["patch", "gadget", "g1", "--subresource=status", "--type=merge", "-p", &status.to_string()]).await;
    let rows = table_rows(&k.ok(&["get", "gadgets"]).await);
    assert_eq!(rows[0], ["NAME", "READY", "MESSAGE", "REPLICAS", "AGE"]);
    assert_eq!(row_without_age(&rows, "g1", 4), ["g1", "True", "all-good", "3"]);
    assert_eq!(row_without_age(&rows, "g2", 4), ["g2", "", "", "1"]);
    let wide = table_rows(&k.ok(&["get", "gadget", "g1", "-o", "wide"]).await);
    assert_eq!(wide[0], ["NAME", "READY", "MESSAGE", "REPLICAS", "AGE", "FIRST-PART"]);
    assert_eq!(row_without_age(&wide, "g1", 4), ["g1", "True", "all-good", "3", "g1-first"]);
    handle.abort();
}

/// A cluster-scoped CRD whose printer columns use the JSONPath forms Cilium's CRDs use.
fn gadget_crd() -> Value {
    let cond = |ty: &str, field: &str| format!(".status.conditions[?(@.type==\"{ty}\")].{field}");
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "gadgets.test.beeline.io"},
        "spec": {
            "group": "test.beeline.io", "scope": "Cluster",
            "names": {"kind": "Gadget", "plural": "gadgets", "singular": "gadget", "listKind": "GadgetList"},
            "versions": [{
                "name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
                "additionalPrinterColumns": [
                    {"name": "Ready", "type": "string", "jsonPath": cond("Ready", "status")},
                    {"name": "Message", "type": "string", "jsonPath": cond("Ready", "message")},
                    {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    {"name": "First-Part", "type": "string", "priority": 1, "jsonPath": ".spec.parts[0].name"},
                ],
            }],
        },
    })
}
