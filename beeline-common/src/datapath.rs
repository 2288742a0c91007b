//! Node-wide datapath configuration and the per-reason drop counters.
//!
//! Cilium compiles node configuration into each object (`node_config.h`: `ENCAP_IFINDEX`,
//! `IPV4_GATEWAY`, …) and recompiles on change. beeline loads one object and reads a one-entry
//! array map instead, so the agent can change the tunnel device or router IP without reloading
//! programs, and `bpftool map dump` shows what the datapath runs with.

pub const CONFIG_MAP_NAME: &str = "beeline_config";
pub const DROPS_MAP_NAME: &str = "beeline_drops";

/// `DatapathConfig::tunnel_proto`.
pub const TUNNEL_NONE: u32 = 0;
pub const TUNNEL_VXLAN: u32 = 1;
pub const TUNNEL_GENEVE: u32 = 2;

/// `DatapathConfig::flags`: deliver to local pods with `bpf_redirect` (through the host-side
/// veth's egress and the backlog queue) instead of `bpf_redirect_peer`.
pub const CONFIG_F_NO_PEER_REDIRECT: u32 = 1;
/// `DatapathConfig::flags`: masquerade pod egress to outside the cluster to `node_ip` in BPF
/// (`enable-ipv4-masquerade` + `enable-bpf-masquerade`), on the uplink's `to_netdev`.
pub const CONFIG_F_MASQUERADE: u32 = 2;
/// `DatapathConfig::flags`: no trace events (`bpf-events-trace-enabled: false`).
pub const CONFIG_F_NO_TRACE_EVENTS: u32 = 4;
/// `DatapathConfig::flags`: no drop events (`bpf-events-drop-enabled: false`); the drop counters
/// still count.
pub const CONFIG_F_NO_DROP_EVENTS: u32 = 8;
/// `DatapathConfig::flags`: no policy-verdict events (`bpf-events-policy-verdict-enabled: false`).
pub const CONFIG_F_NO_POLICY_VERDICT_EVENTS: u32 = 16;
/// `DatapathConfig::flags`: trace the receive points too (from-endpoint, from-overlay, ...).
/// Cilium hides them at every `monitor-aggregation` level but `none` (`TRACE_AGGREGATE_RX`).
pub const CONFIG_F_TRACE_RX: u32 = 32;
/// `DatapathConfig::flags`: trace every packet, not only a connection's first packets, TCP flag
/// changes and one per interval (levels `none`, `lowest`, `low`; Cilium's
/// `TRACE_AGGREGATE_ACTIVE_CT` starts at `medium`). Both bits clear = `medium`, Cilium's default,
/// so a datapath whose config row is not written yet aggregates.
pub const CONFIG_F_TRACE_EVERY_PACKET: u32 = 64;
/// Every flag that [`monitor_flags`] decides.
pub const CONFIG_F_MONITOR_MASK: u32 = CONFIG_F_NO_TRACE_EVENTS
    | CONFIG_F_NO_DROP_EVENTS
    | CONFIG_F_NO_POLICY_VERDICT_EVENTS
    | CONFIG_F_TRACE_RX
    | CONFIG_F_TRACE_EVERY_PACKET;

/// `monitor-aggregation` levels in Cilium's numbering (`none` 0 … `maximum` 4).
pub const MONITOR_AGGREGATION_NONE: u8 = 0;
pub const MONITOR_AGGREGATION_LOWEST: u8 = 1;
pub const MONITOR_AGGREGATION_LOW: u8 = 2;
pub const MONITOR_AGGREGATION_MEDIUM: u8 = 3;
pub const MONITOR_AGGREGATION_MAXIMUM: u8 = 4;

/// The event flags for a `monitor-aggregation` level and the three `bpf-events-*-enabled` switches.
pub const fn monitor_flags(level: u8, trace: bool, drop: bool, policy_verdict: bool) -> u32 {
    let mut flags = 0;
    if !trace {
        flags |= CONFIG_F_NO_TRACE_EVENTS;
    }
    if !drop {
        flags |= CONFIG_F_NO_DROP_EVENTS;
    }
    if !policy_verdict {
        flags |= CONFIG_F_NO_POLICY_VERDICT_EVENTS;
    }
    if level < MONITOR_AGGREGATION_LOWEST {
        flags |= CONFIG_F_TRACE_RX;
    }
    if level < MONITOR_AGGREGATION_MEDIUM {
        flags |= CONFIG_F_TRACE_EVERY_PACKET;
    }
    flags
}

/// The only entry of [`CONFIG_MAP_NAME`] (an array of one).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathConfig {
    /// The router IP on `cilium_host` (network byte order): the pods' gateway.
    pub router_ip: u32,
    /// This node's underlay IP (network byte order), the tunnels' source.
    pub node_ip: u32,
    /// ifindex of `cilium_vxlan` / `cilium_geneve`; 0 when not tunnelling.
    pub tunnel_ifindex: u32,
    /// `TUNNEL_*`.
    pub tunnel_proto: u32,
    /// Size of each node's pod CIDR (e.g. 24): the mask for tunnel map lookups; 0 disables them.
    pub pod_cidr_prefix_len: u32,
    /// `CONFIG_F_*`.
    pub flags: u32,
    /// `ipv4-native-routing-cidr` (network address, network byte order): destinations inside it
    /// are never masqueraded. Prefix length 0 = not set.
    pub native_cidr: u32,
    pub native_cidr_prefix_len: u32,
    /// Source ports masquerading allocates from (host byte order); 0 = the defaults of
    /// `nat::port_range`.
    pub nat_port_min: u16,
    pub nat_port_max: u16,
    /// The router's IPv6 address on `cilium_host` (the pods' IPv6 gateway, answered by the NDP
    /// responder); all zero when IPv6 is disabled.
    pub router_ip6: [u8; 16],
    /// This node's underlay IPv6 address; all zero when it has none.
    pub node_ip6: [u8; 16],
    /// Size of each node's IPv6 pod CIDR (e.g. 120): the mask for IPv6 tunnel map lookups; 0
    /// disables them.
    pub pod_cidr6_prefix_len: u32,
}

impl DatapathConfig {
    /// Whether `ip_be` lies inside the native-routing CIDR.
    pub const fn in_native_cidr(&self, ip_be: u32) -> bool {
        let len = self.native_cidr_prefix_len;
        if len == 0 || len > 32 {
            return false;
        }
        let mask = (u32::MAX << (32 - len)).to_be();
        ip_be & mask == self.native_cidr & mask
    }
}

/// Drop reasons. Numbers are Cilium's (`bpf/lib/common.h`, shown by `cilium monitor` and Hubble)
/// where Cilium has the reason.
pub mod drop_reason {
    /// Source IP does not belong to the endpoint it came from (spoofing).
    pub const INVALID_SIP: u32 = 132;
    /// Policy enforced and no entry allows the packet (default deny).
    pub const POLICY: u32 = 133;
    /// Malformed packet: truncated headers, bad IPv4 version/IHL/length, bad ARP.
    pub const INVALID: u32 = 134;
    /// A packet rewrite or helper call failed.
    pub const WRITE_ERROR: u32 = 141;
    /// Masquerading hit a non-first IPv4 fragment (no ports to translate).
    pub const FRAG_NOSUPPORT: u32 = 157;
    /// Tunnel mode, remote destination known, but the tunnel device is not configured.
    pub const NO_TUNNEL_ENDPOINT: u32 = 160;
    /// A service frontend without any backend (answered with ICMP port unreachable when possible).
    pub const NO_SERVICE: u32 = 158;
    /// A ClusterIP (not reachable from outside) addressed by a packet arriving on an uplink.
    pub const IS_CLUSTER_IP: u32 = 174;
    /// A client outside the frontend's `loadBalancerSourceRanges`.
    pub const NOT_IN_SRC_RANGE: u32 = 177;
    /// Masquerading found no free source port (or could not store the mapping).
    pub const NAT_NO_MAPPING: u32 = 167;
    /// Masquerading cannot translate this protocol (not TCP, UDP or ICMP echo).
    pub const NAT_UNSUPP_PROTO: u32 = 168;
    /// An explicit deny entry matched (`ingressDeny` / `egressDeny`).
    pub const POLICY_DENY: u32 = 181;
    /// Size of the drop counter array: every reason is below it.
    pub const MAX: u32 = 256;

    /// Every reason the programs use, for listings.
    pub const ALL: &[u32] = &[
        INVALID_SIP,
        POLICY,
        INVALID,
        WRITE_ERROR,
        FRAG_NOSUPPORT,
        NO_TUNNEL_ENDPOINT,
        NAT_NO_MAPPING,
        NAT_UNSUPP_PROTO,
        POLICY_DENY,
        IS_CLUSTER_IP,
    ];

    /// Cilium's text for the reason (`pkg/monitor/api/drop.go`), as `cilium monitor`, Hubble and
    /// the `cilium_drop_count_total{reason=...}` metric show it.
    pub fn name(reason: u32) -> &'static str {
        match reason {
            INVALID_SIP => "Invalid source ip",
            POLICY => "Policy denied",
            INVALID => "Invalid packet",
            WRITE_ERROR => "Error writing to packet",
            NO_SERVICE => "Service backend not found",
            NOT_IN_SRC_RANGE => "Source IP not in load balancer source ranges",
            IS_CLUSTER_IP => "Is a ClusterIP",
            FRAG_NOSUPPORT => "IP fragmentation not supported",
            NO_TUNNEL_ENDPOINT => "No tunnel/encapsulation endpoint (datapath BUG!)",
            NAT_NO_MAPPING => "No mapping for NAT masquerade",
            NAT_UNSUPP_PROTO => "Unsupported protocol for NAT masquerade",
            POLICY_DENY => "Policy denied by denylist",
            _ => "Unknown",
        }
    }
}

/// Value of [`DROPS_MAP_NAME`], a per-CPU array indexed by drop reason: sum over CPUs to read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropStats {
    pub packets: u64,
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn be(a: [u8; 4]) -> u32 {
        u32::from_ne_bytes(a)
    }

    #[test]
    fn native_cidr_membership() {
        let cfg = DatapathConfig { native_cidr: be([10, 0, 0, 0]), native_cidr_prefix_len: 8, ..Default::default() };
        assert!(cfg.in_native_cidr(be([10, 200, 1, 2])));
        assert!(!cfg.in_native_cidr(be([11, 0, 0, 1])));
        let unset = DatapathConfig::default();
        assert!(!unset.in_native_cidr(be([10, 0, 0, 1])), "no CIDR configured: nothing is inside");
        let host = DatapathConfig { native_cidr: be([10, 0, 0, 7]), native_cidr_prefix_len: 32, ..Default::default() };
        assert!(host.in_native_cidr(be([10, 0, 0, 7])) && !host.in_native_cidr(be([10, 0, 0, 8])));
    }

    #[test]
    fn monitor_levels_map_to_ciliums_trace_aggregation() {
        // (level, receive points traced, every packet traced)
        let cases = [
            (MONITOR_AGGREGATION_NONE, true, true),
            (MONITOR_AGGREGATION_LOWEST, false, true),
            (MONITOR_AGGREGATION_LOW, false, true),
            (MONITOR_AGGREGATION_MEDIUM, false, false),
            (MONITOR_AGGREGATION_MAXIMUM, false, false),
        ];
        for (level, rx, every) in cases {
            let f = monitor_flags(level, true, true, true);
            assert_eq!((f & CONFIG_F_TRACE_RX != 0, f & CONFIG_F_TRACE_EVERY_PACKET != 0), (rx, every), "{level}");
            assert_eq!(f & !CONFIG_F_MONITOR_MASK, 0);
        }
        assert_eq!(monitor_flags(MONITOR_AGGREGATION_MEDIUM, true, true, true), 0, "the default is all zero");
        let off = monitor_flags(MONITOR_AGGREGATION_MEDIUM, false, false, false);
        assert_eq!(off, CONFIG_F_NO_TRACE_EVENTS | CONFIG_F_NO_DROP_EVENTS | CONFIG_F_NO_POLICY_VERDICT_EVENTS);
    }

    #[test]
    fn every_reason_has_ciliums_name_and_fits_the_counter_array() {
        // Numbers and texts checked against Cilium's bpf/lib/common.h and pkg/monitor/api/drop.go.
        let want = [
            (132, "Invalid source ip"),
            (133, "Policy denied"),
            (134, "Invalid packet"),
            (141, "Error writing to packet"),
            (157, "IP fragmentation not supported"),
            (160, "No tunnel/encapsulation endpoint (datapath BUG!)"),
            (167, "No mapping for NAT masquerade"),
            (168, "Unsupported protocol for NAT masquerade"),
            (181, "Policy denied by denylist"),
            (174, "Is a ClusterIP"),
        ];
        assert_eq!(drop_reason::ALL.len(), want.len());
        for (code, name) in want {
            assert!(drop_reason::ALL.contains(&code), "{code}");
            assert_eq!(drop_reason::name(code), name);
            assert!(code < drop_reason::MAX);
        }
    }
}
