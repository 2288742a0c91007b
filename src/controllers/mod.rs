//! Reconcilers: one module per controller, split by process.

pub mod agent;
