//! The IP cache: longest-prefix match from an IP (or CIDR) to the security identity behind it and,
//! for remote pods, the node that hosts them (the tunnel endpoint). Cilium's `cilium_ipcache`
//! (`ipcache_key` → `remote_endpoint_info`, the 12-byte IPv4-tunnel-endpoint form the seeds dump:
//! `e3 d1 00 00 ac 12 00 05 00 00 00 00` = identity 53731, tunnel endpoint 172.18.0.5).
//!
//! The key starts with the LPM trie's 32-bit prefix length, which counts the bits *after* it: the
//! 32 bits of `pad1`/`pad2`/`family` always match, so an IPv4 `/n` is stored with
//! `prefixlen = 32 + n` (Cilium's `IPCACHE_PREFIX_LEN`). On the BPF side aya's `lpm_trie::Key`
//! supplies the prefix length, so the map's data part is [`IpcacheLpmData`].

use crate::endpoint::{ENDPOINT_KEY_IPV4, ENDPOINT_KEY_IPV6};

pub const MAP_NAME: &str = "beeline_ipcache";
pub const MAX_ENTRIES: u32 = 512_000;

/// Bits of the key before the address that every lookup matches exactly.
pub const STATIC_PREFIX_BITS: u32 = 32;

/// `RemoteEndpointInfo::flags`: do not tunnel to this destination even in tunnel mode
/// (Cilium's `flag_skip_tunnel`).
pub const FLAG_SKIP_TUNNEL: u8 = 1;

/// Well-known identities (Cilium's reserved identities).
pub const IDENTITY_UNKNOWN: u32 = 0;
pub const IDENTITY_HOST: u32 = 1;
pub const IDENTITY_WORLD: u32 = 2;
pub const IDENTITY_UNMANAGED: u32 = 3;
pub const IDENTITY_HEALTH: u32 = 4;
pub const IDENTITY_REMOTE_NODE: u32 = 6;
/// Node-local identities (CIDR identities of policy prefixes) carry this bit (Cilium's
/// `IdentityScopeLocal`): addresses outside the cluster, like `world`.
pub const IDENTITY_SCOPE_LOCAL: u32 = 1 << 24;

/// The part of Cilium's `ipcache_key` after the LPM prefix length (20 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpcacheLpmData {
    pub pad1: u16,
    pub pad2: u8,
    pub family: u8,
    /// IPv4 address (network byte order), masked to the prefix.
    pub ip4: u32,
    pub ip6_rest: [u32; 3],
}

/// The whole key as userspace writes it (24 bytes): prefix length, then [`IpcacheLpmData`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpcacheKey {
    pub prefixlen: u32,
    pub data: IpcacheLpmData,
}

impl IpcacheKey {
    /// The key of `ip4_be/prefix_len` (address in network byte order; host bits are cleared).
    pub const fn ipv4(ip4_be: u32, prefix_len: u32) -> Self {
        let prefix_len = if prefix_len > 32 { 32 } else { prefix_len };
        IpcacheKey { prefixlen: STATIC_PREFIX_BITS + prefix_len, data: IpcacheLpmData::ipv4(ip4_be, prefix_len) }
    }

    /// The key of `ip6/prefix_len` (host bits are cleared; prefix lengths over 128 mean 128).
    pub const fn ipv6(ip6: [u8; 16], prefix_len: u32) -> Self {
        let prefix_len = if prefix_len > 128 { 128 } else { prefix_len };
        IpcacheKey { prefixlen: STATIC_PREFIX_BITS + prefix_len, data: IpcacheLpmData::ipv6(ip6, prefix_len) }
    }
}

impl IpcacheLpmData {
    /// The data part of an IPv4 key/lookup, with host bits beyond `prefix_len` cleared.
    pub const fn ipv4(ip4_be: u32, prefix_len: u32) -> Self {
        let mask_host: u32 = if prefix_len == 0 {
            0
        } else if prefix_len >= 32 {
            u32::MAX
        } else {
            u32::MAX << (32 - prefix_len)
        };
        IpcacheLpmData {
            pad1: 0,
            pad2: 0,
            family: ENDPOINT_KEY_IPV4,
            ip4: ip4_be & mask_host.to_be(),
            ip6_rest: [0; 3],
        }
    }

    /// The data part of an IPv6 key/lookup, with host bits beyond `prefix_len` cleared.
    pub const fn ipv6(ip6: [u8; 16], prefix_len: u32) -> Self {
        let masked = crate::mask_ipv6(ip6, prefix_len);
        let (ip4, ip6_rest) = crate::split_ipv6(masked);
        IpcacheLpmData { pad1: 0, pad2: 0, family: ENDPOINT_KEY_IPV6, ip4, ip6_rest }
    }
}

/// Cilium's `remote_endpoint_info` with an IPv4 tunnel endpoint (12 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RemoteEndpointInfo {
    pub sec_identity: u32,
    /// IPv4 address of the node hosting the prefix (network byte order); 0 when not behind a
    /// tunnel (local, world, or native routing).
    pub tunnel_endpoint: u32,
    pub pad: u16,
    /// Encryption key index (unused yet).
    pub key: u8,
    /// `FLAG_*`.
    pub flags: u8,
}
