//! `beeline lab apply -f FILE|DIR` and `beeline lab exec POD -- CMD`.
//!
//! `apply` is `kubectl apply --server-side` for the lab: every document of every file (a
//! directory means its `.yaml`/`.yml`/`.json` files, not recursive, like kubectl), any kind the
//! API serves (resolved by discovery), Namespaces and CRDs first so what follows can use them.
//! `exec` runs a command inside a pod's network namespace (mounts untouched, like `nsenter --net`).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::discovery::Scope;
use kube::Client;
use serde_json::Value;

use super::cluster::StateArgs;
use crate::datapath::netns::NetNs;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Field manager of `lab apply`.
pub const FIELD_MANAGER: &str = "beeline-lab-apply";

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// Manifest files or directories (multi-document YAML or JSON).
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// The pod's namespace.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    pub pod: String,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// The files `paths` name: files as given, directories' manifest files sorted by name.
pub fn manifest_files(paths: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut inside: Vec<PathBuf> = std::fs::read_dir(path)?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml" || x == "json"))
                .collect();
            inside.sort();
            files.extend(inside);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

/// The objects of one manifest text: every non-empty document, `kind: List` items expanded.
pub fn parse_documents(text: &str) -> Result<Vec<Value>, String> {
    let docs: Vec<Value> = serde_saphyr::from_str_multiple(text).map_err(|e| e.to_string())?;
    let mut objects = Vec::new();
    for doc in docs.into_iter().filter(|d| !d.is_null()) {
        if doc["kind"].as_str().is_some_and(|k| k.ends_with("List")) && doc["items"].is_array() {
            objects.extend(doc["items"].as_array().cloned().unwrap_or_default());
        } else {
            objects.push(doc);
        }
    }
    for o in &objects {
        if o["apiVersion"].as_str().is_none()
            || o["kind"].as_str().is_none()
            || o["metadata"]["name"].as_str().is_none()
        {
            return Err(format!("a document lacks apiVersion, kind or metadata.name: {o}"));
        }
    }
    Ok(objects)
}

/// Namespaces first, then CRDs, then everything else in file order.
pub fn apply_order(objects: &mut [Value]) {
    objects.sort_by_key(|o| match o["kind"].as_str() {
        Some("Namespace") => 0,
        Some("CustomResourceDefinition") => 1,
        _ => 2,
    });
}

fn gvk(obj: &Value) -> GroupVersionKind {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    GroupVersionKind::gvk(group, version, obj["kind"].as_str().unwrap_or_default())
}

/// Server-side applies one object; returns `kind/name` for the report.
pub async fn apply_object(client: &Client, obj: &Value) -> Result<String, BoxError> {
    let gvk = gvk(obj);
    // A CR whose CRD was applied a moment ago may need a moment to be served.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (resource, caps) = loop {
        match kube::discovery::pinned_kind(client, &gvk).await {
            Ok(found) => break found,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(e) => return Err(format!("{}/{}: the API does not serve this kind: {e}", gvk.group, gvk.kind).into()),
        }
    };
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Namespaced => {
            let ns = obj["metadata"]["namespace"].as_str().unwrap_or("default");
            Api::namespaced_with(client.clone(), ns, &resource)
        }
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(name, &params, &Patch::Apply(obj)).await.map_err(|e| format!("{}/{name}: {e}", resource.plural))?;
    Ok(format!("{}/{name}", resource.kind.to_lowercase()))
}

pub async fn lab_client(state: &StateArgs) -> Result<Client, BoxError> {
    let kubeconfig = state.absolute()?.join("kubeconfig");
    if !kubeconfig.exists() {
        return Err(format!("no lab API at {} (is the lab up?)", kubeconfig.display()).into());
    }
    Ok(crate::runtime::kubeclient::client(Some(&kubeconfig), "lab").await?)
}

pub async fn apply(args: ApplyArgs) -> Result<(), BoxError> {
    let client = lab_client(&args.state).await?;
    let mut failed = 0;
    for file in manifest_files(&args.files)? {
        let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let mut objects = parse_documents(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        apply_order(&mut objects);
        for obj in &objects {
            match apply_object(&client, obj).await {
                Ok(what) => println!("{what} serverside-applied ({})", file.display()),
                Err(e) => {
                    eprintln!("error: {}: {e}", file.display());
                    failed += 1;
                }
            }
        }
    }
    if failed > 0 {
        return Err(format!("{failed} object(s) not applied").into());
    }
    Ok(())
}

/// The network namespace of `namespace/pod`, from the kubelet's annotation.
pub async fn pod_netns(client: &Client, namespace: &str, pod: &str) -> Result<String, BoxError> {
    let p = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), namespace).get(pod).await?;
    let netns = p
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(super::kubelet::NETNS_ANNOTATION))
        .cloned()
        .ok_or_else(|| format!("pod {namespace}/{pod} has no sandbox yet (not started by a lab kubelet)"))?;
    if !Path::new(crate::datapath::netns::NETNS_RUN_DIR).join(&netns).exists() {
        return Err(format!("pod {namespace}/{pod}: its namespace {netns} does not exist (pod not running)").into());
    }
    Ok(netns)
}

/// Replaces this process with `command` inside the pod's network namespace.
pub async fn exec(args: ExecArgs) -> Result<(), BoxError> {
    super::require_root("`beeline lab exec`")?;
    let client = lab_client(&args.state).await?;
    let netns = pod_netns(&client, &args.namespace, &args.pod).await?;
    let mut cmd = NetNs::open(&netns)?.command(&args.command[0])?;
    cmd.args(&args.command[1..]);
    // Only returns on failure.
    let err = cmd.exec();
    Err(format!("cannot run {:?} in {netns}: {err}", args.command[0]).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_lists_and_order() {
        let text = "# comment\napiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: b}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: ns}\n";
        let mut objects = parse_documents(text).unwrap();
        apply_order(&mut objects);
        let kinds: Vec<&str> = objects.iter().map(|o| o["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["Namespace", "Service", "ConfigMap"]);
        assert!(parse_documents("apiVersion: v1\nkind: Pod\n").unwrap_err().contains("metadata.name"));
    }

    #[test]
    fn every_example_manifest_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let files = manifest_files(&[dir]).unwrap();
        assert!(files.len() >= 5, "{files:?}");
        for f in files {
            let objects = parse_documents(&std::fs::read_to_string(&f).unwrap()).unwrap();
            assert!(!objects.is_empty(), "{}", f.display());
        }
    }

    #[tokio::test]
    async fn apply_creates_then_updates_any_served_kind() {
        let (_server, client) = crate::controllers::test_util::api_with_crds().await;
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: demo}\nspec:\n  replicas: 1\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: web, image: echo}]}\n";
        let mut objects = parse_documents(text).unwrap();
        apply_order(&mut objects);
        for o in &objects {
            apply_object(&client, o).await.unwrap();
        }
        // Applied again with a change: updated in place.
        let changed = text.replace("replicas: 1", "replicas: 3");
        for o in &parse_documents(&changed).unwrap() {
            assert!(apply_object(&client, o).await.unwrap().contains('/'));
        }
        let d =
            Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), "demo").get("web").await.unwrap();
        assert_eq!(d.spec.unwrap().replicas, Some(3));
        // Every example in examples/ is accepted by the API (CRs validated against the CRDs).
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        for f in manifest_files(&[dir]).unwrap() {
            let mut objects = parse_documents(&std::fs::read_to_string(&f).unwrap()).unwrap();
            apply_order(&mut objects);
            for o in &objects {
                if let Some(ns) = o["metadata"]["namespace"].as_str() {
                    let ns_obj = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
                    apply_object(&client, &ns_obj).await.unwrap();
                }
                apply_object(&client, o).await.unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            }
        }
    }
}
