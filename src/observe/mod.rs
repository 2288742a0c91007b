//! Observability: datapath flow events turned into Hubble-shaped flows.
//!
//! - [`decode`]: ring-buffer record bytes → typed [`decode::DatapathEvent`] (pure);
//! - [`flow`]: enrichment of an event with pod names, identities, services and the node (pure,
//!   over snapshots) into a [`flow::Flow`], Hubble's JSON shape;
//! - [`snapshot`]: the enrichment snapshot from CiliumEndpoints, Services, CiliumNodes (pure);
//! - [`store`]: the bounded ring of recent flows with followers;
//! - [`filter`]: `beeline observe`'s filters as one predicate (pure);
//! - [`format`]: `hubble observe`'s one-line output (pure).

pub mod decode;
pub mod filter;
pub mod flow;
pub mod format;
pub mod snapshot;
pub mod store;
