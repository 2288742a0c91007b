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
//! Both families: IPv6 addresses get `/128` rows, IPv6 pod CIDRs the same rows and routes as IPv4
//! ones — tunnelled to the node's IPv4 underlay address (dual stack over VXLAN keeps an IPv4 outer
//! header; a node without one gets no tunnel rows), routed natively via its IPv6 underlay address.
//!
//! Two nodes claiming one pod CIDR (or address) is a conflict: the node first by name keeps it and
//! the other is reported in [`DesiredRemote::notes`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use beeline_common::ipcache::{IpcacheKey, RemoteEndpointInfo, IDENTITY_HEALTH, IDENTITY_REMOTE_NODE, IDENTITY_WORLD};
use beeline_common::tunnel::{TunnelKey, TunnelValue};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::config::{Config, RoutingMode};
use crate::crds::cilium_node::{ADDRESS_CILIUM_INTERNAL_IP, ADDRESS_EXTERNAL_IP, ADDRESS_INTERNAL_IP};
use crate::crds::CiliumNode;
use crate::datapath::devices::{self, PerFamily, TunnelProtocol};
use crate::datapath::routes::{RouteSpec, RouteVia};
use crate::datapath::tables::{be, ipcache_key, tunnel_key, tunnel_value};

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
    /// The same for IPv6 pod CIDRs (`ipv6-native-routing-cidr`).
    pub native_routing_cidr6: Option<Ipv6Net>,
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
            native_routing_cidr6: config.ipv6_native_routing_cidr,
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

/// The addresses and pod CIDRs of one CiliumNode, parsed (both families).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct NodeAddrs {
    /// The node's underlay address per family: its `InternalIP`, else `ExternalIP`.
    node_ip: PerFamily,
    /// InternalIP and ExternalIP addresses (the node itself).
    host_ips: Vec<IpAddr>,
    /// `CiliumInternalIP`: the router addresses on its `cilium_host`.
    router_ip: PerFamily,
    health_ips: Vec<IpAddr>,
    pod_cidrs: Vec<IpNet>,
}

fn parse(node: &CiliumNode, notes: &mut Vec<String>) -> NodeAddrs {
    let name = node.metadata.name.as_deref().unwrap_or("?");
    let mut addrs = NodeAddrs::default();
    let mut internal = PerFamily::default();
    let mut external = PerFamily::default();
    for a in &node.spec.addresses {
        let Ok(ip) = a.ip.parse::<IpAddr>() else {
            notes.push(format!("CiliumNode {name}: address {:?} is not an IP", a.ip));
            continue;
        };
        match a.address_type.as_str() {
            ADDRESS_INTERNAL_IP => {
                internal.offer(ip);
                addrs.host_ips.push(ip);
            }
            ADDRESS_EXTERNAL_IP => {
                external.offer(ip);
                addrs.host_ips.push(ip);
            }
            ADDRESS_CILIUM_INTERNAL_IP => addrs.router_ip.offer(ip),
            _ => {}
        }
    }
    addrs.node_ip = internal.or(external);
    let health = node.spec.health.as_ref();
    let health_v4 = health.and_then(|h| h.ipv4.as_deref()).and_then(|s| s.parse::<Ipv4Addr>().ok()).map(IpAddr::V4);
    let health_v6 = health.and_then(|h| h.ipv6.as_deref()).and_then(|s| s.parse::<Ipv6Addr>().ok()).map(IpAddr::V6);
    addrs.health_ips = health_v4.into_iter().chain(health_v6).collect();
    // Cluster-pool/kubernetes list `podCIDRs`; multi-pool lists every pool's CIDRs under
    // `pools.allocated` (a node may hold several per pool): all of them are the node's pods.
    let pools = node.spec.ipam.iter().flat_map(|i| i.pools.iter()).flat_map(|p| &p.allocated);
    let pool_cidrs = pools.flat_map(|a| &a.cidrs);
    for cidr in node.spec.ipam.iter().flat_map(|i| &i.pod_cidrs).chain(pool_cidrs) {
        match cidr.parse::<IpNet>() {
            Ok(net) if addrs.pod_cidrs.contains(&net.trunc()) => {}
            Ok(net) => addrs.pod_cidrs.push(net.trunc()),
            Err(_) => notes.push(format!("CiliumNode {name}: pod CIDR {cidr:?} is not a CIDR")),
        }
    }
    addrs
}

fn ipcache_row(prefix: IpNet, identity: u32, tunnel: Option<Ipv4Addr>) -> (IpcacheKey, RemoteEndpointInfo) {
    (
        ipcache_key(prefix),
        RemoteEndpointInfo { sec_identity: identity, tunnel_endpoint: tunnel.map_or(0, be), ..Default::default() },
    )
}

/// The router IPs of this node (its `cilium_host` addresses), from its own CiliumNode.
pub fn own_router_ips(nodes: &[CiliumNode], own_node: &str) -> PerFamily {
    let own = nodes.iter().find(|n| n.metadata.name.as_deref() == Some(own_node));
    own.map(|own| parse(own, &mut Vec::new()).router_ip).unwrap_or_default()
}

/// Everything this node needs to reach the other nodes in `nodes` (its own CiliumNode is only read
/// for its router IPs). Both families: IPv6 pod CIDRs tunnel to the node's IPv4 underlay address
/// like IPv4 ones (the outer header stays IPv4), and route natively via its IPv6 address.
pub fn desired(nodes: &[CiliumNode], own_node: &str, cfg: &RemoteNodesConfig) -> DesiredRemote {
    let mut out = DesiredRemote::default();
    let router_ips = own_router_ips(nodes, own_node);
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
        if addrs.node_ip == PerFamily::default() {
            out.notes.push(format!("CiliumNode {name} has no InternalIP or ExternalIP yet; skipped"));
            continue;
        }
        // The tunnel endpoint: the node's IPv4 underlay address (tunnel values are IPv4).
        let tunnel_ip = addrs.node_ip.v4;
        for ip in &addrs.host_ips {
            claim(&mut out, &name, ipcache_row(IpNet::from(*ip), IDENTITY_REMOTE_NODE, None));
        }
        for ip in addrs.router_ip.addrs() {
            claim(&mut out, &name, ipcache_row(IpNet::from(ip), IDENTITY_REMOTE_NODE, tunnel_ip));
        }
        for ip in &addrs.health_ips {
            claim(&mut out, &name, ipcache_row(IpNet::from(*ip), IDENTITY_HEALTH, tunnel_ip));
        }
        for cidr in &addrs.pod_cidrs {
            match cfg.tunnel {
                Some(_) => {
                    let Some(node_ip) = tunnel_ip else {
                        out.notes.push(format!(
                            "CiliumNode {name}: no IPv4 underlay address to tunnel pod CIDR {cidr} to; skipped"
                        ));
                        continue;
                    };
                    let key = tunnel_key(*cidr);
                    if out.tunnel.contains_key(&key) {
                        out.notes
                            .push(format!("CiliumNode {name}: pod CIDR {cidr} is already another node's; ignored"));
                        continue;
                    }
                    out.tunnel.insert(key, tunnel_value(node_ip));
                    claim(&mut out, &name, ipcache_row(*cidr, IDENTITY_WORLD, Some(node_ip)));
                    match router_ips.of(cidr.addr()) {
                        Some(router_ip) => {
                            out.routes.insert(RouteSpec {
                                prefix: *cidr,
                                via: RouteVia::CiliumHost { router_ip, mtu: cfg.pod_mtu },
                            });
                        }
                        None => out.notes.push(format!(
                            "no route to {cidr} (node {name}) yet: this node's CiliumNode has no CiliumInternalIP of that family"
                        )),
                    }
                }
                None => {
                    let native = match cidr {
                        IpNet::V4(v4) => cfg.native_routing_cidr.map(|n| (n.contains(v4), n.to_string())),
                        IpNet::V6(v6) => cfg.native_routing_cidr6.map(|n| (n.contains(v6), n.to_string())),
                    };
                    if let Some((false, native)) = native {
                        out.notes.push(format!(
                            "CiliumNode {name}: pod CIDR {cidr} is outside the native-routing CIDR {native}"
                        ));
                    }
                    if cfg.auto_direct_node_routes {
                        if out.routes.iter().any(|r| r.prefix == *cidr) {
                            out.notes
                                .push(format!("CiliumNode {name}: pod CIDR {cidr} is already another node's; ignored"));
                            continue;
                        }
                        let Some(node_ip) = addrs.node_ip.of(cidr.addr()) else {
                            out.notes.push(format!(
                                "CiliumNode {name}: no node address of {cidr}'s family to route it via; skipped"
                            ));
                            continue;
                        };
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
