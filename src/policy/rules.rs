//! Parsing: CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy and Kubernetes NetworkPolicy → one
//! normalized rule form. Namespaced policies get their namespace added to selectors here, ports are
//! validated and turned into protocol numbers, and every accepted-but-unenforced feature is recorded as a
//! warning with the path of the field (it goes to the policy's status and to the log).

use std::fmt;

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use thiserror::Error;

use super::identity::{keys, source};
use super::ports::{icmp_type_by_name, proto};
use super::selector::{entity_selectors, LabelMatcher, Operator, PeerSelector, Requirement};
use crate::crds::policy_rule::{CidrRule, EgressPeers, IcmpRule, IngressPeers, L4Proto, PortProtocol, PortRule, Rule};
use crate::crds::{CiliumClusterwideNetworkPolicy, CiliumNetworkPolicy};

/// Where a policy came from; also its name in status, logs and `beeline policy get`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicySource {
    Cnp { namespace: String, name: String },
    Ccnp { name: String },
    Knp { namespace: String, name: String },
}

impl fmt::Display for PolicySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cnp { namespace, name } => write!(f, "CiliumNetworkPolicy {namespace}/{name}"),
            Self::Ccnp { name } => write!(f, "CiliumClusterwideNetworkPolicy {name}"),
            Self::Knp { namespace, name } => write!(f, "NetworkPolicy {namespace}/{name}"),
        }
    }
}

/// A rule that cannot be compiled; the whole policy is rejected (Cilium's `Valid=False`).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("{path}: invalid CIDR {value:?}")]
    InvalidCidr { path: String, value: String },
    #[error("{path}: invalid port {value:?}")]
    InvalidPort { path: String, value: String },
    #[error("{path}: endPort {end_port} is below port {port}")]
    EndPortBelowPort { path: String, port: u16, end_port: i32 },
    #[error("{path}: endPort needs a numeric port, got {port:?}")]
    EndPortWithNamedPort { path: String, port: String },
    #[error("{path}: protocol {protocol} only supports port 0 (all ports)")]
    PortWithPortlessProtocol { path: String, protocol: String },
    #[error("{path}: invalid protocol {value:?}")]
    InvalidProtocol { path: String, value: String },
    #[error("{path}: invalid ICMP type {value}")]
    InvalidIcmpType { path: String, value: String },
    #[error("{path}: nodeSelector is only valid in a CiliumClusterwideNetworkPolicy")]
    NodeSelectorInNamespacedPolicy { path: String },
    #[error("{path}: exactly one of endpointSelector and nodeSelector must be set")]
    SubjectSelector { path: String },
    #[error("the policy has no rules (neither spec nor specs)")]
    NoRules,
}

/// Settings the parser needs from the agent's configuration.
#[derive(Clone, Debug)]
pub struct ParseContext {
    /// `cluster-name`: the `cluster` entity selects endpoints carrying this cluster label.
    pub cluster_name: String,
}

impl Default for ParseContext {
    fn default() -> Self {
        Self { cluster_name: "default".into() }
    }
}

/// A parsed policy: its rules and the warnings about what is accepted but not enforced.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub source: PolicySource,
    pub rules: Vec<NormalizedRule>,
    pub warnings: Vec<String>,
}

/// Which local endpoints a rule applies to.
#[derive(Clone, Debug, PartialEq)]
pub enum Subject {
    /// Endpoints (pods) whose identity labels match.
    Endpoints(LabelMatcher),
    /// The host endpoint of nodes whose node labels match (host policies).
    Nodes(LabelMatcher),
}

#[derive(Clone, Debug, PartialEq)]
pub struct NormalizedRule {
    pub subject: Subject,
    pub ingress: DirectionRules,
    pub egress: DirectionRules,
}

/// A rule's content in one direction.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DirectionRules {
    /// The rule has allow or deny rules in this direction: the endpoint's policy is enforced here.
    pub enforces: bool,
    /// `enableDefaultDeny` for this direction (true unless explicitly false), meaningful when `enforces`.
    pub default_deny: bool,
    pub allow: Vec<PeerRule>,
    pub deny: Vec<PeerRule>,
    /// `fromRequires`/`toRequires` of the allow rules: ANDed into the endpoint selectors of every allow
    /// rule (of every policy) selecting the same endpoint.
    pub allow_requires: Vec<Requirement>,
    /// Likewise for deny rules.
    pub deny_requires: Vec<Requirement>,
}

/// One allow or deny rule: peers × L4.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PeerRule {
    /// Peers by labels (`fromEndpoints`, KNP pod/namespace selectors); `fromRequires` narrows these.
    pub endpoints: Vec<LabelMatcher>,
    /// Peers by entity or CIDR.
    pub others: Vec<PeerSelector>,
    /// No L3 peer given but ports are: every peer (identity 0 in the map).
    pub any_peer: bool,
    pub l4: L4,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum L4 {
    /// No port restriction.
    #[default]
    Any,
    Ports(Vec<PortMatch>),
}

/// One L4 match. `proto` is never [`proto::ANY`]: `ANY` is expanded to TCP, UDP and SCTP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortMatch {
    /// `start..=end`; `0..=65535` means every port of the protocol. ICMP types use the port field.
    Range { proto: u8, start: u16, end: u16 },
    /// A named container port, resolved against the endpoint (ingress) or the cluster's pods (egress).
    Named { protos: Vec<u8>, name: String },
}

impl Policy {
    pub fn from_cnp(cnp: &CiliumNetworkPolicy, ctx: &ParseContext) -> Result<Self, PolicyError> {
        let namespace = cnp.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let source =
            PolicySource::Cnp { namespace: namespace.clone(), name: cnp.metadata.name.clone().unwrap_or_default() };
        Self::from_cilium_rules(source, cnp.spec.is_some(), cnp.rules(), Some(&namespace), ctx)
    }

    pub fn from_ccnp(ccnp: &CiliumClusterwideNetworkPolicy, ctx: &ParseContext) -> Result<Self, PolicyError> {
        let source = PolicySource::Ccnp { name: ccnp.metadata.name.clone().unwrap_or_default() };
        Self::from_cilium_rules(source, ccnp.spec.is_some(), ccnp.rules(), None, ctx)
    }

    fn from_cilium_rules<'a>(
        source: PolicySource,
        has_spec: bool,
        rules: impl Iterator<Item = &'a Rule>,
        namespace: Option<&str>,
        ctx: &ParseContext,
    ) -> Result<Self, PolicyError> {
        let mut policy = Policy { source, rules: vec![], warnings: vec![] };
        for (i, rule) in rules.enumerate() {
            // `spec` is rule 0 when present; `specs[n]` follow.
            let path = match (has_spec, i) {
                (true, 0) => "spec".to_string(),
                (true, n) => format!("specs[{}]", n - 1),
                (false, n) => format!("specs[{n}]"),
            };
            let mut parser = CiliumParser { ctx, namespace, warnings: &mut policy.warnings };
            policy.rules.push(parser.rule(rule, &path)?);
        }
        if policy.rules.is_empty() {
            return Err(PolicyError::NoRules);
        }
        Ok(policy)
    }

    pub fn from_knp(knp: &NetworkPolicy) -> Result<Self, PolicyError> {
        let namespace = knp.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let source =
            PolicySource::Knp { namespace: namespace.clone(), name: knp.metadata.name.clone().unwrap_or_default() };
        let spec = knp.spec.clone().unwrap_or_default();
        let subject = k8s_matcher(spec.pod_selector.as_ref()).in_namespace(&namespace);
        let ingress_rules = spec.ingress.unwrap_or_default();
        let egress_rules = spec.egress.unwrap_or_default();
        let (ingress_type, egress_type) = match &spec.policy_types {
            Some(types) => (types.iter().any(|t| t == "Ingress"), types.iter().any(|t| t == "Egress")),
            // Kubernetes default: always Ingress, Egress when the policy has egress rules.
            None => (true, !egress_rules.is_empty()),
        };
        let direction = |enabled: bool, rules: Vec<KnpRule>, dir: &str| -> Result<DirectionRules, PolicyError> {
            if !enabled {
                return Ok(DirectionRules::default());
            }
            let mut out = DirectionRules { enforces: true, default_deny: true, ..Default::default() };
            for (i, (peers, ports)) in rules.into_iter().enumerate() {
                let path = format!("spec.{dir}[{i}]");
                out.allow.push(knp_rule(&namespace, peers.unwrap_or_default(), ports.unwrap_or_default(), &path)?);
            }
            Ok(out)
        };
        let ingress =
            direction(ingress_type, ingress_rules.into_iter().map(|r| (r.from, r.ports)).collect(), "ingress")?;
        let egress = direction(egress_type, egress_rules.into_iter().map(|r| (r.to, r.ports)).collect(), "egress")?;
        Ok(Policy {
            source,
            rules: vec![NormalizedRule { subject: Subject::Endpoints(subject), ingress, egress }],
            warnings: vec![],
        })
    }
}

/// A Kubernetes NetworkPolicy rule of either direction: peers and ports.
type KnpRule = (Option<Vec<NetworkPolicyPeer>>, Option<Vec<NetworkPolicyPort>>);

struct CiliumParser<'a> {
    ctx: &'a ParseContext,
    /// The policy's namespace (CNP), implied in its selectors.
    namespace: Option<&'a str>,
    warnings: &'a mut Vec<String>,
}

impl CiliumParser<'_> {
    fn warn(&mut self, path: &str, what: &str) {
        self.warnings.push(format!("{path}: {what}"));
    }

    fn rule(&mut self, rule: &Rule, path: &str) -> Result<NormalizedRule, PolicyError> {
        let subject = match (&rule.endpoint_selector, &rule.node_selector) {
            (Some(sel), None) => {
                let matcher = LabelMatcher::from_selector(sel);
                // A namespaced policy only ever selects pods of its own namespace.
                Subject::Endpoints(match self.namespace {
                    Some(ns) => matcher.in_namespace(ns),
                    None => matcher,
                })
            }
            (None, Some(_)) if self.namespace.is_some() => {
                return Err(PolicyError::NodeSelectorInNamespacedPolicy { path: format!("{path}.nodeSelector") })
            }
            (None, Some(sel)) => Subject::Nodes(LabelMatcher::from_selector(sel)),
            _ => return Err(PolicyError::SubjectSelector { path: path.into() }),
        };
        if rule.log.is_some() {
            self.warn(&format!("{path}.log"), "policy verdict logging is not supported; ignored");
        }
        let default_deny = rule.enable_default_deny.clone().unwrap_or_default();

        let ingress_allow = rule.ingress.as_deref().unwrap_or_default();
        let ingress_deny = rule.ingress_deny.as_deref().unwrap_or_default();
        let mut ingress = DirectionRules {
            enforces: !ingress_allow.is_empty() || !ingress_deny.is_empty(),
            default_deny: default_deny.ingress.unwrap_or(true),
            ..Default::default()
        };
        for (i, r) in ingress_allow.iter().enumerate() {
            let p = format!("{path}.ingress[{i}]");
            if r.authentication.is_some() {
                self.warn(&format!("{p}.authentication"), "mutual authentication is not supported; not enforced");
            }
            let (peer, requires) = self.ingress_peers(&r.peers, &p)?;
            ingress.allow_requires.extend(requires);
            let ports = self.allow_ports(&r.to_ports, &p)?;
            ingress.allow.push(self.finish(peer, ports, &r.icmps, &p)?);
        }
        for (i, r) in ingress_deny.iter().enumerate() {
            let p = format!("{path}.ingressDeny[{i}]");
            let (peer, requires) = self.ingress_peers(&r.peers, &p)?;
            ingress.deny_requires.extend(requires);
            let ports = r.to_ports.iter().flat_map(|pr| pr.ports.iter()).cloned().collect::<Vec<_>>();
            let l4 = self.port_list(&ports, !r.to_ports.is_empty(), &format!("{p}.toPorts"))?;
            ingress.deny.push(self.finish(peer, l4, &r.icmps, &p)?);
        }

        let egress_allow = rule.egress.as_deref().unwrap_or_default();
        let egress_deny = rule.egress_deny.as_deref().unwrap_or_default();
        let mut egress = DirectionRules {
            enforces: !egress_allow.is_empty() || !egress_deny.is_empty(),
            default_deny: default_deny.egress.unwrap_or(true),
            ..Default::default()
        };
        for (i, r) in egress_allow.iter().enumerate() {
            let p = format!("{path}.egress[{i}]");
            if r.authentication.is_some() {
                self.warn(&format!("{p}.authentication"), "mutual authentication is not supported; not enforced");
            }
            let (mut peer, requires) = self.egress_peers(&r.peers, &p)?;
            if !r.to_fqdns.is_empty() {
                // Without a DNS proxy no address is ever learnt for the names: the rule allows nothing.
                self.warn(&format!("{p}.toFQDNs"), "DNS-based policy is not supported; the names select no peers");
                peer.has_l3 = true;
            }
            egress.allow_requires.extend(requires);
            let ports = self.allow_ports(&r.to_ports, &p)?;
            egress.allow.push(self.finish(peer, ports, &r.icmps, &p)?);
        }
        for (i, r) in egress_deny.iter().enumerate() {
            let p = format!("{path}.egressDeny[{i}]");
            let (peer, requires) = self.egress_peers(&r.peers, &p)?;
            egress.deny_requires.extend(requires);
            let ports = r.to_ports.iter().flat_map(|pr| pr.ports.iter()).cloned().collect::<Vec<_>>();
            let l4 = self.port_list(&ports, !r.to_ports.is_empty(), &format!("{p}.toPorts"))?;
            egress.deny.push(self.finish(peer, l4, &r.icmps, &p)?);
        }
        Ok(NormalizedRule { subject, ingress, egress })
    }

    fn namespaced(&self, sel: &crate::crds::selector::LabelSelector) -> LabelMatcher {
        let matcher = LabelMatcher::from_selector(sel);
        match self.namespace {
            Some(ns) if matcher.needs_namespace() => matcher.in_namespace(ns),
            _ => matcher,
        }
    }

    fn ingress_peers(&mut self, p: &IngressPeers, path: &str) -> Result<(Peers, Vec<Requirement>), PolicyError> {
        let mut peers = Peers { has_l3: p.from_endpoints.is_some(), ..Default::default() };
        peers.endpoints = p.from_endpoints.iter().flatten().map(|s| self.namespaced(s)).collect();
        let requires = self.requires(&p.from_requires);
        for (i, cidr) in p.from_cidr.iter().enumerate() {
            peers.others.push(PeerSelector::cidr(parse_cidr(cidr, &format!("{path}.fromCIDR[{i}]"))?, &[]));
            peers.has_l3 = true;
        }
        self.cidr_sets(&p.from_cidr_set, &format!("{path}.fromCIDRSet"), &mut peers)?;
        self.entities(&p.from_entities, &mut peers);
        if !p.from_nodes.is_empty() {
            self.warn(&format!("{path}.fromNodes"), "node selectors are not supported; they select no peers");
            peers.has_l3 = true;
        }
        if !p.from_groups.is_empty() {
            self.warn(&format!("{path}.fromGroups"), "cloud provider groups are not supported; they select no peers");
            peers.has_l3 = true;
        }
        Ok((peers, requires))
    }

    fn egress_peers(&mut self, p: &EgressPeers, path: &str) -> Result<(Peers, Vec<Requirement>), PolicyError> {
        let mut peers = Peers { has_l3: p.to_endpoints.is_some(), ..Default::default() };
        peers.endpoints = p.to_endpoints.iter().flatten().map(|s| self.namespaced(s)).collect();
        let requires = self.requires(&p.to_requires);
        for (i, cidr) in p.to_cidr.iter().enumerate() {
            peers.others.push(PeerSelector::cidr(parse_cidr(cidr, &format!("{path}.toCIDR[{i}]"))?, &[]));
            peers.has_l3 = true;
        }
        self.cidr_sets(&p.to_cidr_set, &format!("{path}.toCIDRSet"), &mut peers)?;
        self.entities(&p.to_entities, &mut peers);
        if !p.to_services.is_empty() {
            self.warn(&format!("{path}.toServices"), "service peers are not supported; they select no peers");
            peers.has_l3 = true;
        }
        if !p.to_nodes.is_empty() {
            self.warn(&format!("{path}.toNodes"), "node selectors are not supported; they select no peers");
            peers.has_l3 = true;
        }
        if !p.to_groups.is_empty() {
            self.warn(&format!("{path}.toGroups"), "cloud provider groups are not supported; they select no peers");
            peers.has_l3 = true;
        }
        Ok((peers, requires))
    }

    fn requires(&self, selectors: &[crate::crds::selector::LabelSelector]) -> Vec<Requirement> {
        selectors.iter().flat_map(|s| self.namespaced_requirements(s)).collect()
    }

    /// `fromRequires` selectors are plain label requirements (no namespace implied: they narrow peers
    /// that are already namespaced by their own selectors).
    fn namespaced_requirements(&self, sel: &crate::crds::selector::LabelSelector) -> Vec<Requirement> {
        LabelMatcher::from_selector(sel).requirements.into_iter().collect()
    }

    fn cidr_sets(&mut self, sets: &[CidrRule], path: &str, peers: &mut Peers) -> Result<(), PolicyError> {
        for (i, set) in sets.iter().enumerate() {
            peers.has_l3 = true;
            let p = format!("{path}[{i}]");
            let Some(cidr) = &set.cidr else {
                self.warn(&p, "CiliumCIDRGroup references are not supported; they select no peers");
                continue;
            };
            let cidr = parse_cidr(cidr, &format!("{p}.cidr"))?;
            let except = set
                .except
                .iter()
                .enumerate()
                .map(|(j, e)| parse_cidr(e, &format!("{p}.except[{j}]")))
                .collect::<Result<Vec<_>, _>>()?;
            peers.others.push(PeerSelector::cidr(cidr, &except));
        }
        Ok(())
    }

    fn entities(&self, entities: &[crate::crds::policy_rule::Entity], peers: &mut Peers) {
        for entity in entities {
            peers.has_l3 = true;
            peers.others.extend(entity_selectors(*entity, &self.ctx.cluster_name));
        }
    }

    fn allow_ports(&mut self, rules: &[PortRule], path: &str) -> Result<Option<L4>, PolicyError> {
        for (i, rule) in rules.iter().enumerate() {
            let p = format!("{path}.toPorts[{i}]");
            let l7 = rule.rules.as_ref().is_some_and(|r| {
                r.http.is_some() || r.kafka.is_some() || r.dns.is_some() || r.l7proto.is_some() || !r.l7.is_empty()
            });
            if l7 {
                self.warn(&format!("{p}.rules"), "L7 rules are not enforced (no L7 proxy); the L4 ports are allowed");
            }
            if rule.terminating_tls.is_some() || rule.originating_tls.is_some() {
                self.warn(&p, "TLS interception is not supported; ignored");
            }
            if rule.server_names.is_some() {
                self.warn(&format!("{p}.serverNames"), "TLS SNI matching is not supported; not enforced");
            }
            if rule.listener.is_some() {
                self.warn(&format!("{p}.listener"), "Envoy listeners are not supported; ignored");
            }
        }
        let ports: Vec<PortProtocol> = rules.iter().flat_map(|r| r.ports.iter()).cloned().collect();
        // A toPorts entry without ports (only L7 rules) does not restrict L4.
        if rules.iter().any(|r| r.ports.is_empty()) {
            return Ok(Some(L4::Any));
        }
        self.port_list(&ports, !rules.is_empty(), &format!("{path}.toPorts"))
    }

    /// `None` when no `toPorts` were given.
    fn port_list(&self, ports: &[PortProtocol], given: bool, path: &str) -> Result<Option<L4>, PolicyError> {
        if !given {
            return Ok(None);
        }
        if ports.is_empty() {
            return Ok(Some(L4::Any));
        }
        let mut out = Vec::new();
        for (i, pp) in ports.iter().enumerate() {
            let p = format!("{path}.ports[{i}]");
            let protos = cilium_protocols(pp.protocol);
            out.extend(port_matches(&pp.port, pp.end_port, &protos, &p)?);
        }
        Ok(Some(L4::Ports(out)))
    }

    /// Joins peers and L4 into a rule. `ports` is `None` when the rule has no `toPorts`; ICMP fields add
    /// L4 matches next to the ports.
    fn finish(&self, peers: Peers, ports: Option<L4>, icmps: &[IcmpRule], path: &str) -> Result<PeerRule, PolicyError> {
        let icmp = icmp_matches(icmps, &format!("{path}.icmps"))?;
        let has_l4 = ports.is_some() || !icmp.is_empty();
        let l4 = match ports {
            None if icmp.is_empty() => L4::Any,
            None => L4::Ports(icmp),
            Some(L4::Any) => L4::Any,
            Some(L4::Ports(mut v)) => {
                v.extend(icmp);
                L4::Ports(v)
            }
        };
        Ok(PeerRule {
            endpoints: peers.endpoints,
            others: peers.others,
            // Cilium: a rule with L4 but no L3 part applies to every peer; a rule with neither (`- {}`)
            // selects nothing but still turns default deny on.
            any_peer: !peers.has_l3 && has_l4,
            l4,
        })
    }
}

#[derive(Default)]
struct Peers {
    endpoints: Vec<LabelMatcher>,
    others: Vec<PeerSelector>,
    /// Some L3 field was given (even an explicitly empty `fromEndpoints: []`, which selects nothing).
    has_l3: bool,
}

fn parse_cidr(value: &str, path: &str) -> Result<IpNet, PolicyError> {
    // Cilium accepts bare addresses as host prefixes.
    value
        .parse::<IpNet>()
        .or_else(|_| value.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| PolicyError::InvalidCidr { path: path.into(), value: value.into() })
}

/// CNP protocols: omitted or ANY means TCP, UDP and SCTP.
fn cilium_protocols(p: Option<L4Proto>) -> Vec<(u8, &'static str)> {
    match p.unwrap_or(L4Proto::Any) {
        L4Proto::Any => vec![(proto::TCP, "TCP"), (proto::UDP, "UDP"), (proto::SCTP, "SCTP")],
        L4Proto::Tcp => vec![(proto::TCP, "TCP")],
        L4Proto::Udp => vec![(proto::UDP, "UDP")],
        L4Proto::Sctp => vec![(proto::SCTP, "SCTP")],
        L4Proto::Vrrp => vec![(112, "VRRP")],
        L4Proto::Igmp => vec![(2, "IGMP")],
        L4Proto::Gre => vec![(47, "GRE")],
        L4Proto::Ipip => vec![(4, "IPIP")],
        L4Proto::Ipv6 => vec![(41, "IPV6")],
        L4Proto::Esp => vec![(50, "ESP")],
        L4Proto::Ah => vec![(51, "AH")],
    }
}

fn has_ports(p: u8) -> bool {
    matches!(p, proto::TCP | proto::UDP | proto::SCTP)
}

/// One `port`/`endPort` for the given protocols.
fn port_matches(
    port: &str,
    end_port: Option<i32>,
    protos: &[(u8, &'static str)],
    path: &str,
) -> Result<Vec<PortMatch>, PolicyError> {
    let Ok(start) = port.parse::<u16>() else {
        if port.is_empty() || port.chars().all(|c| c.is_ascii_digit()) {
            return Err(PolicyError::InvalidPort { path: format!("{path}.port"), value: port.into() });
        }
        if end_port.is_some_and(|e| e != 0) {
            return Err(PolicyError::EndPortWithNamedPort { path: format!("{path}.endPort"), port: port.into() });
        }
        return Ok(vec![PortMatch::Named { protos: protos.iter().map(|p| p.0).collect(), name: port.into() }]);
    };
    let (start, end) = match (start, end_port) {
        // Port 0 means every port of the protocol.
        (0, _) => (0, u16::MAX),
        (s, None | Some(0)) => (s, s),
        (s, Some(e)) if e < i32::from(s) => {
            return Err(PolicyError::EndPortBelowPort { path: format!("{path}.endPort"), port: s, end_port: e })
        }
        (s, Some(e)) => (
            s,
            u16::try_from(e)
                .map_err(|_| PolicyError::InvalidPort { path: format!("{path}.endPort"), value: e.to_string() })?,
        ),
    };
    let mut out = Vec::new();
    for &(p, name) in protos {
        if !has_ports(p) && (start, end) != (0, u16::MAX) {
            return Err(PolicyError::PortWithPortlessProtocol { path: path.into(), protocol: name.into() });
        }
        out.push(PortMatch::Range { proto: p, start, end });
    }
    Ok(out)
}

fn icmp_matches(icmps: &[IcmpRule], path: &str) -> Result<Vec<PortMatch>, PolicyError> {
    let mut out = Vec::new();
    for (i, rule) in icmps.iter().enumerate() {
        for (j, field) in rule.fields.iter().enumerate() {
            let ipv6 = matches!(field.family, Some(crate::crds::policy_rule::IcmpFamily::IPv6));
            let invalid = || PolicyError::InvalidIcmpType {
                path: format!("{path}[{i}].fields[{j}].type"),
                value: field.icmp_type.to_string(),
            };
            let icmp_type = match &field.icmp_type {
                serde_json::Value::Number(n) => n.as_u64().and_then(|n| u8::try_from(n).ok()).ok_or_else(invalid)?,
                serde_json::Value::String(s) => {
                    s.parse::<u8>().ok().or_else(|| icmp_type_by_name(ipv6, s)).ok_or_else(invalid)?
                }
                _ => return Err(invalid()),
            };
            let proto = if ipv6 { proto::ICMPV6 } else { proto::ICMP };
            out.push(PortMatch::Range { proto, start: u16::from(icmp_type), end: u16::from(icmp_type) });
        }
    }
    Ok(out)
}

/// A Kubernetes `metav1.LabelSelector` as a matcher (absent = everything).
fn k8s_matcher(sel: Option<&metav1::LabelSelector>) -> LabelMatcher {
    let Some(sel) = sel else { return LabelMatcher::default() };
    let mut m = LabelMatcher::default();
    for (k, v) in sel.match_labels.iter().flatten() {
        m = m.with(Requirement::equals(&format!("{}:{k}", source::K8S), v));
    }
    for e in sel.match_expressions.iter().flatten() {
        m = m.with(Requirement::new(
            &format!("{}:{}", source::K8S, e.key),
            k8s_operator(&e.operator),
            e.values.iter().flatten().cloned(),
        ));
    }
    m
}

fn k8s_operator(op: &str) -> Operator {
    match op {
        "In" => Operator::In,
        "NotIn" => Operator::NotIn,
        "Exists" => Operator::Exists,
        // The API server rejects other operators; DoesNotExist is the only one left.
        _ => Operator::DoesNotExist,
    }
}

/// A namespace selector as requirements on the copies of namespace labels that pod identities carry,
/// restricted to pods (any namespace).
fn namespace_matcher(sel: &metav1::LabelSelector) -> LabelMatcher {
    let mut m = LabelMatcher::default().with(Requirement::new(
        &format!("{}:{}", source::K8S, keys::POD_NAMESPACE),
        Operator::Exists,
        Vec::<String>::new(),
    ));
    for r in k8s_matcher(Some(sel)).requirements {
        m = m.with(Requirement { key: format!("{}{}", keys::NAMESPACE_LABELS_PREFIX, r.key), ..r });
    }
    m
}

fn knp_rule(
    namespace: &str,
    peers: Vec<NetworkPolicyPeer>,
    ports: Vec<NetworkPolicyPort>,
    path: &str,
) -> Result<PeerRule, PolicyError> {
    let mut rule = PeerRule { any_peer: peers.is_empty(), ..Default::default() };
    for (i, peer) in peers.into_iter().enumerate() {
        let p = format!("{path}.peers[{i}]");
        if let Some(block) = &peer.ip_block {
            let cidr = parse_cidr(&block.cidr, &format!("{p}.ipBlock.cidr"))?;
            let except = block
                .except
                .iter()
                .flatten()
                .enumerate()
                .map(|(j, e)| parse_cidr(e, &format!("{p}.ipBlock.except[{j}]")))
                .collect::<Result<Vec<_>, _>>()?;
            rule.others.push(PeerSelector::cidr(cidr, &except));
            continue;
        }
        let pods = k8s_matcher(peer.pod_selector.as_ref());
        let matcher = match &peer.namespace_selector {
            None => pods.in_namespace(namespace),
            Some(ns) => {
                let mut m = namespace_matcher(ns);
                m.requirements.extend(pods.requirements);
                m
            }
        };
        rule.endpoints.push(matcher);
    }
    if !ports.is_empty() {
        let mut out = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let p = format!("{path}.ports[{i}]");
            let protocol = port.protocol.as_deref().unwrap_or("TCP");
            let protos = match protocol {
                "TCP" => vec![(proto::TCP, "TCP")],
                "UDP" => vec![(proto::UDP, "UDP")],
                "SCTP" => vec![(proto::SCTP, "SCTP")],
                other => {
                    return Err(PolicyError::InvalidProtocol { path: format!("{p}.protocol"), value: other.into() })
                }
            };
            let port_str = match &port.port {
                None => "0".to_string(),
                Some(IntOrString::Int(n)) => n.to_string(),
                Some(IntOrString::String(s)) => s.clone(),
            };
            out.extend(port_matches(&port_str, port.end_port, &protos, &p)?);
        }
        rule.l4 = L4::Ports(out);
    }
    Ok(rule)
}
