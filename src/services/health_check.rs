//! The health-check node port of `externalTrafficPolicy: Local` Services (Cilium's and kube-proxy's
//! `healthCheckNodePort` server), pure part: Services + EndpointSlices → what each port answers.
//!
//! An external load balancer probes every node on the Service's `healthCheckNodePort` and only
//! sends traffic to nodes that answer 200 — the nodes with a local backend, since eTP=Local drops
//! on the others. The answer carries the node's local endpoint count in the shape Cilium and
//! kube-proxy use: `{"service":{"namespace":..,"name":..},"localEndpoints":N}`; with none, 503.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Serialize;

use super::frontends::slices_by_service;
use super::model::{BackendState, ObjectName};

/// What one health-check port answers on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub service: ObjectName,
    /// Ready endpoints of the Service on this node (distinct addresses).
    pub local_endpoints: usize,
}

/// The JSON body, field names as Cilium's and kube-proxy's.
#[derive(Debug, Serialize)]
struct Body<'a> {
    service: BodyService<'a>,
    #[serde(rename = "localEndpoints")]
    local_endpoints: usize,
}

#[derive(Debug, Serialize)]
struct BodyService<'a> {
    namespace: &'a str,
    name: &'a str,
}

impl HealthCheck {
    /// HTTP status and JSON body: 200 with local endpoints, 503 without.
    pub fn response(&self) -> (u16, String) {
        let body = Body {
            service: BodyService { namespace: &self.service.namespace, name: &self.service.name },
            local_endpoints: self.local_endpoints,
        };
        let status = if self.local_endpoints > 0 { 200 } else { 503 };
        (status, serde_json::to_string(&body).expect("plain struct serializes"))
    }
}

/// Health-check node port → answer, for every Service that has one: `type: LoadBalancer` with
/// `externalTrafficPolicy: Local` and a non-zero `healthCheckNodePort` (the API server allocates
/// it). Two Services claiming one port: the first by namespace/name keeps it.
pub fn health_checks(services: &[Service], slices: &[EndpointSlice], node_name: &str) -> BTreeMap<u16, HealthCheck> {
    let by_service = slices_by_service(slices);
    let mut out = BTreeMap::new();
    let mut sorted: Vec<&Service> = services.iter().collect();
    sorted.sort_by(|a, b| (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name)));
    for svc in sorted {
        let Some(spec) = svc.spec.as_ref() else { continue };
        let port = spec.health_check_node_port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0);
        let local_policy = spec.external_traffic_policy.as_deref() == Some("Local");
        let (Some(port), true, Some("LoadBalancer")) = (port, local_policy, spec.type_.as_deref()) else { continue };
        let service = ObjectName {
            namespace: svc.metadata.namespace.clone().unwrap_or_default(),
            name: svc.metadata.name.clone().unwrap_or_default(),
        };
        let own = by_service.get(&service).map(Vec::as_slice).unwrap_or(&[]);
        let local_endpoints = local_ready_addresses(own, node_name).len();
        out.entry(port).or_insert(HealthCheck { service, local_endpoints });
    }
    out
}

fn local_ready_addresses(slices: &[&EndpointSlice], node_name: &str) -> BTreeSet<Ipv4Addr> {
    let mut out = BTreeSet::new();
    for slice in slices.iter().filter(|s| s.address_type == "IPv4") {
        for ep in slice.endpoints.iter().filter(|ep| ep.node_name.as_deref() == Some(node_name)) {
            let c = ep.conditions.as_ref();
            let state = BackendState::from_conditions(
                c.and_then(|c| c.ready),
                c.and_then(|c| c.serving),
                c.and_then(|c| c.terminating),
            );
            if state == BackendState::Active {
                out.extend(ep.addresses.iter().filter_map(|a| a.parse::<Ipv4Addr>().ok()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn service(name: &str, ty: &str, etp: &str, hc_port: Option<u16>) -> Service {
        let mut spec = json!({"type": ty, "externalTrafficPolicy": etp, "ports": [{"port": 80}]});
        if let Some(p) = hc_port {
            spec["healthCheckNodePort"] = json!(p);
        }
        serde_json::from_value(json!({"metadata": {"namespace": "default", "name": name}, "spec": spec})).unwrap()
    }

    /// (address, node, ready)
    fn slice(service: &str, eps: &[(&str, &str, bool)]) -> EndpointSlice {
        let endpoints: Vec<Value> =
            eps.iter().map(|(a, n, r)| json!({"addresses": [a], "nodeName": n, "conditions": {"ready": r}})).collect();
        serde_json::from_value(json!({
            "metadata": {"namespace": "default", "name": format!("{service}-1"),
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "endpoints": endpoints,
        }))
        .unwrap()
    }

    fn answers(services: &[Service], slices: &[EndpointSlice], node: &str) -> Vec<(u16, String, usize)> {
        health_checks(services, slices, node)
            .into_iter()
            .map(|(p, hc)| (p, hc.service.to_string(), hc.local_endpoints))
            .collect()
    }

    #[test]
    fn only_load_balancers_with_local_policy_and_a_port_get_a_health_check() {
        let services = [
            service("lb-local", "LoadBalancer", "Local", Some(31000)),
            service("lb-cluster", "LoadBalancer", "Cluster", Some(31001)),
            service("np-local", "NodePort", "Local", Some(31002)),
            service("lb-no-port", "LoadBalancer", "Local", None),
        ];
        assert_eq!(answers(&services, &[], "a"), vec![(31000, "default/lb-local".to_string(), 0)]);
    }

    #[test]
    fn counts_ready_endpoints_on_this_node_only() {
        let services = [service("web", "LoadBalancer", "Local", Some(31000))];
        let slices = [
            slice("web", &[("10.0.1.1", "a", true), ("10.0.1.2", "a", false), ("10.0.2.1", "b", true)]),
            // The same address in a second slice counts once; another service's endpoints not at all.
            slice("web", &[("10.0.1.1", "a", true), ("10.0.1.3", "a", true)]),
            slice("other", &[("10.0.1.9", "a", true)]),
        ];
        let cases = [("a", 2), ("b", 1), ("c", 0)];
        for (node, want) in cases {
            assert_eq!(answers(&services, &slices, node)[0].2, want, "node {node}");
        }
    }

    #[test]
    fn the_first_service_by_name_keeps_a_contested_port() {
        let services = [
            service("zeta", "LoadBalancer", "Local", Some(31000)),
            service("alpha", "LoadBalancer", "Local", Some(31000)),
        ];
        assert_eq!(answers(&services, &[], "a"), vec![(31000, "default/alpha".to_string(), 0)]);
    }

    #[test]
    fn responses_are_200_with_endpoints_and_503_without_in_ciliums_shape() {
        let service = ObjectName { namespace: "prod".into(), name: "web".into() };
        let cases = [(2, 200), (0, 503)];
        for (n, status) in cases {
            let (got, body) = HealthCheck { service: service.clone(), local_endpoints: n }.response();
            assert_eq!(got, status);
            let body: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(body, json!({"service": {"namespace": "prod", "name": "web"}, "localEndpoints": n}));
        }
    }
}
