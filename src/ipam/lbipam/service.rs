//! What LB-IPAM needs to know about a Service, read once from the k8s-openapi object: whether it is
//! ours to address, its selection labels, requested addresses and families, and its sharing terms.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{LoadBalancerIngress, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::addr::Family;
use super::{
    ANNOTATION_IPS, ANNOTATION_IPS_ALIAS, ANNOTATION_SHARING_CROSS_NAMESPACE, ANNOTATION_SHARING_CROSS_NAMESPACE_ALIAS,
    ANNOTATION_SHARING_KEY, ANNOTATION_SHARING_KEY_ALIAS, CONDITION_REQUEST_SATISFIED, LABEL_SERVICE_NAME,
    LABEL_SERVICE_NAMESPACE,
};

/// `namespace/name` of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ServiceKey { namespace: namespace.into(), name: name.into() }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Cluster-level settings LB-IPAM decisions depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbIpamConfig {
    /// `enable-ipv4` / `enable-ipv6`: the families the cluster has.
    pub ipv4: bool,
    pub ipv6: bool,
    /// Address Services without a `loadBalancerClass` (Cilium's `default-lb-service-ipam: lbipam`).
    pub default_ipam: bool,
    /// `loadBalancerClass` values LB-IPAM also handles.
    pub lb_classes: Vec<String>,
}

impl Default for LbIpamConfig {
    fn default() -> Self {
        LbIpamConfig {
            ipv4: true,
            ipv6: false,
            default_ipam: true,
            lb_classes: vec!["io.cilium/bgp-control-plane".into(), "io.cilium/l2-announcer".into()],
        }
    }
}

/// A port of the Service, as far as sharing an address cares. The protocol is recorded but, as in
/// Cilium, two services may not share one port number even with different protocols: the datapath's
/// service lookup does not tell protocols apart.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SharingPort {
    pub port: i32,
    pub protocol: String,
}

/// The LB-IPAM view of one `type: LoadBalancer` Service this controller is responsible for.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRequest {
    pub key: ServiceKey,
    pub generation: Option<i64>,
    /// Older Services keep contested addresses; `None` sorts first.
    pub created: Option<Time>,
    /// The Service's labels plus `io.kubernetes.service.{namespace,name}`, which always carry the real
    /// values: a Service cannot pose as another namespace by setting those labels itself.
    pub labels: BTreeMap<String, String>,
    /// From `spec.loadBalancerIP` and `lbipam.cilium.io/ips`, deduplicated, in that order.
    pub requested_ips: Vec<IpAddr>,
    /// Requested entries that are not addresses (reported in the condition message, otherwise ignored
    /// as Cilium does).
    pub unparseable_requests: Vec<String>,
    /// Families to address when no specific addresses are requested.
    pub families: BTreeSet<Family>,
    pub sharing_key: Option<String>,
    /// Namespaces (or `*`) this Service agrees to share its address with.
    pub sharing_cross_namespace: Vec<String>,
    pub ports: Vec<SharingPort>,
    /// `Cluster` (the default) or `Local`.
    pub external_traffic_policy: String,
    pub selector: BTreeMap<String, String>,
    /// Current `status.loadBalancer.ingress`, in order.
    pub ingress: Vec<LoadBalancerIngress>,
}

/// How the controller relates to a Service.
#[derive(Debug, Clone, PartialEq)]
pub enum Responsibility {
    /// A LoadBalancer Service of a class LB-IPAM handles.
    Ours(Box<ServiceRequest>),
    /// Not ours, but it carries our condition: it stopped qualifying (type or class changed), so its
    /// addresses, ingress and condition are removed.
    Relinquished(ServiceKey),
    /// Not ours and never was (as far as its status shows): left alone.
    NotOurs,
}

fn annotation<'a>(svc: &'a Service, key: &str, alias: &str) -> Option<&'a str> {
    let annotations = svc.metadata.annotations.as_ref()?;
    annotations
        .get(key)
        .filter(|v| !v.is_empty())
        .or_else(|| annotations.get(alias).filter(|v| !v.is_empty()))
        .map(String::as_str)
}

fn carries_our_condition(svc: &Service) -> bool {
    svc.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == CONDITION_REQUEST_SATISFIED))
}

/// Which families a Service asks for, following `ipFamilyPolicy` / `ipFamilies` the way Cilium does:
/// SingleStack (or unset) the first listed family, else the cluster's first; PreferDualStack each
/// listed family the cluster has (all of them if none are listed); RequireDualStack every family the
/// cluster has.
pub fn requested_families(svc: &Service, config: &LbIpamConfig) -> BTreeSet<Family> {
    let spec = svc.spec.as_ref();
    let listed: Vec<Family> = spec
        .and_then(|s| s.ip_families.as_ref())
        .map(|f| f.iter().filter_map(|f| Family::from_k8s(f)).collect())
        .unwrap_or_default();
    let enabled = |f: &Family| match f {
        Family::V4 => config.ipv4,
        Family::V6 => config.ipv6,
    };
    let cluster: Vec<Family> = [Family::V4, Family::V6].into_iter().filter(enabled).collect();
    match spec.and_then(|s| s.ip_family_policy.as_deref()) {
        Some("PreferDualStack") if !listed.is_empty() => listed.into_iter().filter(enabled).collect(),
        Some("PreferDualStack") | Some("RequireDualStack") => cluster.into_iter().collect(),
        _ => listed.first().or(cluster.first()).copied().into_iter().collect(),
    }
}

/// Classifies a Service and, when it is ours, extracts its request.
pub fn classify(svc: &Service, config: &LbIpamConfig) -> Responsibility {
    let key = ServiceKey::new(
        svc.metadata.namespace.clone().unwrap_or_default(),
        svc.metadata.name.clone().unwrap_or_default(),
    );
    let spec = svc.spec.clone().unwrap_or_default();
    let is_lb = spec.type_.as_deref() == Some("LoadBalancer");
    let class_ok = match spec.load_balancer_class.as_deref() {
        None => config.default_ipam,
        Some(class) => config.lb_classes.iter().any(|c| c == class),
    };
    if !(is_lb && class_ok) {
        return if carries_our_condition(svc) { Responsibility::Relinquished(key) } else { Responsibility::NotOurs };
    }

    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    labels.insert(LABEL_SERVICE_NAMESPACE.into(), key.namespace.clone());
    labels.insert(LABEL_SERVICE_NAME.into(), key.name.clone());

    let mut requested_ips = Vec::new();
    let mut unparseable_requests = Vec::new();
    let lb_ip = spec.load_balancer_ip.as_deref().map(str::trim).filter(|s| !s.is_empty());
    let annotated = annotation(svc, ANNOTATION_IPS, ANNOTATION_IPS_ALIAS)
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty());
    for entry in lb_ip.into_iter().chain(annotated) {
        match entry.parse::<IpAddr>() {
            Ok(ip) if !requested_ips.contains(&ip) => requested_ips.push(ip),
            Ok(_) => {}
            Err(_) => unparseable_requests.push(entry.to_owned()),
        }
    }

    let sharing_cross_namespace =
        annotation(svc, ANNOTATION_SHARING_CROSS_NAMESPACE, ANNOTATION_SHARING_CROSS_NAMESPACE_ALIAS)
            .map(|v| v.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();

    let request = ServiceRequest {
        generation: svc.metadata.generation,
        created: svc.metadata.creation_timestamp.clone(),
        labels,
        requested_ips,
        unparseable_requests,
        families: requested_families(svc, config),
        sharing_key: annotation(svc, ANNOTATION_SHARING_KEY, ANNOTATION_SHARING_KEY_ALIAS).map(str::to_owned),
        sharing_cross_namespace,
        ports: spec
            .ports
            .unwrap_or_default()
            .into_iter()
            .map(|p| SharingPort { port: p.port, protocol: p.protocol.unwrap_or_else(|| "TCP".into()) })
            .collect(),
        external_traffic_policy: spec.external_traffic_policy.unwrap_or_else(|| "Cluster".into()),
        selector: spec.selector.unwrap_or_default(),
        ingress: svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.clone())
            .unwrap_or_default(),
        key,
    };
    Responsibility::Ours(Box::new(request))
}

impl ServiceRequest {
    /// Why `self` may not share an address with `other`, or `None` when it may. Symmetric. The texts
    /// follow Cilium's, as they end up in condition messages.
    pub fn sharing_incompatibility(&self, other: &ServiceRequest) -> Option<&'static str> {
        match (&self.sharing_key, &other.sharing_key) {
            (Some(a), Some(b)) if a == b => {}
            _ => return Some("different sharing key"),
        }
        if self.key.namespace != other.key.namespace
            && !(self.allows_namespace(&other.key.namespace) && other.allows_namespace(&self.key.namespace))
        {
            return Some("different and not permitted namespace");
        }
        if self.ports.iter().any(|p| other.ports.iter().any(|q| p.port == q.port)) {
            return Some("same port");
        }
        if self.external_traffic_policy != other.external_traffic_policy {
            return Some("different ExternalTrafficPolicy");
        }
        // With `Local`, traffic for either Service must reach nodes with its own backends: only Services
        // selecting the same (non-empty) pod set can share.
        if self.external_traffic_policy == "Local"
            && (self.selector.is_empty() || other.selector.is_empty() || self.selector != other.selector)
        {
            return Some("compatible ExternalTrafficPolicy local but selecting different set of pods");
        }
        None
    }

    fn allows_namespace(&self, namespace: &str) -> bool {
        self.sharing_cross_namespace.iter().any(|n| n == "*" || n == namespace)
    }
}
