//! Map keys and values shared between the eBPF programs (`beeline-ebpf`) and userspace.
//!
//! Every type is `#[repr(C)]`, has no implicit padding (explicit `_pad` fields instead), and uses
//! integer flags (`u32`) rather than `bool`, so the byte layout is identical on both sides and the
//! verifier never sees uninitialised padding.
#![no_std]

pub mod datapath;
pub mod endpoint;
pub mod events;
pub mod ipcache;
pub mod lb;
pub mod nat;
pub mod policy;
pub mod tunnel;

/// An IPv6 address (16 bytes in packet order) as Cilium's key unions hold it: the first word,
/// then the other three, each word's memory in network byte order (as `ip4` holds IPv4).
pub const fn split_ipv6(ip6: [u8; 16]) -> (u32, [u32; 3]) {
    (word(ip6, 0), [word(ip6, 4), word(ip6, 8), word(ip6, 12)])
}

const fn word(ip6: [u8; 16], i: usize) -> u32 {
    u32::from_ne_bytes([ip6[i], ip6[i + 1], ip6[i + 2], ip6[i + 3]])
}

/// `ip6` with every bit after the first `prefix_len` cleared (`prefix_len` ≥ 128 keeps all).
pub const fn mask_ipv6(ip6: [u8; 16], prefix_len: u32) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        let bit = (i as u32) * 8;
        out[i] = if prefix_len >= bit + 8 {
            ip6[i]
        } else if prefix_len <= bit {
            0
        } else {
            ip6[i] & (0xffu8 << (8 - (prefix_len - bit)))
        };
        i += 1;
    }
    out
}

/// Names of the pinned maps. Every map is pinned under the agent's bpffs directory with this name.
pub mod map_names {
    /// Per-endpoint packet and byte counters, keyed by the host-side veth's ifindex.
    pub const ENDPOINT_STATS: &str = "beeline_ep_stats";
}

/// Key of [`map_names::ENDPOINT_STATS`]: the ifindex of the host-side veth of an endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointStatsKey {
    pub ifindex: u32,
}

/// Value of [`map_names::ENDPOINT_STATS`]: what `from_container` saw leave the pod.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointStats {
    pub packets: u64,
    pub bytes: u64,
}

#[cfg(feature = "user")]
mod pod_impls {
    use super::*;
    // SAFETY: plain-old-data, #[repr(C)], no padding, every bit pattern valid.
    unsafe impl aya::Pod for EndpointStatsKey {}
    unsafe impl aya::Pod for EndpointStats {}
    unsafe impl aya::Pod for crate::endpoint::EndpointKey {}
    unsafe impl aya::Pod for crate::endpoint::EndpointInfo {}
    unsafe impl aya::Pod for crate::ipcache::IpcacheLpmData {}
    unsafe impl aya::Pod for crate::ipcache::IpcacheKey {}
    unsafe impl aya::Pod for crate::ipcache::RemoteEndpointInfo {}
    unsafe impl aya::Pod for crate::tunnel::TunnelKey {}
    unsafe impl aya::Pod for crate::tunnel::TunnelValue {}
    unsafe impl aya::Pod for crate::datapath::DatapathConfig {}
    unsafe impl aya::Pod for crate::datapath::DropStats {}
    unsafe impl aya::Pod for crate::policy::PolicyLpmData {}
    unsafe impl aya::Pod for crate::policy::PolicyKey {}
    unsafe impl aya::Pod for crate::policy::PolicyEntry {}
    unsafe impl aya::Pod for crate::policy::PolicyEndpointKey {}
    unsafe impl aya::Pod for crate::policy::PolicyEndpointConfig {}
    unsafe impl aya::Pod for crate::nat::NatTuple {}
    unsafe impl aya::Pod for crate::nat::NatEntry {}
    unsafe impl aya::Pod for crate::events::FlowEvent {}
    unsafe impl aya::Pod for crate::events::AggKey {}
    unsafe impl aya::Pod for crate::events::AggValue {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn ipv6_keys_split_and_mask_like_ciliums_unions() {
        let addr = [0xfd, 0, 0x10, 0x24, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x0a];
        let (first, rest) = split_ipv6(addr);
        assert_eq!(first.to_ne_bytes(), [0xfd, 0, 0x10, 0x24]);
        assert_eq!(rest[2].to_ne_bytes(), [0, 0, 0x01, 0x0a]);
        let ep = crate::endpoint::EndpointKey::ipv6(addr);
        assert_eq!((ep.family, ep.ip4, ep.ip6_rest), (crate::endpoint::ENDPOINT_KEY_IPV6, first, rest));
        assert_eq!(mask_ipv6(addr, 120), [0xfd, 0, 0x10, 0x24, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0]);
        assert_eq!(mask_ipv6(addr, 12), [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(mask_ipv6(addr, 0), [0; 16]);
        assert_eq!(mask_ipv6(addr, 200), addr);
        let key = crate::ipcache::IpcacheKey::ipv6(addr, 64);
        assert_eq!(key.prefixlen, crate::ipcache::STATIC_PREFIX_BITS + 64);
        assert_eq!(key.data.ip6_rest[2], 0, "host bits cleared");
        let tk = crate::tunnel::TunnelKey::ipv6(mask_ipv6(addr, 120));
        assert_eq!(tk.family, crate::endpoint::ENDPOINT_KEY_IPV6);
    }

    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(size_of::<EndpointStatsKey>(), 4);
        assert_eq!(size_of::<EndpointStats>(), 16);
        // Cilium's sizes: endpoint_key 20, endpoint_info 48, ipcache_key 24, remote_endpoint_info
        // (IPv4 tunnel endpoint) 12, tunnel_key/tunnel_value 20.
        assert_eq!(size_of::<endpoint::EndpointKey>(), 20);
        assert_eq!(size_of::<endpoint::EndpointInfo>(), 48);
        assert_eq!(size_of::<ipcache::IpcacheLpmData>(), 20);
        assert_eq!(size_of::<ipcache::IpcacheKey>(), 24);
        assert_eq!(size_of::<ipcache::RemoteEndpointInfo>(), 12);
        assert_eq!(size_of::<tunnel::TunnelKey>(), 20);
        assert_eq!(size_of::<tunnel::TunnelValue>(), 20);
        assert_eq!(size_of::<datapath::DatapathConfig>(), 72);
        assert_eq!(size_of::<datapath::DropStats>(), 16);
        assert_eq!(size_of::<policy::PolicyLpmData>(), 12);
        assert_eq!(size_of::<policy::PolicyKey>(), 16);
        assert_eq!(size_of::<policy::PolicyEntry>(), 8);
        assert_eq!(size_of::<policy::PolicyEndpointKey>(), 4);
        assert_eq!(size_of::<policy::PolicyEndpointConfig>(), 4);
    }

    #[test]
    fn policy_keys_put_the_port_prefix_in_network_order_after_the_static_part() {
        // Ports 8080..=8081 as one /15 prefix: the high 15 bits of 8080, stored big-endian.
        let k = policy::PolicyKey::l4(7, 300, policy::DIR_INGRESS, 6, 8081, 15);
        assert_eq!(k.prefixlen, 72 + 8 + 15);
        assert_eq!(k.port_prefix_len(), 15);
        let bytes: [u8; 16] = unsafe { core::mem::transmute(k) };
        assert_eq!(&bytes[4..8], &7u32.to_ne_bytes());
        assert_eq!(&bytes[8..12], &300u32.to_ne_bytes());
        assert_eq!(&bytes[12..16], &[0, 6, 0x1f, 0x90]);
        let l3 = policy::PolicyKey::l3(7, 0, policy::DIR_EGRESS);
        assert_eq!((l3.prefixlen, l3.port_prefix_len(), l3.data.protocol), (72, 0, 0));
        // A prefix longer than 16 bits is clamped; a zero prefix wildcards every port.
        assert_eq!(policy::PolicyKey::l4(1, 1, 0, 17, 53, 40).prefixlen, 96);
        assert_eq!(policy::PolicyKey::l4(1, 1, 0, 17, 53, 0).data.dport_be, 0);
    }

    #[test]
    fn endpoint_info_fields_sit_where_ciliums_do() {
        // Offsets read off the seeds' `bpftool map lookup ... cilium_lxc` dumps.
        let info = endpoint::EndpointInfo {
            ifindex: 0x0b,
            lxc_id: 0x07d6,
            mac: [0x6a, 0x8c, 0xee, 0x3a, 0x73, 0xd5],
            node_mac: [0x3e, 0x43, 0xda, 0xfb, 0xc7, 0x04],
            sec_id: 0x7a97,
            ..Default::default()
        };
        // SAFETY: repr(C) POD without padding.
        let bytes: [u8; 48] = unsafe { core::mem::transmute(info) };
        assert_eq!(bytes[0], 0x0b);
        assert_eq!(&bytes[6..8], &0x07d6u16.to_le_bytes());
        assert_eq!(&bytes[16..22], &[0x6a, 0x8c, 0xee, 0x3a, 0x73, 0xd5]);
        assert_eq!(&bytes[24..30], &[0x3e, 0x43, 0xda, 0xfb, 0xc7, 0x04]);
        assert_eq!(&bytes[32..36], &0x7a97u32.to_le_bytes());
    }

    #[test]
    fn ipcache_keys_count_the_static_prefix_and_mask_host_bits() {
        // 10.0.1.110/32 is stored as `40 00 00 00 00 00 00 01 0a 00 01 6e ...` in Cilium.
        let k = ipcache::IpcacheKey::ipv4(u32::from_be_bytes([10, 0, 1, 110]).to_be(), 32);
        let bytes: [u8; 24] = unsafe { core::mem::transmute(k) };
        assert_eq!(&bytes[..12], &[0x40, 0, 0, 0, 0, 0, 0, 1, 10, 0, 1, 110]);
        let cases = [(24, [10, 0, 1, 0]), (16, [10, 0, 0, 0]), (0, [0, 0, 0, 0]), (40, [10, 0, 1, 110])];
        for (len, want) in cases {
            let k = ipcache::IpcacheKey::ipv4(u32::from_be_bytes([10, 0, 1, 110]).to_be(), len);
            assert_eq!(k.data.ip4.to_ne_bytes(), want, "/{len}");
            assert_eq!(k.prefixlen, 32 + len.min(32));
        }
    }
}
