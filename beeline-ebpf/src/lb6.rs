//! IPv6 service load balancing (Cilium's `lb6_*` in `lib/lb.h`).

use aya_ebpf::{bindings::BPF_F_NO_PREALLOC, macros::map, maps::HashMap, programs::TcContext};
use beeline_common::lb::{Lb6Backend, Lb6BackendKey, Lb6Key, Lb6RevNatKey, Lb6ReverseNat, Lb6Service};

use crate::parse::Ipv6Hdr;

// Shapes (type, size, flags) match the map manager's definitions (`src/datapath/manager/maps.rs`).

#[map(name = "beeline_lb6_services")]
static LB6_SERVICES: HashMap<Lb6Key, Lb6Service> = HashMap::with_max_entries(65536, BPF_F_NO_PREALLOC);

#[map(name = "beeline_lb6_backends")]
static LB6_BACKENDS: HashMap<Lb6BackendKey, Lb6Backend> = HashMap::with_max_entries(65536, BPF_F_NO_PREALLOC);

#[map(name = "beeline_lb6_reverse_nat")]
static LB6_REVERSE_NAT: HashMap<Lb6RevNatKey, Lb6ReverseNat> = HashMap::with_max_entries(65536, BPF_F_NO_PREALLOC);

/// What the caller does next.
pub enum Next6 {
    /// Forward to this destination: the backend after DNAT, otherwise the packet's own destination.
    Forward([u8; 16]),
    /// Return this verdict (dropped, or answered).
    Verdict(i32),
}

/// Service translation of a packet from a local pod (DNAT to a backend, or reverse NAT of a local
/// backend's reply).
#[inline(always)]
pub fn from_container(_ctx: &TcContext, ip: &Ipv6Hdr, _ifindex: u32) -> Next6 {
    Next6::Forward(ip.daddr)
}

/// Reverse NAT of a remote backend's reply arriving from the overlay / the uplink (native routing).
#[inline(always)]
pub fn from_overlay(_ctx: &TcContext, _ip: &Ipv6Hdr) -> Result<(), i32> {
    Ok(())
}
