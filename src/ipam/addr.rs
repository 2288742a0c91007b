//! Address arithmetic shared by the allocators: both families map onto `u128` so one code path
//! serves IPv4 and IPv6 (an IPv4 address is its `u32` value widened).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// An address family. Displays as Cilium writes it in status output ("IPv4", "IPv6").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Family {
    #[serde(rename = "IPv4")]
    V4,
    #[serde(rename = "IPv6")]
    V6,
}

impl Family {
    pub fn of_addr(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    pub fn of_net(net: &IpNet) -> Self {
        Self::of_addr(net.addr())
    }

    /// Address width in bits (32 or 128).
    pub fn bits(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

pub fn addr_to_u128(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The address of `family` with numeric value `value`. For IPv4 the value must fit in 32 bits;
/// callers only pass values computed inside an IPv4 prefix, so this is an internal invariant.
pub fn u128_to_addr(family: Family, value: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(u32::try_from(value).expect("IPv4 value fits 32 bits"))),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(value)),
    }
}

/// Number of host bits of a prefix (32 − len for IPv4, 128 − len for IPv6).
pub fn host_bits(net: &IpNet) -> u8 {
    net.max_prefix_len() - net.prefix_len()
}

/// `2^bits − 1`, valid for every `bits` in 0..=128 (the largest index of a block of `2^bits`).
pub fn last_index(bits: u8) -> u128 {
    if bits >= 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    }
}

/// The numeric value of the network (first) address of `net`.
pub fn network_value(net: &IpNet) -> u128 {
    addr_to_u128(net.network())
}

/// Whether `inner` lies completely inside `outer` (same family).
pub fn net_contains(outer: &IpNet, inner: &IpNet) -> bool {
    outer.contains(inner)
}

/// Whether two prefixes share at least one address. Two prefixes either nest or are disjoint.
pub fn nets_overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(b) || b.contains(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_both_families() {
        for text in
            ["0.0.0.0", "10.0.2.1", "255.255.255.255", "::", "fd00::1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"]
        {
            let addr: IpAddr = text.parse().unwrap();
            assert_eq!(u128_to_addr(Family::of_addr(addr), addr_to_u128(addr)), addr, "{text}");
        }
    }

    #[test]
    fn last_index_covers_full_width() {
        assert_eq!(last_index(0), 0);
        assert_eq!(last_index(8), 255);
        assert_eq!(last_index(127), u128::MAX >> 1);
        assert_eq!(last_index(128), u128::MAX);
    }

    #[test]
    fn overlap_is_nesting() {
        let n = |s: &str| s.parse::<IpNet>().unwrap();
        assert!(nets_overlap(&n("10.0.0.0/8"), &n("10.1.0.0/16")));
        assert!(nets_overlap(&n("10.1.0.0/16"), &n("10.0.0.0/8")));
        assert!(!nets_overlap(&n("10.0.0.0/16"), &n("10.1.0.0/16")));
        assert!(!nets_overlap(&n("10.0.0.0/8"), &n("fd00::/8")));
    }
}
