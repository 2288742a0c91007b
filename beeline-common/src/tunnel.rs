//! The tunnel map: a remote node's pod CIDR → that node's IP. Cilium's `cilium_tunnel_map`
//! (`tunnel_key` → `tunnel_value`, 20 bytes each). The datapath consults it when the ipcache has
//! no tunnel endpoint for a destination: the destination address masked to the per-node CIDR size
//! (`DatapathConfig::pod_cidr_prefix_len`) is the key. Exact match (hash), like Cilium's.

use crate::endpoint::{ENDPOINT_KEY_IPV4, ENDPOINT_KEY_IPV6};

pub const MAP_NAME: &str = "beeline_tunnel_map";
pub const MAX_ENTRIES: u32 = 65536;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TunnelKey {
    /// The pod CIDR's network address (network byte order).
    pub ip4: u32,
    pub ip6_rest: [u32; 3],
    pub family: u8,
    pub cluster_id: u8,
    pub pad: u16,
}

impl TunnelKey {
    pub const fn ipv4(network_be: u32) -> Self {
        TunnelKey { ip4: network_be, ip6_rest: [0; 3], family: ENDPOINT_KEY_IPV4, cluster_id: 0, pad: 0 }
    }

    /// The key of an IPv6 pod CIDR: its network address (host bits already cleared).
    pub const fn ipv6(network: [u8; 16]) -> Self {
        let (ip4, ip6_rest) = crate::split_ipv6(network);
        TunnelKey { ip4, ip6_rest, family: ENDPOINT_KEY_IPV6, cluster_id: 0, pad: 0 }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TunnelValue {
    /// The node's underlay IPv4 address (network byte order).
    pub ip4: u32,
    pub ip6_rest: [u32; 3],
    pub family: u8,
    /// Encryption key index (unused yet).
    pub key: u8,
    pub pad: u16,
}
