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
    /// Client IP + rev-NAT ID → chosen backend (written by the datapath, LRU).
    pub const LB4_AFFINITY: &str = "beeline_lb4_affinity";
    /// (backend, rev-NAT ID) pairs an affinity entry may point at (written by the agent).
    pub const LB_AFFINITY_MATCH: &str = "beeline_lb_affinity_match";
    /// Flat Maglev tables: (rev-NAT ID, index) → backend ID.
    pub const LB4_MAGLEV: &str = "beeline_lb4_maglev";
    /// `loadBalancerSourceRanges` (LPM: rev-NAT ID + CIDR).
    pub const LB4_SOURCE_RANGE: &str = "beeline_lb4_source_range";
    /// Node-wide LB settings (one entry).
    pub const LB_CONFIG: &str = "beeline_lb_config";
    /// IPv4 connection tracking (written by the datapath, LRU).
    pub const CT4: &str = "beeline_ct4_global";
    /// IPv6 services, backends and reverse NAT (Cilium's `cilium_lb6_services_v2`,
    /// `cilium_lb6_backends_v3`, `cilium_lb6_reverse_nat`).
    pub const LB6_SERVICES: &str = "beeline_lb6_services";
    pub const LB6_BACKENDS: &str = "beeline_lb6_backends";
    pub const LB6_REVERSE_NAT: &str = "beeline_lb6_reverse_nat";
    /// IPv6 connection tracking (Cilium's `cilium_ct6_global`; written by the datapath, LRU).
    pub const CT6: &str = "beeline_ct6_global";
}

/// Bits of `Lb4Service::flags` (Cilium's `SVC_FLAG_*`, first byte).
pub mod svc_flags {
    /// Frontend is a `spec.externalIPs` address.
    pub const EXTERNAL_IP: u8 = 1 << 0;
    /// Frontend is a NodePort (a node address or the 0.0.0.0 surrogate).
    pub const NODEPORT: u8 = 1 << 1;
    /// `externalTrafficPolicy: Local`.
    pub const EXT_LOCAL_SCOPE: u8 = 1 << 2;
    /// Frontend is a pod's `hostPort`.
    pub const HOSTPORT: u8 = 1 << 3;
    /// `sessionAffinity: ClientIP`; the master entry's `backend_id` carries the timeout.
    pub const AFFINITY: u8 = 1 << 4;
    /// Frontend is a LoadBalancer ingress IP.
    pub const LOADBALANCER: u8 = 1 << 5;
    /// Reachable from outside the cluster (not a ClusterIP, not the 0.0.0.0 surrogate).
    pub const ROUTABLE: u8 = 1 << 6;
    /// Check `loadBalancerSourceRanges` (master entry only).
    pub const SOURCE_RANGE: u8 = 1 << 7;
}

/// Bits of `Lb4Service::flags2` (Cilium's `SVC_FLAG_*`, second byte).
pub mod svc_flags2 {
    /// HostPort bound to a loopback `hostIP`.
    pub const LOOPBACK: u8 = 1 << 3;
    /// `internalTrafficPolicy: Local`.
    pub const INT_LOCAL_SCOPE: u8 = 1 << 4;
    /// The frontend exists in both lookup scopes with different backend sets (the traffic policies
    /// differ): the datapath retries in the internal scope for traffic from inside the cluster.
    pub const TWO_SCOPES: u8 = 1 << 5;
    /// Master entry: the source-range check is a deny list (`service.cilium.io/src-ranges-policy: deny`).
    pub const SOURCE_RANGE_DENY: u8 = 1 << 6;
}

/// `Lb4Backend::flags` values (Cilium's `BE_STATE_*`).
pub mod backend_flags {
    pub const ACTIVE: u8 = 0;
    pub const TERMINATING: u8 = 1;
    pub const QUARANTINED: u8 = 2;
    pub const MAINTENANCE: u8 = 3;
}

/// The affinity timeout lives in the low 24 bits of the master entry's `backend_id`, the per-service
/// algorithm (1 random, 2 maglev) in the top 8 bits (Cilium's layout).
pub const AFFINITY_TIMEOUT_MASK: u32 = 0x00ff_ffff;
pub const LB_ALG_SHIFT: u32 = 24;
pub const LB_ALG_RANDOM: u32 = 1;
pub const LB_ALG_MAGLEV: u32 = 2;

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

/// Key of the affinity map (Cilium's `lb4_affinity_key` without the netns cookie): which backend
/// client `client_ip` was last sent to for the service with `rev_nat_id`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lb4AffinityKey {
    /// Client IPv4 address (network byte order).
    pub client_ip: u32,
    pub rev_nat_id: u16,
    pub pad: u16,
}

/// Value of the affinity map (Cilium's `lb_affinity_val`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LbAffinityValue {
    /// Monotonic seconds (`bpf_ktime_get_ns / 1e9`) of the last connection that used the entry.
    pub last_used: u64,
    pub backend_id: u32,
    pub pad: u32,
}

/// Key of the affinity-match map (Cilium's `lb_affinity_match`); the value is a `u8` (unused).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LbAffinityMatchKey {
    pub backend_id: u32,
    pub rev_nat_id: u16,
    pub pad: u16,
}

/// Key of the flat Maglev map: entry `index` of the lookup table of service `rev_nat_id`; the
/// value is a backend ID. (Cilium uses a hash-of-arrays; one flat hash avoids map-in-map plumbing
/// in the map manager at the cost of more entries.)
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LbMaglevKey {
    pub rev_nat_id: u16,
    pub pad: u16,
    pub index: u32,
}

/// Data of the source-range LPM key (Cilium's `lb4_src_range_key` after its `lpm_key` header): the
/// prefix length counts the 16-bit rev-NAT ID and the 16 pad bits ([`SRC_RANGE_STATIC_PREFIX`])
/// plus the CIDR's length. The value is a `u8` (unused).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lb4SrcRangeData {
    pub rev_nat_id: u16,
    pub pad: u16,
    /// Network byte order.
    pub address: u32,
}

/// The whole LPM key of the source-range map as userspace writes it (what aya-ebpf's
/// `Key<Lb4SrcRangeData>` is in the datapath).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lb4SrcRangeKey {
    pub prefixlen: u32,
    pub data: Lb4SrcRangeData,
}

/// Bits of the source-range key before the address.
pub const SRC_RANGE_STATIC_PREFIX: u32 = 32;

/// `LbConfig::algorithm`: the node default when a service carries no per-service algorithm.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbConfig {
    /// `LB_ALG_RANDOM` or `LB_ALG_MAGLEV` (0 means random).
    pub algorithm: u32,
    /// Size M of every Maglev table (a prime); 0 disables Maglev lookups.
    pub maglev_table_size: u32,
}

/// Conntrack tuple (Cilium's `ipv4_ct_tuple`, padded to 16 bytes). Addresses and ports in network
/// byte order. Service entries (`TUPLE_F_SERVICE`) are keyed by client → frontend and remember the
/// chosen backend; connection entries (`TUPLE_F_OUT`) by client → backend, after DNAT, and carry the
/// rev-NAT ID replies are translated with.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ct4Tuple {
    pub daddr: u32,
    pub saddr: u32,
    pub dport: u16,
    pub sport: u16,
    pub nexthdr: u8,
    pub flags: u8,
    pub pad: u16,
}

pub const TUPLE_F_OUT: u8 = 0;
pub const TUPLE_F_IN: u8 = 1;
pub const TUPLE_F_SERVICE: u8 = 4;

/// `Ct4Entry::flags`.
pub mod ct_flags {
    /// The reply side sent FIN or RST.
    pub const RX_CLOSING: u16 = 1 << 0;
    /// The original side sent FIN or RST.
    pub const TX_CLOSING: u16 = 1 << 1;
    /// A packet other than the initial SYN was seen from the original side.
    pub const SEEN_NON_SYN: u16 = 1 << 2;
}

/// Lifetimes (seconds), Cilium's defaults: established TCP 6 h, other protocols 60 s, TCP before the
/// handshake completes 60 s, TCP after FIN/RST 10 s.
pub const CT_LIFETIME_TCP: u32 = 21_600;
pub const CT_LIFETIME_NONTCP: u32 = 60;
pub const CT_SYN_TIMEOUT: u32 = 60;
pub const CT_CLOSE_TIMEOUT: u32 = 10;

/// Conntrack entry (after Cilium's `ct_entry`, reduced to what the LB needs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ct4Entry {
    pub packets: u64,
    pub bytes: u64,
    /// Expiry, monotonic seconds; an entry past it counts as absent.
    pub lifetime: u32,
    /// Service entries: the chosen backend.
    pub backend_id: u32,
    pub rev_nat_index: u16,
    /// `ct_flags::*`.
    pub flags: u16,
    pub pad: u32,
}

// ---- IPv6 (Cilium's `lb6_*` / `ipv6_ct_tuple`) -------------------------------------------------
//
// Addresses are the 16 bytes as they sit in the packet (network byte order), ports in network byte
// order. The service value, the backend key, the rev-NAT key and the conntrack entry carry no
// address, so they are the IPv4 types (Cilium's `lb6_service` etc. have the same layouts).

/// Key of the IPv6 services map (Cilium's `lb6_key`, 24 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lb6Key {
    /// Service virtual IPv6 address.
    pub address: [u8; 16],
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

/// Value of the IPv6 services map: Cilium's `lb6_service` has `lb4_service`'s layout.
pub type Lb6Service = Lb4Service;
/// Key of the IPv6 backends map (Cilium's `lb6_backend_key` is `lb4_backend_key`'s layout).
pub type Lb6BackendKey = Lb4BackendKey;
/// Key of the IPv6 reverse-NAT map.
pub type Lb6RevNatKey = Lb4RevNatKey;

/// Value of the IPv6 backends map (Cilium's `lb6_backend`, 24 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lb6Backend {
    /// Backend IPv6 address.
    pub address: [u8; 16],
    /// Backend port (network byte order).
    pub port: u16,
    pub proto: u8,
    /// `backend_flags::*`.
    pub flags: u8,
    pub cluster_id: u16,
    /// Topology zone index, 0 if unknown.
    pub zone: u8,
    pub pad: u8,
}

/// Value of the IPv6 reverse-NAT map (Cilium's `lb6_reverse_nat`, 18 bytes; no hidden padding
/// since every field is byte- or 2-byte aligned).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lb6ReverseNat {
    pub address: [u8; 16],
    pub port: u16,
}

/// IPv6 conntrack tuple (Cilium's `ipv6_ct_tuple`, 38 bytes packed; padded explicitly to 40 as
/// [`Ct4Tuple`] is to 16). Same meaning of `flags` (`TUPLE_F_*`) and of the two entry kinds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ct6Tuple {
    pub daddr: [u8; 16],
    pub saddr: [u8; 16],
    pub dport: u16,
    pub sport: u16,
    pub nexthdr: u8,
    pub flags: u8,
    pub pad: u16,
}

/// IPv6 conntrack entry: the same as IPv4's (Cilium shares `ct_entry` between families).
pub type Ct6Entry = Ct4Entry;

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
    unsafe impl aya::Pod for Lb4AffinityKey {}
    unsafe impl aya::Pod for LbAffinityValue {}
    unsafe impl aya::Pod for LbAffinityMatchKey {}
    unsafe impl aya::Pod for LbMaglevKey {}
    unsafe impl aya::Pod for Lb4SrcRangeData {}
    unsafe impl aya::Pod for Lb4SrcRangeKey {}
    unsafe impl aya::Pod for LbConfig {}
    unsafe impl aya::Pod for Ct4Tuple {}
    unsafe impl aya::Pod for Ct4Entry {}
    unsafe impl aya::Pod for Lb6Key {}
    unsafe impl aya::Pod for Lb6Backend {}
    unsafe impl aya::Pod for Lb6ReverseNat {}
    unsafe impl aya::Pod for Ct6Tuple {}
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
        assert_eq!(size_of::<Lb4AffinityKey>(), 8);
        assert_eq!(size_of::<LbAffinityValue>(), 16);
        assert_eq!(size_of::<LbAffinityMatchKey>(), 8);
        assert_eq!(size_of::<LbMaglevKey>(), 8);
        assert_eq!(size_of::<Lb4SrcRangeData>(), 8);
        assert_eq!(size_of::<Lb4SrcRangeKey>(), 12);
        assert_eq!(size_of::<LbConfig>(), 8);
        assert_eq!(size_of::<Ct4Tuple>(), 16);
        assert_eq!(size_of::<Ct4Entry>(), 32);
    }

    #[test]
    fn ipv6_layouts_match_ciliums_lb6_and_ct6_sizes() {
        assert_eq!(size_of::<Lb6Key>(), 24, "lb6_key");
        assert_eq!(size_of::<Lb6Service>(), 12, "lb6_service");
        assert_eq!(size_of::<Lb6Backend>(), 24, "lb6_backend");
        assert_eq!(size_of::<Lb6ReverseNat>(), 18, "lb6_reverse_nat");
        assert_eq!(size_of::<Ct6Tuple>(), 40, "ipv6_ct_tuple (38) + explicit pad");
        assert_eq!(size_of::<Ct6Entry>(), 32);
        // Alignment 2: no padding hides between the address bytes and the 16-bit fields.
        assert_eq!((align_of::<Lb6Key>(), align_of::<Lb6Backend>(), align_of::<Ct6Tuple>()), (2, 2, 2));
    }
}
