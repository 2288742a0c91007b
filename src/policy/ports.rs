//! L4 matching as the policy map stores it: IP protocol numbers and ports as masked prefixes.

/// IP protocol numbers used in policy keys. 0 means "any protocol" (and then any port).
pub mod proto {
    pub const ANY: u8 = 0;
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
    pub const SCTP: u8 = 132;
}

/// The smallest list of `(port, prefix_len)` blocks whose union is exactly `start..=end`. A block
/// `(p, n)` covers the ports whose top `n` bits equal those of `p` (so `(0, 0)` is every port, `(80, 16)`
/// is port 80). Returns nothing when `start > end`.
pub fn port_range_to_prefixes(start: u16, end: u16) -> Vec<(u16, u8)> {
    let mut blocks = Vec::new();
    let (mut lo, hi) = (u32::from(start), u32::from(end));
    while lo <= hi {
        // Largest aligned block starting at `lo` (alignment limit), shrunk until it fits below `hi`.
        let mut size_log2 = if lo == 0 { 16 } else { lo.trailing_zeros().min(16) };
        while lo + (1u32 << size_log2) - 1 > hi {
            size_log2 -= 1;
        }
        blocks.push((lo as u16, (16 - size_log2) as u8));
        lo += 1u32 << size_log2;
    }
    blocks
}

/// Whether the block `(port, prefix_len)` contains `candidate`.
pub fn prefix_contains(port: u16, prefix_len: u8, candidate: u16) -> bool {
    let mask = port_mask(prefix_len);
    port & mask == candidate & mask
}

/// The network mask of a port prefix length (0..=16).
pub fn port_mask(prefix_len: u8) -> u16 {
    match prefix_len {
        0 => 0,
        n => u16::MAX << (16 - u32::from(n.min(16))),
    }
}

/// ICMP type names Cilium accepts in `icmps[].fields[].type`, per family.
pub fn icmp_type_by_name(ipv6: bool, name: &str) -> Option<u8> {
    const V4: &[(&str, u8)] = &[
        ("EchoReply", 0),
        ("DestinationUnreachable", 3),
        ("Redirect", 5),
        ("Echo", 8),
        ("EchoRequest", 8),
        ("RouterAdvertisement", 9),
        ("RouterSelection", 10),
        ("TimeExceeded", 11),
        ("ParameterProblem", 12),
        ("Timestamp", 13),
        ("TimestampReply", 14),
        ("Photuris", 40),
        ("ExtendedEchoRequest", 42),
        ("ExtendedEchoReply", 43),
    ];
    const V6: &[(&str, u8)] = &[
        ("DestinationUnreachable", 1),
        ("PacketTooBig", 2),
        ("TimeExceeded", 3),
        ("ParameterProblem", 4),
        ("EchoRequest", 128),
        ("EchoReply", 129),
        ("MulticastListenerQuery", 130),
        ("MulticastListenerReport", 131),
        ("MulticastListenerDone", 132),
        ("RouterSolicitation", 133),
        ("RouterAdvertisement", 134),
        ("NeighborSolicitation", 135),
        ("NeighborAdvertisement", 136),
        ("RedirectMessage", 137),
        ("RouterRenumbering", 138),
        ("ICMPNodeInformationQuery", 139),
        ("ICMPNodeInformationResponse", 140),
        ("InverseNeighborDiscoverySolicitation", 141),
        ("InverseNeighborDiscoveryAdvertisement", 142),
        ("HomeAgentAddressDiscoveryRequest", 144),
        ("HomeAgentAddressDiscoveryReply", 145),
        ("MobilePrefixSolicitation", 146),
        ("MobilePrefixAdvertisement", 147),
        ("DuplicateAddressRequestCodeSuffix", 157),
        ("DuplicateAddressConfirmationCodeSuffix", 158),
        ("ExtendedEchoRequest", 160),
        ("ExtendedEchoReply", 161),
    ];
    let table = if ipv6 { V6 } else { V4 };
    table.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

#[cfg(test)]
#[allow(clippy::type_complexity)] // case tables
mod tests {
    use super::*;

    #[test]
    fn range_expansion_examples() {
        let cases: &[(u16, u16, &[(u16, u8)])] = &[
            (80, 80, &[(80, 16)]),
            (0, 65535, &[(0, 0)]),
            (8080, 8081, &[(8080, 15)]),
            (8081, 8082, &[(8081, 16), (8082, 16)]),
            (1024, 2047, &[(1024, 6)]),
            // Cilium's docs example: 5000-5007 is one /13 block.
            (5000, 5007, &[(5000, 13)]),
            (
                1,
                65535,
                &[
                    (1, 16),
                    (2, 15),
                    (4, 14),
                    (8, 13),
                    (16, 12),
                    (32, 11),
                    (64, 10),
                    (128, 9),
                    (256, 8),
                    (512, 7),
                    (1024, 6),
                    (2048, 5),
                    (4096, 4),
                    (8192, 3),
                    (16384, 2),
                    (32768, 1),
                ],
            ),
            (65535, 65535, &[(65535, 16)]),
            (10, 9, &[]),
        ];
        for (start, end, want) in cases {
            assert_eq!(port_range_to_prefixes(*start, *end), *want, "{start}-{end}");
        }
    }

    /// Deterministic xorshift so the property test needs no extra crate and is reproducible.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn range_expansion_covers_exactly_the_range_and_is_minimal() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..300 {
            let a = (xorshift(&mut seed) % 65536) as u16;
            let b = (xorshift(&mut seed) % 65536) as u16;
            let (start, end) = (a.min(b), a.max(b));
            let blocks = port_range_to_prefixes(start, end);
            // Disjoint, aligned, exact cover: the block sizes add up to the range length and every block
            // lies inside the range.
            let mut total = 0u32;
            for &(port, len) in &blocks {
                let size = 1u32 << (16 - u32::from(len));
                assert_eq!(u32::from(port) % size, 0, "block {port}/{len} aligned");
                assert!(u32::from(port) >= u32::from(start) && u32::from(port) + size - 1 <= u32::from(end));
                total += size;
            }
            assert_eq!(total, u32::from(end) - u32::from(start) + 1, "{start}-{end}: {blocks:?}");
            // Minimal: no two neighbouring blocks could merge into one aligned block.
            for w in blocks.windows(2) {
                let ((p1, l1), (_, l2)) = (w[0], w[1]);
                let size = 1u32 << (16 - u32::from(l1));
                assert!(!(l1 == l2 && l1 > 0 && u32::from(p1) % (2 * size) == 0), "{start}-{end} not minimal");
            }
            // Spot-check membership on the edges.
            let covered = |p: u16| blocks.iter().any(|&(b, l)| prefix_contains(b, l, p));
            assert!(covered(start) && covered(end));
            if start > 0 {
                assert!(!covered(start - 1));
            }
            if end < u16::MAX {
                assert!(!covered(end + 1));
            }
        }
    }

    #[test]
    fn icmp_names_resolve_per_family() {
        assert_eq!(icmp_type_by_name(false, "EchoRequest"), Some(8));
        assert_eq!(icmp_type_by_name(true, "EchoRequest"), Some(128));
        assert_eq!(icmp_type_by_name(false, "PacketTooBig"), None);
    }
}
