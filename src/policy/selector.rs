//! Peer selectors: what a rule's `fromEndpoints`/`toEntities`/`fromCIDRSet`/... select, normalized into
//! a hashable form so that equal selectors share one selector-cache entry.

use std::collections::BTreeSet;

use ipnet::IpNet;

use super::cidr::overlaps;
use super::identity::{keys, source, Identity, Label, LabelSet};
use crate::crds::policy_rule::Entity;
use crate::crds::selector::{LabelSelector, SelectorOperator};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// One requirement on a source-qualified label key. `source: None` matches labels of any source (a
/// selector key without a prefix, or with `any:`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    pub source: Option<String>,
    pub key: String,
    pub operator: Operator,
    pub values: BTreeSet<String>,
}

impl Requirement {
    /// `key` may carry a source prefix (`k8s:app`, `reserved:host`, `any:app`).
    pub fn new(key: &str, operator: Operator, values: impl IntoIterator<Item = impl Into<String>>) -> Self {
        let (source, key) = match key.split_once(':') {
            Some((s, k)) if s == source::ANY => (None, k),
            Some((s, k)) => (Some(s.to_string()), k),
            None => (None, key),
        };
        Self { source, key: key.into(), operator, values: values.into_iter().map(Into::into).collect() }
    }

    pub fn equals(key: &str, value: &str) -> Self {
        Self::new(key, Operator::In, [value])
    }

    fn label_matches(&self, label: &Label) -> bool {
        label.key == self.key && self.source.as_ref().is_none_or(|s| *s == label.source)
    }

    pub fn matches(&self, labels: &LabelSet) -> bool {
        let mut values = labels.iter().filter(|l| self.label_matches(l)).map(|l| &l.value);
        match self.operator {
            Operator::In => values.any(|v| self.values.contains(v)),
            Operator::NotIn => !values.any(|v| self.values.contains(v)),
            Operator::Exists => values.next().is_some(),
            Operator::DoesNotExist => values.next().is_none(),
        }
    }
}

/// A conjunction of requirements; the empty matcher selects every identity.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LabelMatcher {
    pub requirements: BTreeSet<Requirement>,
}

impl LabelMatcher {
    pub fn from_selector(selector: &LabelSelector) -> Self {
        let mut requirements: BTreeSet<Requirement> =
            selector.match_labels.iter().map(|(k, v)| Requirement::equals(k, v)).collect();
        for e in &selector.match_expressions {
            let operator = match e.operator {
                SelectorOperator::In => Operator::In,
                SelectorOperator::NotIn => Operator::NotIn,
                SelectorOperator::Exists => Operator::Exists,
                SelectorOperator::DoesNotExist => Operator::DoesNotExist,
            };
            requirements.insert(Requirement::new(&e.key, operator, e.values.iter().cloned()));
        }
        Self { requirements }
    }

    pub fn reserved(name: &str) -> Self {
        Self::default().with(Requirement::equals(&format!("{}:{name}", source::RESERVED), ""))
    }

    pub fn with(mut self, requirement: Requirement) -> Self {
        self.requirements.insert(requirement);
        self
    }

    pub fn matches(&self, labels: &LabelSet) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Whether any requirement is on `key` (any source) or a key starting with `key_prefix`.
    fn mentions(&self, pred: impl Fn(&Requirement) -> bool) -> bool {
        self.requirements.iter().any(pred)
    }

    /// Whether a namespaced policy must add its namespace to this selector: not when the selector already
    /// names a namespace (by name or by namespace labels) or selects reserved identities.
    pub fn needs_namespace(&self) -> bool {
        !self.mentions(|r| {
            r.key == keys::POD_NAMESPACE
                || r.key.starts_with(keys::NAMESPACE_LABELS_PREFIX)
                || r.source.as_deref() == Some(source::RESERVED)
        })
    }

    /// This selector restricted to pods of `namespace`.
    pub fn in_namespace(self, namespace: &str) -> Self {
        self.with(Requirement::equals(&format!("{}:{}", source::K8S, keys::POD_NAMESPACE), namespace))
    }
}

/// What one selector-cache entry selects.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerSelector {
    /// Identities whose labels match.
    Labels(LabelMatcher),
    /// CIDR identities inside `cidr` that do not overlap an `except`. Endpoint, host and node identities
    /// have no prefixes, so CIDR rules never select cluster-managed addresses.
    Cidr { cidr: IpNet, except: Vec<IpNet> },
}

impl PeerSelector {
    pub fn selects(&self, identity: &Identity) -> bool {
        match self {
            Self::Labels(m) => m.matches(&identity.labels),
            Self::Cidr { cidr, except } => {
                identity.cidrs.iter().any(|p| cidr.contains(p) && !except.iter().any(|e| overlaps(e, p)))
            }
        }
    }

    pub fn cidr(cidr: IpNet, except: &[IpNet]) -> Self {
        let mut except: Vec<IpNet> = except.iter().map(IpNet::trunc).filter(|e| overlaps(e, &cidr)).collect();
        except.sort();
        except.dedup();
        Self::Cidr { cidr: cidr.trunc(), except }
    }
}

impl std::fmt::Display for PeerSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Labels(m) if m.requirements.is_empty() => f.write_str("&LabelSelector{}"),
            Self::Labels(m) => {
                let parts: Vec<String> = m
                    .requirements
                    .iter()
                    .map(|r| {
                        let key = match &r.source {
                            Some(s) => format!("{s}:{}", r.key),
                            None => format!("any:{}", r.key),
                        };
                        let values: Vec<&str> = r.values.iter().map(String::as_str).collect();
                        format!("{key} {:?} [{}]", r.operator, values.join(","))
                    })
                    .collect();
                write!(f, "{{{}}}", parts.join(", "))
            }
            Self::Cidr { cidr, except } if except.is_empty() => write!(f, "cidr:{cidr}"),
            Self::Cidr { cidr, except } => {
                let ex: Vec<String> = except.iter().map(ToString::to_string).collect();
                write!(f, "cidr:{cidr} except [{}]", ex.join(","))
            }
        }
    }
}

/// The selectors an entity stands for (Cilium's entity → reserved-label mapping). `cluster` also selects
/// every endpoint of this cluster through the cluster-name label.
pub fn entity_selectors(entity: Entity, cluster_name: &str) -> Vec<PeerSelector> {
    let reserved = |names: &[&str]| names.iter().map(|n| PeerSelector::Labels(LabelMatcher::reserved(n))).collect();
    match entity {
        Entity::All => vec![PeerSelector::Labels(LabelMatcher::default())],
        Entity::World => reserved(&["world", "world-ipv4", "world-ipv6"]),
        Entity::WorldIpv4 => reserved(&["world-ipv4"]),
        Entity::WorldIpv6 => reserved(&["world-ipv6"]),
        Entity::Host => reserved(&["host"]),
        Entity::RemoteNode => reserved(&["remote-node"]),
        Entity::Init => reserved(&["init"]),
        Entity::Ingress => reserved(&["ingress"]),
        Entity::Health => reserved(&["health"]),
        Entity::Unmanaged => reserved(&["unmanaged"]),
        Entity::KubeApiserver => reserved(&["kube-apiserver"]),
        Entity::None => vec![],
        Entity::Cluster => {
            let mut selectors: Vec<PeerSelector> =
                reserved(&["host", "remote-node", "init", "ingress", "health", "unmanaged", "kube-apiserver"]);
            let key = format!("{}:{}", source::K8S, keys::CLUSTER);
            selectors.push(PeerSelector::Labels(LabelMatcher::default().with(Requirement::equals(&key, cluster_name))));
            selectors
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::identity::{cidr_labels, pod_labels, reserved_identities, NumericIdentity, PodIdentitySource};

    fn pod(id: u32, ns: &str, labels: &[(&str, &str)]) -> Identity {
        let src = PodIdentitySource { namespace: ns, pod_labels: labels, cluster: "default", ..Default::default() };
        Identity { id: NumericIdentity(id), labels: pod_labels(&src), cidrs: vec![] }
    }

    fn cidr_identity(id: u32, prefix: &str) -> Identity {
        let prefix: IpNet = prefix.parse().unwrap();
        Identity { id: NumericIdentity(id), labels: cidr_labels(prefix), cidrs: vec![prefix] }
    }

    fn selected(selectors: &[PeerSelector], identities: &[Identity]) -> Vec<u32> {
        identities.iter().filter(|i| selectors.iter().any(|s| s.selects(i))).map(|i| i.id.0).collect()
    }

    #[test]
    fn label_sources_and_operators() {
        let empire = pod(300, "default", &[("org", "empire")]);
        let cases: &[(Requirement, bool)] = &[
            (Requirement::equals("org", "empire"), true),
            (Requirement::equals("k8s:org", "empire"), true),
            (Requirement::equals("any:org", "empire"), true),
            (Requirement::equals("container:org", "empire"), false),
            (Requirement::equals("org", "alliance"), false),
            (Requirement::new("org", Operator::NotIn, ["alliance"]), true),
            (Requirement::new("class", Operator::DoesNotExist, Vec::<String>::new()), true),
            (Requirement::new("org", Operator::Exists, Vec::<String>::new()), true),
            (Requirement::equals("reserved:host", ""), false),
        ];
        for (req, want) in cases {
            assert_eq!(req.matches(&empire.labels), *want, "{req:?}");
        }
    }

    #[test]
    fn entities_select_reserved_and_cidr_identities() {
        let mut ids = reserved_identities();
        ids.push(pod(300, "default", &[("org", "empire")]));
        ids.push(cidr_identity(NumericIdentity::LOCAL_SCOPE | 1, "192.0.2.0/24"));
        let cases: &[(Entity, &[u32])] = &[
            (Entity::All, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 300, 16777217]),
            (Entity::World, &[2, 9, 10, 16777217]),
            (Entity::WorldIpv4, &[9, 16777217]),
            (Entity::WorldIpv6, &[10]),
            (Entity::Cluster, &[1, 3, 4, 5, 6, 7, 8, 300]),
            (Entity::Host, &[1]),
            (Entity::RemoteNode, &[6]),
            (Entity::Health, &[4]),
            (Entity::Init, &[5]),
            (Entity::Unmanaged, &[3]),
            (Entity::KubeApiserver, &[7]),
            (Entity::Ingress, &[8]),
            (Entity::None, &[]),
        ];
        for (entity, want) in cases {
            assert_eq!(selected(&entity_selectors(*entity, "default"), &ids), *want, "{entity:?}");
        }
    }

    #[test]
    fn cidr_selectors_never_select_cluster_identities_and_honour_except() {
        let p = |s: &str| s.parse::<IpNet>().unwrap();
        let mut ids = reserved_identities();
        ids.push(pod(300, "default", &[]));
        ids.push(cidr_identity(1001, "10.0.0.0/25"));
        ids.push(cidr_identity(1002, "10.0.0.128/25"));
        ids.push(cidr_identity(1003, "10.0.0.0/24"));
        ids.push(cidr_identity(1004, "10.1.0.0/16"));
        let cases: &[(PeerSelector, &[u32])] = &[
            (PeerSelector::cidr(p("10.0.0.0/8"), &[]), &[1001, 1002, 1003, 1004]),
            (PeerSelector::cidr(p("10.0.0.0/8"), &[p("10.0.0.128/25")]), &[1001, 1004]),
            (PeerSelector::cidr(p("0.0.0.0/0"), &[]), &[2, 9, 1001, 1002, 1003, 1004]),
            (PeerSelector::cidr(p("0.0.0.0/0"), &[p("10.0.0.0/8")]), &[]),
            (PeerSelector::cidr(p("10.0.0.0/24"), &[p("172.16.0.0/12")]), &[1001, 1002, 1003]),
        ];
        for (sel, want) in cases {
            assert_eq!(selected(std::slice::from_ref(sel), &ids), *want, "{sel}");
        }
    }

    #[test]
    fn namespace_is_implied_unless_the_selector_names_one() {
        let sel = |pairs: &[(&str, &str)]| {
            LabelMatcher::from_selector(&LabelSelector {
                match_labels: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                ..Default::default()
            })
        };
        assert!(sel(&[("app", "x")]).needs_namespace());
        assert!(sel(&[]).needs_namespace());
        assert!(!sel(&[("k8s:io.kubernetes.pod.namespace", "kube-system")]).needs_namespace());
        assert!(!sel(&[("io.kubernetes.pod.namespace", "kube-system")]).needs_namespace());
        assert!(!sel(&[("io.cilium.k8s.namespace.labels.team", "a")]).needs_namespace());
        assert!(!sel(&[("reserved:host", "")]).needs_namespace());
    }
}
