//! Local endpoints (pods on this node): Cilium's `cilium_lxc` map (`endpoint_key` → `endpoint_info`).
//!
//! Keyed by the endpoint's IP, so the datapath finds the destination pod of a packet with one
//! lookup. Layout follows Cilium's so `bpftool map dump` reads the same way as in the seeds'
//! walkthrough (`0b 00 00 00 | 00 00 | d6 07 | ...`: ifindex, unused, lxc id, flags, MACs, identity).
//! Addresses are in network byte order, everything else in host order.

/// Pinned map name.
pub const MAP_NAME: &str = "beeline_lxc";
pub const MAX_ENTRIES: u32 = 65536;

/// `EndpointKey::family`: Cilium's `ENDPOINT_KEY_IPV4` / `ENDPOINT_KEY_IPV6`.
pub const ENDPOINT_KEY_IPV4: u8 = 1;
pub const ENDPOINT_KEY_IPV6: u8 = 2;

/// `EndpointInfo::flags`: the entry is the node itself (cilium_host's router IP), not a pod.
/// Traffic to it goes to the host stack, never to a veth (Cilium's `ENDPOINT_F_HOST`).
pub const ENDPOINT_F_HOST: u32 = 1;

/// Cilium's `struct endpoint_key` (20 bytes): a 16-byte address union, family, encryption key
/// index, cluster id. IPv4 uses the first word and leaves the rest zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointKey {
    /// IPv4 address (network byte order) — or the first word of an IPv6 address.
    pub ip4: u32,
    pub ip6_rest: [u32; 3],
    pub family: u8,
    /// Encryption key index; always 0 for lookups.
    pub key: u8,
    pub cluster_id: u16,
}

impl EndpointKey {
    /// The key of IPv4 address `ip4_be` (network byte order).
    pub const fn ipv4(ip4_be: u32) -> Self {
        EndpointKey { ip4: ip4_be, ip6_rest: [0; 3], family: ENDPOINT_KEY_IPV4, key: 0, cluster_id: 0 }
    }

    /// The key of IPv6 address `ip6` (the 16 bytes as they sit in the packet).
    pub const fn ipv6(ip6: [u8; 16]) -> Self {
        let (ip4, ip6_rest) = crate::split_ipv6(ip6);
        EndpointKey { ip4, ip6_rest, family: ENDPOINT_KEY_IPV6, key: 0, cluster_id: 0 }
    }
}

/// Cilium's `struct endpoint_info` (48 bytes). Cilium stores the MACs as `__u64` (6 bytes + 2 of
/// padding); here they are byte arrays with explicit padding so the struct needs no 8-byte
/// alignment and has no implicit holes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointInfo {
    /// ifindex of the host side of the endpoint's veth (the `lxc…` device).
    pub ifindex: u32,
    /// Was the security label in older Cilium; kept for layout compatibility.
    pub unused: u16,
    /// The endpoint ID (`cilium endpoint list`).
    pub lxc_id: u16,
    /// `ENDPOINT_F_*`.
    pub flags: u32,
    pub pad0: u32,
    /// MAC of the pod's interface (`eth0` inside the pod): destination MAC on delivery.
    pub mac: [u8; 6],
    pub pad1: [u8; 2],
    /// MAC of the host-side veth: source MAC on delivery, and what the ARP responder answers
    /// with (the pod's `arp -a` shows its gateway at this address).
    pub node_mac: [u8; 6],
    pub pad2: [u8; 2],
    /// The endpoint's security identity (VNI of its tunnelled traffic).
    pub sec_id: u32,
    pub pad3: [u32; 3],
}
