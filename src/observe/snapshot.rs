//! The enrichment [`Snapshot`] from cluster objects: CiliumEndpoints (pod, namespace, identity and
//! its labels, address, node), Services (frontends) and CiliumNodes (node addresses). Pure.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;

use super::flow::{KnownEndpoint, KnownService, Snapshot};
use crate::crds::{cilium_endpoint::CiliumEndpoint, cilium_node::CiliumNode};

fn protocol_number(name: Option<&str>) -> u8 {
    match name.unwrap_or("TCP") {
        "UDP" => 17,
        "SCTP" => 132,
        _ => 6,
    }
}

pub fn build(node_name: &str, endpoints: &[CiliumEndpoint], services: &[Service], nodes: &[CiliumNode]) -> Snapshot {
    let mut snap = Snapshot { node_name: node_name.to_string(), ..Default::default() };
    for cep in endpoints {
        let Some(status) = &cep.status else { continue };
        let (identity, labels) = status.identity.as_ref().map(|i| (i.id as u32, i.labels.clone())).unwrap_or_default();
        let Some(net) = &status.networking else { continue };
        for pair in &net.addressing {
            let Some(ip) = pair.ipv4.as_deref().and_then(|a| a.parse::<Ipv4Addr>().ok()) else { continue };
            snap.endpoints.insert(
                ip,
                KnownEndpoint {
                    namespace: cep.metadata.namespace.clone().unwrap_or_default(),
                    pod_name: cep.metadata.name.clone().unwrap_or_default(),
                    identity,
                    labels: labels.clone(),
                    node_name: net.node.clone().unwrap_or_default(),
                },
            );
        }
    }
    for svc in services {
        let Some(spec) = &svc.spec else { continue };
        let known = KnownService {
            namespace: svc.metadata.namespace.clone().unwrap_or_default(),
            name: svc.metadata.name.clone().unwrap_or_default(),
        };
        let mut ips: Vec<&String> = spec.cluster_ips.iter().flatten().collect();
        ips.extend(spec.cluster_ip.iter());
        ips.extend(spec.external_ips.iter().flatten());
        for ip in ips.into_iter().filter_map(|a| a.parse::<Ipv4Addr>().ok()) {
            for port in spec.ports.iter().flatten() {
                snap.services.insert((ip, port.port as u16, protocol_number(port.protocol.as_deref())), known.clone());
            }
        }
    }
    for node in nodes {
        let name = node.metadata.name.clone().unwrap_or_default();
        for addr in &node.spec.addresses {
            if let Ok(ip) = addr.ip.parse::<Ipv4Addr>() {
                snap.node_ips.insert(ip, name.clone());
            }
        }
    }
    snap
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn endpoints_services_and_nodes_are_indexed_by_address() {
        let cep: CiliumEndpoint = serde_json::from_value(json!({
            "apiVersion": "cilium.io/v2", "kind": "CiliumEndpoint",
            "metadata": {"name": "client", "namespace": "default"},
            "status": {
                "identity": {"id": 51234, "labels": ["k8s:app=client"]},
                "networking": {"addressing": [{"ipv4": "10.0.1.2"}], "node": "node-a"}
            }
        }))
        .unwrap();
        let pending: CiliumEndpoint = serde_json::from_value(json!({
            "apiVersion": "cilium.io/v2", "kind": "CiliumEndpoint",
            "metadata": {"name": "pending", "namespace": "default"}
        }))
        .unwrap();
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "dns", "namespace": "kube-system"},
            "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                     "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53}]}
        }))
        .unwrap();
        let node: CiliumNode = serde_json::from_value(json!({
            "apiVersion": "cilium.io/v2", "kind": "CiliumNode",
            "metadata": {"name": "node-b"},
            "spec": {"addresses": [{"type": "InternalIP", "ip": "192.168.0.2"}, {"type": "CiliumInternalIP", "ip": "fd00::1"}]}
        }))
        .unwrap();
        let snap = build("node-a", &[cep, pending], &[svc], &[node]);
        let client = &snap.endpoints[&"10.0.1.2".parse().unwrap()];
        assert_eq!(
            (client.namespace.as_str(), client.pod_name.as_str(), client.identity),
            ("default", "client", 51234)
        );
        assert_eq!((client.labels.clone(), client.node_name.as_str()), (vec!["k8s:app=client".to_string()], "node-a"));
        assert_eq!(snap.endpoints.len(), 1, "an endpoint without status has no address");
        let vip: Ipv4Addr = "10.96.0.10".parse().unwrap();
        assert_eq!(snap.services[&(vip, 53, 17)].name, "dns");
        assert_eq!(snap.services[&(vip, 53, 6)].namespace, "kube-system");
        assert_eq!(snap.services.len(), 2);
        assert_eq!(snap.node_ips.into_iter().collect::<Vec<_>>(), [("192.168.0.2".parse().unwrap(), "node-b".into())]);
        assert_eq!(snap.node_name, "node-a");
    }
}
