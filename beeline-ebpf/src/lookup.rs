//! Map lookups by address: local endpoints, the ipcache, the tunnel map, the config.

use aya_ebpf::maps::lpm_trie::Key;
use beeline_common::{
    datapath::DatapathConfig,
    endpoint::{EndpointInfo, EndpointKey},
    ipcache::{IpcacheLpmData, RemoteEndpointInfo, IDENTITY_WORLD, STATIC_PREFIX_BITS},
    mask_ipv6,
    tunnel::{TunnelKey, TunnelValue},
};

use crate::maps::{CONFIG, ENDPOINTS, IPCACHE, TUNNEL_MAP};

/// The local endpoint with IPv4 address `ip_be` (network byte order).
#[inline(always)]
pub fn endpoint(ip_be: u32) -> Option<EndpointInfo> {
    // SAFETY: the value is copied out before anything can delete it.
    unsafe { ENDPOINTS.get(EndpointKey::ipv4(ip_be)).copied() }
}

/// Longest-prefix match of `ip_be` in the ipcache.
#[inline(always)]
pub fn ipcache(ip_be: u32) -> Option<RemoteEndpointInfo> {
    let key = Key::new(STATIC_PREFIX_BITS + 32, IpcacheLpmData::ipv4(ip_be, 32));
    IPCACHE.get(&key).copied()
}

/// The security identity behind `ip_be`: the local endpoint's own (already looked up by the
/// caller), else the ipcache's, else `world`.
#[inline(always)]
pub fn identity(ip_be: u32, local: Option<&EndpointInfo>) -> u32 {
    match local {
        Some(ep) => ep.sec_id,
        None => ipcache(ip_be).map(|i| i.sec_identity).unwrap_or(IDENTITY_WORLD),
    }
}

/// The node owning the pod CIDR of `ip_be`, with per-node CIDRs of `prefix_len` bits.
#[inline(always)]
pub fn tunnel(ip_be: u32, prefix_len: u32) -> Option<TunnelValue> {
    if prefix_len == 0 || prefix_len > 32 {
        return None;
    }
    let mask = (u32::MAX << (32 - prefix_len)).to_be();
    // SAFETY: copied out at once.
    unsafe { TUNNEL_MAP.get(TunnelKey::ipv4(ip_be & mask)).copied() }
}

/// The local endpoint with IPv6 address `ip6` (packet byte order).
#[inline(always)]
pub fn endpoint6(ip6: [u8; 16]) -> Option<EndpointInfo> {
    // SAFETY: the value is copied out before anything can delete it.
    unsafe { ENDPOINTS.get(EndpointKey::ipv6(ip6)).copied() }
}

/// Longest-prefix match of `ip6` in the ipcache.
#[inline(always)]
pub fn ipcache6(ip6: [u8; 16]) -> Option<RemoteEndpointInfo> {
    let key = Key::new(STATIC_PREFIX_BITS + 128, IpcacheLpmData::ipv6(ip6, 128));
    IPCACHE.get(&key).copied()
}

/// [`identity`] for an IPv6 address.
#[inline(always)]
pub fn identity6(ip6: [u8; 16], local: Option<&EndpointInfo>) -> u32 {
    match local {
        Some(ep) => ep.sec_id,
        None => ipcache6(ip6).map(|i| i.sec_identity).unwrap_or(IDENTITY_WORLD),
    }
}

/// [`tunnel`] for an IPv6 address, with per-node IPv6 CIDRs of `prefix_len` bits.
#[inline(always)]
pub fn tunnel6(ip6: [u8; 16], prefix_len: u32) -> Option<TunnelValue> {
    if prefix_len == 0 || prefix_len > 128 {
        return None;
    }
    // SAFETY: copied out at once.
    unsafe { TUNNEL_MAP.get(TunnelKey::ipv6(mask_ipv6(ip6, prefix_len))).copied() }
}

/// The node configuration; all zero (no tunnel, no router IP) until the agent writes it.
#[inline(always)]
pub fn config() -> DatapathConfig {
    CONFIG.get(0).copied().unwrap_or_default()
}

/// [`config`] in place, without a copy on the stack (72 bytes the forwarding paths cannot spare).
/// The one entry of an array map always exists (zero until written), so `None` never happens in
/// practice.
#[inline(always)]
pub fn config_ref() -> Option<&'static DatapathConfig> {
    CONFIG.get(0)
}
