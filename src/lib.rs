//! beeline: Cilium's networking model in Rust.
//!
//! Dependencies point down: `agent`/`operator` (process assembly) → `controllers` → `datapath` |
//! `policy` | `ipam` → `crds` | `beeline_common`. Pure cores know no I/O.

pub mod agent;
#[cfg(any(test, feature = "testing"))]
pub mod bench;
pub mod cli;
pub mod cni;
pub mod config;
pub mod controllers;
pub mod crds;
pub mod datapath;
pub mod ipam;
pub mod lab;
pub mod observe;
pub mod operator;
pub mod policy;
pub mod runtime;
pub mod services;
