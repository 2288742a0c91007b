//! Kubernetes objects → frontend specs: which addresses a node must answer for, with which flags and
//! which (already policy-filtered) backends. Follows Cilium's conversion of a Service into frontends:
//! one per ClusterIP × port; NodePort on the 0.0.0.0 surrogate and on every address of this node;
//! LoadBalancer ingress IPs (VIP mode); externalIPs; pod hostPorts of pods on this node.
//!
//! Traffic policies: when `externalTrafficPolicy` and `internalTrafficPolicy` differ, the externally
//! reachable frontends (NodePort, LoadBalancer, externalIPs) exist twice — the external scope with
//! the backends eTP allows and the internal scope with those iTP allows — and carry `TWO_SCOPES`, so
//! the datapath picks the set by where the packet came from. ClusterIPs always follow iTP.
//!
//! Both families: every address of a Service (`clusterIPs`, ingress, externalIPs) is a frontend in
//! its own family, with the backends of the EndpointSlices of that family (`addressType: IPv4` /
//! `IPv6`, one slice per family as kube-controller-manager writes them). NodePort answers in the
//! Service's families, with a surrogate per family (0.0.0.0 and ::). `loadBalancerSourceRanges` and hostPorts are
//! IPv4 only (there is no IPv6 source-range map); an IPv6 frontend with source ranges gets a note.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Node, Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::model::{
    flags, flags2, BackendAddr, BackendState, FrontendAddr, FrontendKind, ObjectName, Proto, Scope,
    DEFAULT_AFFINITY_TIMEOUT_SECS,
};
use crate::config::LbAlgorithm;

/// Label naming the proxy responsible for a Service; set → kube-proxy (and we) leave it alone
/// unless it names us.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Label marking a Service headless regardless of its spec.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// Label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Cilium's per-service backend selection annotation (`random` | `maglev`).
pub const LB_ALGORITHM_ANNOTATION: &str = "service.cilium.io/lb-algorithm";
/// Cilium's source-range policy annotation (`allow` | `deny`).
pub const SOURCE_RANGES_POLICY_ANNOTATION: &str = "service.cilium.io/src-ranges-policy";
/// The legacy annotation form of `spec.loadBalancerSourceRanges` (used when the field is empty).
pub const SOURCE_RANGES_ANNOTATION: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";

/// What the services core needs from the agent's configuration.
#[derive(Clone, Debug)]
pub struct ServicesConfig {
    /// This node's name (Node object, EndpointSlice `nodeName`, Pod `spec.nodeName`).
    pub node_name: String,
    /// NodePort addresses besides the InternalIP/ExternalIP of this node's Node object (e.g. the
    /// addresses of the attached devices).
    pub extra_node_addresses: Vec<IpAddr>,
    /// `kube-proxy-replacement`: without it only ClusterIPs and externalIPs are programmed.
    pub kube_proxy_replacement: bool,
    /// `node-port-range` (inclusive).
    pub node_port_range: (u16, u16),
    /// `bpf-lb-algorithm`.
    pub lb_algorithm: LbAlgorithm,
    /// `k8s-service-proxy-name`: `None` ignores every Service carrying the proxy-name label;
    /// `Some(n)` handles only Services labelled `n`.
    pub service_proxy_name: Option<String>,
    /// Maglev lookup-table size per service (a prime; Cilium's default is 16381).
    pub maglev_table_size: u32,
}

impl ServicesConfig {
    /// The agent's view of `config`, for node `node_name`.
    pub fn from_config(config: &crate::config::Config, node_name: &str) -> Self {
        Self {
            node_name: node_name.to_string(),
            extra_node_addresses: Vec::new(),
            kube_proxy_replacement: config.kube_proxy_replacement,
            node_port_range: config.node_port_range,
            lb_algorithm: config.bpf_lb_algorithm,
            service_proxy_name: None,
            maglev_table_size: DEFAULT_MAGLEV_TABLE_SIZE,
        }
    }
}

pub const DEFAULT_MAGLEV_TABLE_SIZE: u32 = 16381;

/// The cluster state the services core reads.
#[derive(Clone, Copy, Debug, Default)]
pub struct Inputs<'a> {
    pub services: &'a [Service],
    pub endpoint_slices: &'a [EndpointSlice],
    pub nodes: &'a [Node],
    pub pods: &'a [Pod],
}

/// Something the core skipped or resolved, with the object it concerns (shown in logs and status).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Note {
    pub object: String,
    pub message: String,
}

/// One backend as a frontend sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Backend {
    pub state: BackendState,
    pub addr: BackendAddr,
    pub node_local: bool,
}

/// One frontend with everything needed to write its rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendSpec {
    pub addr: FrontendAddr,
    pub kind: FrontendKind,
    pub owner: ObjectName,
    /// The service (or container) port name the frontend stands for.
    pub port_name: String,
    /// `Lb4Service::flags`/`flags2` for every entry of the frontend (source-range bits excluded).
    pub flags: u8,
    pub flags2: u8,
    /// `loadBalancerSourceRanges` to enforce (LoadBalancer frontends only, as Cilium by default).
    pub source_ranges: Vec<Ipv4Net>,
    pub source_ranges_deny: bool,
    pub affinity_timeout: Option<u32>,
    /// The per-service algorithm annotation, if any.
    pub lb_algorithm_annotation: Option<LbAlgorithm>,
    /// Backends after traffic-policy filtering, sorted by (state, address).
    pub backends: Vec<Backend>,
    /// Primary frontends (ClusterIP, LB, externalIP, hostPort with a hostIP) win address conflicts
    /// over expansions (NodePort and wildcard hostPort on node addresses), as in Cilium.
    pub expansion: bool,
}

impl FrontendSpec {
    /// The algorithm in effect: the annotation, else the configured default.
    pub fn algorithm(&self, default: LbAlgorithm) -> LbAlgorithm {
        self.lb_algorithm_annotation.unwrap_or(default)
    }

    /// Maglev tables are kept for externally reachable frontends only (never for ClusterIPs or the
    /// 0.0.0.0 surrogate), as in Cilium.
    pub fn uses_maglev(&self, default: LbAlgorithm) -> bool {
        self.algorithm(default) == LbAlgorithm::Maglev
            && self.kind != FrontendKind::ClusterIp
            && !self.addr.ip.is_unspecified()
    }
}

/// Collects every frontend this node must program, resolving address conflicts (first by primary
/// over expansion, then by owner name). Sorted by address.
pub fn collect_frontends(inputs: &Inputs<'_>, cfg: &ServicesConfig, notes: &mut Vec<Note>) -> Vec<FrontendSpec> {
    let node_addrs = node_addresses(inputs.nodes, cfg, notes);
    let slices = slices_by_service(inputs.endpoint_slices);
    let mut all = Vec::new();
    for svc in inputs.services {
        let name = object_name(&svc.metadata);
        let own = slices.get(&name).map(Vec::as_slice).unwrap_or(&[]);
        all.extend(service_frontends(svc, &name, own, &node_addrs, cfg, notes));
    }
    if cfg.kube_proxy_replacement {
        for pod in inputs.pods {
            all.extend(hostport_frontends(pod, &node_addrs, cfg, notes));
        }
    }

    all.sort_by(|a, b| (a.expansion, &a.owner, a.addr).cmp(&(b.expansion, &b.owner, b.addr)));
    let mut taken: BTreeMap<FrontendAddr, ObjectName> = BTreeMap::new();
    let mut kept = Vec::with_capacity(all.len());
    for fe in all {
        if let Some(holder) = taken.get(&fe.addr) {
            if *holder != fe.owner {
                notes.push(Note {
                    object: fe.owner.to_string(),
                    message: format!("{} frontend {} is already used by {holder}; skipped", fe.kind, fe.addr),
                });
            }
            continue;
        }
        taken.insert(fe.addr, fe.owner.clone());
        kept.push(fe);
    }
    kept.sort_by_key(|fe| fe.addr);
    kept
}

fn object_name(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjectName {
    ObjectName { namespace: meta.namespace.clone().unwrap_or_default(), name: meta.name.clone().unwrap_or_default() }
}

/// This node's NodePort addresses: InternalIP/ExternalIP of its Node object plus configured extras.
fn node_addresses(nodes: &[Node], cfg: &ServicesConfig, notes: &mut Vec<Note>) -> Vec<IpAddr> {
    let mut addrs: BTreeSet<IpAddr> = cfg.extra_node_addresses.iter().copied().collect();
    let own = nodes.iter().find(|n| n.metadata.name.as_deref() == Some(cfg.node_name.as_str()));
    for a in own.and_then(|n| n.status.as_ref()).and_then(|s| s.addresses.as_ref()).into_iter().flatten() {
        if a.type_ != "InternalIP" && a.type_ != "ExternalIP" {
            continue;
        }
        match a.address.parse::<IpAddr>() {
            Ok(ip) => {
                addrs.insert(ip);
            }
            Err(_) => notes.push(Note {
                object: format!("node/{}", cfg.node_name),
                message: format!("unparsable {} address {:?}", a.type_, a.address),
            }),
        }
    }
    addrs.into_iter().collect()
}

pub(crate) fn slices_by_service(slices: &[EndpointSlice]) -> BTreeMap<ObjectName, Vec<&EndpointSlice>> {
    let mut by: BTreeMap<ObjectName, Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        let Some(service) = slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) else { continue };
        let key = ObjectName { namespace: slice.metadata.namespace.clone().unwrap_or_default(), name: service.clone() };
        by.entry(key).or_default().push(slice);
    }
    by
}

/// The backends of one service port: every endpoint address (IPv4 and IPv6) of the Service's slices, on the
/// slice port with the same name and protocol (that is how a named `targetPort` resolves: each
/// slice carries the number for its own pods). One address in several slices keeps its best state.
fn port_backends(slices: &[&EndpointSlice], port_name: &str, proto: Proto, node_name: &str) -> Vec<Backend> {
    let mut best: BTreeMap<BackendAddr, Backend> = BTreeMap::new();
    for slice in slices {
        // FQDN slices name no address to balance to.
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            continue;
        }
        let Some(port) = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == port_name && Proto::from_k8s(p.protocol.as_deref()) == Some(proto)
        }) else {
            continue;
        };
        let Some(port) = port.port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0) else { continue };
        for ep in &slice.endpoints {
            let c = ep.conditions.as_ref();
            let state = BackendState::from_conditions(
                c.and_then(|c| c.ready),
                c.and_then(|c| c.serving),
                c.and_then(|c| c.terminating),
            );
            let node_local = ep.node_name.as_deref() == Some(node_name);
            for ip in ep.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                let addr = BackendAddr { ip, port, proto };
                let be = Backend { state, addr, node_local };
                best.entry(addr).and_modify(|b| *b = (*b).min(be)).or_insert(be);
            }
        }
    }
    let mut out: Vec<Backend> = best.into_values().collect();
    out.sort();
    out
}

/// The traffic-policy settings of one Service.
#[derive(Clone, Copy)]
struct Policies {
    ext_local: bool,
    int_local: bool,
}

impl Policies {
    fn two_scopes(self) -> bool {
        self.ext_local != self.int_local
    }

    /// Scopes of an externally reachable frontend, each with "local backends only?".
    fn external_scopes(self) -> Vec<(Scope, bool)> {
        if self.two_scopes() {
            vec![(Scope::External, self.ext_local), (Scope::Internal, self.int_local)]
        } else {
            vec![(Scope::External, self.ext_local)]
        }
    }
}

/// Settings shared by every frontend of one Service.
struct ServiceCommon<'a> {
    name: &'a ObjectName,
    policies: Policies,
    affinity_timeout: Option<u32>,
    lb_algorithm: Option<LbAlgorithm>,
    source_ranges: Vec<Ipv4Net>,
    source_ranges_deny: bool,
}

impl ServiceCommon<'_> {
    fn frontend(
        &self,
        kind: FrontendKind,
        addr: FrontendAddr,
        port: &ServicePort,
        backends: &[Backend],
        local_only: bool,
    ) -> FrontendSpec {
        let (flags, flags2) = frontend_flags(kind, addr.ip, self.policies, self.affinity_timeout.is_some());
        // A frontend only balances to backends of its own family (no NAT46/64).
        let backends = backends
            .iter()
            .filter(|b| b.addr.ip.is_ipv4() == addr.ip.is_ipv4())
            .filter(|b| !local_only || b.node_local)
            .copied()
            .collect();
        // Source ranges are enforced for IPv4 frontends only (IPv4 LPM map).
        let lb = kind == FrontendKind::LoadBalancer && addr.ip.is_ipv4();
        FrontendSpec {
            addr,
            kind,
            owner: self.name.clone(),
            port_name: port.name.clone().unwrap_or_default(),
            flags,
            flags2,
            source_ranges: if lb { self.source_ranges.clone() } else { Vec::new() },
            source_ranges_deny: lb && self.source_ranges_deny,
            affinity_timeout: self.affinity_timeout,
            lb_algorithm_annotation: self.lb_algorithm,
            backends,
            expansion: kind == FrontendKind::NodePort,
        }
    }
}

fn frontend_flags(kind: FrontendKind, ip: IpAddr, policies: Policies, affinity: bool) -> (u8, u8) {
    let mut f = match kind {
        FrontendKind::ClusterIp => 0,
        FrontendKind::NodePort => flags::NODEPORT,
        FrontendKind::LoadBalancer => flags::LOADBALANCER,
        FrontendKind::ExternalIp => flags::EXTERNAL_IP,
        FrontendKind::HostPort => flags::HOSTPORT,
    };
    if kind != FrontendKind::ClusterIp && !ip.is_unspecified() {
        f |= flags::ROUTABLE;
    }
    if policies.ext_local {
        f |= flags::EXT_LOCAL_SCOPE;
    }
    if affinity {
        f |= flags::AFFINITY;
    }
    let mut f2 = 0;
    if policies.int_local {
        f2 |= flags2::INT_LOCAL_SCOPE;
    }
    let reachable_from_outside =
        matches!(kind, FrontendKind::NodePort | FrontendKind::LoadBalancer | FrontendKind::ExternalIp);
    if reachable_from_outside && policies.two_scopes() {
        f2 |= flags2::TWO_SCOPES;
    }
    (f, f2)
}

/// Whether this agent handles `svc` at all (proxy-name label, ExternalName).
fn handled(svc: &Service, cfg: &ServicesConfig) -> bool {
    let labels = svc.metadata.labels.as_ref();
    let proxy = labels.and_then(|l| l.get(SERVICE_PROXY_NAME_LABEL));
    if proxy.map(String::as_str) != cfg.service_proxy_name.as_deref() {
        return false;
    }
    svc.spec.as_ref().and_then(|s| s.type_.as_deref()) != Some("ExternalName")
}

fn is_headless(svc: &Service) -> bool {
    let labelled = svc.metadata.labels.as_ref().is_some_and(|l| l.contains_key(HEADLESS_LABEL));
    let none =
        svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()).is_some_and(|ip| ip.eq_ignore_ascii_case("none"));
    labelled || none
}

fn service_frontends(
    svc: &Service,
    name: &ObjectName,
    slices: &[&EndpointSlice],
    node_addrs: &[IpAddr],
    cfg: &ServicesConfig,
    notes: &mut Vec<Note>,
) -> Vec<FrontendSpec> {
    let Some(spec) = svc.spec.as_ref() else { return Vec::new() };
    if !handled(svc, cfg) || is_headless(svc) {
        return Vec::new();
    }
    let mut note = |message: String| notes.push(Note { object: name.to_string(), message });
    let annotations = svc.metadata.annotations.clone().unwrap_or_default();

    let policies = Policies {
        ext_local: spec.external_traffic_policy.as_deref() == Some("Local"),
        int_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
    };
    let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        let configured = spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t != 0);
        configured.unwrap_or(DEFAULT_AFFINITY_TIMEOUT_SECS).min(super::model::AFFINITY_TIMEOUT_MASK)
    });
    let lb_algorithm = match annotations.get(LB_ALGORITHM_ANNOTATION).map(String::as_str) {
        None => None,
        Some("random") => Some(LbAlgorithm::Random),
        Some("maglev") => Some(LbAlgorithm::Maglev),
        Some(other) => {
            note(format!("{LB_ALGORITHM_ANNOTATION}: unknown algorithm {other:?}; using the default"));
            None
        }
    };
    let mut source_ranges = Vec::new();
    let ranges: Vec<String> = match &spec.load_balancer_source_ranges {
        Some(r) if !r.is_empty() => r.clone(),
        _ => annotations
            .get(SOURCE_RANGES_ANNOTATION)
            .map(|v| v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default(),
    };
    for r in ranges {
        match r.parse::<ipnet::IpNet>() {
            Ok(ipnet::IpNet::V4(n)) => source_ranges.push(n.trunc()),
            Ok(ipnet::IpNet::V6(_)) => {}
            Err(_) => note(format!("loadBalancerSourceRanges: unparsable CIDR {r:?}; ignored")),
        }
    }
    source_ranges.sort();
    source_ranges.dedup();
    let common = ServiceCommon {
        name,
        policies,
        affinity_timeout,
        lb_algorithm,
        source_ranges,
        source_ranges_deny: annotations.get(SOURCE_RANGES_POLICY_ANNOTATION).is_some_and(|v| v == "deny"),
    };

    // Addresses of both families; each becomes a frontend in its family's maps.
    let parse = |what: &str, raw: &str, note: &mut dyn FnMut(String)| -> Option<IpAddr> {
        let parsed = raw.parse::<IpAddr>().ok();
        if parsed.is_none() {
            note(format!("{what} {raw:?} is not an IP address; skipped"));
        }
        parsed
    };
    let cluster_ips: Vec<IpAddr> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.clone(),
        _ => spec.cluster_ip.iter().cloned().collect(),
    }
    .iter()
    .filter(|ip| !ip.is_empty())
    .filter_map(|ip| parse("clusterIP", ip, &mut note))
    .collect();
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    let lb_ips: Vec<IpAddr> = if ty == "LoadBalancer" {
        let ingress = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|l| l.ingress.as_ref());
        ingress
            .into_iter()
            .flatten()
            // KEP-1860: only VIP-mode ingress addresses are ours to answer for.
            .filter(|i| i.ip_mode.as_deref().is_none_or(|m| m == "VIP"))
            .filter_map(|i| i.ip.as_deref())
            .filter_map(|ip| parse("LoadBalancer ingress", ip, &mut note))
            .collect()
    } else {
        Vec::new()
    };
    if !common.source_ranges.is_empty() && lb_ips.iter().any(IpAddr::is_ipv6) {
        note("loadBalancerSourceRanges are not enforced on IPv6 ingress addresses (IPv4 only)".to_string());
    }
    let external_ips: Vec<IpAddr> =
        spec.external_ips.iter().flatten().filter_map(|ip| parse("externalIP", ip, &mut note)).collect();
    // NodePort answers in the Service's families (those of its clusterIPs; IPv4 for a Service
    // without any): one surrogate per family, and the node's addresses of those families.
    let v6 = cluster_ips.iter().any(IpAddr::is_ipv6);
    let v4 = cluster_ips.is_empty() || cluster_ips.iter().any(IpAddr::is_ipv4);
    let node_port_addrs: Vec<IpAddr> =
        [(v4, IpAddr::V4(Ipv4Addr::UNSPECIFIED)), (v6, IpAddr::V6(Ipv6Addr::UNSPECIFIED))]
            .into_iter()
            .filter_map(|(on, surrogate)| on.then_some(surrogate))
            .chain(node_addrs.iter().copied().filter(|a| if a.is_ipv4() { v4 } else { v6 }))
            .collect();

    let mut out = Vec::new();
    for port in spec.ports.iter().flatten() {
        let Some(proto) = Proto::from_k8s(port.protocol.as_deref()) else {
            note(format!("port {}: unsupported protocol {:?}; skipped", port.port, port.protocol));
            continue;
        };
        let Ok(svc_port) = u16::try_from(port.port) else { continue };
        let backends = port_backends(slices, port.name.as_deref().unwrap_or(""), proto, &cfg.node_name);
        let fe = |ip, scope| FrontendAddr { ip, port: svc_port, proto, scope };

        for ip in &cluster_ips {
            out.push(common.frontend(
                FrontendKind::ClusterIp,
                fe(*ip, Scope::External),
                port,
                &backends,
                policies.int_local,
            ));
        }
        for ip in &external_ips {
            for (scope, local) in policies.external_scopes() {
                out.push(common.frontend(FrontendKind::ExternalIp, fe(*ip, scope), port, &backends, local));
            }
        }
        if !cfg.kube_proxy_replacement {
            continue;
        }
        for ip in &lb_ips {
            for (scope, local) in policies.external_scopes() {
                out.push(common.frontend(FrontendKind::LoadBalancer, fe(*ip, scope), port, &backends, local));
            }
        }
        let node_port = port.node_port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0);
        if let (Some(np), "NodePort" | "LoadBalancer") = (node_port, ty) {
            let (lo, hi) = cfg.node_port_range;
            if np < lo || np > hi {
                note(format!("nodePort {np} is outside node-port-range {lo}-{hi}; skipped"));
                continue;
            }
            // The 0.0.0.0 / :: surrogates answer lookups for any node address the datapath
            // recognises (remote nodes included); the per-address entries answer for this node's own
            // addresses. (The IPv6 NodePort rows exist; the uplink's IPv6 NodePort path does not yet.)
            for ip in node_port_addrs.iter().copied() {
                for (scope, local) in policies.external_scopes() {
                    let addr = FrontendAddr { ip, port: np, proto, scope };
                    out.push(common.frontend(FrontendKind::NodePort, addr, port, &backends, local));
                }
            }
        }
    }
    out
}

/// HostPort frontends of one pod on this node: `hostIP:hostPort` (or the surrogate plus every node
/// address when no hostIP is set) → `podIP:containerPort`.
fn hostport_frontends(
    pod: &Pod,
    node_addrs: &[IpAddr],
    cfg: &ServicesConfig,
    notes: &mut Vec<Note>,
) -> Vec<FrontendSpec> {
    let Some(spec) = pod.spec.as_ref() else { return Vec::new() };
    if spec.node_name.as_deref() != Some(cfg.node_name.as_str()) || spec.host_network == Some(true) {
        return Vec::new();
    }
    let status = pod.status.as_ref();
    if matches!(status.and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")) {
        return Vec::new();
    }
    let ips = status.and_then(|s| s.pod_ips.as_ref()).map(|v| v.iter().map(|p| p.ip.clone()).collect::<Vec<_>>());
    let ips = ips.unwrap_or_else(|| status.and_then(|s| s.pod_ip.clone()).into_iter().collect());
    let Some(pod_ip) = ips.iter().find_map(|ip| ip.parse::<Ipv4Addr>().ok()) else { return Vec::new() };
    let owner = object_name(&pod.metadata);
    // A pod being deleted keeps serving established flows but takes no new ones unless it is the
    // only one — the same treatment as a terminating endpoint.
    let state =
        if pod.metadata.deletion_timestamp.is_some() { BackendState::Terminating } else { BackendState::Active };

    let mut out = Vec::new();
    for cp in spec.containers.iter().flat_map(|c| c.ports.iter().flatten()) {
        let Some(host_port) = cp.host_port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0) else { continue };
        let Some(proto) = Proto::from_k8s(cp.protocol.as_deref()) else { continue };
        let Ok(container_port) = u16::try_from(cp.container_port) else { continue };
        let backend = Backend {
            state,
            addr: BackendAddr { ip: IpAddr::V4(pod_ip), port: container_port, proto },
            node_local: true,
        };
        let host_ip = match cp.host_ip.as_deref().filter(|h| !h.is_empty()) {
            None => None,
            Some(raw) => match raw.parse::<IpAddr>() {
                Ok(IpAddr::V4(a)) if a.is_unspecified() => None,
                Ok(IpAddr::V4(a)) => Some(a),
                _ => {
                    notes.push(Note {
                        object: owner.to_string(),
                        message: format!("hostIP {raw} skipped: IPv6 or unparsable (IPv4-only LB maps)"),
                    });
                    continue;
                }
            },
        };
        // HostPorts stay IPv4: the pod's IPv4 address on the node's IPv4 addresses.
        let node_v4 = node_addrs.iter().filter(|a| a.is_ipv4()).copied();
        let (addrs, expansion): (Vec<IpAddr>, bool) = match host_ip {
            Some(a) => (vec![IpAddr::V4(a)], false),
            None => (std::iter::once(IpAddr::V4(Ipv4Addr::UNSPECIFIED)).chain(node_v4).collect(), true),
        };
        for ip in addrs {
            let addr = FrontendAddr { ip, port: host_port, proto, scope: Scope::External };
            let policies = Policies { ext_local: false, int_local: false };
            let (flags, mut flags2) = frontend_flags(FrontendKind::HostPort, ip, policies, false);
            if ip.is_loopback() {
                flags2 |= flags2::LOOPBACK;
            }
            out.push(FrontendSpec {
                addr,
                kind: FrontendKind::HostPort,
                owner: owner.clone(),
                port_name: cp.name.clone().unwrap_or_default(),
                flags,
                flags2,
                source_ranges: Vec::new(),
                source_ranges_deny: false,
                affinity_timeout: None,
                lb_algorithm_annotation: None,
                backends: vec![backend],
                expansion,
            });
        }
    }
    out
}
