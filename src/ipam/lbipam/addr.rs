//! Address arithmetic for LB-IPAM: both families map onto `u128` so one code path serves IPv4 and
//! IPv6, plus an address count wide enough for whole IPv6 pools (`::/0` has 2^128 addresses).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address family, displayed the way Kubernetes spells it in `spec.ipFamilies`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// Parses `IPv4` / `IPv6` as used in `spec.ipFamilies`.
    pub fn from_k8s(s: &str) -> Option<Self> {
        match s {
            "IPv4" => Some(Family::V4),
            "IPv6" => Some(Family::V6),
            _ => None,
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

pub fn to_u128(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The address of `family` with numeric value `value`; IPv4 values are computed inside IPv4 ranges and
/// therefore fit 32 bits.
pub fn from_u128(family: Family, value: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(u32::try_from(value).expect("IPv4 value fits 32 bits"))),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(value)),
    }
}

/// A count of addresses: 256 bits as four little-endian `u64` limbs, so the sum of several `::/0`
/// blocks neither overflows nor saturates. Displays in decimal, as Cilium writes pool counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count([u64; 4]);

impl Ord for Count {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Most significant limb first.
        self.0.iter().rev().cmp(other.0.iter().rev())
    }
}

impl PartialOrd for Count {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Count {
    pub const ZERO: Count = Count([0; 4]);

    pub fn from_u128(v: u128) -> Self {
        Count([v as u64, (v >> 64) as u64, 0, 0])
    }

    /// Addresses in the inclusive range `first..=last` (`last - first + 1`, which is 2^128 for `::/0`).
    pub fn of_span(first: u128, last: u128) -> Self {
        debug_assert!(first <= last);
        Count::from_u128(last - first) + Count::from_u128(1)
    }

    /// `self - other`, clamped at zero.
    pub fn saturating_sub(self, other: Count) -> Count {
        if self <= other {
            return Count::ZERO;
        }
        let mut out = [0u64; 4];
        let mut borrow = 0i128;
        for (i, limb) in out.iter_mut().enumerate() {
            let diff = self.0[i] as i128 - other.0[i] as i128 - borrow;
            if diff < 0 {
                *limb = (diff + (1i128 << 64)) as u64;
                borrow = 1;
            } else {
                *limb = diff as u64;
                borrow = 0;
            }
        }
        Count(out)
    }
}

impl std::ops::Add for Count {
    type Output = Count;

    fn add(self, other: Count) -> Count {
        let mut out = [0u64; 4];
        let mut carry = 0u128;
        for (i, limb) in out.iter_mut().enumerate() {
            let sum = self.0[i] as u128 + other.0[i] as u128 + carry;
            *limb = sum as u64;
            carry = sum >> 64;
        }
        Count(out)
    }
}

impl PartialOrd<u128> for Count {
    fn partial_cmp(&self, other: &u128) -> Option<std::cmp::Ordering> {
        Some(self.cmp(&Count::from_u128(*other)))
    }
}

impl PartialEq<u128> for Count {
    fn eq(&self, other: &u128) -> bool {
        *self == Count::from_u128(*other)
    }
}

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Decimal by repeated long division by 10, most significant limb first.
        let mut limbs = self.0;
        if limbs == [0; 4] {
            return f.write_str("0");
        }
        let mut digits = Vec::new();
        while limbs != [0; 4] {
            let mut rem = 0u128;
            for limb in limbs.iter_mut().rev() {
                let cur = (rem << 64) | *limb as u128;
                *limb = (cur / 10) as u64;
                rem = cur % 10;
            }
            digits.push(b'0' + rem as u8);
        }
        digits.reverse();
        f.write_str(std::str::from_utf8(&digits).expect("ASCII digits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_compare_and_print_beyond_u128() {
        let v6_all = Count::of_span(0, u128::MAX);
        assert_eq!(v6_all.to_string(), "340282366920938463463374607431768211456");
        assert_eq!((v6_all + v6_all).to_string(), "680564733841876926926749214863536422912");
        assert!(v6_all > Count::from_u128(u128::MAX));
        assert_eq!(Count::of_span(10, 19), 10u128);
        assert_eq!(Count::from_u128(256).saturating_sub(Count::from_u128(2)).to_string(), "254");
        assert_eq!(Count::from_u128(2).saturating_sub(Count::from_u128(5)), Count::ZERO);
        assert_eq!(v6_all.saturating_sub(Count::from_u128(1)), Count::from_u128(u128::MAX));
        assert_eq!(Count::ZERO.to_string(), "0");
    }

    #[test]
    fn addresses_round_trip_through_u128() {
        for s in ["10.0.0.1", "255.255.255.255", "::", "fd00::1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"] {
            let a: IpAddr = s.parse().unwrap();
            assert_eq!(from_u128(Family::of(a), to_u128(a)), a, "{s}");
        }
    }
}
