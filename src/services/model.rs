//! The vocabulary of the services core: frontend and backend addresses, scopes, kinds, backend states
//! and the service flag bits the datapath reads (`Lb4Service::flags` / `flags2`, Cilium's
//! `SVC_FLAG_*` layout so `bpf lb list` output and datapath logic carry over).

use std::fmt;
use std::net::Ipv4Addr;

use beeline_common::lb::{LB_LOOKUP_SCOPE_EXT, LB_LOOKUP_SCOPE_INT};

/// Bits of `Lb4Service::flags` (Cilium's `SVC_FLAG_*`, first byte).
pub mod flags {
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
pub mod flags2 {
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

/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_SECS: u32 = 10_800;

/// L4 protocol of a frontend or backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    /// Parses a Kubernetes `protocol` field (absent means TCP).
    pub fn from_k8s(value: Option<&str>) -> Option<Self> {
        match value.unwrap_or("TCP") {
            "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            "SCTP" => Some(Proto::Sctp),
            _ => None,
        }
    }

    /// `IPPROTO_*`.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Sctp => 132,
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            132 => Some(Proto::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
            Proto::Sctp => "SCTP",
        })
    }
}

/// Which lookups see a frontend entry: `External` is the default (and the only scope unless the
/// traffic policies differ); `Internal` holds the backends for in-cluster clients of a two-scope frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    External,
    Internal,
}

impl Scope {
    pub fn number(self) -> u8 {
        match self {
            Scope::External => LB_LOOKUP_SCOPE_EXT,
            Scope::Internal => LB_LOOKUP_SCOPE_INT,
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            LB_LOOKUP_SCOPE_EXT => Some(Scope::External),
            LB_LOOKUP_SCOPE_INT => Some(Scope::Internal),
            _ => None,
        }
    }
}

/// How a frontend came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrontendKind {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalIp,
    HostPort,
}

impl fmt::Display for FrontendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FrontendKind::ClusterIp => "ClusterIP",
            FrontendKind::NodePort => "NodePort",
            FrontendKind::LoadBalancer => "LoadBalancer",
            FrontendKind::ExternalIp => "ExternalIPs",
            FrontendKind::HostPort => "HostPort",
        })
    }
}

/// A backend's state as derived from EndpointSlice conditions. The order is the slot order: active
/// backends first, then those usable only as a fallback, then those kept only for existing flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BackendState {
    /// `ready` (whatever `terminating` says — kube-proxy does the same for publishNotReadyAddresses).
    Active,
    /// `serving && terminating`: new connections only when no active backend exists.
    Terminating,
    /// `terminating && !serving`: never chosen; kept so established connections finish.
    TerminatingNotServing,
    /// Neither ready nor terminating (readiness flapping): never chosen; kept for existing flows.
    Maintenance,
}

impl BackendState {
    /// Kubernetes semantics: a nil `ready` means ready, a nil `serving` means `ready`, a nil
    /// `terminating` means not terminating.
    pub fn from_conditions(ready: Option<bool>, serving: Option<bool>, terminating: Option<bool>) -> Self {
        let ready = ready.unwrap_or(true);
        let serving = serving.unwrap_or(ready);
        let terminating = terminating.unwrap_or(false);
        match (ready, serving, terminating) {
            (true, _, _) => BackendState::Active,
            (false, true, true) => BackendState::Terminating,
            (false, false, true) => BackendState::TerminatingNotServing,
            (false, _, false) => BackendState::Maintenance,
        }
    }

    /// The value of `Lb4Backend::flags`.
    pub fn map_flags(self) -> u8 {
        match self {
            BackendState::Active => backend_flags::ACTIVE,
            BackendState::Terminating | BackendState::TerminatingNotServing => backend_flags::TERMINATING,
            BackendState::Maintenance => backend_flags::MAINTENANCE,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BackendState::Active => "active",
            BackendState::Terminating => "terminating",
            BackendState::TerminatingNotServing => "terminating-not-serving",
            BackendState::Maintenance => "maintenance",
        }
    }
}

/// A frontend's identity; rev-NAT IDs are allocated per value (as Cilium does per `L3n4Addr`), so
/// the two scopes of one address get two IDs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FrontendAddr {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub proto: Proto,
    pub scope: Scope,
}

impl fmt::Display for FrontendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.ip, self.port, self.proto)?;
        if self.scope == Scope::Internal {
            f.write_str("/i")?;
        }
        Ok(())
    }
}

/// A backend's identity; backend IDs are allocated per value and shared by every frontend using it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendAddr {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub proto: Proto,
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.ip, self.port, self.proto)
    }
}

/// `namespace/name` of the Service (or Pod, for HostPort) a frontend belongs to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectName {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}
