//! Policy maps: what each local endpoint may send and receive, by peer identity and L4 port.
//!
//! Cilium keeps one LPM trie per endpoint (`cilium_policy_<ep>`, key `{identity, egress, protocol,
//! dport}` after the trie's prefix length). beeline keeps **one** trie for the node with the endpoint
//! ID in front of Cilium's key (see `docs/decisions.md`): the endpoint ID, identity and direction are
//! always matched exactly (the static prefix), then the protocol (8 bits) and a port prefix of
//! 0..=16 bits follow, so a port range is stored as a few masked ports. The datapath looks a packet
//! up twice, with the peer's identity and with identity 0 ("any peer"); a deny from either wins,
//! otherwise any match allows, and no match is a default deny.
//!
//! Whether an endpoint enforces a direction at all lives in a second, tiny map
//! ([`ENDPOINT_MAP_NAME`]): no entry, or the direction's flag clear, means "allow everything" —
//! Cilium's "policy enforcement disabled" for that endpoint and direction.

pub const MAP_NAME: &str = "beeline_policy";
/// Cilium sizes each endpoint's map at 16384 entries; one shared trie holds every endpoint's.
pub const MAX_ENTRIES: u32 = 262_144;

pub const ENDPOINT_MAP_NAME: &str = "beeline_policy_ep";
pub const ENDPOINT_MAX_ENTRIES: u32 = 65_536;

/// Bits of the key always matched exactly: endpoint ID (32), identity (32), direction (8).
pub const STATIC_PREFIX_BITS: u32 = 72;
/// Prefix length of a full lookup key: static part, protocol (8), port (16).
pub const FULL_PREFIX_BITS: u32 = STATIC_PREFIX_BITS + 8 + 16;

/// `PolicyLpmData::egress`.
pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

/// `PolicyEntry::flags`: the entry denies (otherwise it allows).
pub const POLICY_F_DENY: u8 = 1;

/// `PolicyEndpointConfig::flags`: the endpoint enforces ingress / egress policy.
pub const EP_F_INGRESS_ENFORCE: u32 = 1;
pub const EP_F_EGRESS_ENFORCE: u32 = 2;

/// The part of the key after the LPM prefix length (12 bytes). The trie compares bytes in memory
/// order, most significant bit first, so the port is stored in network byte order for its prefix
/// to be its high bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyLpmData {
    /// The local endpoint's ID (`EndpointInfo::lxc_id`).
    pub endpoint_id: u32,
    /// The peer's security identity; 0 = any peer.
    pub identity: u32,
    /// `DIR_*`.
    pub egress: u8,
    /// IP protocol; 0 = any (then the port is not part of the prefix).
    pub protocol: u8,
    /// Destination port (ICMP: the type), network byte order, masked to the prefix.
    pub dport_be: u16,
}

impl PolicyLpmData {
    /// The lookup key of a packet (host-order port).
    pub const fn lookup(endpoint_id: u32, identity: u32, egress: u8, protocol: u8, dport: u16) -> Self {
        PolicyLpmData { endpoint_id, identity, egress, protocol, dport_be: dport.to_be() }
    }
}

/// The whole key as userspace writes it (16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    pub prefixlen: u32,
    pub data: PolicyLpmData,
}

impl PolicyKey {
    /// An L3 entry: every protocol and port from/to `identity`.
    pub const fn l3(endpoint_id: u32, identity: u32, egress: u8) -> Self {
        PolicyKey {
            prefixlen: STATIC_PREFIX_BITS,
            data: PolicyLpmData { endpoint_id, identity, egress, protocol: 0, dport_be: 0 },
        }
    }

    /// An L4 entry: `protocol` and the ports sharing the top `port_prefix_len` bits of `port`.
    pub const fn l4(endpoint_id: u32, identity: u32, egress: u8, protocol: u8, port: u16, port_prefix_len: u8) -> Self {
        let len = if port_prefix_len > 16 { 16 } else { port_prefix_len };
        let mask: u16 = if len == 0 { 0 } else { u16::MAX << (16 - len) };
        PolicyKey {
            prefixlen: STATIC_PREFIX_BITS + 8 + len as u32,
            data: PolicyLpmData { endpoint_id, identity, egress, protocol, dport_be: (port & mask).to_be() },
        }
    }

    pub const fn port_prefix_len(&self) -> u32 {
        if self.prefixlen > STATIC_PREFIX_BITS + 8 {
            self.prefixlen - STATIC_PREFIX_BITS - 8
        } else {
            0
        }
    }
}

/// Value of a policy entry (8 bytes). Counters are deliberately not here: the map manager compares
/// values to decide what to rewrite, and the datapath must never change them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyEntry {
    /// L7 proxy port (unused: L7 rules are reported, not enforced).
    pub proxy_port: u16,
    /// `POLICY_F_*`.
    pub flags: u8,
    pub auth_type: u8,
    pub pad: u32,
}

impl PolicyEntry {
    pub const ALLOW: Self = PolicyEntry { proxy_port: 0, flags: 0, auth_type: 0, pad: 0 };
    pub const DENY: Self = PolicyEntry { proxy_port: 0, flags: POLICY_F_DENY, auth_type: 0, pad: 0 };

    pub const fn is_deny(&self) -> bool {
        self.flags & POLICY_F_DENY != 0
    }
}

/// Key of [`ENDPOINT_MAP_NAME`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyEndpointKey {
    pub endpoint_id: u32,
}

/// Value of [`ENDPOINT_MAP_NAME`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyEndpointConfig {
    /// `EP_F_*`.
    pub flags: u32,
}
