//! A values file shaped like Cilium's Helm values (`ipam.mode`, `routingMode`, `ipv4.enabled`, ...)
//! translated into `cilium-config` keys, the way the Helm chart renders its ConfigMap.
//!
//! Pure: a parsed YAML document in, raw config keys out. Unknown paths are refused by name (with a
//! suggestion), because a misspelt `routingMod` silently ignored would give a lab in the wrong
//! mode; a few chart settings that mean nothing here (`hubble`, `image`, ...) are accepted and
//! reported as ignored. The `lab:` section is beeline-only: settings the lab itself needs that a
//! kind cluster would take from its own config (the node pod subnet for `ipam.mode: kubernetes`).

use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde_json::Value;

use crate::config::{Config, ConfigError, RawConfig};

#[derive(Debug, thiserror::Error)]
pub enum ValuesError {
    #[error("cannot read values file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot parse values file {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("unknown value `{path}`{}", suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default())]
    Unknown { path: String, suggestion: Option<String> },
    #[error("value `{path}`: {reason}")]
    Invalid { path: String, reason: String },
    /// The translated keys do not form a valid configuration; `path` is the Helm value behind the
    /// offending key when there is one.
    #[error("{}{source}", path.as_ref().map(|p| format!("value `{p}`: ")).unwrap_or_default())]
    Config { path: Option<String>, source: ConfigError },
}

/// How a Helm value becomes a `cilium-config` string.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// A string, number or bool, rendered as text.
    Scalar,
    /// A list (or one string), rendered space-separated as the chart does for string slices.
    List,
}

/// Helm value path → `cilium-config` key.
const MAPPINGS: &[(&str, &str, Shape)] = &[
    ("cluster.name", "cluster-name", Shape::Scalar),
    ("cluster.id", "cluster-id", Shape::Scalar),
    ("debug.enabled", "debug", Shape::Scalar),
    ("ipam.mode", "ipam", Shape::Scalar),
    ("ipam.operator.clusterPoolIPv4PodCIDRList", "cluster-pool-ipv4-cidr", Shape::List),
    ("ipam.operator.clusterPoolIPv4MaskSize", "cluster-pool-ipv4-mask-size", Shape::Scalar),
    ("ipam.operator.clusterPoolIPv6PodCIDRList", "cluster-pool-ipv6-cidr", Shape::List),
    ("ipam.operator.clusterPoolIPv6MaskSize", "cluster-pool-ipv6-mask-size", Shape::Scalar),
    ("routingMode", "routing-mode", Shape::Scalar),
    ("tunnelProtocol", "tunnel-protocol", Shape::Scalar),
    ("tunnelPort", "tunnel-port", Shape::Scalar),
    ("autoDirectNodeRoutes", "auto-direct-node-routes", Shape::Scalar),
    ("ipv4NativeRoutingCIDR", "ipv4-native-routing-cidr", Shape::Scalar),
    ("ipv6NativeRoutingCIDR", "ipv6-native-routing-cidr", Shape::Scalar),
    ("kubeProxyReplacement", "kube-proxy-replacement", Shape::Scalar),
    ("ipv4.enabled", "enable-ipv4", Shape::Scalar),
    ("ipv6.enabled", "enable-ipv6", Shape::Scalar),
    ("enableIPv4Masquerade", "enable-ipv4-masquerade", Shape::Scalar),
    ("enableIPv6Masquerade", "enable-ipv6-masquerade", Shape::Scalar),
    ("bpf.masquerade", "enable-bpf-masquerade", Shape::Scalar),
    ("loadBalancer.algorithm", "bpf-lb-algorithm", Shape::Scalar),
    ("nodePort.range", "node-port-range", Shape::Scalar),
    ("MTU", "mtu", Shape::Scalar),
    ("policyEnforcementMode", "enable-policy", Shape::Scalar),
    ("bpf.monitorAggregation", "monitor-aggregation", Shape::Scalar),
    ("endpointRoutes.enabled", "enable-endpoint-routes", Shape::Scalar),
    ("bpf.events.trace.enabled", "bpf-events-trace-enabled", Shape::Scalar),
    ("bpf.events.drop.enabled", "bpf-events-drop-enabled", Shape::Scalar),
    ("bpf.events.policyVerdict.enabled", "bpf-events-policy-verdict-enabled", Shape::Scalar),
];

/// Chart settings that have no meaning in the lab (images, Hubble, scheduling of the pods); the
/// whole subtree is accepted and listed as ignored.
const IGNORED_PREFIXES: &[&str] = &[
    "hubble",
    "image",
    "operator.image",
    "operator.resources",
    "operator.tolerations",
    "operator.nodeSelector",
    "resources",
    "tolerations",
    "nodeSelector",
    "k8sServiceHost",
    "k8sServicePort",
    "prometheus",
    "operator.prometheus",
    "envoy",
    "rollOutCiliumPods",
];

/// Helm paths the lab itself reads (not `cilium-config` keys).
const OPERATOR_REPLICAS: &str = "operator.replicas";
const LAB_POD_SUBNET: &str = "lab.podSubnet";
/// A map of pools (`<name>: {ipv4: {cidrs, maskSize}, ipv6: ...}`), rendered into Cilium's
/// `auto-create-cilium-pod-ip-pools` string.
const AUTO_CREATE_POOLS: (&str, &str) = ("ipam.operator.autoCreateCiliumPodIPPools", "auto-create-cilium-pod-ip-pools");

/// kind's default pod subnets: the source of `Node.spec.podCIDRs` for `ipam.mode: kubernetes`.
pub const DEFAULT_POD_SUBNETS: &[&str] = &["10.244.0.0/16", "fd00:10:244::/56"];

/// A translated values file.
#[derive(Clone, Debug, PartialEq)]
pub struct LabValues {
    /// `cilium-config` keys (only those the file set; defaults come from [`Config`]).
    pub config: RawConfig,
    /// How many operator processes run (leader election picks one).
    pub operator_replicas: u32,
    /// Subnets carved into per-node `spec.podCIDRs` (one /24 and one /64 per node).
    pub pod_subnets: Vec<IpNet>,
    /// Helm paths accepted without effect.
    pub ignored: Vec<String>,
}

impl Default for LabValues {
    fn default() -> Self {
        LabValues {
            config: RawConfig::new(),
            operator_replicas: 1,
            pod_subnets: DEFAULT_POD_SUBNETS.iter().map(|s| s.parse().expect("valid default")).collect(),
            ignored: Vec::new(),
        }
    }
}

impl LabValues {
    /// Validates the translated keys (with `extra` keys such as per-node paths layered on top).
    pub fn validate(&self, extra: &RawConfig) -> Result<Config, ValuesError> {
        let mut raw = self.config.clone();
        raw.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        Config::from_raw(&raw).map_err(|source| {
            let key = match &source {
                ConfigError::InvalidValue { key, .. } | ConfigError::UnknownKey { key, .. } => Some(key.as_str()),
                _ => None,
            };
            let path = key.and_then(|k| MAPPINGS.iter().find(|(_, c, _)| *c == k)).map(|(p, _, _)| p.to_string());
            ValuesError::Config { path, source }
        })
    }
}

/// Reads and translates a values file.
pub fn load(path: &Path) -> Result<LabValues, ValuesError> {
    let text = std::fs::read_to_string(path).map_err(|source| ValuesError::Read { path: path.into(), source })?;
    let doc: Value =
        serde_saphyr::from_str(&text).map_err(|e| ValuesError::Parse { path: path.into(), reason: e.to_string() })?;
    translate(&doc)
}

/// Translates a parsed values document.
pub fn translate(doc: &Value) -> Result<LabValues, ValuesError> {
    let mut out = LabValues::default();
    match doc {
        Value::Null => Ok(out),
        Value::Object(_) => {
            walk(doc, "", &mut out)?;
            Ok(out)
        }
        _ => Err(ValuesError::Invalid { path: "(document)".into(), reason: "expected a map of values".into() }),
    }
}

fn walk(node: &Value, prefix: &str, out: &mut LabValues) -> Result<(), ValuesError> {
    let Value::Object(map) = node else { unreachable!("called on maps only") };
    for (key, value) in map {
        let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        if let Some((_, config_key, shape)) = MAPPINGS.iter().find(|(p, _, _)| *p == path) {
            if let Some(text) = render(&path, value, *shape)? {
                out.config.insert(config_key.to_string(), text);
            }
        } else if path == OPERATOR_REPLICAS {
            out.operator_replicas = value.as_u64().filter(|n| (1..=16).contains(n)).ok_or_else(|| {
                ValuesError::Invalid { path: path.clone(), reason: "expected a number from 1 to 16".into() }
            })? as u32;
        } else if path == AUTO_CREATE_POOLS.0 {
            if let Some(text) = render_pools(&path, value)? {
                out.config.insert(AUTO_CREATE_POOLS.1.to_string(), text);
            }
        } else if path == LAB_POD_SUBNET {
            let text = render(&path, value, Shape::List)?.unwrap_or_default();
            out.pod_subnets = text
                .split_whitespace()
                .map(|s| {
                    let net: IpNet = s.parse().map_err(|_| ValuesError::Invalid {
                        path: path.clone(),
                        reason: format!("{s:?} is not a CIDR"),
                    })?;
                    if net.trunc() != net {
                        return Err(ValuesError::Invalid {
                            path: path.clone(),
                            reason: format!("{s} has host bits set"),
                        });
                    }
                    Ok(net)
                })
                .collect::<Result<_, _>>()?;
        } else if IGNORED_PREFIXES.iter().any(|p| path == *p) {
            out.ignored.push(path);
        } else if value.is_object() && is_known_prefix(&path) {
            walk(value, &path, out)?;
        } else {
            return Err(ValuesError::Unknown { suggestion: suggest(&path), path });
        }
    }
    Ok(())
}

/// Whether some known path lies under `prefix` (so descending into it can find something).
fn is_known_prefix(prefix: &str) -> bool {
    let under = format!("{prefix}.");
    known_paths().any(|p| p.starts_with(&under))
}

fn known_paths() -> impl Iterator<Item = &'static str> {
    MAPPINGS.iter().map(|(p, _, _)| *p).chain(IGNORED_PREFIXES.iter().copied()).chain([
        OPERATOR_REPLICAS,
        LAB_POD_SUBNET,
        AUTO_CREATE_POOLS.0,
    ])
}

/// `{default: {ipv4: {cidrs: [10.10.0.0/16], maskSize: 27}}}` →
/// `default=ipv4-cidrs:10.10.0.0/16;ipv4-mask-size:27` (pools joined by commas, as Cilium's
/// chart renders the map); the operator parses and validates the result.
fn render_pools(path: &str, value: &Value) -> Result<Option<String>, ValuesError> {
    let invalid = |at: String, reason: &str| ValuesError::Invalid { path: at, reason: reason.into() };
    let pools = match value {
        Value::Null => return Ok(None),
        Value::Object(pools) => pools,
        _ => return Err(invalid(path.into(), "expected a map of pool name to {ipv4, ipv6}")),
    };
    let mut rendered = Vec::new();
    for (name, spec) in pools {
        let Value::Object(families) = spec else { return Err(invalid(format!("{path}.{name}"), "expected a map")) };
        let mut fields = Vec::new();
        for (family, settings) in families {
            let at = format!("{path}.{name}.{family}");
            if family != "ipv4" && family != "ipv6" {
                return Err(invalid(at, "expected ipv4 or ipv6"));
            }
            let Value::Object(settings) = settings else { return Err(invalid(at, "expected {cidrs, maskSize}")) };
            for (key, v) in settings {
                let (field, shape) = match key.as_str() {
                    "cidrs" => ("cidrs", Shape::List),
                    "maskSize" => ("mask-size", Shape::Scalar),
                    _ => return Err(invalid(format!("{at}.{key}"), "expected cidrs or maskSize")),
                };
                if let Some(text) = render(&format!("{at}.{key}"), v, shape)? {
                    fields.push(format!("{family}-{field}:{}", text.split_whitespace().collect::<Vec<_>>().join(",")));
                }
            }
        }
        rendered.push(format!("{name}={}", fields.join(";")));
    }
    Ok(Some(rendered.join(",")))
}

fn render(path: &str, value: &Value, shape: Shape) -> Result<Option<String>, ValuesError> {
    let scalar = |v: &Value| -> Result<String, ValuesError> {
        match v {
            Value::String(s) => Ok(s.clone()),
            Value::Bool(b) => Ok(b.to_string()),
            Value::Number(n) => Ok(n.to_string()),
            _ => Err(ValuesError::Invalid { path: path.into(), reason: "expected a string, number or boolean".into() }),
        }
    };
    match (value, shape) {
        // `key: ~` in Helm means "use the chart default".
        (Value::Null, _) => Ok(None),
        (Value::Array(items), Shape::List) => {
            Ok(Some(items.iter().map(scalar).collect::<Result<Vec<_>, _>>()?.join(" ")))
        }
        (Value::Array(_), Shape::Scalar) => {
            Err(ValuesError::Invalid { path: path.into(), reason: "expected a single value, not a list".into() })
        }
        (v, Shape::List) => Ok(Some(scalar(v)?.replace(',', " "))),
        (v, Shape::Scalar) => scalar(v).map(Some),
    }
}

/// The closest known path by edit distance, for typos like `routingMod`.
fn suggest(path: &str) -> Option<String> {
    known_paths().map(|k| (edit_distance(path, k), k)).filter(|(d, _)| *d <= 3).min().map(|(_, k)| k.to_string())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push((prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Value {
        serde_saphyr::from_str(text).unwrap()
    }

    fn keys(pairs: &[(&str, &str)]) -> RawConfig {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn helm_values_become_cilium_config_keys() {
        let cases: &[(&str, &[(&str, &str)])] = &[
            ("", &[]),
            ("routingMode: tunnel\ntunnelProtocol: geneve\n", &[("routing-mode", "tunnel"), ("tunnel-protocol", "geneve")]),
            (
                // The seeds' cilium-ipam-cluster-scope-small.yaml.
                "cluster:\n  name: kind-kind\nipam:\n  mode: cluster-pool\n  operator:\n    clusterPoolIPv4MaskSize: 29\n    clusterPoolIPv4PodCIDRList:\n      - 10.0.42.0/28\n      - 10.0.84.0/28\noperator:\n  replicas: 1\nroutingMode: tunnel\ntunnelProtocol: vxlan\n",
                &[
                    ("cluster-name", "kind-kind"),
                    ("ipam", "cluster-pool"),
                    ("cluster-pool-ipv4-mask-size", "29"),
                    ("cluster-pool-ipv4-cidr", "10.0.42.0/28 10.0.84.0/28"),
                    ("routing-mode", "tunnel"),
                    ("tunnel-protocol", "vxlan"),
                ],
            ),
            (
                "routingMode: native\nautoDirectNodeRoutes: true\nipv4NativeRoutingCIDR: 10.0.0.0/8\nkubeProxyReplacement: true\n",
                &[
                    ("routing-mode", "native"),
                    ("auto-direct-node-routes", "true"),
                    ("ipv4-native-routing-cidr", "10.0.0.0/8"),
                    ("kube-proxy-replacement", "true"),
                ],
            ),
            // Masquerading in BPF (beeline has no iptables masquerading to fall back to).
            ("bpf:\n  masquerade: true\n", &[("enable-bpf-masquerade", "true")]),
            ("endpointRoutes:\n  enabled: true\n", &[("enable-endpoint-routes", "true")]),
            (
                "bpf:\n  monitorAggregation: none\n  events:\n    drop: {enabled: false}\n",
                &[("monitor-aggregation", "none"), ("bpf-events-drop-enabled", "false")],
            ),
            // The seeds' cilium-ipam-multi-pool.yaml pool map, two pools and both families.
            (
                "ipam:\n  mode: multi-pool\n  operator:\n    autoCreateCiliumPodIPPools:\n      default:\n        ipv4:\n          cidrs: [\"10.10.0.0/16\", 10.11.0.0/16]\n          maskSize: 27\n      other:\n        ipv6: {cidrs: fd00::/104, maskSize: 120}\nroutingMode: native\nipv4NativeRoutingCIDR: 10.0.0.0/8\n",
                &[
                    ("ipam", "multi-pool"),
                    ("routing-mode", "native"),
                    ("ipv4-native-routing-cidr", "10.0.0.0/8"),
                    (
                        "auto-create-cilium-pod-ip-pools",
                        "default=ipv4-cidrs:10.10.0.0/16,10.11.0.0/16;ipv4-mask-size:27,other=ipv6-cidrs:fd00::/104;ipv6-mask-size:120",
                    ),
                ],
            ),
            (
                "ipv4:\n  enabled: false\nipv6:\n  enabled: true\nroutingMode: native\n",
                &[("enable-ipv4", "false"), ("enable-ipv6", "true"), ("routing-mode", "native")],
            ),
            // A single string where the chart takes a list; commas as separators.
            ("ipam:\n  operator:\n    clusterPoolIPv4PodCIDRList: 10.1.0.0/16,10.2.0.0/16\n", &[("cluster-pool-ipv4-cidr", "10.1.0.0/16 10.2.0.0/16")]),
            // `~` keeps the default.
            ("routingMode: ~\nMTU: 1450\n", &[("mtu", "1450")]),
            ("policyEnforcementMode: always\n", &[("enable-policy", "always")]),
            ("kubeProxyReplacement: \"false\"\nloadBalancer:\n  algorithm: maglev\nnodePort:\n  range: \"30000,31000\"\n", &[
                ("kube-proxy-replacement", "false"),
                ("bpf-lb-algorithm", "maglev"),
                ("node-port-range", "30000,31000"),
            ]),
        ];
        for (text, want) in cases {
            let got = translate(&yaml(text)).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(got.config, keys(want), "{text:?}");
            got.validate(&RawConfig::new()).unwrap_or_else(|e| panic!("{text:?} must validate: {e}"));
        }
    }

    #[test]
    fn lab_settings_and_ignored_values() {
        let got = translate(&yaml(
            "operator:\n  replicas: 2\n  image:\n    tag: v1\nhubble:\n  relay:\n    enabled: true\nlab:\n  podSubnet: [10.200.0.0/16]\n",
        ))
        .unwrap();
        assert_eq!(got.operator_replicas, 2);
        assert_eq!(got.pod_subnets, vec!["10.200.0.0/16".parse::<IpNet>().unwrap()]);
        assert_eq!(got.ignored, vec!["hubble".to_string(), "operator.image".to_string()]);
        assert!(got.config.is_empty());
        let defaults = translate(&yaml("{}")).unwrap();
        assert_eq!(defaults, LabValues::default());
        assert_eq!(defaults.pod_subnets.len(), 2, "kind's IPv4 and IPv6 pod subnets");
    }

    #[test]
    fn mistakes_are_refused_by_name() {
        let cases: &[(&str, &str)] = &[
            ("routingMod: native\n", "unknown value `routingMod` (did you mean `routingMode`?)"),
            ("ipam:\n  mod: kubernetes\n", "unknown value `ipam.mod` (did you mean `ipam.mode`?)"),
            ("somethingElseEntirely: 1\n", "unknown value `somethingElseEntirely`"),
            ("ipv4: true\n", "unknown value `ipv4`"),
            ("routingMode: [a, b]\n", "value `routingMode`: expected a single value"),
            ("ipam:\n  mode: {a: 1}\n", "value `ipam.mode`: expected a string"),
            ("operator:\n  replicas: 0\n", "value `operator.replicas`"),
            ("lab:\n  podSubnet: 10.244.0.1/16\n", "host bits"),
            ("- a\n- b\n", "expected a map"),
            (
                "ipam:\n  operator:\n    autoCreateCiliumPodIPPools:\n      default:\n        ipv4: {cidr: 10.0.0.0/8}\n",
                "value `ipam.operator.autoCreateCiliumPodIPPools.default.ipv4.cidr`: expected cidrs or maskSize",
            ),
        ];
        for (text, needle) in cases {
            let err = translate(&yaml(text)).expect_err(&format!("{text:?} must be refused"));
            assert!(err.to_string().contains(needle), "{text:?}: {err} does not contain {needle:?}");
        }
    }

    #[test]
    fn invalid_results_name_the_helm_value() {
        let cases: &[(&str, &str)] = &[
            ("routingMode: bgp\n", "value `routingMode`: invalid value \"bgp\" for configuration key `routing-mode`"),
            ("tunnelProtocol: gre\n", "value `tunnelProtocol`"),
            ("ipv4:\n  enabled: false\n", "both false"),
            ("routingMode: native\n", "needs `ipv4-native-routing-cidr`"),
            ("ipam:\n  operator:\n    clusterPoolIPv4MaskSize: 40\n", "value `ipam.operator.clusterPoolIPv4MaskSize`"),
        ];
        for (text, needle) in cases {
            let values = translate(&yaml(text)).unwrap();
            let err = values.validate(&RawConfig::new()).expect_err(&format!("{text:?} must be refused"));
            assert!(err.to_string().contains(needle), "{text:?}: {err} does not contain {needle:?}");
        }
    }
}
