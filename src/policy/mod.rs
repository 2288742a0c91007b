//! The pure policy core: identities, the selector cache, and the compiler from CiliumNetworkPolicy,
//! CiliumClusterwideNetworkPolicy and Kubernetes NetworkPolicy to per-endpoint policy map entries. No I/O:
//! controllers feed it typed objects and write its output to maps and status.
//!
//! Flow: [`rules::Policy`] parses and validates a policy (errors → `Valid=False`, warnings for accepted
//! but unenforced features); [`compiler::PolicyRepository`] holds the accepted ones and says which CIDR
//! prefixes need identities ([`identity::CidrIdentityAllocator`]); the [`selector_cache::SelectorCache`]
//! maps each selector to the identities it selects and reports which selectors an identity change
//! touched; [`compiler::compile_endpoint`] produces an [`compiler::EndpointPolicy`] whose
//! [`mapstate::MapState`] mirrors the LPM policy map, and `MapState::diff` gives the incremental update.

pub mod cidr;
pub mod compiler;
pub mod identity;
pub mod mapstate;
pub mod ports;
pub mod rules;
pub mod selector;
pub mod selector_cache;

#[cfg(test)]
mod tests;

pub use compiler::{compile_endpoint, CompilerConfig, Endpoint, EndpointPolicy, EnforcementMode, PolicyRepository};
pub use identity::{Identity, NumericIdentity};
pub use mapstate::{Direction, MapState, PolicyKey, PolicyValue, Verdict};
pub use rules::{ParseContext, Policy, PolicyError, PolicySource};
pub use selector_cache::SelectorCache;
