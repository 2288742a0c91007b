//! The CNI plugin (`beeline-cni`, or `beeline cni`): executed by the container runtime with the
//! CNI_* environment and the network configuration on stdin.
//!
//! This module currently answers VERSION; ADD/DEL/CHECK/STATUS/GC arrive with the IPAM/CNI issue
//! and until then fail with CNI error code 11 ("try again later"), so a runtime retries rather
//! than giving up on the pod.

pub mod env;
pub mod types;

use std::io::Write;

/// CNI spec versions this plugin speaks.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// CNI error codes (spec §"Error"): 1 incompatible version, 4 invalid environment variables,
/// 7 invalid network config; 11 "try again later".
const ERR_INVALID_ENV: u32 = 4;
const ERR_TRY_AGAIN_LATER: u32 = 11;

#[derive(serde::Serialize)]
struct CniError<'a> {
    #[serde(rename = "cniVersion")]
    cni_version: &'a str,
    code: u32,
    msg: String,
    details: String,
}

/// Runs one CNI invocation; returns the process exit code.
pub fn main() -> i32 {
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match command.as_str() {
        "VERSION" => {
            let body = serde_json::json!({
                "cniVersion": "1.1.0",
                "supportedVersions": SUPPORTED_VERSIONS,
            });
            let _ = writeln!(out, "{body}");
            0
        }
        "" => error(
            &mut out,
            ERR_INVALID_ENV,
            "CNI_COMMAND is not set",
            "this binary is a CNI plugin; the container runtime runs it",
        ),
        other => error(
            &mut out,
            ERR_TRY_AGAIN_LATER,
            &format!("CNI_COMMAND {other} is not implemented yet"),
            "pod networking arrives with beeline's IPAM/CNI support",
        ),
    }
}

fn error(out: &mut impl Write, code: u32, msg: &str, details: &str) -> i32 {
    let e = CniError { cni_version: "1.1.0", code, msg: msg.to_string(), details: details.to_string() };
    let _ = writeln!(out, "{}", serde_json::to_string(&e).expect("serialisable"));
    1
}
