//! The remote-endpoints controller's pure core: every `CiliumEndpoint` in the cluster → an ipcache
//! `/32` per pod IPv4 address and a `/128` per pod IPv6 address
//! (`status.networking.addressing[].ipv4`/`ipv6`) with the pod's security identity
//! (`status.identity.id`) and, as tunnel endpoint, the IP of the node hosting it
//! (`status.networking.node`) — 0 for endpoints on this node, which the datapath delivers
//! locally. This is what lets a node's datapath know the identity of a remote source or
//! destination, and which node to tunnel to. The tunnel endpoint is an IPv4 field (the outer
//! header of the tunnel is IPv4 for both inner families); a node published by its IPv6 address
//! (an IPv6-only cluster, which runs native routing) gives rows without one.
//!
//! Endpoints without an identity yet or without addresses are skipped (they get a row when the
//! agent hosting them publishes both). An address published by two endpoints (a pod deleted and a
//! new one reusing its IP before the old object is gone) is a conflict: the endpoint first by
//! `namespace/name` keeps it and the other is reported.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use beeline_common::ipcache::{IpcacheKey, RemoteEndpointInfo};
use ipnet::IpNet;

use crate::crds::CiliumEndpoint;
use crate::datapath::tables::{be, ipcache_key};

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
pub fn desired(endpoints: &[CiliumEndpoint], local_node_ips: &BTreeSet<IpAddr>) -> DesiredEndpoints {
    let mut out = DesiredEndpoints::default();
    let mut sorted: Vec<&CiliumEndpoint> = endpoints.iter().collect();
    sorted.sort_by_key(|ep| key_of(ep));
    let mut holder: BTreeMap<IpAddr, String> = BTreeMap::new();
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
        let node_ip = match networking.node.as_deref().map(str::parse::<IpAddr>) {
            Some(Ok(ip)) => ip,
            _ => {
                out.notes.push(format!("CiliumEndpoint {name} has no node address; skipped"));
                continue;
            }
        };
        let tunnel_endpoint = match node_ip {
            _ if local_node_ips.contains(&node_ip) => 0,
            IpAddr::V4(v4) => be(v4),
            IpAddr::V6(_) => 0,
        };
        let addresses = networking.addressing.iter().flat_map(|pair| {
            let v4 = pair.ipv4.as_deref().map(|text| (text, text.parse::<IpAddr>().ok().filter(IpAddr::is_ipv4)));
            let v6 = pair.ipv6.as_deref().map(|text| (text, text.parse::<IpAddr>().ok().filter(IpAddr::is_ipv6)));
            v4.into_iter().chain(v6)
        });
        for (text, parsed) in addresses {
            let Some(ip) = parsed else {
                out.notes.push(format!("CiliumEndpoint {name}: {text:?} is not an address of its family"));
                continue;
            };
            if let Some(first) = holder.get(&ip) {
                out.notes.push(format!("CiliumEndpoint {name}: {ip} is also {first}'s; {first} keeps it"));
                continue;
            }
            holder.insert(ip, name.clone());
            out.ipcache.insert(
                ipcache_key(IpNet::from(ip)),
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
    use crate::datapath::tables::{from_be, ipcache_prefix};

    fn ep(ns: &str, name: &str, ip: &str, node: &str, identity: i64) -> CiliumEndpoint {
        ep_pair(ns, name, (Some(ip), None), node, identity)
    }

    fn ep_pair(
        ns: &str,
        name: &str,
        (v4, v6): (Option<&str>, Option<&str>),
        node: &str,
        identity: i64,
    ) -> CiliumEndpoint {
        CiliumEndpoint::new(
            ns,
            name,
            EndpointStatus {
                identity: (identity != 0).then(|| EndpointIdentity { id: identity, labels: vec![] }),
                networking: Some(EndpointNetworking {
                    addressing: vec![AddressPair { ipv4: v4.map(Into::into), ipv6: v6.map(Into::into) }],
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
                format!("{} id={} tun={tun}", ipcache_prefix(k), v.sec_identity)
            })
            .collect();
        lines.sort();
        lines
    }

    #[test]
    fn endpoint_rows_per_cluster_state() {
        let local: BTreeSet<IpAddr> = ["192.168.0.1".parse().unwrap(), "fc00::1".parse().unwrap()].into();
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
            (
                "dual stack: both families tunnel to the node's IPv4 address",
                vec![ep_pair("default", "web", (Some("10.0.1.7"), Some("fd00:1::7")), "192.168.0.2", 31383)],
                vec!["10.0.1.7/32 id=31383 tun=192.168.0.2", "fd00:1::7/128 id=31383 tun=192.168.0.2"],
                0,
            ),
            (
                "IPv6 only: remote rows without a tunnel endpoint, local ones by the node's IPv6 address",
                vec![
                    ep_pair("default", "web", (None, Some("fd00:1::7")), "fc00::2", 31383),
                    ep_pair("default", "db", (None, Some("fd00:0::9")), "fc00::1", 4242),
                ],
                vec!["fd00:1::7/128 id=31383 tun=-", "fd00::9/128 id=4242 tun=-"],
                0,
            ),
            (
                "an IPv4 address in the ipv6 field",
                vec![ep_pair("default", "odd", (None, Some("10.0.1.9")), "192.168.0.2", 300)],
                vec![],
                1,
            ),
        ];
        for (name, endpoints, want, notes) in cases {
            let d = desired(&endpoints, &local);
            assert_eq!(lines(&d), want, "{name}");
            assert_eq!(d.notes.len(), notes, "{name}: {:?}", d.notes);
        }
    }
}
