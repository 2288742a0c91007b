//! The vocabulary of the services core: frontend and backend addresses, scopes, kinds, backend states
//! and the service flag bits the datapath reads (`Lb4Service::flags` / `flags2`, Cilium's
//! `SVC_FLAG_*` layout so `bpf lb list` output and datapath logic carry over).

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use beeline_common::lb::{LB_LOOKUP_SCOPE_EXT, LB_LOOKUP_SCOPE_INT};

// The flag bits are shared with the datapath, so they live in `beeline-common`.
pub use beeline_common::lb::{
    backend_flags, svc_flags as flags, svc_flags2 as flags2, AFFINITY_TIMEOUT_MASK, LB_ALG_MAGLEV, LB_ALG_RANDOM,
    LB_ALG_SHIFT,
};

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
    /// IPv4 or IPv6: the family picks the map (`beeline_lb4_*` / `beeline_lb6_*`).
    pub ip: IpAddr,
    pub port: u16,
    pub proto: Proto,
    pub scope: Scope,
}

impl fmt::Display for FrontendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", SocketAddr::new(self.ip, self.port), self.proto)?;
        if self.scope == Scope::Internal {
            f.write_str("/i")?;
        }
        Ok(())
    }
}

/// A backend's identity; backend IDs are allocated per value and shared by every frontend using it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendAddr {
    pub ip: IpAddr,
    pub port: u16,
    pub proto: Proto,
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `[v6]:port` for IPv6, as socket addresses are written.
        write!(f, "{}/{}", SocketAddr::new(self.ip, self.port), self.proto)
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
