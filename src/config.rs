//! Configuration with the keys of Cilium's rendered `cilium-config` ConfigMap.
//!
//! Sources, later ones winning: built-in defaults, a ConfigMap mounted as a directory (one file per
//! key, `--config-dir`) or a YAML file (`--config`: either a plain `key: value` map or a whole
//! ConfigMap manifest), environment variables `BEELINE_<KEY>` (upper case, `-` → `_`), and
//! `--set key=value` flags. The merged map is validated once at start: an unknown key or a bad
//! value is refused with an error that names the key.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::policy::EnforcementMode;

/// Raw `key → value` pairs as they appear in a `cilium-config` ConfigMap.
pub type RawConfig = BTreeMap<String, String>;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown configuration key `{key}`{}", suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default())]
    UnknownKey { key: String, suggestion: Option<String> },
    #[error("invalid value {value:?} for configuration key `{key}`: {reason}")]
    InvalidValue { key: String, value: String, reason: String },
    #[error("inconsistent configuration: {0}")]
    Inconsistent(String),
    #[error("cannot read configuration from {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot parse configuration file {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("malformed --set {0:?}: expected key=value")]
    MalformedSet(String),
}

/// How pod IPs are managed (`ipam`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IpamMode {
    /// Node pod CIDRs come from `Node.spec.podCIDRs` (kube-controller-manager).
    Kubernetes,
    /// The operator carves per-node CIDRs out of `cluster-pool-ipv4-cidr`.
    ClusterPool,
    /// The operator allocates per-pool CIDRs from `CiliumPodIPPool` objects on demand.
    MultiPool,
    /// Addresses are listed by an external party in `CiliumNode.spec.ipam.pool`.
    Crd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RoutingMode {
    Tunnel,
    Native,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TunnelProtocol {
    Vxlan,
    Geneve,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LbAlgorithm {
    Random,
    Maglev,
}

/// Validated configuration shared by the agent and the operator.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Config {
    pub cluster_name: String,
    pub cluster_id: u32,
    pub debug: bool,
    pub ipam: IpamMode,
    pub routing_mode: RoutingMode,
    pub tunnel_protocol: TunnelProtocol,
    pub tunnel_port: u16,
    pub kube_proxy_replacement: bool,
    pub auto_direct_node_routes: bool,
    pub ipv4_native_routing_cidr: Option<Ipv4Net>,
    pub ipv6_native_routing_cidr: Option<Ipv6Net>,
    pub enable_ipv4: bool,
    pub enable_ipv6: bool,
    pub enable_ipv4_masquerade: bool,
    pub enable_ipv6_masquerade: bool,
    /// Masquerade in BPF (`to_netdev`) rather than iptables; beeline has no iptables mode, so
    /// without it pod egress is not masqueraded at all.
    pub enable_bpf_masquerade: bool,
    /// The node's external devices (Cilium's `devices`): `from_netdev`/`to_netdev` attach there,
    /// the first one's IPv4 address is the node IP masquerading uses. Empty = the agent manages no
    /// links at all (see docs/decisions.md: no auto-detection; tests run agents in the host
    /// namespace).
    pub devices: Vec<String>,
    pub cluster_pool_ipv4_cidr: Vec<Ipv4Net>,
    pub cluster_pool_ipv4_mask_size: u8,
    pub cluster_pool_ipv6_cidr: Vec<Ipv6Net>,
    pub cluster_pool_ipv6_mask_size: u8,
    pub auto_create_cilium_pod_ip_pools: String,
    pub node_port_range: (u16, u16),
    pub bpf_lb_algorithm: LbAlgorithm,
    pub mtu: u32,
    pub bpf_root: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dir: PathBuf,
    pub agent_socket_path: PathBuf,
    pub state_dir: PathBuf,
    pub agent_health_addr: SocketAddr,
    pub operator_health_addr: SocketAddr,
    pub skip_crd_creation: bool,
    /// The operator's LB-IPAM controller (Cilium's `enable-lb-ipam`, on by default).
    pub enable_lb_ipam: bool,
    pub identity_gc_interval: Duration,
    pub identity_heartbeat_timeout: Duration,
    /// Agent conntrack GC: a fixed interval, or zero for Cilium's dynamic one.
    pub conntrack_gc_interval: Duration,
    pub conntrack_gc_max_interval: Duration,
    /// `enable-policy` (Helm `policyEnforcementMode`): when endpoints enforce policy.
    pub enable_policy: EnforcementMode,
    /// `monitor-aggregation` (Helm `bpf.monitorAggregation`), Cilium's level numbers
    /// (`beeline_common::datapath::MONITOR_AGGREGATION_*`).
    pub monitor_aggregation: u8,
    /// `bpf-events-trace-enabled`, `bpf-events-drop-enabled`, `bpf-events-policy-verdict-enabled`
    /// (Helm `bpf.events.{trace,drop,policyVerdict}.enabled`).
    pub bpf_events_trace: bool,
    pub bpf_events_drop: bool,
    pub bpf_events_policy_verdict: bool,
}

/// Every key beeline understands, with its default. Keys are Cilium's spelling; the few
/// beeline-only keys (`agent-socket-path`, `cni-bin-dir`, `operator-health-addr`) are marked.
const KNOWN_KEYS: &[(&str, &str)] = &[
    ("cluster-name", "default"),
    ("cluster-id", "0"),
    ("debug", "false"),
    ("ipam", "cluster-pool"),
    ("routing-mode", "tunnel"),
    ("tunnel-protocol", "vxlan"),
    ("tunnel-port", "0"),
    ("kube-proxy-replacement", "false"),
    ("auto-direct-node-routes", "false"),
    ("ipv4-native-routing-cidr", ""),
    ("ipv6-native-routing-cidr", ""),
    ("enable-ipv4", "true"),
    ("enable-ipv6", "false"),
    ("enable-ipv4-masquerade", "true"),
    ("enable-ipv6-masquerade", "true"),
    ("enable-bpf-masquerade", "false"),
    ("devices", ""),
    ("cluster-pool-ipv4-cidr", "10.0.0.0/8"),
    ("cluster-pool-ipv4-mask-size", "24"),
    ("cluster-pool-ipv6-cidr", "fd00::/104"),
    ("cluster-pool-ipv6-mask-size", "120"),
    ("auto-create-cilium-pod-ip-pools", ""),
    ("enable-lb-ipam", "true"),
    ("node-port-range", "30000,32767"),
    ("bpf-lb-algorithm", "random"),
    ("mtu", "0"),
    ("bpf-root", "/sys/fs/bpf"),
    ("cni-conf-dir", "/etc/cni/net.d"),
    // beeline-only: where the CNI plugin binary is installed.
    ("cni-bin-dir", "/opt/cni/bin"),
    // beeline-only: the agent's local API (CNI plugin and CLI).
    ("agent-socket-path", "/run/beeline/beeline.sock"),
    // beeline-only: the agent's state that must survive an agent restart (IPAM allocations).
    ("state-dir", "/run/beeline/state"),
    ("agent-health-port", "9879"),
    // beeline-only: the operator's /healthz, /readyz and /metrics.
    ("operator-health-addr", "127.0.0.1:9234"),
    // The operator installs the cilium.io CRDs at start unless this is set (Cilium's key).
    ("skip-crd-creation", "false"),
    // Operator identity GC (CRD mode): how often unused CiliumIdentities are looked for, and how
    // long one must have been unused before it is deleted. Cilium's defaults (kvstore lease TTL
    // and twice that).
    ("identity-gc-interval", "15m0s"),
    ("identity-heartbeat-timeout", "30m0s"),
    // Agent conntrack GC: `0s` = dynamic (5 min at start, 10 s..max), as in Cilium; a max of
    // `0s` means Cilium's 12 h.
    ("conntrack-gc-interval", "0s"),
    ("conntrack-gc-max-interval", "0s"),
    ("enable-policy", "default"),
    ("monitor-aggregation", "medium"),
    ("bpf-events-trace-enabled", "true"),
    ("bpf-events-drop-enabled", "true"),
    ("bpf-events-policy-verdict-enabled", "true"),
];

/// Keys of Cilium's rendered ConfigMap that beeline accepts but does not act on (yet), so that a
/// Cilium user's ConfigMap applies unchanged. They are logged at start.
const ACCEPTED_CILIUM_KEYS: &[&str] = &[
    "agent-not-ready-taint-key",
    "arping-refresh-period",
    "bpf-ct-global-any-max",
    "bpf-ct-global-tcp-max",
    "bpf-lb-external-clusterip",
    "bpf-lb-map-max",
    "bpf-lb-mode",
    "bpf-lb-sock",
    "bpf-map-dynamic-size-ratio",
    "bpf-policy-map-max",
    "cgroup-root",
    "cilium-endpoint-gc-interval",
    "cni-exclusive",
    "cni-log-file",
    "custom-cni-conf",
    "enable-bpf-clock-probe",
    "enable-endpoint-health-checking",
    "enable-endpoint-routes",
    "enable-health-check-nodeport",
    "enable-health-checking",
    "enable-hubble",
    "enable-k8s-networkpolicy",
    "enable-l2-neigh-discovery",
    "enable-l7-proxy",
    "enable-local-redirect-policy",
    "enable-sctp",
    "enable-svc-source-range-check",
    "enable-vtep",
    "enable-well-known-identities",
    "enable-xt-socket-fallback",
    "hubble-disable-tls",
    "hubble-listen-address",
    "hubble-socket-path",
    "identity-allocation-mode",
    "install-no-conntrack-iptables-rules",
    "ipam-cilium-node-update-rate",
    "k8s-client-burst",
    "k8s-client-qps",
    "kube-proxy-replacement-healthz-bind-address",
    "monitor-aggregation-flags",
    "monitor-aggregation-interval",
    "node-port-bind-protection",
    "operator-api-serve-addr",
    "operator-prometheus-serve-addr",
    "preallocate-bpf-maps",
    "procfs",
    "prometheus-serve-addr",
    "remove-cilium-node-taints",
    "set-cilium-is-up-condition",
    "set-cilium-node-taints",
    "synchronize-k8s-nodes",
    "tofqdns-dns-reject-response-code",
    "tofqdns-enable-dns-compression",
    "unmanaged-pod-watcher-interval",
    "vtep-cidr",
    "vtep-endpoint",
    "vtep-mac",
    "vtep-mask",
    "write-cni-conf-when-ready",
];

/// Where the raw configuration comes from.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    pub config_dir: Option<PathBuf>,
    pub config_file: Option<PathBuf>,
    pub sets: Vec<String>,
    /// Environment variables (normally `std::env::vars()`); only `BEELINE_<KEY>` ones are used.
    pub env: Vec<(String, String)>,
}

impl Sources {
    /// Merges every source into one raw map (defaults not included).
    pub fn collect(&self) -> Result<RawConfig, ConfigError> {
        let mut raw = RawConfig::new();
        if let Some(dir) = &self.config_dir {
            raw.extend(read_config_dir(dir)?);
        }
        if let Some(file) = &self.config_file {
            raw.extend(read_config_file(file)?);
        }
        for (name, value) in &self.env {
            if let Some(key) = env_to_key(name) {
                raw.insert(key, value.clone());
            }
        }
        for set in &self.sets {
            let (k, v) = set.split_once('=').ok_or_else(|| ConfigError::MalformedSet(set.clone()))?;
            raw.insert(k.trim().to_string(), v.trim().to_string());
        }
        Ok(raw)
    }

    pub fn load(&self) -> Result<Config, ConfigError> {
        Config::from_raw(&self.collect()?)
    }
}

/// `BEELINE_ROUTING_MODE` → `routing-mode`, for the known keys only (other `BEELINE_*` variables,
/// e.g. `BEELINE_LOG_FORMAT`, belong to flags).
fn env_to_key(name: &str) -> Option<String> {
    let rest = name.strip_prefix("BEELINE_")?;
    let key = rest.to_ascii_lowercase().replace('_', "-");
    is_known(&key).then_some(key)
}

fn is_known(key: &str) -> bool {
    KNOWN_KEYS.iter().any(|(k, _)| *k == key) || ACCEPTED_CILIUM_KEYS.contains(&key)
}

/// A ConfigMap mounted as a volume: one file per key; dot-files (`..data` symlinks) are skipped.
fn read_config_dir(dir: &Path) -> Result<RawConfig, ConfigError> {
    let read_err = |source| ConfigError::Read { path: dir.to_path_buf(), source };
    let mut raw = RawConfig::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('.') || !entry.path().is_file() {
            continue;
        }
        let value =
            std::fs::read_to_string(entry.path()).map_err(|source| ConfigError::Read { path: entry.path(), source })?;
        raw.insert(name, value.trim().to_string());
    }
    Ok(raw)
}

/// A YAML file: a plain map of keys, or a ConfigMap manifest whose `data` holds the keys.
fn read_config_file(path: &Path) -> Result<RawConfig, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    let doc: BTreeMap<String, serde_json::Value> = serde_saphyr::from_str(&text)
        .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), reason: e.to_string() })?;
    let is_configmap = doc.get("kind").and_then(|k| k.as_str()) == Some("ConfigMap");
    let entries: BTreeMap<String, serde_json::Value> = if is_configmap {
        match doc.get("data") {
            Some(serde_json::Value::Object(m)) => m.clone().into_iter().collect(),
            None | Some(serde_json::Value::Null) => BTreeMap::new(),
            Some(_) => {
                return Err(ConfigError::Parse { path: path.to_path_buf(), reason: "`data` is not a map".into() })
            }
        }
    } else {
        doc
    };
    Ok(entries
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Null => String::new(),
                other => other.to_string(),
            };
            (k, v)
        })
        .collect())
}

impl Config {
    /// Validates raw keys (defaults filled in) into a typed configuration.
    pub fn from_raw(raw: &RawConfig) -> Result<Config, ConfigError> {
        for key in raw.keys() {
            if !is_known(key) {
                return Err(ConfigError::UnknownKey { key: key.clone(), suggestion: suggest(key) });
            }
        }
        let v = Values { raw };
        let cfg = Config {
            cluster_name: v.string("cluster-name"),
            cluster_id: v.parse_num("cluster-id", 0, 511)?,
            debug: v.bool("debug")?,
            ipam: v.choice(
                "ipam",
                &[
                    ("kubernetes", IpamMode::Kubernetes),
                    ("cluster-pool", IpamMode::ClusterPool),
                    ("multi-pool", IpamMode::MultiPool),
                    ("crd", IpamMode::Crd),
                ],
            )?,
            routing_mode: v
                .choice("routing-mode", &[("tunnel", RoutingMode::Tunnel), ("native", RoutingMode::Native)])?,
            tunnel_protocol: v
                .choice("tunnel-protocol", &[("vxlan", TunnelProtocol::Vxlan), ("geneve", TunnelProtocol::Geneve)])?,
            tunnel_port: v.parse_num("tunnel-port", 0, 65535)?,
            kube_proxy_replacement: v.kpr("kube-proxy-replacement")?,
            auto_direct_node_routes: v.bool("auto-direct-node-routes")?,
            ipv4_native_routing_cidr: v.opt_net("ipv4-native-routing-cidr")?,
            ipv6_native_routing_cidr: v.opt_net("ipv6-native-routing-cidr")?,
            enable_ipv4: v.bool("enable-ipv4")?,
            enable_ipv6: v.bool("enable-ipv6")?,
            enable_ipv4_masquerade: v.bool("enable-ipv4-masquerade")?,
            enable_ipv6_masquerade: v.bool("enable-ipv6-masquerade")?,
            enable_bpf_masquerade: v.bool("enable-bpf-masquerade")?,
            // Cilium accepts space- or comma-separated device names.
            devices: v
                .string("devices")
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|d| !d.is_empty())
                .map(str::to_string)
                .collect(),
            cluster_pool_ipv4_cidr: v.net_list("cluster-pool-ipv4-cidr")?,
            cluster_pool_ipv4_mask_size: v.parse_num("cluster-pool-ipv4-mask-size", 1, 32)?,
            cluster_pool_ipv6_cidr: v.net_list("cluster-pool-ipv6-cidr")?,
            cluster_pool_ipv6_mask_size: v.parse_num("cluster-pool-ipv6-mask-size", 1, 128)?,
            auto_create_cilium_pod_ip_pools: v.string("auto-create-cilium-pod-ip-pools"),
            node_port_range: v.port_range("node-port-range")?,
            bpf_lb_algorithm: v
                .choice("bpf-lb-algorithm", &[("random", LbAlgorithm::Random), ("maglev", LbAlgorithm::Maglev)])?,
            mtu: v.parse_num("mtu", 0, 65535)?,
            bpf_root: v.path("bpf-root"),
            cni_conf_dir: v.path("cni-conf-dir"),
            cni_bin_dir: v.path("cni-bin-dir"),
            agent_socket_path: v.path("agent-socket-path"),
            state_dir: v.path("state-dir"),
            agent_health_addr: SocketAddr::from(([127, 0, 0, 1], v.parse_num::<u16>("agent-health-port", 0, 65535)?)),
            operator_health_addr: v.socket_addr("operator-health-addr")?,
            skip_crd_creation: v.bool("skip-crd-creation")?,
            enable_lb_ipam: v.bool("enable-lb-ipam")?,
            identity_gc_interval: v.duration("identity-gc-interval")?,
            identity_heartbeat_timeout: v.duration("identity-heartbeat-timeout")?,
            conntrack_gc_interval: v.duration("conntrack-gc-interval")?,
            conntrack_gc_max_interval: v.duration("conntrack-gc-max-interval")?,
            // Cilium lower-cases the value before comparing.
            enable_policy: v
                .get("enable-policy")
                .to_ascii_lowercase()
                .parse::<EnforcementMode>()
                .map_err(|_| v.invalid("enable-policy", "expected one of default, always, never"))?,
            monitor_aggregation: v.monitor_aggregation("monitor-aggregation")?,
            bpf_events_trace: v.bool("bpf-events-trace-enabled")?,
            bpf_events_drop: v.bool("bpf-events-drop-enabled")?,
            bpf_events_policy_verdict: v.bool("bpf-events-policy-verdict-enabled")?,
        };
        cfg.check_consistency()?;
        Ok(cfg)
    }

    /// The keys given that beeline accepts for compatibility but does not act on.
    pub fn ignored_keys(raw: &RawConfig) -> Vec<String> {
        raw.keys().filter(|k| ACCEPTED_CILIUM_KEYS.contains(&k.as_str())).cloned().collect()
    }

    fn check_consistency(&self) -> Result<(), ConfigError> {
        if !self.enable_ipv4 && !self.enable_ipv6 {
            return Err(ConfigError::Inconsistent("`enable-ipv4` and `enable-ipv6` are both false".into()));
        }
        if self.ipam == IpamMode::ClusterPool {
            if self.enable_ipv4 && self.cluster_pool_ipv4_cidr.is_empty() {
                return Err(ConfigError::Inconsistent(
                    "`enable-ipv4` is true but `cluster-pool-ipv4-cidr` is empty".into(),
                ));
            }
            if self.enable_ipv6 && self.cluster_pool_ipv6_cidr.is_empty() {
                return Err(ConfigError::Inconsistent(
                    "`enable-ipv6` is true but `cluster-pool-ipv6-cidr` is empty".into(),
                ));
            }
            for net in &self.cluster_pool_ipv4_cidr {
                if self.cluster_pool_ipv4_mask_size < net.prefix_len() {
                    return Err(ConfigError::Inconsistent(format!(
                        "`cluster-pool-ipv4-mask-size` {} is shorter than the prefix of `cluster-pool-ipv4-cidr` {net}",
                        self.cluster_pool_ipv4_mask_size
                    )));
                }
            }
            for net in &self.cluster_pool_ipv6_cidr {
                if self.cluster_pool_ipv6_mask_size < net.prefix_len() {
                    return Err(ConfigError::Inconsistent(format!(
                        "`cluster-pool-ipv6-mask-size` {} is shorter than the prefix of `cluster-pool-ipv6-cidr` {net}",
                        self.cluster_pool_ipv6_mask_size
                    )));
                }
            }
        }
        if self.ipam == IpamMode::MultiPool {
            // Cilium supports multi-pool only with native routing: a node's pod addresses come from
            // several CIDRs in several pools, which the tunnel datapath cannot route.
            if self.routing_mode == RoutingMode::Tunnel {
                return Err(ConfigError::Inconsistent(
                    "`ipam: multi-pool` requires `routing-mode: native` (with `auto-direct-node-routes` or \
                     routes from the underlay); tunnel mode is not supported with multi-pool IPAM"
                        .into(),
                ));
            }
            crate::ipam::multi_pool::parse_auto_create(&self.auto_create_cilium_pod_ip_pools)
                .map_err(|e| ConfigError::Inconsistent(e.to_string()))?;
        }
        if self.routing_mode == RoutingMode::Native
            && self.enable_ipv4
            && self.enable_ipv4_masquerade
            && self.ipv4_native_routing_cidr.is_none()
        {
            return Err(ConfigError::Inconsistent(
                "`routing-mode: native` with IPv4 masquerading needs `ipv4-native-routing-cidr`".into(),
            ));
        }
        if !self.enable_ipv4 && self.routing_mode == RoutingMode::Tunnel {
            // As in the seeds: an IPv6-only cluster runs native routing. beeline's tunnel carries
            // an IPv4 outer header to the peer's IPv4 underlay address, which such a node lacks.
            return Err(ConfigError::Inconsistent(
                "IPv6-only (`enable-ipv4: false`) requires `routing-mode: native` (with `auto-direct-node-routes` \
                 or routes to the pod CIDRs in the network): the tunnel needs IPv4 underlay addresses"
                    .into(),
            ));
        }
        if self.node_port_range.0 > self.node_port_range.1 {
            return Err(ConfigError::Inconsistent(format!(
                "`node-port-range` {}-{} has its start above its end",
                self.node_port_range.0, self.node_port_range.1
            )));
        }
        Ok(())
    }

    /// The bpffs directory where beeline pins its maps, programs and links.
    pub fn pin_dir(&self) -> PathBuf {
        self.bpf_root.join("beeline")
    }
}

struct Values<'a> {
    raw: &'a RawConfig,
}

impl Values<'_> {
    fn get(&self, key: &str) -> &str {
        debug_assert!(KNOWN_KEYS.iter().any(|(k, _)| *k == key), "{key} has no default");
        self.raw
            .get(key)
            .map(String::as_str)
            .or_else(|| KNOWN_KEYS.iter().find(|(k, _)| *k == key).map(|(_, d)| *d))
            .unwrap_or("")
    }

    fn invalid(&self, key: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::InvalidValue { key: key.into(), value: self.get(key).into(), reason: reason.into() }
    }

    fn string(&self, key: &str) -> String {
        self.get(key).to_string()
    }

    fn path(&self, key: &str) -> PathBuf {
        PathBuf::from(self.get(key))
    }

    fn bool(&self, key: &str) -> Result<bool, ConfigError> {
        match self.get(key).to_ascii_lowercase().as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(self.invalid(key, "expected true or false")),
        }
    }

    /// Cilium's spellings (case-insensitive) or the level's number.
    fn monitor_aggregation(&self, key: &str) -> Result<u8, ConfigError> {
        use beeline_common::datapath::*;
        match self.get(key).to_ascii_lowercase().as_str() {
            "none" | "disabled" | "0" => Ok(MONITOR_AGGREGATION_NONE),
            "lowest" | "1" => Ok(MONITOR_AGGREGATION_LOWEST),
            "low" | "2" => Ok(MONITOR_AGGREGATION_LOW),
            "medium" | "3" => Ok(MONITOR_AGGREGATION_MEDIUM),
            "max" | "maximum" | "4" => Ok(MONITOR_AGGREGATION_MAXIMUM),
            _ => Err(self.invalid(key, "expected one of none, lowest, low, medium, maximum")),
        }
    }

    /// Cilium ≥ 1.14 uses true/false; older ConfigMaps say strict/partial/disabled.
    fn kpr(&self, key: &str) -> Result<bool, ConfigError> {
        match self.get(key).to_ascii_lowercase().as_str() {
            "true" | "strict" => Ok(true),
            "false" | "disabled" | "" => Ok(false),
            "partial" => Err(self.invalid(key, "`partial` is no longer supported; use true or false")),
            _ => Err(self.invalid(key, "expected true or false")),
        }
    }

    fn parse_num<T>(&self, key: &str, min: u64, max: u64) -> Result<T, ConfigError>
    where
        T: TryFrom<u64>,
    {
        let n: u64 = self.get(key).parse().map_err(|_| self.invalid(key, "expected a number"))?;
        if n < min || n > max {
            return Err(self.invalid(key, format!("must be between {min} and {max}")));
        }
        T::try_from(n).map_err(|_| self.invalid(key, "out of range"))
    }

    fn choice<T: Copy>(&self, key: &str, options: &[(&str, T)]) -> Result<T, ConfigError> {
        let value = self.get(key);
        options.iter().find(|(name, _)| *name == value).map(|(_, v)| *v).ok_or_else(|| {
            let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
            self.invalid(key, format!("expected one of {}", names.join(", ")))
        })
    }

    fn opt_net<N: std::str::FromStr>(&self, key: &str) -> Result<Option<N>, ConfigError> {
        let value = self.get(key);
        if value.is_empty() {
            return Ok(None);
        }
        value.parse().map(Some).map_err(|_| self.invalid(key, "expected a CIDR"))
    }

    /// Cilium renders string slices space-separated; commas are accepted too.
    fn net_list<N: std::str::FromStr + Into<IpNet> + Copy>(&self, key: &str) -> Result<Vec<N>, ConfigError> {
        self.get(key)
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(|s| {
                let net: N = s.parse().map_err(|_| self.invalid(key, format!("{s:?} is not a CIDR of this family")))?;
                let ip: IpNet = net.into();
                if ip.trunc() != ip {
                    return Err(self.invalid(key, format!("{s} has host bits set (did you mean {}?)", ip.trunc())));
                }
                Ok(net)
            })
            .collect()
    }

    fn port_range(&self, key: &str) -> Result<(u16, u16), ConfigError> {
        let value = self.get(key);
        let (a, b) = value.split_once([',', '-']).ok_or_else(|| self.invalid(key, "expected `min,max`"))?;
        let parse = |s: &str| s.trim().parse::<u16>().map_err(|_| self.invalid(key, "expected `min,max` ports"));
        Ok((parse(a)?, parse(b)?))
    }

    /// A Go duration as Cilium's flags take them: `15m0s`, `1h`, `90s`, `500ms` (no sign).
    fn duration(&self, key: &str) -> Result<Duration, ConfigError> {
        parse_go_duration(self.get(key)).ok_or_else(|| self.invalid(key, "expected a duration like 15m0s, 1h or 30s"))
    }

    fn socket_addr(&self, key: &str) -> Result<SocketAddr, ConfigError> {
        self.get(key).parse().map_err(|_| self.invalid(key, "expected host:port"))
    }
}

/// Parses a Go duration (`1h30m`, `15m0s`, `250ms`, `0`); `None` when malformed.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = Duration::ZERO;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let value: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "h" => Duration::from_secs(3600),
            "m" => Duration::from_secs(60),
            "s" => Duration::from_secs(1),
            "ms" => Duration::from_millis(1),
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.checked_add(unit.checked_mul(u32::try_from(value).ok()?)?)?;
    }
    Some(total)
}

/// The closest known key by edit distance, for typos like `routing-mod`.
fn suggest(key: &str) -> Option<String> {
    KNOWN_KEYS
        .iter()
        .map(|(k, _)| *k)
        .chain(ACCEPTED_CILIUM_KEYS.iter().copied())
        .map(|k| (levenshtein(key, k), k))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, k)| k.to_string())
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(pairs: &[(&str, &str)]) -> RawConfig {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_match_cilium() {
        let cfg = Config::from_raw(&RawConfig::new()).unwrap();
        assert_eq!(cfg.ipam, IpamMode::ClusterPool);
        assert_eq!(cfg.routing_mode, RoutingMode::Tunnel);
        assert_eq!(cfg.tunnel_protocol, TunnelProtocol::Vxlan);
        assert_eq!(cfg.cluster_pool_ipv4_cidr, vec!["10.0.0.0/8".parse::<Ipv4Net>().unwrap()]);
        assert_eq!(cfg.cluster_pool_ipv4_mask_size, 24);
        assert!(cfg.enable_ipv4 && !cfg.enable_ipv6);
        assert_eq!(cfg.node_port_range, (30000, 32767));
        assert_eq!(cfg.pin_dir(), PathBuf::from("/sys/fs/bpf/beeline"));
        assert!(cfg.enable_lb_ipam, "Cilium's operator runs LB-IPAM unless told otherwise");
        let off = Config::from_raw(&raw(&[("enable-lb-ipam", "false")])).unwrap();
        assert!(!off.enable_lb_ipam);
        assert!(
            Config::ignored_keys(&raw(&[("enable-lb-ipam", "false")])).is_empty(),
            "acted on, so not logged as ignored"
        );
    }

    #[test]
    fn multi_pool_with_native_routing_is_accepted() {
        let cfg = Config::from_raw(&raw(&[
            ("ipam", "multi-pool"),
            ("routing-mode", "native"),
            ("ipv4-native-routing-cidr", "10.0.0.0/8"),
            ("auto-create-cilium-pod-ip-pools", "default=ipv4-cidrs:10.10.0.0/16;ipv4-mask-size:24"),
        ]))
        .unwrap();
        assert_eq!(cfg.ipam, IpamMode::MultiPool);
    }

    #[test]
    fn errors_name_the_key() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("routing-mod", "native")], "`routing-mod` (did you mean `routing-mode`?)"),
            (&[("no-such-thing-at-all", "1")], "unknown configuration key `no-such-thing-at-all`"),
            (&[("routing-mode", "bgp")], "`routing-mode`: expected one of tunnel, native"),
            (&[("tunnel-protocol", "gre")], "`tunnel-protocol`"),
            (&[("enable-ipv4", "yes")], "`enable-ipv4`: expected true or false"),
            (&[("cluster-pool-ipv4-mask-size", "33")], "`cluster-pool-ipv4-mask-size`: must be between 1 and 32"),
            (&[("cluster-pool-ipv4-cidr", "10.0.0.1/8")], "has host bits set"),
            (&[("cluster-pool-ipv4-cidr", "fd00::/8")], "`cluster-pool-ipv4-cidr`"),
            (&[("ipam", "aws")], "`ipam`"),
            (&[("node-port-range", "32767,30000")], "`node-port-range` 32767-30000"),
            (&[("enable-ipv4", "false")], "both false"),
            (
                &[("enable-ipv4", "false"), ("enable-ipv6", "true")],
                "IPv6-only (`enable-ipv4: false`) requires `routing-mode: native`",
            ),
            (&[("cluster-pool-ipv4-cidr", "")], "`cluster-pool-ipv4-cidr` is empty"),
            (&[("routing-mode", "native")], "needs `ipv4-native-routing-cidr`"),
            (&[("cluster-pool-ipv4-cidr", "10.0.0.0/16"), ("cluster-pool-ipv4-mask-size", "8")], "shorter than"),
            (&[("kube-proxy-replacement", "partial")], "`kube-proxy-replacement`"),
            (&[("ipam", "multi-pool")], "`ipam: multi-pool` requires `routing-mode: native`"),
            (
                &[
                    ("ipam", "multi-pool"),
                    ("routing-mode", "native"),
                    ("ipv4-native-routing-cidr", "10.0.0.0/8"),
                    ("auto-create-cilium-pod-ip-pools", "default=ipv4-cidrs:10.10.0.0/16"),
                ],
                "auto-create-cilium-pod-ip-pools: pool default: ipv4-cidrs and ipv4-mask-size must be given together",
            ),
        ];
        for (pairs, needle) in cases {
            let err = Config::from_raw(&raw(pairs)).expect_err(&format!("{pairs:?} must be refused"));
            assert!(err.to_string().contains(needle), "{pairs:?}: {err} does not contain {needle:?}");
        }
    }

    #[test]
    fn accepts_a_cilium_configmap_subset() {
        let cfg = Config::from_raw(&raw(&[
            ("routing-mode", "native"),
            ("ipv4-native-routing-cidr", "10.0.0.0/8"),
            ("auto-direct-node-routes", "true"),
            ("kube-proxy-replacement", "true"),
            ("cluster-pool-ipv4-cidr", "10.1.0.0/16 10.2.0.0/16"),
            ("enable-hubble", "true"),
            ("monitor-aggregation", "medium"),
        ]))
        .unwrap();
        assert_eq!(cfg.routing_mode, RoutingMode::Native);
        assert!(cfg.kube_proxy_replacement && cfg.auto_direct_node_routes);
        assert_eq!(cfg.cluster_pool_ipv4_cidr.len(), 2);
    }

    #[test]
    fn monitor_aggregation_levels_and_event_switches() {
        use beeline_common::datapath::*;
        let cases = [
            (None, Some(MONITOR_AGGREGATION_MEDIUM)),
            (Some("none"), Some(MONITOR_AGGREGATION_NONE)),
            (Some("disabled"), Some(MONITOR_AGGREGATION_NONE)),
            (Some("Lowest"), Some(MONITOR_AGGREGATION_LOWEST)),
            (Some("low"), Some(MONITOR_AGGREGATION_LOW)),
            (Some("MEDIUM"), Some(MONITOR_AGGREGATION_MEDIUM)),
            (Some("max"), Some(MONITOR_AGGREGATION_MAXIMUM)),
            (Some("maximum"), Some(MONITOR_AGGREGATION_MAXIMUM)),
            (Some("2"), Some(MONITOR_AGGREGATION_LOW)),
            (Some("high"), None),
            (Some("5"), None),
        ];
        for (value, want) in cases {
            let pairs: Vec<(&str, &str)> = value.map(|v| ("monitor-aggregation", v)).into_iter().collect();
            match (Config::from_raw(&raw(&pairs)), want) {
                (Ok(cfg), Some(level)) => assert_eq!(cfg.monitor_aggregation, level, "{value:?}"),
                (Err(e), None) => assert!(e.to_string().contains("`monitor-aggregation`"), "{value:?}: {e}"),
                (got, want) => panic!("{value:?}: got {got:?}, want {want:?}"),
            }
        }
        let cfg = Config::from_raw(&raw(&[])).unwrap();
        assert!(cfg.bpf_events_trace && cfg.bpf_events_drop && cfg.bpf_events_policy_verdict, "on by default");
        let cfg = Config::from_raw(&raw(&[("bpf-events-trace-enabled", "false")])).unwrap();
        assert!(!cfg.bpf_events_trace && cfg.bpf_events_drop);
        assert!(Config::ignored_keys(&raw(&[("monitor-aggregation", "low")])).is_empty(), "acted on, not ignored");
    }

    #[test]
    fn enable_policy_modes() {
        // Cilium's values, compared case-insensitively; `default` when unset.
        let cases = [
            (None, Some(EnforcementMode::Default)),
            (Some("default"), Some(EnforcementMode::Default)),
            (Some("always"), Some(EnforcementMode::Always)),
            (Some("never"), Some(EnforcementMode::Never)),
            (Some("Always"), Some(EnforcementMode::Always)),
            (Some("NEVER"), Some(EnforcementMode::Never)),
            (Some("sometimes"), None),
            (Some(""), None),
        ];
        for (value, want) in cases {
            let pairs: Vec<(&str, &str)> = value.map(|v| ("enable-policy", v)).into_iter().collect();
            match (Config::from_raw(&raw(&pairs)), want) {
                (Ok(cfg), Some(mode)) => assert_eq!(cfg.enable_policy, mode, "{value:?}"),
                (Err(e), None) => assert!(e.to_string().contains("`enable-policy`"), "{value:?}: {e}"),
                (got, want) => panic!("{value:?}: got {got:?}, want {want:?}"),
            }
        }
        assert!(
            Config::ignored_keys(&raw(&[("enable-policy", "always")])).is_empty(),
            "acted on, so not logged as ignored"
        );
    }

    #[test]
    fn go_durations() {
        let cases = [
            ("15m0s", Some(900)),
            ("30m", Some(1800)),
            ("1h30m", Some(5400)),
            ("90s", Some(90)),
            ("0", Some(0)),
            ("", None),
            ("15", None),
            ("5d", None),
            ("-1s", None),
        ];
        for (text, secs) in cases {
            assert_eq!(parse_go_duration(text), secs.map(Duration::from_secs), "{text:?}");
        }
        assert_eq!(parse_go_duration("250ms"), Some(Duration::from_millis(250)));
        let cfg = Config::from_raw(&RawConfig::new()).unwrap();
        assert_eq!(
            (cfg.identity_gc_interval, cfg.identity_heartbeat_timeout),
            (Duration::from_secs(900), Duration::from_secs(1800)),
            "Cilium's defaults"
        );
        let err = Config::from_raw(&raw(&[("identity-gc-interval", "soon")])).unwrap_err();
        assert!(err.to_string().contains("`identity-gc-interval`"), "{err}");
    }

    #[test]
    fn sources_layer_in_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("routing-mode"), "native\n").unwrap();
        std::fs::write(dir.path().join("ipv4-native-routing-cidr"), "10.0.0.0/8").unwrap();
        std::fs::write(dir.path().join("tunnel-protocol"), "vxlan").unwrap();
        let file = dir.path().join("cm.yaml");
        std::fs::write(
            &file,
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cilium-config\ndata:\n  tunnel-protocol: geneve\n  debug: \"true\"\n",
        )
        .unwrap();
        let sources = Sources {
            config_dir: Some(dir.path().to_path_buf()),
            config_file: Some(file),
            env: vec![("BEELINE_CLUSTER_NAME".into(), "lab".into()), ("BEELINE_LOG_FORMAT".into(), "json".into())],
            sets: vec!["debug=false".into()],
        };
        // The directory also holds cm.yaml itself, which is not a key: it must be refused by name.
        let err = sources.load().unwrap_err();
        assert!(err.to_string().contains("`cm.yaml`"), "{err}");
        std::fs::remove_file(dir.path().join("cm.yaml")).unwrap();
        let file = dir.path().join("..cm.yaml");
        std::fs::write(&file, "tunnel-protocol: geneve\ndebug: true\n").unwrap();
        let cfg = Sources { config_file: Some(file), ..sources }.load().unwrap();
        assert_eq!(cfg.routing_mode, RoutingMode::Native);
        assert_eq!(cfg.tunnel_protocol, TunnelProtocol::Geneve);
        assert_eq!(cfg.cluster_name, "lab");
        assert!(!cfg.debug, "--set wins over the file");
    }
}
