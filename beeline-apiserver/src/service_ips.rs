//! ClusterIP allocation by IP family, as kube-apiserver does with a dual-stack
//! `--service-cluster-ip-range=<v4 CIDR>,<v6 CIDR>`: the first range's family is the cluster's
//! primary one; `ipFamilyPolicy` (default `SingleStack`) and `ipFamilies` pick which families a
//! Service gets an address in; requests the cluster cannot satisfy get kube-apiserver's errors.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::errors::Cause;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    fn parse(s: &str) -> Option<Family> {
        match s {
            "IPv4" => Some(Family::V4),
            "IPv6" => Some(Family::V6),
            _ => None,
        }
    }
}

/// One service range: its first address and size (host bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Range {
    base: u128,
    host_bits: u32,
}

/// The configured service ranges, primary family first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceCidrs {
    v4: Option<Range>,
    v6: Option<Range>,
    primary: Family,
}

impl Default for ServiceCidrs {
    /// `10.96.0.0/16`, kubeadm's default.
    fn default() -> Self {
        ServiceCidrs::parse("10.96.0.0/16").expect("default range")
    }
}

impl ServiceCidrs {
    /// `<cidr>[,<cidr>]`, at most one per family (kube-apiserver's flag syntax).
    pub fn parse(value: &str) -> Result<Self, String> {
        let mut out = ServiceCidrs { v4: None, v6: None, primary: Family::V4 };
        for (i, cidr) in value.split(',').map(str::trim).enumerate() {
            let (addr, len) = cidr.split_once('/').ok_or_else(|| format!("{cidr:?} is not a CIDR"))?;
            let len: u32 = len.parse().map_err(|_| format!("{cidr:?}: bad prefix length"))?;
            let (family, base, bits) = match addr.parse::<IpAddr>().map_err(|e| format!("{cidr:?}: {e}"))? {
                IpAddr::V4(a) => (Family::V4, u128::from(u32::from(a)), 32),
                IpAddr::V6(a) => (Family::V6, u128::from(a), 128),
            };
            // Like kube-apiserver, refuse ranges too small to be useful (it caps IPv6 at /108
            // for its bitmap; any size works here, but a /31 or /127 leaves nothing to hand out).
            if len > bits - 2 {
                return Err(format!("{cidr:?}: prefix too long for a service range"));
            }
            let host_bits = bits - len;
            let base = if host_bits >= 128 { 0 } else { base >> host_bits << host_bits };
            let slot = match family {
                Family::V4 => &mut out.v4,
                Family::V6 => &mut out.v6,
            };
            if slot.replace(Range { base, host_bits }).is_some() {
                return Err(format!("{value:?}: at most one range per IP family"));
            }
            if i == 0 {
                out.primary = family;
            }
        }
        Ok(out)
    }

    fn range(&self, family: Family) -> Option<Range> {
        match family {
            Family::V4 => self.v4,
            Family::V6 => self.v6,
        }
    }

    pub fn dual_stack(&self) -> bool {
        self.v4.is_some() && self.v6.is_some()
    }

    /// The `offset`-th address of `family`'s range (offset 0 is the network address, never handed
    /// out), or `None` when the family has no range or the range is exhausted.
    pub fn address(&self, family: Family, offset: u128) -> Option<IpAddr> {
        let r = self.range(family)?;
        if r.host_bits < 128 && offset >= (1u128 << r.host_bits) - 1 {
            return None;
        }
        let v = r.base + offset;
        Some(match family {
            Family::V4 => IpAddr::V4(Ipv4Addr::from(u32::try_from(v).ok()?)),
            Family::V6 => IpAddr::V6(Ipv6Addr::from(v)),
        })
    }

    /// The offset of `ip` in its family's range, if it lies in it (for resuming allocation).
    pub fn offset(&self, ip: IpAddr) -> Option<(Family, u128)> {
        let (family, v) = match ip {
            IpAddr::V4(a) => (Family::V4, u128::from(u32::from(a))),
            IpAddr::V6(a) => (Family::V6, u128::from(a)),
        };
        let r = self.range(family)?;
        let inside = r.host_bits >= 128 || v >> r.host_bits == r.base >> r.host_bits;
        inside.then(|| (family, v - r.base))
    }

    /// The families a new Service gets addresses in, in order, and its effective policy; or the
    /// field error kube-apiserver answers with.
    pub fn families(&self, policy: Option<&str>, requested: &[String]) -> Result<(Vec<Family>, String), Cause> {
        let invalid =
            |field: &str, message: String| Cause { kind: "FieldValueInvalid".into(), field: field.into(), message };
        let mut wanted = Vec::new();
        for (i, name) in requested.iter().enumerate() {
            let field = format!("spec.ipFamilies[{i}]");
            let Some(f) = Family::parse(name) else {
                return Err(Cause {
                    kind: "FieldValueNotSupported".into(),
                    field,
                    message: format!("Unsupported value: \"{name}\": supported values: \"IPv4\", \"IPv6\""),
                });
            };
            if wanted.contains(&f) {
                return Err(Cause {
                    kind: "FieldValueDuplicate".into(),
                    field,
                    message: format!("Duplicate value: \"{name}\""),
                });
            }
            wanted.push(f);
        }
        let policy = policy.unwrap_or("SingleStack").to_string();
        match policy.as_str() {
            "SingleStack" | "PreferDualStack" | "RequireDualStack" => {}
            other => {
                return Err(Cause {
                    kind: "FieldValueNotSupported".into(),
                    field: "spec.ipFamilyPolicy".into(),
                    message: format!(
                        "Unsupported value: \"{other}\": supported values: \"PreferDualStack\", \"RequireDualStack\", \"SingleStack\""
                    ),
                })
            }
        }
        if wanted.len() > 1 && policy == "SingleStack" {
            return Err(invalid(
                "spec.ipFamilies",
                format!(
                    "Invalid value: {:?}: when multiple IP families are specified, IP family policy must be RequireDualStack or PreferDualStack",
                    requested
                ),
            ));
        }
        if policy == "RequireDualStack" && !self.dual_stack() {
            return Err(invalid(
                "spec.ipFamilyPolicy",
                "Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services".into(),
            ));
        }
        for (i, f) in wanted.iter().enumerate() {
            if self.range(*f).is_none() {
                return Err(invalid(
                    &format!("spec.ipFamilies[{i}]"),
                    format!("Invalid value: \"{}\": not configured on this cluster", f.name()),
                ));
            }
        }
        // The first family: the requested one, else the cluster's primary; dual-stack policies add
        // the other family when the cluster has it.
        let first = wanted.first().copied().unwrap_or(self.primary);
        let mut families = vec![first];
        let other = if first == Family::V4 { Family::V6 } else { Family::V4 };
        if policy != "SingleStack" && self.range(other).is_some() {
            families.push(other);
        }
        Ok((families, policy))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fams(f: &[Family]) -> Vec<&'static str> {
        f.iter().map(|f| f.name()).collect()
    }

    #[test]
    fn families_follow_policy_request_and_configured_ranges() {
        let v4 = ServiceCidrs::parse("10.96.0.0/16").unwrap();
        let dual = ServiceCidrs::parse("10.96.0.0/16,fd00:10:96::/112").unwrap();
        let v6 = ServiceCidrs::parse("fd00:10:96::/112").unwrap();
        let dual6 = ServiceCidrs::parse("fd00:10:96::/112,10.96.0.0/16").unwrap();
        // (cluster, policy, ipFamilies) → families or the error's field
        type Case<'a> = (&'a ServiceCidrs, Option<&'a str>, &'a [&'a str], Result<Vec<&'a str>, &'a str>);
        let cases: Vec<Case> = vec![
            (&v4, None, &[], Ok(vec!["IPv4"])),
            (&v6, None, &[], Ok(vec!["IPv6"])),
            (&dual, None, &[], Ok(vec!["IPv4"])),
            (&dual6, None, &[], Ok(vec!["IPv6"])),
            (&dual, Some("SingleStack"), &["IPv6"], Ok(vec!["IPv6"])),
            (&dual, Some("PreferDualStack"), &[], Ok(vec!["IPv4", "IPv6"])),
            (&dual, Some("PreferDualStack"), &["IPv6"], Ok(vec!["IPv6", "IPv4"])),
            (&v4, Some("PreferDualStack"), &[], Ok(vec!["IPv4"])),
            (&v6, Some("PreferDualStack"), &["IPv6", "IPv4"], Err("spec.ipFamilies[1]")),
            (&dual, Some("RequireDualStack"), &["IPv4", "IPv6"], Ok(vec!["IPv4", "IPv6"])),
            (&v4, Some("RequireDualStack"), &[], Err("spec.ipFamilyPolicy")),
            (&v4, Some("SingleStack"), &["IPv6"], Err("spec.ipFamilies[0]")),
            (&dual, None, &["IPv4", "IPv6"], Err("spec.ipFamilies")),
            (&dual, Some("SingleStack"), &["IPv4", "IPv4"], Err("spec.ipFamilies[1]")),
            (&dual, Some("Both"), &[], Err("spec.ipFamilyPolicy")),
            (&dual, None, &["IPv5"], Err("spec.ipFamilies[0]")),
        ];
        for (cidrs, policy, requested, want) in cases {
            let requested: Vec<String> = requested.iter().map(|s| s.to_string()).collect();
            let got = cidrs.families(policy, &requested);
            match (got, want) {
                (Ok((f, _)), Ok(w)) => assert_eq!(fams(&f), w, "{cidrs:?} {policy:?} {requested:?}"),
                (Err(cause), Err(field)) => assert_eq!(cause.field, field, "{cidrs:?} {policy:?} {requested:?}"),
                (got, want) => panic!("{cidrs:?} {policy:?} {requested:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn addresses_and_offsets_stay_inside_their_range() {
        let dual = ServiceCidrs::parse("10.96.0.0/16,fd00:10:96::/120").unwrap();
        assert_eq!(dual.address(Family::V4, 10), Some("10.96.0.10".parse().unwrap()));
        assert_eq!(dual.address(Family::V6, 10), Some("fd00:10:96::a".parse().unwrap()));
        assert_eq!(dual.address(Family::V6, 255), None, "the /120 is exhausted");
        assert_eq!(dual.offset("fd00:10:96::1f".parse().unwrap()), Some((Family::V6, 31)));
        assert_eq!(dual.offset("fd00:10:97::1".parse().unwrap()), None);
        assert_eq!(dual.offset("10.96.1.2".parse().unwrap()), Some((Family::V4, 258)));
        assert!(ServiceCidrs::parse("10.96.0.0/16,10.97.0.0/16").is_err(), "two IPv4 ranges");
        assert!(ServiceCidrs::parse("fd00::/127").is_err());
    }
}
