//! Load-balancer maps: services (frontend slot 0 "master" + one slot per backend), backends and
//! reverse NAT. Layouts follow Cilium's `lb4_key` / `lb4_service` / `lb4_backend` so the datapath logic
//! (and operators' intuition from `cilium bpf lb list`) carries over. Addresses and ports are stored in
//! network byte order, like on the wire; counts and IDs in host order.

/// Pinned map names (bpffs, under the agent's pin directory). The kernel truncates map *names* to 15
/// bytes; pins keep the full name.
pub mod map_names {
    pub const LB4_SERVICES: &str = "beeline_lb4_services";
    pub const LB4_BACKENDS: &str = "beeline_lb4_backends";
    pub const LB4_REVERSE_NAT: &str = "beeline_lb4_reverse_nat";
}

/// `Lb4Key::scope`: lookups from outside the cluster (externalTrafficPolicy) vs. from inside.
pub const LB_LOOKUP_SCOPE_EXT: u8 = 0;
pub const LB_LOOKUP_SCOPE_INT: u8 = 1;

/// Key of the services map. `backend_slot == 0` is the service's master entry; slots `1..=count`
/// each point at one backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lb4Key {
    /// Service virtual IPv4 address (network byte order).
    pub address: u32,
    /// Service port (network byte order); 0 matches all ports.
    pub dport: u16,
    /// 0 is the master entry, otherwise the backend slot.
    pub backend_slot: u16,
    /// L4 protocol (IPPROTO_*), 0 for any.
    pub proto: u8,
    /// `LB_LOOKUP_SCOPE_*`.
    pub scope: u8,
    pub pad: [u8; 2],
}

/// Value of the services map. In the master entry `count` is the number of slots and `backend_id` is
/// unused (Cilium overloads it for the affinity timeout); in a slot `backend_id` names a backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Lb4Service {
    pub backend_id: u32,
    pub count: u16,
    pub rev_nat_index: u16,
    pub flags: u8,
    pub flags2: u8,
    /// Number of slots under quarantine (master entry only).
    pub qcount: u16,
}

/// Key of the backends map: the backend ID the service slots refer to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lb4BackendKey {
    pub backend_id: u32,
}

/// Value of the backends map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lb4Backend {
    /// Backend IPv4 address (network byte order).
    pub address: u32,
    /// Backend port (network byte order).
    pub port: u16,
    pub proto: u8,
    /// `BE_STATE_*`-like flags (active, terminating, quarantined, maintenance).
    pub flags: u8,
    pub cluster_id: u16,
    /// Topology zone index, 0 if unknown.
    pub zone: u8,
    pub pad: u8,
}

/// Key of the reverse-NAT map: the service's rev-NAT index (`Lb4Service::rev_nat_index`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lb4RevNatKey {
    pub rev_nat_index: u16,
}

/// Value of the reverse-NAT map: the frontend replies are rewritten to. Cilium packs this to 6 bytes;
/// we pad explicitly to 8 so both sides agree without `packed`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lb4ReverseNat {
    pub address: u32,
    pub port: u16,
    pub pad: u16,
}

#[cfg(feature = "user")]
mod pod_impls {
    use super::*;
    // SAFETY: plain-old-data, #[repr(C)], explicit padding, every bit pattern valid.
    unsafe impl aya::Pod for Lb4Key {}
    unsafe impl aya::Pod for Lb4Service {}
    unsafe impl aya::Pod for Lb4BackendKey {}
    unsafe impl aya::Pod for Lb4Backend {}
    unsafe impl aya::Pod for Lb4RevNatKey {}
    unsafe impl aya::Pod for Lb4ReverseNat {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    #[test]
    fn layouts_match_ciliums_sizes_without_hidden_padding() {
        assert_eq!(size_of::<Lb4Key>(), 12);
        assert_eq!(size_of::<Lb4Service>(), 12);
        assert_eq!(size_of::<Lb4BackendKey>(), 4);
        assert_eq!(size_of::<Lb4Backend>(), 12);
        assert_eq!(size_of::<Lb4RevNatKey>(), 2);
        assert_eq!(size_of::<Lb4ReverseNat>(), 8);
        assert_eq!(align_of::<Lb4Key>(), 4);
    }
}
