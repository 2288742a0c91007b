//! The services controller's pure core (kube-proxy replacement): Services, EndpointSlices, Nodes and
//! Pods plus configuration → desired rows of the LB maps (services with slot 0 master + backend
//! slots, backends, rev-NAT, affinity-match, source ranges, Maglev tables), with rev-NAT and backend
//! IDs that stay stable across updates and agent restarts.
//!
//! ```text
//! Inputs + ServicesConfig ──collect_frontends──▶ FrontendSpec[] ──build rows (LbIds)──▶ DesiredLb
//! ```
//!
//! Both families: IPv6 ClusterIPs/ingress/externalIPs/NodePorts become rows of the `lb6` maps with
//! the backends of the Service's IPv6 EndpointSlices (`DesiredLb::services6` etc.); one ID space.

pub mod desired;
pub mod frontends;
pub mod health_check;
pub mod ids;
pub mod maglev;
pub mod model;

pub use desired::{desired_state, AffinityMatch, DesiredLb, FrontendStatus, SourceRange};
pub use frontends::{Inputs, Note, ServicesConfig};
pub use health_check::{health_checks, HealthCheck};
pub use ids::LbIds;

#[cfg(test)]
mod tests;
