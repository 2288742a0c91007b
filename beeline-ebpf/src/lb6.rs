//! IPv6 service translation — PLACEHOLDER with the fixed dp6/lb6 interface: every packet passes
//! through unchanged. The lb6 engineer replaces this file with the real thing (DNAT to a backend,
//! reverse NAT of replies); at merge their version wins.

use aya_ebpf::programs::TcContext;

use crate::parse::Ipv6Hdr;

/// What `from_container` does next: forward to the (translated) destination, or return a verdict.
pub enum Next6 {
    Forward([u8; 16]),
    Verdict(i32),
}

/// Service translation of a packet from a local pod (DNAT to a backend, or reverse NAT of a local backend's reply).
#[inline(always)]
pub fn from_container(_ctx: &TcContext, ip: &Ipv6Hdr, _ifindex: u32) -> Next6 {
    Next6::Forward(ip.daddr)
}

/// Reverse NAT of a remote backend's reply arriving from the overlay / the uplink (native routing).
#[inline(always)]
pub fn from_overlay(_ctx: &TcContext, _ip: &Ipv6Hdr) -> Result<(), i32> {
    Ok(())
}
