//! Prefix arithmetic for `fromCIDRSet`/`ipBlock` with `except`.

use ipnet::IpNet;

/// Whether two prefixes share any address (for prefixes: one contains the other).
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(b) || b.contains(a)
}

/// The smallest set of prefixes covering exactly `cidr` minus every `except` (excepts outside `cidr` or of
/// the other family are ignored). CIDR identities are allocated for these prefixes, so an address in an
/// excepted range never maps to an identity the rule selects.
pub fn cidr_difference(cidr: IpNet, excepts: &[IpNet]) -> Vec<IpNet> {
    let mut out = Vec::new();
    subtract(cidr.trunc(), excepts, &mut out);
    out
}

fn subtract(net: IpNet, excepts: &[IpNet], out: &mut Vec<IpNet>) {
    if excepts.iter().any(|e| e.contains(&net)) {
        return;
    }
    if !excepts.iter().any(|e| net.contains(e)) {
        out.push(net);
        return;
    }
    // An except lies strictly inside `net`: split in halves and recurse (depth ≤ 128).
    if let Ok(halves) = net.subnets(net.prefix_len() + 1) {
        for half in halves {
            subtract(half, excepts, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn difference_examples() {
        let cases: &[(&str, &[&str], &[&str])] = &[
            ("10.0.0.0/8", &[], &["10.0.0.0/8"]),
            ("10.0.0.0/8", &["10.0.0.0/8"], &[]),
            ("10.0.0.0/8", &["192.168.0.0/16"], &["10.0.0.0/8"]),
            ("10.0.0.0/24", &["10.0.0.128/25"], &["10.0.0.0/25"]),
            ("10.0.0.0/24", &["10.0.0.0/26"], &["10.0.0.64/26", "10.0.0.128/25"]),
            ("10.0.0.0/30", &["10.0.0.1/32", "10.0.0.2/32"], &["10.0.0.0/32", "10.0.0.3/32"]),
            ("2001:db8::/126", &["2001:db8::/128"], &["2001:db8::1/128", "2001:db8::2/127"]),
        ];
        for (cidr, excepts, want) in cases {
            let excepts: Vec<IpNet> = excepts.iter().map(|s| p(s)).collect();
            let want: Vec<IpNet> = want.iter().map(|s| p(s)).collect();
            assert_eq!(cidr_difference(p(cidr), &excepts), want, "{cidr} except {excepts:?}");
        }
    }

    #[test]
    fn difference_covers_exactly_the_remaining_addresses() {
        // Exhaustive over a /24: each address is covered iff it is outside every except.
        let cidr = p("192.0.2.0/24");
        let excepts = [p("192.0.2.7/32"), p("192.0.2.64/27"), p("192.0.2.200/29")];
        let diff = cidr_difference(cidr, &excepts);
        for last in 0u8..=255 {
            let addr: std::net::IpAddr = std::net::Ipv4Addr::new(192, 0, 2, last).into();
            let want = !excepts.iter().any(|e| e.contains(&addr));
            let count = diff.iter().filter(|d| d.contains(&addr)).count();
            assert_eq!(count, usize::from(want), "192.0.2.{last}");
        }
    }
}
