//! The EndpointSlice emulation (kube-controller-manager's endpointslice controller), pure: a
//! Service with a selector, the pods and nodes → the EndpointSlices it should have.
//!
//! As upstream: pods are selected in the Service's namespace by `spec.selector`, need an address
//! and a node; each endpoint carries `ready` (pod Ready and not terminating, or always with
//! `publishNotReadyAddresses`), `serving` (pod Ready) and `terminating` (deletionTimestamp), its
//! `nodeName`, the node's `topology.kubernetes.io/zone` and a `targetRef` to the pod. Named
//! `targetPort`s resolve per pod against its container ports, so pods that resolve differently go
//! into different slices; one slice per address family and port set. A Service with no ready or
//! terminating pods keeps one empty slice (upstream's placeholder). Slices are labelled
//! `kubernetes.io/service-name` and `endpointslice.kubernetes.io/managed-by`, and owned by the
//! Service (deleting the Service garbage-collects them). Departure: names are `<service>-<hash>`
//! derived from family and ports (upstream uses `generateName`), which makes the pass idempotent.
//! A group of more than [`MAX_ENDPOINTS_PER_SLICE`] endpoints is split into slices of at most that
//! many (`<service>-<hash>`, `<service>-<hash>-1`, ...), in pod-name order; upstream packs them
//! to minimise churn instead, so here a departing pod can move others between slices.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::workloads::{controller_ref, is_ready};

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// Upstream's value, so tools that look for controller-managed slices find these.
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// kube-controller-manager's `--max-endpoints-per-slice` default.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

/// The port a Service port targets on one pod: `None` when a named `targetPort` is not declared
/// by any of the pod's containers (the pod then has no endpoint for that port).
pub fn resolve_target_port(port: &k8s_openapi::api::core::v1::ServicePort, pod: &Pod) -> Option<i32> {
    let protocol = port.protocol.as_deref().unwrap_or("TCP");
    match port.target_port.as_ref() {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => match name.parse::<i32>() {
            Ok(n) => Some(n),
            Err(_) => pod.spec.as_ref()?.containers.iter().flat_map(|c| c.ports.iter().flatten()).find_map(|p| {
                (p.name.as_deref() == Some(name) && p.protocol.as_deref().unwrap_or("TCP") == protocol)
                    .then_some(p.container_port)
            }),
        },
    }
}

fn family_of(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// The pod's addresses (`status.podIPs`, else `status.podIP`).
pub fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let status = pod.status.as_ref();
    let mut ips: Vec<IpAddr> = status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|p| p.ip.parse::<IpAddr>().ok())
        .collect();
    if ips.is_empty() {
        ips.extend(status.and_then(|s| s.pod_ip.as_ref()).and_then(|ip| ip.parse::<IpAddr>().ok()));
    }
    ips
}

/// The EndpointSlices `service` should have; empty for a Service without a selector (its slices
/// are someone else's).
pub fn desired_slices(service: &Service, pods: &[Pod], nodes: &[Node]) -> Vec<EndpointSlice> {
    let Some(spec) = service.spec.as_ref() else { return Vec::new() };
    let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else { return Vec::new() };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Vec::new();
    }
    let namespace = service.namespace().unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    let families: Vec<String> = spec.ip_families.clone().unwrap_or_else(|| vec!["IPv4".into()]);
    let service_ports = spec.ports.clone().unwrap_or_default();
    let zones: BTreeMap<String, String> =
        nodes.iter().filter_map(|n| Some((n.name_any(), n.labels().get(ZONE_LABEL)?.clone()))).collect();

    // (family, resolved ports) → endpoints, in a stable order.
    let mut groups: BTreeMap<(String, Vec<EndpointPortKey>), Vec<Endpoint>> = BTreeMap::new();
    let mut candidates: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()))
        .filter(|p| selector.iter().all(|(k, v)| p.labels().get(k) == Some(v)))
        .filter(|p| !matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")))
        .collect();
    candidates.sort_by_key(|p| p.name_any());
    for pod in candidates {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else { continue };
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let serving = is_ready(pod);
        let ports: Vec<EndpointPortKey> = service_ports
            .iter()
            .filter_map(|sp| {
                Some(EndpointPortKey {
                    name: sp.name.clone(),
                    port: resolve_target_port(sp, pod)?,
                    protocol: sp.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    app_protocol: sp.app_protocol.clone(),
                })
            })
            .collect();
        for ip in pod_ips(pod) {
            let family = family_of(&ip);
            if !families.iter().any(|f| f == family) {
                continue;
            }
            let endpoint = Endpoint {
                addresses: vec![ip.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(publish_not_ready || (serving && !terminating)),
                    serving: Some(serving),
                    terminating: Some(terminating),
                }),
                node_name: Some(node.clone()),
                zone: zones.get(&node).cloned(),
                target_ref: Some(ObjectReference {
                    kind: Some("Pod".into()),
                    namespace: Some(namespace.clone()),
                    name: Some(pod.name_any()),
                    uid: pod.metadata.uid.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            groups.entry((family.to_string(), ports.clone())).or_default().push(endpoint);
        }
    }
    if groups.is_empty() {
        // Upstream's placeholder: one slice with no endpoints and no ports.
        let family = families.first().cloned().unwrap_or_else(|| "IPv4".into());
        groups.insert((family, Vec::new()), Vec::new());
    }
    let mut slices = Vec::new();
    for ((family, ports), endpoints) in groups {
        if endpoints.is_empty() {
            slices.push(slice(service, &family, &ports, 0, Vec::new()));
        }
        for (index, chunk) in endpoints.chunks(MAX_ENDPOINTS_PER_SLICE).enumerate() {
            slices.push(slice(service, &family, &ports, index, chunk.to_vec()));
        }
    }
    slices
}

/// One resolved endpoint port (ordered, so it can key a group).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
struct EndpointPortKey {
    name: Option<String>,
    port: i32,
    protocol: String,
    app_protocol: Option<String>,
}

/// Slice `index` of one (family, ports) group; the first keeps the unsuffixed name.
fn slice(
    service: &Service,
    family: &str,
    ports: &[EndpointPortKey],
    index: usize,
    endpoints: Vec<Endpoint>,
) -> EndpointSlice {
    let svc_name = service.name_any();
    let key = serde_json::to_vec(&(family, ports)).expect("serialisable");
    let hash = super::plan::fnv1a(&key);
    let name = if index == 0 { format!("{svc_name}-{hash:08x}") } else { format!("{svc_name}-{hash:08x}-{index}") };
    let mut labels = service.labels().clone();
    labels.insert(SERVICE_NAME_LABEL.into(), svc_name.clone());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: service.namespace(),
            labels: Some(labels),
            owner_references: controller_ref(service).map(|r| vec![r]),
            ..Default::default()
        },
        address_type: family.to_string(),
        endpoints,
        ports: (!ports.is_empty()).then(|| {
            ports
                .iter()
                .map(|p| EndpointPort {
                    name: p.name.clone(),
                    port: Some(p.port),
                    protocol: Some(p.protocol.clone()),
                    app_protocol: p.app_protocol.clone(),
                })
                .collect()
        }),
    }
}

/// Whether an existing slice already says what `desired` says (labels, family, endpoints, ports).
pub fn same_content(existing: &EndpointSlice, desired: &EndpointSlice) -> bool {
    existing.metadata.labels == desired.metadata.labels
        && existing.address_type == desired.address_type
        && existing.endpoints == desired.endpoints
        && existing.ports == desired.ports
}

#[cfg(test)]
#[path = "endpointslices_tests.rs"]
mod tests;
