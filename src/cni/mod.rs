//! The CNI plugin (`beeline-cni`, or `beeline cni`): executed by the container runtime with the
//! CNI_* environment and the network configuration on stdin. [`plugin`] runs the commands against
//! the agent's socket; [`install`] is the agent's side: the conflist and the plugin binary.

pub mod env;
pub mod install;
pub mod network;
pub mod plugin;
pub mod types;

use std::io::Read;

/// CNI spec versions this plugin speaks.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Runs one CNI invocation; returns the process exit code.
pub fn main() -> i32 {
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        let err =
            types::CniError::new(types::ErrorCode::IO_FAILURE, "cannot read the network configuration", e.to_string());
        println!("{}", err.to_json());
        return 1;
    }
    let stdout = std::io::stdout();
    plugin::run(|k| std::env::var(k).ok(), &stdin, &mut stdout.lock())
}
