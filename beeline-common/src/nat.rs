//! Source NAT (masquerading) state, shared by pod egress masquerading and — later — NodePort SNAT.
//!
//! Like Cilium's `cilium_snat_v4_external`: one LRU hash map holds both directions of every
//! translated flow, keyed by the 5-tuple as the packet carries it at that point:
//!
//! - egress (`NAT_DIR_EGRESS`): the original tuple (pod → remote) → the address/port the source is
//!   rewritten to (node IP, allocated port);
//! - ingress (`NAT_DIR_INGRESS`): the reply's tuple (remote → node IP:allocated port) → the
//!   original source to write back as destination.
//!
//! The ingress row is created first with `BPF_NOEXIST`: it is the one that has to be unique (two
//! flows must never share an allocated port towards the same remote endpoint), so a failed insert
//! means "port taken, try another". LRU eviction drops idle flows without a garbage collector.
//!
//! ICMP echo uses the identifier as the port: requests as the source port (destination port 0),
//! replies as the destination port (source port 0), so the same swap rule pairs them.
//! Addresses and ports are in network byte order, as on the wire.

pub const SNAT_MAP_NAME: &str = "beeline_snat_v4";
pub const SNAT_MAX_ENTRIES: u32 = 65536;

/// `NatTuple::flags`: which direction the row translates.
pub const NAT_DIR_EGRESS: u8 = 0;
pub const NAT_DIR_INGRESS: u8 = 1;

/// Ports masquerading allocates from when the configuration leaves the range at 0: Cilium's
/// `NODEPORT_PORT_MIN_NAT`..`NODEPORT_PORT_MAX_NAT` (above the NodePort range).
pub const NAT_PORT_MIN_DEFAULT: u16 = 32768;
pub const NAT_PORT_MAX_DEFAULT: u16 = 65535;

/// Candidate ports tried before giving up with "No mapping for NAT masquerade" (bounded so the
/// verifier can prove the loop ends; Cilium retries a similar fixed number of times).
pub const NAT_COLLISION_RETRIES: u32 = 32;

/// Cilium's `ipv4_ct_tuple` field order (daddr, saddr, dport, sport, nexthdr, flags), padded to
/// 16 bytes explicitly.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NatTuple {
    pub daddr: u32,
    pub saddr: u32,
    pub dport: u16,
    pub sport: u16,
    /// IPPROTO_TCP / IPPROTO_UDP / IPPROTO_ICMP.
    pub nexthdr: u8,
    /// `NAT_DIR_*`.
    pub flags: u8,
    pub pad: u16,
}

impl NatTuple {
    /// The tuple a reply to `self` carries after `self`'s source was rewritten to
    /// `to_addr:to_port`: addresses and ports swapped, marked as the ingress direction.
    pub const fn reply_after_snat(&self, to_addr: u32, to_port: u16) -> NatTuple {
        NatTuple {
            daddr: to_addr,
            saddr: self.daddr,
            dport: to_port,
            sport: self.dport,
            nexthdr: self.nexthdr,
            flags: NAT_DIR_INGRESS,
            pad: 0,
        }
    }
}

/// Where a translated packet's address/port go: the new source on egress, the new destination on
/// ingress (Cilium's `ipv4_nat_entry` without the conntrack hints).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NatEntry {
    /// `bpf_ktime_get_ns` when the mapping was created.
    pub created: u64,
    pub to_addr: u32,
    pub to_port: u16,
    pub pad: u16,
}

/// The port range `[min, max]` a configuration asks for, defaults filled in; `None` when the
/// range is empty.
pub const fn port_range(min: u16, max: u16) -> Option<(u16, u16)> {
    let min = if min == 0 { NAT_PORT_MIN_DEFAULT } else { min };
    let max = if max == 0 { NAT_PORT_MAX_DEFAULT } else { max };
    if min > max {
        None
    } else {
        Some((min, max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_16_bytes_without_hidden_padding() {
        assert_eq!(core::mem::size_of::<NatTuple>(), 16);
        assert_eq!(core::mem::size_of::<NatEntry>(), 16);
    }

    #[test]
    fn the_reply_tuple_swaps_ends_and_uses_the_translated_source() {
        let out = NatTuple { daddr: 1, saddr: 2, dport: 80, sport: 5555, nexthdr: 6, flags: NAT_DIR_EGRESS, pad: 0 };
        let back = out.reply_after_snat(9, 40000);
        assert_eq!(
            back,
            NatTuple { daddr: 9, saddr: 1, dport: 40000, sport: 80, nexthdr: 6, flags: NAT_DIR_INGRESS, pad: 0 }
        );
    }

    #[test]
    fn port_ranges_default_and_reject_empty_ones() {
        assert_eq!(port_range(0, 0), Some((32768, 65535)));
        assert_eq!(port_range(40000, 40000), Some((40000, 40000)));
        assert_eq!(port_range(40001, 40000), None);
    }
}
