//! The remote-nodes controller's pure core: every other node's `CiliumNode` → the rows and routes
//! that make its pods and addresses reachable from this node.
//!
//! Per remote node, with node IP `N` (its `InternalIP`, else `ExternalIP`), as Cilium's node
//! manager does it:
//! - ipcache `N/32` (and every other InternalIP/ExternalIP) → identity remote-node (6), no tunnel
//!   endpoint: the node itself is reached over the underlay;
//! - ipcache `CiliumInternalIP/32` (its `cilium_host` router IP) → remote-node, tunnel endpoint `N`,
//!   and its health IP → health (4), tunnel endpoint `N`: they live inside the node's pod CIDR;
//! - tunnel mode: every pod CIDR `C` → tunnel map `C → N`, ipcache `C` → world (2) with tunnel
//!   endpoint `N` (the pod CIDR as a whole carries no identity; the pods' own `/32`s, written by
//!   the remote-endpoints controller, win by longest prefix), and a kernel route to `C` via
//!   `cilium_host` with the pod MTU;
//! - native routing with `auto-direct-node-routes`: a route to `C` via `N`; pod CIDRs get no tunnel
//!   or ipcache rows (the kernel routes them).
//!
//! Two nodes claiming one pod CIDR (or address) is a conflict: the node first by name keeps it and
//! the other is reported in [`DesiredRemote::notes`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use beeline_common::endpoint::ENDPOINT_KEY_IPV4;
use beeline_common::ipcache::{IpcacheKey, RemoteEndpointInfo, IDENTITY_HEALTH, IDENTITY_REMOTE_NODE, IDENTITY_WORLD};
use beeline_common::tunnel::{TunnelKey, TunnelValue};
use ipnet::Ipv4Net;

use crate::config::{Config, RoutingMode};
use crate::crds::cilium_node::{ADDRESS_CILIUM_INTERNAL_IP, ADDRESS_EXTERNAL_IP, ADDRESS_INTERNAL_IP};
use crate::crds::CiliumNode;
use crate::datapath::devices::{self, TunnelProtocol};
use crate::datapath::routes::{RouteSpec, RouteVia};
use crate::datapath::tables::be;

/// The underlay MTU assumed when `mtu` is 0 (auto): Ethernet's.
pub const DEFAULT_UNDERLAY_MTU: u32 = 1500;

/// What the computation needs from the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteNodesConfig {
    /// `None` in native-routing mode.
    pub tunnel: Option<TunnelProtocol>,
    pub auto_direct_node_routes: bool,
    /// Native routing: pod CIDRs outside it are reported (they will be masqueraded).
    pub native_routing_cidr: Option<Ipv4Net>,
    /// MTU of the routes via `cilium_host` (the pod MTU).
    pub pod_mtu: u32,
}

impl RemoteNodesConfig {
    pub fn from_config(config: &Config) -> Self {
        let tunnel = match config.routing_mode {
            RoutingMode::Native => None,
            RoutingMode::Tunnel => Some(match config.tunnel_protocol {
                crate::config::TunnelProtocol::Vxlan => TunnelProtocol::Vxlan,
                crate::config::TunnelProtocol::Geneve => TunnelProtocol::Geneve,
            }),
        };
        let underlay = if config.mtu == 0 { DEFAULT_UNDERLAY_MTU } else { config.mtu };
        Self {
            tunnel,
            auto_direct_node_routes: config.auto_direct_node_routes,
            native_routing_cidr: config.ipv4_native_routing_cidr,
            pod_mtu: devices::pod_mtu(underlay, tunnel),
        }
    }
}

/// The rows and routes for every remote node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredRemote {
    pub tunnel: BTreeMap<TunnelKey, TunnelValue>,
    pub ipcache: BTreeMap<IpcacheKey, RemoteEndpointInfo>,
    pub routes: BTreeSet<RouteSpec>,
    /// Things a user should know (malformed addresses, conflicts, missing router IP).
    pub notes: Vec<String>,
}

/// The IPv4 addresses and pod CIDRs of one CiliumNode, parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct NodeAddrs {
    node_ip: Option<Ipv4Addr>,
    /// InternalIP and ExternalIP addresses (the node itself).
    host_ips: Vec<Ipv4Addr>,
    router_ip: Option<Ipv4Addr>,
    health_ip: Option<Ipv4Addr>,
    pod_cidrs: Vec<Ipv4Net>,
}

fn parse(node: &CiliumNode, notes: &mut Vec<String>) -> NodeAddrs {
    let name = node.metadata.name.as_deref().unwrap_or("?");
    let mut addrs = NodeAddrs::default();
    let mut internal = None;
    let mut external = None;
    for a in &node.spec.addresses {
        // IPv6 addresses are valid but not ours to program yet (the dual-stack issue).
        let Ok(ip) = a.ip.parse::<std::net::IpAddr>() else {
            notes.push(format!("CiliumNode {name}: address {:?} is not an IP", a.ip));
            continue;
        };
        let std::net::IpAddr::V4(ip) = ip else { continue };
        match a.address_type.as_str() {
            ADDRESS_INTERNAL_IP => {
                internal.get_or_insert(ip);
                addrs.host_ips.push(ip);
            }
            ADDRESS_EXTERNAL_IP => {
                external.get_or_insert(ip);
                addrs.host_ips.push(ip);
            }
            ADDRESS_CILIUM_INTERNAL_IP => {
                addrs.router_ip.get_or_insert(ip);
            }
            _ => {}
        }
    }
    addrs.node_ip = internal.or(external);
    addrs.health_ip = node.spec.health.as_ref().and_then(|h| h.ipv4.as_deref()).and_then(|s| s.parse().ok());
    // Cluster-pool/kubernetes list `podCIDRs`; multi-pool lists every pool's CIDRs under
    // `pools.allocated` (a node may hold several per pool): all of them are the node's pods.
    let pools = node.spec.ipam.iter().flat_map(|i| i.pools.iter()).flat_map(|p| &p.allocated);
    let pool_cidrs = pools.flat_map(|a| &a.cidrs);
    for cidr in node.spec.ipam.iter().flat_map(|i| &i.pod_cidrs).chain(pool_cidrs) {
        match cidr.parse::<ipnet::IpNet>() {
            Ok(ipnet::IpNet::V4(net)) if addrs.pod_cidrs.contains(&net.trunc()) => {}
            Ok(ipnet::IpNet::V4(net)) => addrs.pod_cidrs.push(net.trunc()),
            Ok(ipnet::IpNet::V6(_)) => {}
            Err(_) => notes.push(format!("CiliumNode {name}: pod CIDR {cidr:?} is not a CIDR")),
        }
    }
    addrs
}

fn ipcache_row(prefix: Ipv4Net, identity: u32, tunnel: Option<Ipv4Addr>) -> (IpcacheKey, RemoteEndpointInfo) {
    (
        IpcacheKey::ipv4(be(prefix.addr()), u32::from(prefix.prefix_len())),
        RemoteEndpointInfo { sec_identity: identity, tunnel_endpoint: tunnel.map_or(0, be), ..Default::default() },
    )
}

fn host(ip: Ipv4Addr) -> Ipv4Net {
    Ipv4Net::new(ip, 32).expect("/32 is valid")
}

/// The router IP of this node (its `cilium_host` address), from its own CiliumNode.
pub fn own_router_ip(nodes: &[CiliumNode], own_node: &str) -> Option<Ipv4Addr> {
    let own = nodes.iter().find(|n| n.metadata.name.as_deref() == Some(own_node))?;
    parse(own, &mut Vec::new()).router_ip
}

/// Everything this node needs to reach the other nodes in `nodes` (its own CiliumNode is only read
/// for its router IP).
pub fn desired(nodes: &[CiliumNode], own_node: &str, cfg: &RemoteNodesConfig) -> DesiredRemote {
    let mut out = DesiredRemote::default();
    let router_ip = own_router_ip(nodes, own_node);
    let mut remote: Vec<&CiliumNode> =
        nodes.iter().filter(|n| n.metadata.name.as_deref().is_some_and(|name| name != own_node)).collect();
    remote.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    // Which node claimed a key first (for conflict notes).
    let mut ipcache_owner: BTreeMap<IpcacheKey, String> = BTreeMap::new();
    let mut claim = |out: &mut DesiredRemote, name: &str, (key, value): (IpcacheKey, RemoteEndpointInfo)| {
        if let Some(first) = ipcache_owner.get(&key) {
            out.notes.push(format!("CiliumNode {name}: {key:?} is already claimed by {first}; ignored"));
            return;
        }
        ipcache_owner.insert(key, name.to_string());
        out.ipcache.insert(key, value);
    };

    for node in remote {
        let name = node.metadata.name.clone().unwrap_or_default();
        let addrs = parse(node, &mut out.notes);
        let Some(node_ip) = addrs.node_ip else {
            out.notes.push(format!("CiliumNode {name} has no IPv4 InternalIP or ExternalIP yet; skipped"));
            continue;
        };
        for ip in &addrs.host_ips {
            claim(&mut out, &name, ipcache_row(host(*ip), IDENTITY_REMOTE_NODE, None));
        }
        if let Some(ip) = addrs.router_ip {
            claim(&mut out, &name, ipcache_row(host(ip), IDENTITY_REMOTE_NODE, Some(node_ip)));
        }
        if let Some(ip) = addrs.health_ip {
            claim(&mut out, &name, ipcache_row(host(ip), IDENTITY_HEALTH, Some(node_ip)));
        }
        for cidr in &addrs.pod_cidrs {
            match cfg.tunnel {
                Some(_) => {
                    let key = TunnelKey::ipv4(be(cidr.network()));
                    if out.tunnel.contains_key(&key) {
                        out.notes
                            .push(format!("CiliumNode {name}: pod CIDR {cidr} is already another node's; ignored"));
                        continue;
                    }
                    let value = TunnelValue { ip4: be(node_ip), family: ENDPOINT_KEY_IPV4, ..Default::default() };
                    out.tunnel.insert(key, value);
                    claim(&mut out, &name, ipcache_row(*cidr, IDENTITY_WORLD, Some(node_ip)));
                    match router_ip {
                        Some(router_ip) => {
                            out.routes.insert(RouteSpec {
                                prefix: *cidr,
                                via: RouteVia::CiliumHost { router_ip, mtu: cfg.pod_mtu },
                            });
                        }
                        None => out.notes.push(format!(
                            "no route to {cidr} (node {name}) yet: this node's CiliumNode has no CiliumInternalIP"
                        )),
                    }
                }
                None => {
                    if cfg.native_routing_cidr.is_some_and(|n| !n.contains(cidr)) {
                        out.notes.push(format!(
                            "CiliumNode {name}: pod CIDR {cidr} is outside ipv4-native-routing-cidr {}",
                            cfg.native_routing_cidr.expect("checked")
                        ));
                    }
                    if cfg.auto_direct_node_routes {
                        if out.routes.iter().any(|r| r.prefix == *cidr) {
                            out.notes
                                .push(format!("CiliumNode {name}: pod CIDR {cidr} is already another node's; ignored"));
                            continue;
                        }
                        out.routes.insert(RouteSpec { prefix: *cidr, via: RouteVia::Node { node_ip } });
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
#[path = "remote_nodes_tests.rs"]
mod tests;
