//! The agent's controllers.

pub mod services;
