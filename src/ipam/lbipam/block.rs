//! Pool blocks: `cidr`, or `start` with an optional `stop` (a lone start is one address), parsed into
//! inclusive address ranges. What the CRD schema cannot reject (start after stop, a CIDR next to a
//! start, mixed families) becomes a [`BlockError`] that names the field, for the pool's conditions.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use thiserror::Error;

use super::addr::{from_u128, to_u128, Count, Family};
use crate::crds::cilium_load_balancer_ip_pool::LbIpBlock;

/// An inclusive range of addresses of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpRange {
    family: Family,
    first: u128,
    last: u128,
    /// Written as a CIDR: only such blocks have network/broadcast addresses to reserve.
    from_cidr: bool,
}

impl IpRange {
    /// A range from `first` to `last`; `None` when families differ or `first > last`.
    pub fn new(first: IpAddr, last: IpAddr) -> Option<Self> {
        let family = Family::of(first);
        (family == Family::of(last) && to_u128(first) <= to_u128(last)).then(|| IpRange {
            family,
            first: to_u128(first),
            last: to_u128(last),
            from_cidr: false,
        })
    }

    /// All addresses of `net` (host bits are ignored, as Cilium masks the prefix).
    pub fn from_net(net: IpNet) -> Self {
        let net = net.trunc();
        IpRange {
            family: Family::of(net.network()),
            first: to_u128(net.network()),
            last: to_u128(net.broadcast()),
            from_cidr: true,
        }
    }

    pub fn family(&self) -> Family {
        self.family
    }
    pub fn first(&self) -> IpAddr {
        from_u128(self.family, self.first)
    }
    pub fn last(&self) -> IpAddr {
        from_u128(self.family, self.last)
    }
    pub(crate) fn first_u128(&self) -> u128 {
        self.first
    }
    pub(crate) fn last_u128(&self) -> u128 {
        self.last
    }
    pub fn from_cidr(&self) -> bool {
        self.from_cidr
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        Family::of(addr) == self.family && (self.first..=self.last).contains(&to_u128(addr))
    }

    pub fn overlaps(&self, other: &IpRange) -> bool {
        self.family == other.family && self.first <= other.last && other.first <= self.last
    }

    pub fn len(&self) -> Count {
        Count::of_span(self.first, self.last)
    }

    /// The addresses `allowFirstLastIPs: No` keeps out of new allocations: the first and last address
    /// of a CIDR block with more than two addresses (Cilium reserves nothing in a /31 or /32, or in
    /// start/stop ranges, which the user already chose explicitly).
    pub fn reserved_when_first_last_disallowed(&self) -> Option<(IpAddr, IpAddr)> {
        (self.from_cidr && self.last - self.first >= 2).then(|| (self.first(), self.last()))
    }
}

impl fmt::Display for IpRange {
    /// `first - last`, the form Cilium uses in conflict messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} - {}", self.first(), self.last())
    }
}

/// A block the operator cannot use, naming the offending field (`spec.blocks[N].start`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BlockError {
    #[error("spec.blocks[{index}].{field}: '{value}' is not a valid {what}")]
    Unparseable { index: usize, field: &'static str, value: String, what: &'static str },
    #[error("spec.blocks[{index}]: cidr and start/stop are mutually exclusive; use one or the other")]
    CidrAndRange { index: usize },
    #[error("spec.blocks[{index}]: a block needs either cidr or start")]
    Empty { index: usize },
    #[error("spec.blocks[{index}].stop: stop '{stop}' is set without a start")]
    StopWithoutStart { index: usize, stop: String },
    #[error("spec.blocks[{index}].stop: stop '{stop}' is before start '{start}'")]
    StartAfterStop { index: usize, start: String, stop: String },
    #[error("spec.blocks[{index}].stop: start '{start}' and stop '{stop}' are of different address families")]
    MixedFamilies { index: usize, start: String, stop: String },
}

impl BlockError {
    /// Index of the offending block in `spec.blocks`.
    pub fn index(&self) -> usize {
        match self {
            BlockError::Unparseable { index, .. }
            | BlockError::CidrAndRange { index }
            | BlockError::Empty { index }
            | BlockError::StopWithoutStart { index, .. }
            | BlockError::StartAfterStop { index, .. }
            | BlockError::MixedFamilies { index, .. } => *index,
        }
    }
}

/// Parses `spec.blocks[index]`. Empty strings count as unset, as in Cilium (its fields are plain strings).
pub fn parse_block(index: usize, block: &LbIpBlock) -> Result<IpRange, BlockError> {
    let set = |v: &Option<String>| v.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned);
    let (cidr, start, stop) = (set(&block.cidr), set(&block.start), set(&block.stop));
    let addr = |field: &'static str, value: &str| {
        value.parse::<IpAddr>().map_err(|_| BlockError::Unparseable {
            index,
            field,
            value: value.to_owned(),
            what: "IP address",
        })
    };
    match (cidr, start, stop) {
        (Some(_), Some(_), _) | (Some(_), None, Some(_)) => Err(BlockError::CidrAndRange { index }),
        (Some(cidr), None, None) => cidr.parse::<IpNet>().map(IpRange::from_net).map_err(|_| BlockError::Unparseable {
            index,
            field: "cidr",
            value: cidr,
            what: "CIDR",
        }),
        (None, None, None) => Err(BlockError::Empty { index }),
        (None, None, Some(stop)) => Err(BlockError::StopWithoutStart { index, stop }),
        (None, Some(start), None) => {
            let a = addr("start", &start)?;
            Ok(IpRange::new(a, a).expect("one address is a valid range"))
        }
        (None, Some(start), Some(stop)) => {
            let (a, b) = (addr("start", &start)?, addr("stop", &stop)?);
            if Family::of(a) != Family::of(b) {
                return Err(BlockError::MixedFamilies { index, start, stop });
            }
            IpRange::new(a, b).ok_or(BlockError::StartAfterStop { index, start, stop })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(cidr: Option<&str>, start: Option<&str>, stop: Option<&str>) -> LbIpBlock {
        LbIpBlock { cidr: cidr.map(Into::into), start: start.map(Into::into), stop: stop.map(Into::into) }
    }

    #[test]
    fn blocks_parse_into_inclusive_ranges() {
        // (block, first, last, count, reserved first/last under allowFirstLastIPs: No)
        type Case = (LbIpBlock, &'static str, &'static str, &'static str, Option<(&'static str, &'static str)>);
        let cases: &[Case] = &[
            (block(Some("10.0.0.0/24"), None, None), "10.0.0.0", "10.0.0.255", "256", Some(("10.0.0.0", "10.0.0.255"))),
            (block(Some("10.0.0.7/30"), None, None), "10.0.0.4", "10.0.0.7", "4", Some(("10.0.0.4", "10.0.0.7"))),
            (block(Some("10.0.0.0/31"), None, None), "10.0.0.0", "10.0.0.1", "2", None),
            (block(Some("10.0.0.9/32"), None, None), "10.0.0.9", "10.0.0.9", "1", None),
            (block(Some("fd00::/126"), None, None), "fd00::", "fd00::3", "4", Some(("fd00::", "fd00::3"))),
            (block(Some("fd00::/127"), None, None), "fd00::", "fd00::1", "2", None),
            (
                block(Some("::/0"), None, None),
                "::",
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "340282366920938463463374607431768211456",
                Some(("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")),
            ),
            (block(None, Some("10.0.0.5"), None), "10.0.0.5", "10.0.0.5", "1", None),
            (block(None, Some("10.0.0.5"), Some("10.0.0.9")), "10.0.0.5", "10.0.0.9", "5", None),
            (block(None, Some("fd00::1"), Some("fd00::10")), "fd00::1", "fd00::10", "16", None),
            (block(Some(""), Some("10.0.0.5"), Some("")), "10.0.0.5", "10.0.0.5", "1", None),
        ];
        for (i, (b, first, last, count, reserved)) in cases.iter().enumerate() {
            let r = parse_block(i, b).unwrap_or_else(|e| panic!("case {i}: {e}"));
            assert_eq!(r.first().to_string(), *first, "case {i}");
            assert_eq!(r.last().to_string(), *last, "case {i}");
            assert_eq!(r.len().to_string(), *count, "case {i}");
            let got = r.reserved_when_first_last_disallowed().map(|(a, b)| (a.to_string(), b.to_string()));
            assert_eq!(got, reserved.map(|(a, b)| (a.to_string(), b.to_string())), "case {i}");
        }
    }

    #[test]
    fn semantic_errors_name_the_field() {
        let cases: &[(LbIpBlock, &str)] = &[
            (
                block(None, Some("10.0.0.9"), Some("10.0.0.1")),
                "spec.blocks[3].stop: stop '10.0.0.1' is before start '10.0.0.9'",
            ),
            (
                block(Some("10.0.0.0/24"), Some("10.0.0.1"), None),
                "spec.blocks[3]: cidr and start/stop are mutually exclusive; use one or the other",
            ),
            (
                block(Some("10.0.0.0/24"), None, Some("10.0.0.1")),
                "spec.blocks[3]: cidr and start/stop are mutually exclusive; use one or the other",
            ),
            (
                block(None, Some("10.0.0.1"), Some("fd00::1")),
                "spec.blocks[3].stop: start '10.0.0.1' and stop 'fd00::1' are of different address families",
            ),
            (block(None, None, None), "spec.blocks[3]: a block needs either cidr or start"),
            (block(None, None, Some("10.0.0.1")), "spec.blocks[3].stop: stop '10.0.0.1' is set without a start"),
            (block(Some("10.0.0.0/33"), None, None), "spec.blocks[3].cidr: '10.0.0.0/33' is not a valid CIDR"),
            (block(None, Some("10.0.0.300"), None), "spec.blocks[3].start: '10.0.0.300' is not a valid IP address"),
            (block(None, Some("10.0.0.1"), Some("x")), "spec.blocks[3].stop: 'x' is not a valid IP address"),
        ];
        for (i, (b, want)) in cases.iter().enumerate() {
            let err = parse_block(3, b).expect_err(&format!("case {i} must fail"));
            assert_eq!(err.to_string(), *want, "case {i}");
            assert_eq!(err.index(), 3);
        }
    }

    #[test]
    fn overlap_and_containment_respect_families() {
        let a = IpRange::new("10.0.0.0".parse().unwrap(), "10.0.0.10".parse().unwrap()).unwrap();
        let b = IpRange::new("10.0.0.10".parse().unwrap(), "10.0.0.20".parse().unwrap()).unwrap();
        let c = IpRange::new("10.0.0.11".parse().unwrap(), "10.0.0.20".parse().unwrap()).unwrap();
        let v6 = IpRange::new("::".parse().unwrap(), "::ffff:ffff".parse().unwrap()).unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c));
        assert!(!a.overlaps(&v6), "different families never overlap even when the numbers do");
        assert!(a.contains("10.0.0.10".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        assert_eq!(a.to_string(), "10.0.0.0 - 10.0.0.10");
    }
}
