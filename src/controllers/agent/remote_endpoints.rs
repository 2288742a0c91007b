//! The remote-endpoints controller's pure core: every `CiliumEndpoint` in the cluster → an ipcache
//! `/32` per pod IPv4 address with the pod's security identity (`status.identity.id`) and, as tunnel
//! endpoint, the IP of the node hosting it (`status.networking.node`) — 0 for endpoints on this
//! node, which the datapath delivers locally. This is what lets a node's datapath know the
//! identity of a remote source or destination, and which node to tunnel to.
//!
//! Endpoints without an identity yet or without addresses are skipped (they get a row when the
//! agent hosting them publishes both). An address published by two endpoints (a pod deleted and a
//! new one reusing its IP before the old object is gone) is a conflict: the endpoint first by
//! `namespace/name` keeps it and the other is reported.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use beeline_common::ipcache::{IpcacheKey, RemoteEndpointInfo};

use crate::crds::CiliumEndpoint;
use crate::datapath::tables::be;

/// The ipcache rows of every endpoint, and notes about those skipped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredEndpoints {
    pub ipcache: BTreeMap<IpcacheKey, RemoteEndpointInfo>,
    pub notes: Vec<String>,
}

fn key_of(ep: &CiliumEndpoint) -> String {
    format!("{}/{}", ep.metadata.namespace.as_deref().unwrap_or(""), ep.metadata.name.as_deref().unwrap_or(""))
}

/// `local_node_ips`: this node's addresses; endpoints hosted at one of them are local.
pub fn desired(endpoints: &[CiliumEndpoint], local_node_ips: &BTreeSet<Ipv4Addr>) -> DesiredEndpoints {
    let mut out = DesiredEndpoints::default();
    let mut sorted: Vec<&CiliumEndpoint> = endpoints.iter().collect();
    sorted.sort_by_key(|ep| key_of(ep));
    let mut holder: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    for ep in sorted {
        let name = key_of(ep);
        let Some(status) = &ep.status else { continue };
        let identity = match status.identity.as_ref().map(|i| i.id) {
            Some(id) if id > 0 && id <= i64::from(u32::MAX) => id as u32,
            _ => {
                out.notes.push(format!("CiliumEndpoint {name} has no identity yet; skipped"));
                continue;
            }
        };
        let Some(networking) = &status.networking else { continue };
        let node_ip = match networking.node.as_deref().map(str::parse::<Ipv4Addr>) {
            Some(Ok(ip)) => ip,
            // An IPv6 node address or none: no tunnel endpoint we could use.
            _ => {
                out.notes.push(format!("CiliumEndpoint {name} has no IPv4 node address; skipped"));
                continue;
            }
        };
        let tunnel_endpoint = if local_node_ips.contains(&node_ip) { 0 } else { be(node_ip) };
        for pair in &networking.addressing {
            let Some(text) = pair.ipv4.as_deref() else { continue };
            let Ok(ip) = text.parse::<Ipv4Addr>() else {
                out.notes.push(format!("CiliumEndpoint {name}: {text:?} is not an IPv4 address"));
                continue;
            };
            if let Some(first) = holder.get(&ip) {
                out.notes.push(format!("CiliumEndpoint {name}: {ip} is also {first}'s; {first} keeps it"));
                continue;
            }
            holder.insert(ip, name.clone());
            out.ipcache.insert(
                IpcacheKey::ipv4(be(ip), 32),
                RemoteEndpointInfo { sec_identity: identity, tunnel_endpoint, ..Default::default() },
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crds::cilium_endpoint::{AddressPair, EndpointIdentity, EndpointNetworking, EndpointStatus};
    use crate::datapath::tables::from_be;

    fn ep(ns: &str, name: &str, ip: &str, node: &str, identity: i64) -> CiliumEndpoint {
        CiliumEndpoint::new(
            ns,
            name,
            EndpointStatus {
                identity: (identity != 0).then(|| EndpointIdentity { id: identity, labels: vec![] }),
                networking: Some(EndpointNetworking {
                    addressing: vec![AddressPair { ipv4: Some(ip.into()), ipv6: Some("fd00::5".into()) }],
                    node: Some(node.into()),
                }),
                ..Default::default()
            },
        )
    }

    fn lines(d: &DesiredEndpoints) -> Vec<String> {
        let mut lines: Vec<String> = d
            .ipcache
            .iter()
            .map(|(k, v)| {
                let tun = if v.tunnel_endpoint == 0 { "-".to_string() } else { from_be(v.tunnel_endpoint).to_string() };
                format!("{}/{} id={} tun={tun}", from_be(k.data.ip4), k.prefixlen - 32, v.sec_identity)
            })
            .collect();
        lines.sort();
        lines
    }

    #[test]
    fn endpoint_rows_per_cluster_state() {
        let local: BTreeSet<Ipv4Addr> = ["192.168.0.1".parse().unwrap()].into();
        type Case = (&'static str, Vec<CiliumEndpoint>, Vec<&'static str>, usize);
        let cases: Vec<Case> = vec![
            ("nothing", vec![], vec![], 0),
            (
                "remote and local endpoints",
                vec![
                    ep("default", "web", "10.0.1.7", "192.168.0.2", 31383),
                    ep("default", "db", "10.0.0.9", "192.168.0.1", 4242),
                ],
                vec!["10.0.0.9/32 id=4242 tun=-", "10.0.1.7/32 id=31383 tun=192.168.0.2"],
                0,
            ),
            ("no identity yet", vec![ep("default", "new", "10.0.1.8", "192.168.0.2", 0)], vec![], 1),
            ("no node address", vec![ep("default", "odd", "10.0.1.8", "", 300)], vec![], 1),
            (
                "an IP published twice: the first by namespace/name keeps it",
                vec![ep("b", "new", "10.0.1.7", "192.168.0.3", 500), ep("a", "old", "10.0.1.7", "192.168.0.2", 400)],
                vec!["10.0.1.7/32 id=400 tun=192.168.0.2"],
                1,
            ),
            ("malformed address", vec![ep("default", "bad", "10.0.1", "192.168.0.2", 300)], vec![], 1),
        ];
        for (name, endpoints, want, notes) in cases {
            let d = desired(&endpoints, &local);
            assert_eq!(lines(&d), want, "{name}");
            assert_eq!(d.notes.len(), notes, "{name}: {:?}", d.notes);
        }
    }
}
