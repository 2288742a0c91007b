//! Security identities: a numeric id plus the label set it stands for.
//!
//! Numbering follows Cilium so that ids seen in flows, CiliumIdentity objects and the datapath agree:
//! 1..=255 are reserved, cluster identities are allocated from 256 upwards by the operator, and
//! node-local CIDR identities carry the local-scope bit (1 << 24).

use std::collections::BTreeSet;
use std::fmt;

use ipnet::IpNet;

/// A numeric security identity. 0 is not an identity: in policy map keys it means "any peer".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NumericIdentity(pub u32);

impl NumericIdentity {
    /// Wildcard peer in policy map keys.
    pub const ANY: Self = Self(0);
    pub const HOST: Self = Self(1);
    pub const WORLD: Self = Self(2);
    pub const UNMANAGED: Self = Self(3);
    pub const HEALTH: Self = Self(4);
    pub const INIT: Self = Self(5);
    pub const REMOTE_NODE: Self = Self(6);
    pub const KUBE_APISERVER: Self = Self(7);
    pub const INGRESS: Self = Self(8);
    pub const WORLD_IPV4: Self = Self(9);
    pub const WORLD_IPV6: Self = Self(10);

    /// First identity the cluster-wide allocator may hand out.
    pub const MIN_CLUSTER: u32 = 256;
    /// Node-local identities (CIDR identities) have this bit set; they never leave the node.
    pub const LOCAL_SCOPE: u32 = 1 << 24;

    pub fn is_reserved(self) -> bool {
        (1..Self::MIN_CLUSTER).contains(&self.0)
    }

    pub fn is_local(self) -> bool {
        self.0 & 0xff00_0000 == Self::LOCAL_SCOPE
    }
}

impl fmt::Display for NumericIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Label sources as Cilium prefixes them (`k8s:app=web`, `reserved:host`).
pub mod source {
    pub const K8S: &str = "k8s";
    pub const RESERVED: &str = "reserved";
    pub const CIDR: &str = "cidr";
    /// In a selector key: match a label of any source.
    pub const ANY: &str = "any";
}

/// Well-known label keys.
pub mod keys {
    pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
    /// Prefix of the copies of the pod's namespace labels (`io.cilium.k8s.namespace.labels.team=a`).
    pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";
    pub const SERVICE_ACCOUNT: &str = "io.cilium.k8s.policy.serviceaccount";
    pub const CLUSTER: &str = "io.cilium.k8s.policy.cluster";
}

/// One source-qualified label.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label {
    pub source: String,
    pub key: String,
    pub value: String,
}

impl Label {
    pub fn new(source: &str, key: &str, value: &str) -> Self {
        Self { source: source.into(), key: key.into(), value: value.into() }
    }

    pub fn reserved(name: &str) -> Self {
        Self::new(source::RESERVED, name, "")
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}:{}", self.source, self.key)
        } else {
            write!(f, "{}:{}={}", self.source, self.key, self.value)
        }
    }
}

pub type LabelSet = BTreeSet<Label>;

/// A security identity as the policy engine sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub id: NumericIdentity,
    pub labels: LabelSet,
    /// For CIDR identities (and the world identities, which stand for the whole address space): the
    /// prefixes this identity covers. Empty for endpoints and nodes, which is why CIDR selectors never
    /// select cluster-managed addresses.
    pub cidrs: Vec<IpNet>,
}

/// The reserved identities, with the labels Cilium gives them.
pub fn reserved_identities() -> Vec<Identity> {
    let any4: IpNet = "0.0.0.0/0".parse().expect("static prefix");
    let any6: IpNet = "::/0".parse().expect("static prefix");
    let plain = |id, name: &str| Identity { id, labels: [Label::reserved(name)].into(), cidrs: vec![] };
    vec![
        plain(NumericIdentity::HOST, "host"),
        Identity { cidrs: vec![any4, any6], ..plain(NumericIdentity::WORLD, "world") },
        plain(NumericIdentity::UNMANAGED, "unmanaged"),
        plain(NumericIdentity::HEALTH, "health"),
        plain(NumericIdentity::INIT, "init"),
        plain(NumericIdentity::REMOTE_NODE, "remote-node"),
        plain(NumericIdentity::KUBE_APISERVER, "kube-apiserver"),
        plain(NumericIdentity::INGRESS, "ingress"),
        Identity { cidrs: vec![any4], ..plain(NumericIdentity::WORLD_IPV4, "world-ipv4") },
        Identity { cidrs: vec![any6], ..plain(NumericIdentity::WORLD_IPV6, "world-ipv6") },
    ]
}

/// What a pod contributes to its identity.
#[derive(Clone, Debug, Default)]
pub struct PodIdentitySource<'a> {
    pub namespace: &'a str,
    pub pod_labels: &'a [(&'a str, &'a str)],
    pub namespace_labels: &'a [(&'a str, &'a str)],
    pub service_account: &'a str,
    pub cluster: &'a str,
}

/// Key prefixes Cilium's default label filter drops from identities: values that differ per pod
/// or per rollout (hashes, generations, indexes) would give every pod its own identity.
const NOISE_PREFIXES: &[&str] =
    &["pod-template-generation", "pod-template-hash", "controller-revision-hash", "annotation", "etcd_node"];

/// Whether a pod label key takes part in its identity (Cilium's default identity-relevant label
/// filter): `app.kubernetes.io/*` and the namespace label do; other `io.kubernetes*` keys, keys
/// in the `kubernetes.io` / `k8s.io` domains and their subdomains (`statefulset.kubernetes.io/pod-name`,
/// `batch.kubernetes.io/job-completion-index`, `beta.kubernetes.io/arch`, ...) and the
/// [`NOISE_PREFIXES`] do not.
pub fn is_identity_relevant(key: &str) -> bool {
    if key == keys::POD_NAMESPACE || key.starts_with("app.kubernetes.io/") {
        return true;
    }
    let domain = key.split_once('/').map_or("", |(d, _)| d);
    let in_domain = |d: &str| domain == d || domain.strip_suffix(d).is_some_and(|rest| rest.ends_with('.'));
    if key.starts_with("io.kubernetes") || in_domain("kubernetes.io") || in_domain("k8s.io") {
        return false;
    }
    !NOISE_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// The identity labels of a pod: its identity-relevant labels ([`is_identity_relevant`]), its
/// namespace, its namespace's labels, its service account and the cluster name, all with source
/// `k8s` (as in CiliumIdentity `security-labels`).
pub fn pod_labels(src: &PodIdentitySource<'_>) -> LabelSet {
    let mut labels: LabelSet = src
        .pod_labels
        .iter()
        .filter(|(k, _)| is_identity_relevant(k))
        .map(|(k, v)| Label::new(source::K8S, k, v))
        .collect();
    labels.insert(Label::new(source::K8S, keys::POD_NAMESPACE, src.namespace));
    for (k, v) in src.namespace_labels {
        labels.insert(Label::new(source::K8S, &format!("{}{k}", keys::NAMESPACE_LABELS_PREFIX), v));
    }
    if !src.service_account.is_empty() {
        labels.insert(Label::new(source::K8S, keys::SERVICE_ACCOUNT, src.service_account));
    }
    if !src.cluster.is_empty() {
        labels.insert(Label::new(source::K8S, keys::CLUSTER, src.cluster));
    }
    labels
}

/// The labels of a CIDR identity: `cidr:<prefix>` and the world label of its family, so that the
/// `world` entity also selects addresses that CIDR policies carved out of it.
pub fn cidr_labels(prefix: IpNet) -> LabelSet {
    let world = match prefix {
        IpNet::V4(_) => "world-ipv4",
        IpNet::V6(_) => "world-ipv6",
    };
    [Label::new(source::CIDR, &prefix.to_string(), ""), Label::reserved(world)].into()
}

/// Allocates node-local CIDR identities (`LOCAL_SCOPE | n`) for the prefixes policies mention. Ids are
/// stable while a prefix stays in use and are not reused until the counter wraps the 24-bit space.
#[derive(Debug, Default)]
pub struct CidrIdentityAllocator {
    by_prefix: std::collections::BTreeMap<IpNet, NumericIdentity>,
    next: u32,
}

/// Identities created and released by one [`CidrIdentityAllocator::sync`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CidrIdentityDelta {
    pub added: Vec<Identity>,
    pub removed: Vec<NumericIdentity>,
}

impl CidrIdentityAllocator {
    /// Brings the allocated set to exactly `prefixes`.
    pub fn sync(&mut self, prefixes: &BTreeSet<IpNet>) -> CidrIdentityDelta {
        let mut delta = CidrIdentityDelta::default();
        self.by_prefix.retain(|prefix, id| {
            let keep = prefixes.contains(prefix);
            if !keep {
                delta.removed.push(*id);
            }
            keep
        });
        for prefix in prefixes {
            if self.by_prefix.contains_key(prefix) {
                continue;
            }
            let id = self.allocate();
            self.by_prefix.insert(*prefix, id);
            delta.added.push(Identity { id, labels: cidr_labels(*prefix), cidrs: vec![*prefix] });
        }
        delta
    }

    pub fn get(&self, prefix: &IpNet) -> Option<NumericIdentity> {
        self.by_prefix.get(prefix).copied()
    }

    fn allocate(&mut self) -> NumericIdentity {
        let used: BTreeSet<u32> = self.by_prefix.values().map(|id| id.0 & 0x00ff_ffff).collect();
        // 2^24 - 1 usable ids; a node never holds that many prefixes, so this loop ends quickly.
        loop {
            self.next = if self.next >= 0x00ff_ffff { 1 } else { self.next + 1 };
            if !used.contains(&self.next) {
                return NumericIdentity(NumericIdentity::LOCAL_SCOPE | self.next);
            }
        }
    }
}

/// `security-labels` of a CiliumIdentity: `source:key` → value.
pub fn security_label_map(labels: &LabelSet) -> std::collections::BTreeMap<String, String> {
    labels.iter().map(|l| (format!("{}:{}", l.source, l.key), l.value.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_relevant_label_keys_follow_ciliums_default_filter() {
        let cases = [
            ("app", true),
            ("org", true),
            ("app.kubernetes.io/name", true),
            ("io.kubernetes.pod.namespace", true),
            ("team.example.com/owner", true),
            ("pod-template-hash", false),
            ("pod-template-generation", false),
            ("controller-revision-hash", false),
            ("annotation.foo", false),
            ("etcd_node", false),
            ("io.kubernetes.container.name", false),
            ("kubernetes.io/hostname", false),
            ("statefulset.kubernetes.io/pod-name", false),
            ("apps.kubernetes.io/pod-index", false),
            ("batch.kubernetes.io/job-completion-index", false),
            ("beta.kubernetes.io/arch", false),
            ("k8s.io/foo", false),
            ("sub.k8s.io/foo", false),
            // A domain that merely ends in the same letters is not the kubernetes.io domain.
            ("notkubernetes.io/x", true),
        ];
        for (key, want) in cases {
            assert_eq!(is_identity_relevant(key), want, "{key}");
        }
    }

    #[test]
    fn pod_security_labels_drop_noise_and_carry_namespace_account_and_cluster() {
        let labels = pod_labels(&PodIdentitySource {
            namespace: "shop",
            pod_labels: &[("app", "web"), ("pod-template-hash", "5d8f7"), ("controller-revision-hash", "abc")],
            namespace_labels: &[("kubernetes.io/metadata.name", "shop"), ("team", "a")],
            service_account: "web-sa",
            cluster: "lab",
        });
        let map = security_label_map(&labels);
        let want: std::collections::BTreeMap<String, String> = [
            ("k8s:app", "web"),
            ("k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name", "shop"),
            ("k8s:io.cilium.k8s.namespace.labels.team", "a"),
            ("k8s:io.cilium.k8s.policy.cluster", "lab"),
            ("k8s:io.cilium.k8s.policy.serviceaccount", "web-sa"),
            ("k8s:io.kubernetes.pod.namespace", "shop"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(map, want);
    }

    #[test]
    fn reserved_identity_numbers_match_cilium() {
        let by_name: Vec<(u32, String)> =
            reserved_identities().into_iter().map(|i| (i.id.0, i.labels.iter().next().unwrap().to_string())).collect();
        let want = [
            (1, "reserved:host"),
            (2, "reserved:world"),
            (3, "reserved:unmanaged"),
            (4, "reserved:health"),
            (5, "reserved:init"),
            (6, "reserved:remote-node"),
            (7, "reserved:kube-apiserver"),
            (8, "reserved:ingress"),
            (9, "reserved:world-ipv4"),
            (10, "reserved:world-ipv6"),
        ];
        assert_eq!(by_name, want.iter().map(|(i, s)| (*i, s.to_string())).collect::<Vec<_>>());
        assert!(reserved_identities().iter().all(|i| i.id.is_reserved() && !i.id.is_local()));
    }

    #[test]
    fn pod_labels_carry_namespace_metadata() {
        let labels = pod_labels(&PodIdentitySource {
            namespace: "default",
            pod_labels: &[("org", "empire"), ("class", "tiefighter")],
            namespace_labels: &[("team", "a")],
            service_account: "default",
            cluster: "default",
        });
        let rendered: Vec<String> = labels.iter().map(ToString::to_string).collect();
        assert_eq!(
            rendered,
            [
                "k8s:class=tiefighter",
                "k8s:io.cilium.k8s.namespace.labels.team=a",
                "k8s:io.cilium.k8s.policy.cluster=default",
                "k8s:io.cilium.k8s.policy.serviceaccount=default",
                "k8s:io.kubernetes.pod.namespace=default",
                "k8s:org=empire",
            ]
        );
    }

    #[test]
    fn cidr_identities_are_local_stable_and_released() {
        let p = |s: &str| s.parse::<IpNet>().unwrap();
        let mut alloc = CidrIdentityAllocator::default();
        let first = alloc.sync(&[p("10.0.0.0/8"), p("2001:db8::/32")].into());
        assert_eq!(first.added.len(), 2);
        assert!(first.added.iter().all(|i| i.id.is_local() && !i.id.is_reserved()));
        assert!(first.added[0].labels.contains(&Label::reserved("world-ipv4")));
        assert!(first.added[1].labels.contains(&Label::reserved("world-ipv6")));
        let id10 = alloc.get(&p("10.0.0.0/8")).unwrap();

        let second = alloc.sync(&[p("10.0.0.0/8"), p("192.168.0.0/16")].into());
        assert_eq!(alloc.get(&p("10.0.0.0/8")), Some(id10), "a prefix in use keeps its id");
        assert_eq!(second.added.len(), 1);
        assert_eq!(second.removed, vec![first.added[1].id]);
        assert_ne!(second.added[0].id, first.added[1].id, "released ids are not reused at once");
    }
}
