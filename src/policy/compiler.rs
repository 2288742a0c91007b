//! The compiler: policies + identities → each local endpoint's enforcement state and policy map entries.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use super::cidr::cidr_difference;
use super::identity::{LabelSet, NumericIdentity};
use super::mapstate::{Direction, MapState, PolicyKey, Verdict};
use super::ports::port_range_to_prefixes;
use super::rules::{DirectionRules, PeerRule, Policy, PolicySource, PortMatch, Subject, L4};
use super::selector::{LabelMatcher, PeerSelector, Requirement};
use super::selector_cache::{SelectorCache, SelectorChanges};

/// `enable-policy`: when endpoints enforce policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EnforcementMode {
    /// A direction is enforced once a rule selecting the endpoint has rules in that direction.
    #[default]
    Default,
    /// Every endpoint enforces both directions, with or without rules.
    Always,
    /// Nothing is enforced, whatever the rules say.
    Never,
}

impl std::str::FromStr for EnforcementMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "default" => Ok(Self::Default),
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            other => Err(format!("enable-policy: expected default, always or never, got {other:?}")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct CompilerConfig {
    pub mode: EnforcementMode,
    /// Ingress from the local host is always allowed (health checks, kubelet probes), as Cilium does by
    /// default; an explicit deny still wins.
    pub allow_localhost_ingress: bool,
}

impl Default for CompilerConfig {
    fn default() -> Self {
        Self { mode: EnforcementMode::Default, allow_localhost_ingress: true }
    }
}

/// Named container ports: name → (protocol, port).
pub type NamedPorts = BTreeMap<String, BTreeSet<(u8, u16)>>;

/// A local endpoint the policy is compiled for.
#[derive(Clone, Debug, Default)]
pub struct Endpoint {
    pub identity: NumericIdentity,
    /// The endpoint's own named ports (ingress `toPorts` names resolve against these).
    pub named_ports: NamedPorts,
    /// For the host endpoint: the node's labels (`nodeSelector` rules match these).
    pub node_labels: Option<LabelSet>,
}

/// All accepted policies.
#[derive(Clone, Debug, Default)]
pub struct PolicyRepository {
    policies: BTreeMap<PolicySource, Policy>,
}

impl PolicyRepository {
    pub fn upsert(&mut self, policy: Policy) {
        self.policies.insert(policy.source.clone(), policy);
    }

    pub fn remove(&mut self, source: &PolicySource) -> Option<Policy> {
        self.policies.remove(source)
    }

    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        self.policies.values()
    }

    /// The prefixes that need node-local CIDR identities: each CIDR peer minus its excepts, so that an
    /// excepted address never maps to an identity its rule selects.
    pub fn cidr_prefixes(&self) -> BTreeSet<IpNet> {
        let mut out = BTreeSet::new();
        for rule in self.policies.values().flat_map(|p| &p.rules) {
            for dir in [&rule.ingress, &rule.egress] {
                for peer in dir.allow.iter().chain(&dir.deny) {
                    for sel in &peer.others {
                        if let PeerSelector::Cidr { cidr, except } = sel {
                            out.extend(cidr_difference(*cidr, except));
                        }
                    }
                }
            }
        }
        out
    }
}

/// One endpoint's compiled policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointPolicy {
    pub ingress_enforcing: bool,
    pub egress_enforcing: bool,
    pub map: MapState,
    /// Policies with a rule selecting this endpoint.
    pub policies: BTreeSet<PolicySource>,
    /// Selectors the entries were computed from: an identity change touching one of them means this
    /// endpoint must be recompiled.
    pub selectors: BTreeSet<PeerSelector>,
}

impl EndpointPolicy {
    pub fn enforcing(&self, direction: Direction) -> bool {
        match direction {
            Direction::Ingress => self.ingress_enforcing,
            Direction::Egress => self.egress_enforcing,
        }
    }

    /// The verdict the datapath reaches for a packet from/to `peer`.
    pub fn verdict(&self, direction: Direction, peer: NumericIdentity, protocol: u8, port: u16) -> Verdict {
        if !self.enforcing(direction) {
            return Verdict::Allow;
        }
        self.map.lookup(direction, peer, protocol, port)
    }

    pub fn affected_by(&self, changes: &SelectorChanges) -> bool {
        changes.keys().any(|s| self.selectors.contains(s))
    }
}

/// Compiles one endpoint's policy. `cluster_named_ports` are the named ports of all pods (egress
/// `toPorts` names resolve against them, as a peer's ports are not known per identity).
pub fn compile_endpoint(
    repo: &PolicyRepository,
    cache: &mut SelectorCache,
    config: &CompilerConfig,
    endpoint: &Endpoint,
    cluster_named_ports: &NamedPorts,
) -> EndpointPolicy {
    let labels = cache.identity(endpoint.identity).map(|i| i.labels.clone()).unwrap_or_default();
    let mut out = EndpointPolicy::default();
    let mut ingress: Vec<&DirectionRules> = Vec::new();
    let mut egress: Vec<&DirectionRules> = Vec::new();
    for policy in repo.policies() {
        for rule in &policy.rules {
            let selected = match (&rule.subject, &endpoint.node_labels) {
                (Subject::Endpoints(m), None) => m.matches(&labels),
                (Subject::Nodes(m), Some(node_labels)) => m.matches(node_labels),
                _ => false,
            };
            if selected {
                out.policies.insert(policy.source.clone());
                ingress.push(&rule.ingress);
                egress.push(&rule.egress);
            }
        }
    }

    let mut allows = Vec::new();
    let mut denies = Vec::new();
    for (direction, rules, own_ports) in
        [(Direction::Ingress, &ingress, &endpoint.named_ports), (Direction::Egress, &egress, cluster_named_ports)]
    {
        let enforced_by_rules = rules.iter().any(|r| r.enforces);
        let (enforcing, default_deny) = match config.mode {
            EnforcementMode::Never => (false, false),
            EnforcementMode::Always => (true, true),
            EnforcementMode::Default => (enforced_by_rules, rules.iter().any(|r| r.enforces && r.default_deny)),
        };
        match direction {
            Direction::Ingress => out.ingress_enforcing = enforcing,
            Direction::Egress => out.egress_enforcing = enforcing,
        }
        if !enforcing {
            continue;
        }
        if !default_deny {
            // Rules apply (their denies matter) but nothing is denied by default.
            allows.push(PolicyKey::l3(NumericIdentity::ANY, direction));
        }
        if direction == Direction::Ingress && config.allow_localhost_ingress && endpoint.node_labels.is_none() {
            allows.push(PolicyKey::l3(NumericIdentity::HOST, direction));
        }
        let allow_requires: Vec<Requirement> = rules.iter().flat_map(|r| r.allow_requires.iter().cloned()).collect();
        let deny_requires: Vec<Requirement> = rules.iter().flat_map(|r| r.deny_requires.iter().cloned()).collect();
        let mut lower =
            LowerCtx { cache: &mut *cache, selectors: &mut out.selectors, direction, named_ports: own_ports };
        for rule in rules {
            for peer_rule in &rule.allow {
                allows.extend(lower.keys(peer_rule, &allow_requires));
            }
            for peer_rule in &rule.deny {
                denies.extend(lower.keys(peer_rule, &deny_requires));
            }
        }
    }
    out.map = MapState::build(allows, denies);
    out
}

struct LowerCtx<'a> {
    cache: &'a mut SelectorCache,
    selectors: &'a mut BTreeSet<PeerSelector>,
    direction: Direction,
    named_ports: &'a NamedPorts,
}

impl LowerCtx<'_> {
    fn select(&mut self, selector: PeerSelector, into: &mut BTreeSet<NumericIdentity>) {
        into.extend(self.cache.select(&selector).iter().copied());
        self.selectors.insert(selector);
    }

    /// Map keys for one rule: its peers × its L4 blocks.
    fn keys(&mut self, rule: &PeerRule, requires: &[Requirement]) -> Vec<PolicyKey> {
        let mut peers = BTreeSet::new();
        let with_requires = |m: LabelMatcher| requires.iter().cloned().fold(m, |m, r| m.with(r));
        if rule.any_peer {
            if requires.is_empty() {
                peers.insert(NumericIdentity::ANY);
            } else {
                // fromRequires constrains even a wildcard peer.
                self.select(PeerSelector::Labels(with_requires(LabelMatcher::default())), &mut peers);
            }
        }
        for m in &rule.endpoints {
            self.select(PeerSelector::Labels(with_requires(m.clone())), &mut peers);
        }
        for s in &rule.others {
            self.select(s.clone(), &mut peers);
        }
        let l4 = self.l4_blocks(&rule.l4);
        let mut keys = Vec::with_capacity(peers.len() * l4.len());
        for peer in peers {
            for &(protocol, port, len) in &l4 {
                keys.push(match protocol {
                    0 => PolicyKey::l3(peer, self.direction),
                    p => PolicyKey::l4(peer, self.direction, p, port, len),
                });
            }
        }
        keys
    }

    /// `(protocol, port, prefix length)` blocks; `(0, 0, 0)` is "any L4".
    fn l4_blocks(&self, l4: &L4) -> Vec<(u8, u16, u8)> {
        let L4::Ports(matches) = l4 else { return vec![(0, 0, 0)] };
        let mut out = Vec::new();
        for m in matches {
            match m {
                PortMatch::Range { proto, start, end } => {
                    out.extend(port_range_to_prefixes(*start, *end).into_iter().map(|(p, l)| (*proto, p, l)))
                }
                // Unresolvable names contribute nothing, as in Cilium.
                PortMatch::Named { protos, name } => out.extend(
                    self.named_ports
                        .get(name)
                        .into_iter()
                        .flatten()
                        .filter(|(p, _)| protos.contains(p))
                        .map(|&(p, port)| (p, port, 16)),
                ),
            }
        }
        out
    }
}
