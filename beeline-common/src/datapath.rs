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
    /// An explicit deny entry matched (`ingressDeny` / `egressDeny`).
    pub const POLICY_DENY: u32 = 181;
    /// Tunnel mode, remote destination known, but the tunnel device is not configured.
    pub const NO_TUNNEL_ENDPOINT: u32 = 160;
    /// Size of the drop counter array: every reason is below it.
    pub const MAX: u32 = 256;

    pub fn name(reason: u32) -> &'static str {
        match reason {
            INVALID_SIP => "Invalid source ip",
            POLICY => "Policy denied",
            INVALID => "Invalid packet",
            WRITE_ERROR => "Error writing to packet",
            NO_TUNNEL_ENDPOINT => "No tunnel/encapsulation endpoint",
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
