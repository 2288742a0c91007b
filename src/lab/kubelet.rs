//! The kubelet emulation: one per lab node, inside the supervisor.
//!
//! For each Pod bound to its node (`spec.nodeName`) it does what a kubelet with a CRI runtime
//! does: creates the pod's network namespace (the sandbox), runs the CNI plugins from the
//! conflist the node's agent installed ([`super::cni_runtime`], executed inside the node's
//! namespace), starts the pod's workload ([`super::podserver`]) and reports `status.podIP(s)`,
//! `hostIP`, `phase: Running` and the Ready condition. A failed ADD leaves the pod `Pending` with
//! its container waiting in `ContainerCreating`, tears the sandbox down again and posts a
//! `FailedCreatePodSandBox` Event with the plugin's message; it is retried with a growing delay.
//!
//! Deletion is graceful like the real thing: the kubelet puts its finalizer on pods it runs, so a
//! deleted pod first becomes terminating (EndpointSlices show it as such); the kubelet then stops
//! the workload, runs CNI DEL, removes the namespace and the finalizer. On supervisor shutdown it
//! tears its sandboxes down but leaves the pods in the API, so a restarted lab starts them again.
//! Sandboxes whose CNI ADD is still cached but whose pod is gone (a crashed supervisor's, or a
//! DEL that failed while the agent was down) get their DEL later, so no address leaks.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::cni_runtime::{container_id, result_ips, Attachment, CniDirs, CniFailure, Runtime};
use super::plan::NodePlan;
use super::podserver::{self, Identity, PodServer};
use crate::datapath::netns::{run_ip, NetNs, NETNS_RUN_DIR};

/// The kubelet's finalizer on the pods it runs.
pub const FINALIZER: &str = "beeline.io/lab-kubelet";
/// The annotation naming a pod's network namespace (for `beeline lab exec` and users).
pub const NETNS_ANNOTATION: &str = "beeline.io/lab-netns";
/// How often a kubelet looks at its pods.
pub const PERIOD: Duration = Duration::from_millis(300);
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(20);
/// How often leftover sandboxes are retried (their DEL needs the node's agent).
const ORPHAN_RETRY: Duration = Duration::from_secs(2);

/// The network namespace of a pod: `<lab prefix>-pod-<12 characters of its UID>`.
pub fn pod_netns(prefix: &str, pod_uid: &str) -> String {
    let id = container_id(pod_uid);
    format!("{prefix}-pod-{}", &id[..id.len().min(12)])
}

/// The `status` a running pod reports.
pub fn running_status(pod: &Pod, host_ip: IpAddr, pod_ips: &[IpAddr], started: &str) -> Value {
    let cid = container_id(pod.metadata.uid.as_deref().unwrap_or_default());
    let containers: Vec<Value> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| {
            json!({"name": c.name, "image": c.image.clone().unwrap_or_default(), "imageID": "",
                   "containerID": format!("beeline-lab://{cid}"), "ready": true, "started": true,
                   "restartCount": 0, "state": {"running": {"startedAt": started}}})
        })
        .collect();
    let conditions: Vec<Value> =
        ["PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready", "PodScheduled"]
            .map(|t| json!({"type": t, "status": "True", "lastTransitionTime": started}))
            .to_vec();
    json!({
        "phase": "Running",
        "hostIP": host_ip.to_string(),
        "hostIPs": [{"ip": host_ip.to_string()}],
        "podIP": pod_ips.first().map(ToString::to_string),
        "podIPs": pod_ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect::<Vec<_>>(),
        "startTime": started,
        "conditions": conditions,
        "containerStatuses": containers,
    })
}

/// The `status` of a pod whose sandbox could not be created.
pub fn waiting_status(pod: &Pod, host_ip: IpAddr, message: &str) -> Value {
    let containers: Vec<Value> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| {
            json!({"name": c.name, "image": c.image.clone().unwrap_or_default(), "imageID": "", "ready": false,
                   "started": false, "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}})
        })
        .collect();
    json!({
        "phase": "Pending",
        "hostIP": host_ip.to_string(),
        "hostIPs": [{"ip": host_ip.to_string()}],
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "PodReadyToStartContainers", "status": "False"},
            {"type": "Ready", "status": "False", "reason": "ContainersNotReady", "message": message},
        ],
        "containerStatuses": containers,
    })
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().round(k8s_openapi::jiff::Unit::Second).unwrap_or_default().to_string()
}

struct RunningPod {
    namespace: String,
    name: String,
    netns: String,
    att: Attachment,
    server: Option<PodServer>,
}

struct Backoff {
    next: Instant,
    delay: Duration,
    last_message: String,
}

/// One node's kubelet.
pub struct Kubelet {
    client: Client,
    node: NodePlan,
    prefix: String,
    runtime: std::sync::Arc<Runtime>,
    running: HashMap<String, RunningPod>,
    failing: HashMap<String, Backoff>,
    orphans_next: Instant,
}

impl Kubelet {
    pub fn new(client: Client, node: NodePlan, prefix: &str) -> Kubelet {
        let runtime = Runtime {
            node_netns: node.netns.clone(),
            dirs: CniDirs {
                conf_dir: node.cni_conf_dir(),
                bin_dir: node.cni_bin_dir(),
                cache_dir: node.cni_cache_dir(),
            },
        };
        Kubelet {
            client,
            node,
            prefix: prefix.to_string(),
            runtime: std::sync::Arc::new(runtime),
            running: HashMap::new(),
            failing: HashMap::new(),
            orphans_next: Instant::now(),
        }
    }

    /// Passes every [`PERIOD`] until `shutdown`, then tears every sandbox down.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let span = tracing::info_span!("kubelet", node = %self.node.name);
        async {
            let mut tick = tokio::time::interval(PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {
                        if let Err(e) = self.pass().await {
                            tracing::warn!(error = %e, "kubelet pass failed; retrying");
                        }
                    }
                }
            }
            let uids: Vec<String> = self.running.keys().cloned().collect();
            for uid in uids {
                self.stop(&uid).await;
            }
            tracing::info!("kubelet stopped; every pod sandbox removed");
        }
        .instrument(span)
        .await
    }

    /// One look at every pod of this node.
    pub async fn pass(&mut self) -> Result<(), kube::Error> {
        let pods: Vec<Pod> = Api::<Pod>::all(self.client.clone())
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(self.node.name.as_str()))
            .collect();
        let live: HashMap<String, &Pod> =
            pods.iter().map(|p| (p.metadata.uid.clone().unwrap_or_default(), p)).collect();
        // Pods that are gone or being deleted: stop them, then let the deletion finish.
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|uid| live.get(*uid).is_none_or(|p| p.metadata.deletion_timestamp.is_some()))
            .cloned()
            .collect();
        for uid in gone {
            self.stop(&uid).await;
        }
        self.failing.retain(|uid, _| live.contains_key(uid));
        self.release_orphans(&live).await;
        for pod in &pods {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            if pod.metadata.deletion_timestamp.is_some() {
                if pod.finalizers().iter().any(|f| f == FINALIZER) {
                    self.release(pod).await?;
                }
                continue;
            }
            let finished = matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"));
            if self.running.contains_key(&uid) || finished {
                continue;
            }
            if self.failing.get(&uid).is_some_and(|b| Instant::now() < b.next) {
                continue;
            }
            self.start(pod).await?;
        }
        Ok(())
    }

    async fn start(&mut self, pod: &Pod) -> Result<(), kube::Error> {
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let api = Api::<Pod>::namespaced(self.client.clone(), &ns);
        let netns = pod_netns(&self.prefix, &uid);
        if !pod.finalizers().iter().any(|f| f == FINALIZER) {
            let mut finalizers = pod.finalizers().to_vec();
            finalizers.push(FINALIZER.to_string());
            let patch = json!({"metadata": {"finalizers": finalizers, "annotations": {NETNS_ANNOTATION: netns}}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await?;
        }
        let att = Attachment {
            container_id: container_id(&uid),
            netns: Path::new(NETNS_RUN_DIR).join(&netns),
            ifname: "eth0".into(),
            pod_namespace: ns.clone(),
            pod_name: name.clone(),
            pod_uid: uid.clone(),
        };
        let runtime = self.runtime.clone();
        let (netns_c, att_c) = (netns.clone(), att.clone());
        let added = tokio::task::spawn_blocking(move || sandbox_up(&runtime, &netns_c, &att_c))
            .await
            .unwrap_or_else(|e| Err(format!("sandbox task panicked: {e}")));
        let host_ip = IpAddr::V4(self.node.ipv4);
        let result = match added {
            Ok(result) => result,
            Err(message) => {
                self.failed(pod, host_ip, &message).await;
                return Ok(());
            }
        };
        let ips = result_ips(&result);
        let identity = Identity { pod: name.clone(), namespace: ns.clone(), node: self.node.name.clone() };
        let (tcp, udp) = podserver::ports(pod);
        let server = match PodServer::start(&netns, identity, &tcp, &udp) {
            Ok(server) => Some(server),
            Err(e) => {
                tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "workload did not start");
                None
            }
        };
        let status = running_status(pod, host_ip, &ips, &now());
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({ "status": status }))).await?;
        tracing::info!(pod = %format!("{ns}/{name}"), %netns, ips = ?ips, "pod running");
        self.failing.remove(&uid);
        self.running.insert(uid, RunningPod { namespace: ns, name, netns, att, server });
        Ok(())
    }

    /// Records a failed sandbox: Pending status, an Event when the message is new, a later retry.
    async fn failed(&mut self, pod: &Pod, host_ip: IpAddr, message: &str) {
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let entry = self.failing.entry(uid).or_insert(Backoff {
            next: Instant::now(),
            delay: RETRY_FIRST / 2,
            last_message: String::new(),
        });
        entry.delay = (entry.delay * 2).min(RETRY_MAX);
        entry.next = Instant::now() + entry.delay;
        if entry.last_message == message {
            return;
        }
        entry.last_message = message.to_string();
        tracing::warn!(pod = %format!("{ns}/{name}"), %message, "pod sandbox failed");
        let full = format!("Failed to create pod sandbox: {message}");
        let api = Api::<Pod>::namespaced(self.client.clone(), &ns);
        let status = waiting_status(pod, host_ip, &full);
        if let Err(e) =
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({ "status": status }))).await
        {
            tracing::warn!(error = %e, "cannot report the pod's status");
        }
        let event: Event = serde_json::from_value(json!({
            "metadata": {"generateName": format!("{name}."), "namespace": ns},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": name, "namespace": ns, "uid": pod.metadata.uid},
            "reason": "FailedCreatePodSandBox",
            "message": full,
            "type": "Warning",
            "count": 1,
            "firstTimestamp": now(),
            "lastTimestamp": now(),
            "source": {"component": "kubelet", "host": self.node.name},
            "reportingComponent": "kubelet",
            "reportingInstance": self.node.name,
        }))
        .expect("a valid Event");
        if let Err(e) = Api::<Event>::namespaced(self.client.clone(), &ns).create(&PostParams::default(), &event).await
        {
            tracing::warn!(error = %e, "cannot post the Event");
        }
    }

    /// Stops a pod's workload and removes its sandbox (CNI DEL, namespace); the API is untouched.
    async fn stop(&mut self, uid: &str) {
        let Some(mut pod) = self.running.remove(uid) else { return };
        if let Some(server) = pod.server.take() {
            server.stop();
        }
        let runtime = self.runtime.clone();
        let (netns, att) = (pod.netns.clone(), pod.att.clone());
        let down = tokio::task::spawn_blocking(move || sandbox_down(&runtime, &netns, &att)).await;
        match down {
            Ok(Ok(())) => tracing::info!(pod = %format!("{}/{}", pod.namespace, pod.name), "pod stopped"),
            Ok(Err(e)) => {
                tracing::warn!(pod = %format!("{}/{}", pod.namespace, pod.name), error = %e, "pod stopped; CNI DEL failed")
            }
            Err(e) => tracing::warn!(error = %e, "sandbox teardown panicked"),
        }
    }

    /// CNI DEL for attachments whose ADD is still cached but whose pod this kubelet neither runs
    /// nor is going to start: sandboxes a crashed supervisor left (their pods gone from the API
    /// meanwhile), or a DEL that failed because the agent was down. Without it their addresses
    /// stay allocated until `lab down`. Retried every [`ORPHAN_RETRY`] until the DEL succeeds;
    /// then the sandbox's namespace goes too.
    async fn release_orphans(&mut self, live: &HashMap<String, &Pod>) {
        if Instant::now() < self.orphans_next {
            return;
        }
        self.orphans_next = Instant::now() + ORPHAN_RETRY;
        let wanted: std::collections::HashSet<String> = live
            .iter()
            .filter(|(_, p)| p.metadata.deletion_timestamp.is_none())
            .map(|(uid, _)| container_id(uid))
            .chain(self.running.values().map(|r| r.att.container_id.clone()))
            .collect();
        let orphans: Vec<(String, Option<std::path::PathBuf>)> =
            self.runtime.cached().into_iter().filter(|(id, _)| !wanted.contains(id)).collect();
        if orphans.is_empty() || self.runtime.check_config().is_err() {
            return;
        }
        for (id, sandbox) in orphans {
            let runtime = self.runtime.clone();
            let prefix = format!("{}-pod-", self.prefix);
            let att = Attachment {
                container_id: id.clone(),
                netns: sandbox.clone().unwrap_or_default(),
                ifname: "eth0".into(),
                pod_namespace: String::new(),
                pod_name: String::new(),
                pod_uid: String::new(),
            };
            let released = tokio::task::spawn_blocking(move || -> Result<Option<String>, String> {
                runtime.del(&att).map_err(|e| e.to_string())?;
                let ns = sandbox.and_then(|s| Some(s.file_name()?.to_string_lossy().into_owned()));
                match ns.filter(|n| n.starts_with(&prefix) && Path::new(NETNS_RUN_DIR).join(n).exists()) {
                    Some(n) => NetNs::delete(&n).map(|_| Some(n)).map_err(|e| e.to_string()),
                    None => Ok(None),
                }
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            match released {
                Ok(netns) => tracing::info!(container = %id, ?netns, "released a leftover pod sandbox (CNI DEL)"),
                Err(e) => tracing::debug!(container = %id, error = %e, "leftover sandbox not released yet; retrying"),
            }
        }
    }

    /// Lets the API finish deleting a pod this kubelet no longer runs.
    async fn release(&self, pod: &Pod) -> Result<(), kube::Error> {
        let finalizers: Vec<&String> = pod.finalizers().iter().filter(|f| *f != FINALIZER).collect();
        let api = Api::<Pod>::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        match api
            .patch(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": finalizers}})),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Creates the pod namespace and runs CNI ADD; on failure nothing is left behind.
fn sandbox_up(runtime: &Runtime, netns: &str, att: &Attachment) -> Result<Value, String> {
    runtime.check_config().map_err(|e| e.to_string())?;
    if Path::new(NETNS_RUN_DIR).join(netns).exists() {
        // Left by a supervisor that did not shut down cleanly: release and start afresh.
        let _ = runtime.del(att);
        NetNs::delete(netns).map_err(|e| format!("removing the stale namespace {netns}: {e}"))?;
    }
    NetNs::create(netns).map_err(|e| format!("creating the pod namespace: {e}"))?;
    run_ip(&["-n", netns, "link", "set", "lo", "up"]).map_err(|e| e.to_string())?;
    match runtime.add(att) {
        Ok(result) => Ok(result),
        Err(e) => {
            // As a CRI runtime does after a failed ADD: DEL what may have been set up, drop the sandbox.
            if !matches!(e, CniFailure::NoConfig(_)) {
                let _ = runtime.del(att);
            }
            let _ = NetNs::delete(netns);
            Err(e.to_string())
        }
    }
}

fn sandbox_down(runtime: &Runtime, netns: &str, att: &Attachment) -> Result<(), String> {
    let del = runtime.del(att).map_err(|e| e.to_string());
    if Path::new(NETNS_RUN_DIR).join(netns).exists() {
        NetNs::delete(netns).map_err(|e| format!("removing {netns}: {e}"))?;
    }
    del
}

/// Removes pod namespaces a crashed supervisor left (their pods are started afresh), except those
/// in `keep` (a kubelet releases them with a CNI DEL first).
pub fn sweep_pod_namespaces(prefix: &str, keep: &std::collections::HashSet<String>) -> Vec<String> {
    let pattern = format!("{prefix}-pod-");
    let names: Vec<String> = std::fs::read_dir(NETNS_RUN_DIR)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&pattern) && !keep.contains(n))
                .collect()
        })
        .unwrap_or_default();
    names.into_iter().filter(|n| NetNs::delete(n).is_ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "default", "uid": "0123abcd-4567-89ef-0123-456789abcdef"},
            "spec": {"nodeName": "kind-worker", "containers": [{"name": "web", "image": "echo"}]}
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn without_a_cni_configuration_a_pod_stays_pending_with_an_event() {
        let dir = tempfile::tempdir().unwrap();
        let plan = crate::lab::plan::LabPlan::new(&crate::lab::plan::LabRequest {
            name: "kind".into(),
            nodes: 2,
            state_dir: dir.path().to_path_buf(),
            bpffs: "/sys/fs/bpf".into(),
            values: Default::default(),
        })
        .unwrap();
        let server = beeline_apiserver::ApiServer::default();
        let client = server.client();
        let pods = Api::<Pod>::namespaced(client.clone(), "default");
        let mut spec = pod();
        spec.metadata.uid = None;
        pods.create(&PostParams::default(), &spec).await.unwrap();
        // The worker's agent has written no conflist: no sandbox is attempted.
        let mut kubelet = Kubelet::new(client.clone(), plan.nodes[1].clone(), &plan.prefix);
        kubelet.pass().await.unwrap();
        let p = pods.get("web-1").await.unwrap();
        assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Pending"));
        assert!(!super::super::workloads::is_ready(&p));
        assert!(p.finalizers().iter().any(|f| f == FINALIZER));
        let events = Api::<Event>::namespaced(client.clone(), "default").list(&ListParams::default()).await.unwrap();
        let e = &events.items[0];
        assert_eq!(e.reason.as_deref(), Some("FailedCreatePodSandBox"));
        let message = e.message.clone().unwrap();
        assert!(message.contains("network is not ready: no CNI configuration file"), "{message}");
        assert_eq!(e.involved_object.uid, p.metadata.uid);
        // A second pass within the back-off neither retries nor repeats the Event.
        kubelet.pass().await.unwrap();
        assert_eq!(
            Api::<Event>::namespaced(client, "default").list(&ListParams::default()).await.unwrap().items.len(),
            1
        );
        // Deleting it: the kubelet never ran it, so it only releases its finalizer.
        pods.delete("web-1", &Default::default()).await.unwrap();
        kubelet.pass().await.unwrap();
        assert!(pods.get_opt("web-1").await.unwrap().is_none());
    }

    #[test]
    fn pod_namespace_names_are_short_and_derive_from_the_uid() {
        assert_eq!(pod_netns("bl-1a2b3c", "0123abcd-4567-89ef"), "bl-1a2b3c-pod-0123abcd4567");
        assert_ne!(pod_netns("bl-x", "aaaaaaaa-0001"), pod_netns("bl-x", "aaaaaaaa-0002"));
    }

    #[test]
    fn running_status_is_ready_with_addresses() {
        let ips: Vec<IpAddr> = vec!["10.0.1.5".parse().unwrap(), "fd00::5".parse().unwrap()];
        let status: k8s_openapi::api::core::v1::PodStatus =
            serde_json::from_value(running_status(&pod(), "172.18.0.3".parse().unwrap(), &ips, "2026-01-01T00:00:00Z"))
                .unwrap();
        let p = Pod { status: Some(status.clone()), ..pod() };
        assert!(super::super::workloads::is_ready(&p));
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.pod_ip.as_deref(), Some("10.0.1.5"));
        assert_eq!(status.pod_ips.unwrap().len(), 2);
        assert_eq!(status.host_ip.as_deref(), Some("172.18.0.3"));
        let c = &status.container_statuses.unwrap()[0];
        assert!(c.ready && c.state.as_ref().unwrap().running.is_some());
    }

    #[test]
    fn waiting_status_is_pending_container_creating_and_not_ready() {
        let status: k8s_openapi::api::core::v1::PodStatus =
            serde_json::from_value(waiting_status(&pod(), "172.18.0.3".parse().unwrap(), "boom")).unwrap();
        let p = Pod { status: Some(status.clone()), ..pod() };
        assert!(!super::super::workloads::is_ready(&p));
        assert_eq!(status.phase.as_deref(), Some("Pending"));
        let waiting = status.container_statuses.unwrap()[0].state.clone().unwrap().waiting.unwrap();
        assert_eq!(waiting.reason.as_deref(), Some("ContainerCreating"));
    }
}
