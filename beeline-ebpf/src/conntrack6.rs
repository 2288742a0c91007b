//! IPv6 connection tracking — PLACEHOLDER with the fixed dp6/lb6 interface: nothing is tracked,
//! so no packet counts as a reply (policy is checked on every packet). The lb6 engineer replaces
//! this file with the real thing; at merge their version wins.

use aya_ebpf::programs::TcContext;

use crate::parse::Ipv6Hdr;

/// The packet answers a tracked connection (checked before any translation).
#[inline(always)]
pub fn is_reply(_ctx: &TcContext, _ip: &Ipv6Hdr) -> bool {
    false
}

/// Records a connection whose opening packet passed every policy check.
#[inline(always)]
pub fn track_allowed(_ctx: &TcContext, _ip: &Ipv6Hdr) {}
