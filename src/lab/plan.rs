//! What a lab consists of, computed before anything is created: names, addresses, per-node state
//! roots, Node objects, kubeconfigs and the command line of every process. Pure, so the shape of
//! a lab is unit-tested without root; `cluster.rs` turns it into namespaces and processes.
//!
//! Names follow kind (`kind-control-plane`, `kind-worker`, `kind-worker2`) so manifests written
//! for a kind cluster (nodeSelector `kubernetes.io/hostname: kind-worker`) apply unchanged.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus};
use kube::api::ObjectMeta;

use super::values::LabValues;
use crate::config::{Config, IpamMode, RawConfig};

/// The API server's port on the control-plane node's underlay address (kube-apiserver's).
pub const API_PORT: u16 = 6443;
/// The node's interface on the underlay bridge (kind's name for it).
pub const NODE_UPLINK: &str = "eth0";
/// kind's docker network, reused for the underlay (it lives in the lab's own namespace).
const UNDERLAY_V4: [u8; 3] = [172, 18, 0];
const UNDERLAY_V4_PREFIX: u8 = 16;
const UNDERLAY_V6: [u16; 4] = [0xfc00, 0xf853, 0x0ccd, 0xe793];
const UNDERLAY_V6_PREFIX: u8 = 64;
/// Per-node pod CIDR sizes for `ipam: kubernetes`, as kube-controller-manager's defaults.
const NODE_CIDR_V4: u8 = 24;
const NODE_CIDR_V6: u8 = 64;
pub const MAX_NODES: usize = 200;
/// The "outside" host's underlay address: the last of the /16, far from the nodes' (.2, .3, ...).
pub const OUTSIDE_IPV4: Ipv4Addr = Ipv4Addr::new(172, 18, 255, 254);
/// The "outside" host's address with the underlay's prefix length.
pub fn outside_cidr() -> String {
    format!("{OUTSIDE_IPV4}/{UNDERLAY_V4_PREFIX}")
}
/// Its server's port (HTTP over TCP, echo over UDP).
pub const OUTSIDE_PORT: u16 = 80;

#[derive(Clone, Debug, thiserror::Error, PartialEq)]
pub enum PlanError {
    #[error("--nodes must be between 1 and {MAX_NODES}, not {0}")]
    NodeCount(usize),
    #[error("operator.replicas is {replicas} but the lab has {nodes} node(s): one operator per node at most")]
    Replicas { replicas: u32, nodes: usize },
    #[error("pod subnet {subnet} has no room for {nodes} /{prefix} node CIDRs")]
    PodSubnetTooSmall { subnet: IpNet, nodes: usize, prefix: u8 },
    #[error("ipam: kubernetes needs a pod subnet for IPv{0} (`lab.podSubnet`)")]
    NoPodSubnet(u8),
}

/// What the user asked for.
#[derive(Clone, Debug)]
pub struct LabRequest {
    /// Cluster name: node names are `<name>-control-plane`, `<name>-worker`, ...
    pub name: String,
    pub nodes: usize,
    /// Absolute path of the state directory; the lab's identity derives from it.
    pub state_dir: PathBuf,
    /// The bpffs mount (`/sys/fs/bpf`).
    pub bpffs: PathBuf,
    pub values: LabValues,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodePlan {
    pub name: String,
    pub netns: String,
    pub control_plane: bool,
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
    /// `spec.podCIDRs` (only for `ipam: kubernetes`; otherwise the operator allocates).
    pub pod_cidrs: Vec<IpNet>,
    /// The agent's `bpf-root`; pins go to `<bpf_root>/beeline`.
    pub bpf_root: PathBuf,
    /// Socket, kubeconfig and CNI directories of this node.
    pub state_dir: PathBuf,
}

impl NodePlan {
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.state_dir.join("cni/net.d")
    }
    /// Where the node's runtime caches CNI ADD results until their DEL succeeds.
    pub fn cni_cache_dir(&self) -> PathBuf {
        self.state_dir.join("cni/cache")
    }
    pub fn cni_bin_dir(&self) -> PathBuf {
        self.state_dir.join("cni/bin")
    }
    /// The agent's `state-dir` (what survives an agent restart: IPAM allocations).
    pub fn agent_state_dir(&self) -> PathBuf {
        self.state_dir.join("state")
    }
    pub fn agent_socket(&self) -> PathBuf {
        self.state_dir.join("agent.sock")
    }
    /// Points at the API server on the control-plane node's underlay address.
    pub fn kubeconfig(&self) -> PathBuf {
        self.state_dir.join("kubeconfig")
    }
    pub fn underlay_cidrs(&self) -> Vec<String> {
        let mut cidrs = vec![format!("{}/{UNDERLAY_V4_PREFIX}", self.ipv4)];
        cidrs.extend(self.ipv6.map(|a| format!("{a}/{UNDERLAY_V6_PREFIX}")));
        cidrs
    }
}

/// One long-running process of the lab, started inside a node namespace.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessPlan {
    /// `agent-<node>` or `operator-<n>`: names its pid and log files.
    pub name: String,
    pub node: String,
    pub netns: String,
    /// Arguments after the `beeline` binary.
    pub args: Vec<String>,
    /// Its `/healthz` and `/readyz`, on the loopback of its namespace.
    pub health: SocketAddr,
}

/// The whole lab. Written to `<state>/lab.json` before anything is created, so `down` finds
/// everything even after a crash halfway through `up`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LabPlan {
    pub name: String,
    /// Short stable hash of the state directory: keeps several labs (tests) apart.
    pub id: String,
    pub state_dir: PathBuf,
    /// Every namespace is `<prefix>-<role>`.
    pub prefix: String,
    pub underlay_netns: String,
    /// A host on the underlay that is not a node ("outside the cluster"), with a server on
    /// [`OUTSIDE_PORT`] at [`OUTSIDE_IPV4`].
    #[serde(default)]
    pub outside_netns: String,
    /// `<bpffs>/beeline-lab/<id>`: every node's bpf-root is below it.
    pub pin_root: PathBuf,
    pub nodes: Vec<NodePlan>,
    pub processes: Vec<ProcessPlan>,
    /// The translated `cilium-config` keys every process loads (`--config`).
    pub config: RawConfig,
}

impl LabPlan {
    pub fn new(req: &LabRequest) -> Result<LabPlan, PlanError> {
        if req.nodes == 0 || req.nodes > MAX_NODES {
            return Err(PlanError::NodeCount(req.nodes));
        }
        if req.values.operator_replicas as usize > req.nodes {
            return Err(PlanError::Replicas { replicas: req.values.operator_replicas, nodes: req.nodes });
        }
        // Validated by the caller; defaults are what a process would run with.
        let config = Config::from_raw(&req.values.config).ok();
        let (v4, v6, kubernetes_ipam) = match &config {
            Some(c) => (c.enable_ipv4, c.enable_ipv6, c.ipam == IpamMode::Kubernetes),
            None => (true, false, false),
        };
        let id = lab_id(&req.state_dir);
        let prefix = format!("bl-{id}");
        let pin_root = req.bpffs.join("beeline-lab").join(&id);
        let mut pod_cidrs: Vec<Vec<IpNet>> = vec![Vec::new(); req.nodes];
        if kubernetes_ipam {
            for (family, enabled, node_prefix) in [(4u8, v4, NODE_CIDR_V4), (6, v6, NODE_CIDR_V6)] {
                if !enabled {
                    continue;
                }
                let subnet = req
                    .values
                    .pod_subnets
                    .iter()
                    .find(|n| matches!((n, family), (IpNet::V4(_), 4) | (IpNet::V6(_), 6)))
                    .ok_or(PlanError::NoPodSubnet(family))?;
                let too_small = PlanError::PodSubnetTooSmall { subnet: *subnet, nodes: req.nodes, prefix: node_prefix };
                let cidrs: Vec<IpNet> =
                    subnet.subnets(node_prefix).map_err(|_| too_small.clone())?.take(req.nodes).collect();
                if cidrs.len() < req.nodes {
                    return Err(too_small);
                }
                for (node, cidr) in pod_cidrs.iter_mut().zip(cidrs) {
                    node.push(cidr);
                }
            }
        }
        let nodes: Vec<NodePlan> = pod_cidrs
            .into_iter()
            .enumerate()
            .map(|(i, pod_cidrs)| {
                let name = node_name(&req.name, i);
                let host = u8::try_from(i + 2).expect("at most MAX_NODES nodes");
                NodePlan {
                    netns: format!("{prefix}-{name}"),
                    control_plane: i == 0,
                    ipv4: Ipv4Addr::new(UNDERLAY_V4[0], UNDERLAY_V4[1], UNDERLAY_V4[2], host),
                    ipv6: v6.then(|| {
                        let [a, b, c, d] = UNDERLAY_V6;
                        Ipv6Addr::new(a, b, c, d, 0, 0, 0, u16::from(host))
                    }),
                    pod_cidrs,
                    bpf_root: pin_root.join(&name),
                    state_dir: req.state_dir.join("nodes").join(&name),
                    name,
                }
            })
            .collect();
        let agent_health =
            config.as_ref().map_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9879)), |c| c.agent_health_addr);
        let operator_health =
            config.as_ref().map_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9234)), |c| c.operator_health_addr);
        let config_file = req.state_dir.join("cilium-config.yaml");
        let mut processes = Vec::new();
        for (i, node) in nodes.iter().take(req.values.operator_replicas as usize).enumerate() {
            processes.push(ProcessPlan {
                name: format!("operator-{i}"),
                node: node.name.clone(),
                netns: node.netns.clone(),
                args: strings(&[
                    "operator",
                    "--config",
                    &config_file.to_string_lossy(),
                    "--kubeconfig",
                    &node.kubeconfig().to_string_lossy(),
                    "--leader-election-identity",
                    &node.name,
                ]),
                health: operator_health,
            });
        }
        for node in &nodes {
            let sets = [
                format!("bpf-root={}", node.bpf_root.display()),
                format!("agent-socket-path={}", node.agent_socket().display()),
                format!("cni-conf-dir={}", node.cni_conf_dir().display()),
                format!("cni-bin-dir={}", node.cni_bin_dir().display()),
                format!("state-dir={}", node.agent_state_dir().display()),
                // The node's underlay interface: without `devices` the agent creates no
                // cilium_host/tunnel device and attaches nothing to the uplink (no pod traffic
                // leaves the node).
                format!("devices={NODE_UPLINK}"),
            ];
            let mut args = strings(&[
                "agent",
                "--config",
                &config_file.to_string_lossy(),
                "--kubeconfig",
                &node.kubeconfig().to_string_lossy(),
                "--node-name",
                &node.name,
            ]);
            for set in sets {
                args.extend(["--set".to_string(), set]);
            }
            processes.push(ProcessPlan {
                name: format!("agent-{}", node.name),
                node: node.name.clone(),
                netns: node.netns.clone(),
                args,
                health: agent_health,
            });
        }
        Ok(LabPlan {
            name: req.name.clone(),
            id,
            state_dir: req.state_dir.clone(),
            underlay_netns: format!("{prefix}-underlay"),
            outside_netns: format!("{prefix}-outside"),
            prefix,
            pin_root,
            nodes,
            processes,
            config: req.values.config.clone(),
        })
    }

    pub fn control_plane(&self) -> &NodePlan {
        &self.nodes[0]
    }

    /// Where the nodes reach the API server.
    pub fn api_url_for_nodes(&self) -> String {
        format!("http://{}", SocketAddr::new(IpAddr::V4(self.control_plane().ipv4), API_PORT))
    }

    pub fn plan_file(state_dir: &Path) -> PathBuf {
        state_dir.join("lab.json")
    }
    pub fn config_file(&self) -> PathBuf {
        self.state_dir.join("cilium-config.yaml")
    }
    /// The kubeconfig for kubectl on this host (127.0.0.1); written once the API serves.
    pub fn kubeconfig(&self) -> PathBuf {
        self.state_dir.join("kubeconfig")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }
    pub fn log(&self, process: &str) -> PathBuf {
        self.logs_dir().join(format!("{process}.log"))
    }
    pub fn pids_dir(&self) -> PathBuf {
        self.state_dir.join("pids")
    }
    /// Present while a user holds `process` stopped (`lab stop-agent`): the supervisor stops it
    /// and does not restart it until the file is removed (`lab start-agent`).
    pub fn hold_file(&self, process: &str) -> PathBuf {
        self.pids_dir().join(format!("{process}.held"))
    }

    pub fn pid_file(&self, process: &str) -> PathBuf {
        self.pids_dir().join(format!("{process}.pid"))
    }

    /// The translated config as the YAML map the processes read with `--config`.
    pub fn config_yaml(&self) -> String {
        let mut out = String::from("# cilium-config keys translated from the lab's values file\n");
        for (k, v) in &self.config {
            out.push_str(&format!("{k}: {}\n", serde_json::Value::String(v.clone())));
        }
        out
    }

    /// The Node objects a kubelet would register: InternalIP on the underlay, kind's labels, the
    /// control-plane role label, `spec.podCIDRs` when the lab plays kube-controller-manager.
    pub fn node_objects(&self) -> Vec<Node> {
        let ipv4_enabled = Config::from_raw(&self.config).map(|c| c.enable_ipv4).unwrap_or(true);
        self.nodes
            .iter()
            .map(|n| {
                let mut labels = BTreeMap::from([
                    ("kubernetes.io/hostname".to_string(), n.name.clone()),
                    ("kubernetes.io/os".to_string(), "linux".to_string()),
                    ("kubernetes.io/arch".to_string(), std::env::consts::ARCH.replace("x86_64", "amd64")),
                ]);
                if n.control_plane {
                    labels.insert("node-role.kubernetes.io/control-plane".into(), String::new());
                }
                let mut addresses = Vec::new();
                if ipv4_enabled || n.ipv6.is_none() {
                    addresses.push(NodeAddress { type_: "InternalIP".into(), address: n.ipv4.to_string() });
                }
                if let Some(v6) = n.ipv6 {
                    addresses.push(NodeAddress { type_: "InternalIP".into(), address: v6.to_string() });
                }
                addresses.push(NodeAddress { type_: "Hostname".into(), address: n.name.clone() });
                let pod_cidrs: Vec<String> = n.pod_cidrs.iter().map(ToString::to_string).collect();
                Node {
                    metadata: ObjectMeta { name: Some(n.name.clone()), labels: Some(labels), ..Default::default() },
                    spec: Some(NodeSpec {
                        pod_cidr: pod_cidrs.first().cloned(),
                        pod_cidrs: (!pod_cidrs.is_empty()).then_some(pod_cidrs),
                        ..Default::default()
                    }),
                    status: Some(NodeStatus {
                        addresses: Some(addresses),
                        conditions: Some(vec![NodeCondition {
                            type_: "Ready".into(),
                            status: "True".into(),
                            reason: Some("LabNodeUp".into()),
                            message: Some(format!("network namespace {} is up (no kubelet emulation yet)", n.netns)),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    }),
                }
            })
            .collect()
    }
}

/// kind's node names: `<cluster>-control-plane`, `<cluster>-worker`, `<cluster>-worker2`, ...
pub fn node_name(cluster: &str, index: usize) -> String {
    match index {
        0 => format!("{cluster}-control-plane"),
        1 => format!("{cluster}-worker"),
        n => format!("{cluster}-worker{n}"),
    }
}

/// Six hex digits of FNV-1a over the state directory path: stable across builds (unlike std's
/// hasher), so a newer `beeline lab down` still finds what an older `up` made.
pub fn lab_id(state_dir: &Path) -> String {
    format!("{:06x}", fnv1a(state_dir.to_string_lossy().as_bytes()) & 0xff_ffff)
}

/// 32-bit FNV-1a: a hash that is stable across builds and machines, for names derived from
/// content (lab ids, pod-template-hash, EndpointSlice names).
pub fn fnv1a(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in bytes {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// A kubeconfig for a plain-HTTP API server (the in-memory API has no TLS or authentication).
pub fn kubeconfig(cluster: &str, server: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {cluster}\n  cluster:\n    server: {server}\ncontexts:\n- name: {cluster}\n  context:\n    cluster: {cluster}\n    user: {cluster}\ncurrent-context: {cluster}\nusers:\n- name: {cluster}\n  user: {{}}\n"
    )
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::values::translate;

    fn request(nodes: usize, values: &str) -> LabRequest {
        LabRequest {
            name: "kind".into(),
            nodes,
            state_dir: PathBuf::from("/run/beeline-lab"),
            bpffs: PathBuf::from("/sys/fs/bpf"),
            values: translate(&serde_saphyr::from_str(values).unwrap()).unwrap(),
        }
    }

    #[test]
    fn nodes_are_named_and_addressed_like_kind() {
        let plan = LabPlan::new(&request(3, "{}")).unwrap();
        let names: Vec<&str> = plan.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["kind-control-plane", "kind-worker", "kind-worker2"]);
        let addrs: Vec<String> = plan.nodes.iter().map(|n| n.ipv4.to_string()).collect();
        assert_eq!(addrs, ["172.18.0.2", "172.18.0.3", "172.18.0.4"]);
        assert!(plan.nodes[0].control_plane && !plan.nodes[1].control_plane);
        assert_eq!(plan.api_url_for_nodes(), "http://172.18.0.2:6443");
        let id = &plan.id;
        assert_eq!(plan.underlay_netns, format!("bl-{id}-underlay"));
        assert_eq!(plan.nodes[2].netns, format!("bl-{id}-kind-worker2"));
        assert_eq!(plan.nodes[1].bpf_root, PathBuf::from(format!("/sys/fs/bpf/beeline-lab/{id}/kind-worker")));
        assert_eq!(plan.nodes[1].agent_socket(), PathBuf::from("/run/beeline-lab/nodes/kind-worker/agent.sock"));
        assert!(
            plan.nodes.iter().all(|n| n.pod_cidrs.is_empty() && n.ipv6.is_none()),
            "cluster-pool: operator allocates"
        );
    }

    #[test]
    fn lab_ids_differ_by_state_dir_and_are_stable() {
        let a = lab_id(Path::new("/tmp/a"));
        assert_eq!(a, lab_id(Path::new("/tmp/a")));
        assert_ne!(a, lab_id(Path::new("/tmp/b")));
        assert_eq!(a.len(), 6);
    }

    #[test]
    fn kubernetes_ipam_assigns_node_pod_cidrs() {
        let cases: &[(&str, usize, &[&[&str]])] = &[
            ("ipam: {mode: kubernetes}", 2, &[&["10.244.0.0/24"], &["10.244.1.0/24"]]),
            (
                "ipam: {mode: kubernetes}\nipv6: {enabled: true}",
                2,
                &[&["10.244.0.0/24", "fd00:10:244::/64"], &["10.244.1.0/24", "fd00:10:244:1::/64"]],
            ),
            (
                "ipam: {mode: kubernetes}\nipv4: {enabled: false}\nipv6: {enabled: true}\nroutingMode: native\nipv6NativeRoutingCIDR: fd00::/8",
                1,
                &[&["fd00:10:244::/64"]],
            ),
            ("ipam: {mode: kubernetes}\nlab: {podSubnet: 10.9.0.0/23}", 2, &[&["10.9.0.0/24"], &["10.9.1.0/24"]]),
        ];
        for (values, nodes, want) in cases {
            let plan = LabPlan::new(&request(*nodes, values)).unwrap_or_else(|e| panic!("{values}: {e}"));
            let got: Vec<Vec<String>> =
                plan.nodes.iter().map(|n| n.pod_cidrs.iter().map(ToString::to_string).collect()).collect();
            assert_eq!(got, *want, "{values}");
            let objects = plan.node_objects();
            for (node, cidrs) in objects.iter().zip(*want) {
                let spec = node.spec.as_ref().unwrap();
                assert_eq!(spec.pod_cidrs.as_deref().unwrap(), *cidrs);
                assert_eq!(spec.pod_cidr.as_deref(), Some(cidrs[0]));
            }
        }
    }

    #[test]
    fn refuses_what_cannot_be_built() {
        let cases: &[(usize, &str, PlanError)] = &[
            (0, "{}", PlanError::NodeCount(0)),
            (201, "{}", PlanError::NodeCount(201)),
            (1, "operator: {replicas: 2}", PlanError::Replicas { replicas: 2, nodes: 1 }),
            (
                3,
                "ipam: {mode: kubernetes}\nlab: {podSubnet: 10.9.0.0/23}",
                PlanError::PodSubnetTooSmall { subnet: "10.9.0.0/23".parse().unwrap(), nodes: 3, prefix: 24 },
            ),
            (
                1,
                "ipam: {mode: kubernetes}\nlab: {podSubnet: 10.9.0.0/25}",
                PlanError::PodSubnetTooSmall { subnet: "10.9.0.0/25".parse().unwrap(), nodes: 1, prefix: 24 },
            ),
            (
                1,
                "ipam: {mode: kubernetes}\nipv6: {enabled: true}\nlab: {podSubnet: 10.9.0.0/16}",
                PlanError::NoPodSubnet(6),
            ),
        ];
        for (nodes, values, want) in cases {
            assert_eq!(LabPlan::new(&request(*nodes, values)).unwrap_err(), *want, "{values}");
        }
    }

    #[test]
    fn node_objects_carry_addresses_and_roles() {
        let plan = LabPlan::new(&request(2, "ipv6: {enabled: true}")).unwrap();
        let nodes = plan.node_objects();
        let cp = &nodes[0];
        let labels = cp.metadata.labels.as_ref().unwrap();
        assert!(labels.contains_key("node-role.kubernetes.io/control-plane"));
        assert_eq!(labels["kubernetes.io/hostname"], "kind-control-plane");
        assert!(!nodes[1].metadata.labels.as_ref().unwrap().contains_key("node-role.kubernetes.io/control-plane"));
        let addrs: Vec<(String, String)> = nodes[1]
            .status
            .as_ref()
            .unwrap()
            .addresses
            .as_ref()
            .unwrap()
            .iter()
            .map(|a| (a.type_.clone(), a.address.clone()))
            .collect();
        assert_eq!(
            addrs,
            [
                ("InternalIP".to_string(), "172.18.0.3".to_string()),
                ("InternalIP".to_string(), "fc00:f853:ccd:e793::3".to_string()),
                ("Hostname".to_string(), "kind-worker".to_string()),
            ]
        );
        assert!(nodes[1].spec.as_ref().unwrap().pod_cidrs.is_none(), "cluster-pool: no spec.podCIDRs");
    }

    #[test]
    fn processes_get_their_own_state_and_the_shared_config() {
        let plan = LabPlan::new(&request(2, "operator: {replicas: 2}\nroutingMode: tunnel")).unwrap();
        let names: Vec<&str> = plan.processes.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["operator-0", "operator-1", "agent-kind-control-plane", "agent-kind-worker"]);
        let agent = &plan.processes[3];
        assert_eq!(agent.netns, plan.nodes[1].netns);
        let args = agent.args.join(" ");
        for needle in [
            "agent --config /run/beeline-lab/cilium-config.yaml",
            "--kubeconfig /run/beeline-lab/nodes/kind-worker/kubeconfig",
            "--node-name kind-worker",
            "--set agent-socket-path=/run/beeline-lab/nodes/kind-worker/agent.sock",
            "--set cni-conf-dir=/run/beeline-lab/nodes/kind-worker/cni/net.d",
            "--set cni-bin-dir=/run/beeline-lab/nodes/kind-worker/cni/bin",
            "--set state-dir=/run/beeline-lab/nodes/kind-worker/state",
            "--set devices=eth0",
        ] {
            assert!(args.contains(needle), "{args} lacks {needle}");
        }
        assert!(args.contains(&format!("--set bpf-root=/sys/fs/bpf/beeline-lab/{}/kind-worker", plan.id)), "{args}");
        assert_eq!(plan.processes[1].node, "kind-worker", "replicas spread over nodes");
        assert_eq!(plan.processes[0].health.port(), 9234);
        assert_eq!(agent.health.port(), 9879);
        assert_eq!(
            plan.config_yaml(),
            "# cilium-config keys translated from the lab's values file\nrouting-mode: \"tunnel\"\n"
        );
    }
}
