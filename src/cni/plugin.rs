//! The plugin's commands: parse the CNI environment and stdin, ask the agent over its unix socket
//! (path from the plugin config's `"agent-socket"`), print a CNI result or error.
//!
//! ADD returns the IPAM part of the result (addresses with the router as gateway, and the
//! default route via it) with `interfaces` empty: creating the veth pair, addressing it in the pod
//! namespace and installing routes is the datapath's [`setup_network`] hook, which is not part of
//! this module yet (the result shape then gains the host and `eth0` interfaces).
//!
//! Error codes: 11 ("try again later") when the agent is unreachable or not ready yet (the
//! runtime retries), 7 for bad config, 4 for a bad environment, [`ERR_IPAM_EXHAUSTED`] when the
//! node's CIDR is full, 3 when CHECK finds no allocation, 50 from STATUS when ADD cannot work.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use super::env::{AttachmentEnv, CniEnv, Command};
use super::types::{CniError, CniResult, ErrorCode, IpConfig, PluginConfig, Route, VersionResult};
use crate::agent::ipam_api::{AllocateRequest, AllocateResponse, ApiError, ReleaseResponse};
use crate::cli::agent_client::{self, AgentClientError};
use crate::controllers::agent::ipam_state::IpamListing;
use crate::ipam::Owner;

/// Where the agent listens when the plugin config does not say.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/beeline/beeline.sock";
/// Plugin-specific code (spec: 100+): the node's pod CIDR has no free address.
pub const ERR_IPAM_EXHAUSTED: ErrorCode = ErrorCode(100);

/// Runs one invocation: `lookup` reads the environment, `stdin` is the request config. Returns
/// the exit code; the result or error JSON goes to `out`.
pub fn run(lookup: impl Fn(&str) -> Option<String>, stdin: &[u8], out: &mut impl Write) -> i32 {
    match execute(lookup, stdin) {
        Ok(Some(json)) => {
            let _ = writeln!(out, "{json}");
            0
        }
        Ok(None) => 0,
        Err(e) => {
            let _ = writeln!(out, "{}", e.to_json());
            1
        }
    }
}

fn execute(lookup: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<Option<String>, CniError> {
    let env = CniEnv::from_lookup(lookup)?;
    if env.command == Command::Version {
        let requested: Option<String> = serde_json::from_slice::<serde_json::Value>(stdin)
            .ok()
            .and_then(|v| v.get("cniVersion").and_then(|c| c.as_str()).map(str::to_string));
        let result = VersionResult::for_request(requested.as_deref());
        return Ok(Some(serde_json::to_string(&result).expect("serialisable")));
    }
    let conf = PluginConfig::parse(stdin)?;
    let version = conf.version();
    env.command.check_version(version)?;
    let socket: PathBuf =
        conf.plugin_field::<PathBuf>("agent-socket")?.unwrap_or_else(|| PathBuf::from(DEFAULT_AGENT_SOCKET));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| {
        CniError::new(ErrorCode::IO_FAILURE, "cannot start the plugin's runtime", e.to_string())
            .with_version(&conf.cni_version)
    })?;
    let attachment = env.attachment.clone().unwrap_or(AttachmentEnv {
        container_id: String::new(),
        ifname: String::new(),
        netns: None,
    });
    let result = runtime.block_on(async {
        match env.command {
            Command::Add => add(&socket, &env, &attachment, &conf).await.map(Some),
            Command::Del => del(&socket, &attachment).await.map(|_| None),
            Command::Check => check(&socket, &attachment, &conf).await.map(|_| None),
            Command::Status => status(&socket).await.map(|_| None),
            Command::Gc => gc(&socket, &conf).await.map(|_| None),
            Command::Version => unreachable!("answered above"),
        }
    });
    result.map_err(|e| e.with_version(&conf.cni_version))
}

/// Maps an agent call failure to the CNI error a kubelet log shows.
fn agent_error(socket: &Path, e: AgentClientError, what: &str) -> CniError {
    match e {
        AgentClientError::Connect { .. } | AgentClientError::Http(..) => CniError::new(
            ErrorCode::TRY_AGAIN_LATER,
            format!("cannot reach the beeline agent to {what}"),
            format!("{e} (socket {})", socket.display()),
        ),
        AgentClientError::Status { status, body, .. } => match serde_json::from_str::<ApiError>(&body) {
            Ok(api) if api.retryable => {
                CniError::new(ErrorCode::TRY_AGAIN_LATER, api.message, format!("{what}: agent answered {status}"))
            }
            Ok(api) if api.code == "exhausted" => {
                CniError::new(ERR_IPAM_EXHAUSTED, api.message, format!("{what}: the node's pod CIDR is full"))
            }
            Ok(api) => {
                CniError::new(ErrorCode::INVALID_CONFIG, api.message, format!("{what}: agent answered {status}"))
            }
            Err(_) => CniError::new(
                ErrorCode::IO_FAILURE,
                format!("the agent refused to {what}"),
                format!("{status}: {body}"),
            ),
        },
        AgentClientError::Decode { .. } => CniError::new(
            ErrorCode::DECODE_FAILURE,
            format!("cannot decode the agent's answer to {what}"),
            e.to_string(),
        ),
    }
}

async fn add(socket: &Path, env: &CniEnv, att: &AttachmentEnv, conf: &PluginConfig) -> Result<String, CniError> {
    let request = AllocateRequest {
        namespace: env.args.pod_namespace().unwrap_or_default().to_string(),
        pod: env.args.pod_name().unwrap_or_default().to_string(),
        container_id: att.container_id.clone(),
        ifname: att.ifname.clone(),
        family: None,
    };
    let body = serde_json::to_vec(&request).expect("serialisable");
    let allocated: AllocateResponse = agent_client::request_json(socket, hyper::Method::POST, "/v1/ipam", Some(body))
        .await
        .map_err(|e| agent_error(socket, e, "allocate pod addresses"))?;
    let result = ipam_result(&allocated);
    setup_network(att, &result)?;
    Ok(serde_json::to_string(&result.for_version(conf.version())).expect("serialisable"))
}

/// The IPAM result: each address as a host route (/32, /128) with the router as gateway, and a
/// default route per family via the router — the addressing the pod's `eth0` gets.
pub fn ipam_result(allocated: &AllocateResponse) -> CniResult {
    let mut result = CniResult::default();
    for ip in &allocated.ips {
        let host = IpNet::new(ip.ip, if ip.ip.is_ipv4() { 32 } else { 128 }).expect("host prefix is valid");
        result.ips.push(IpConfig { address: host, gateway: Some(ip.gateway), interface: None, version: None });
        let default: IpNet = if ip.ip.is_ipv4() { "0.0.0.0/0".parse() } else { "::/0".parse() }.expect("valid");
        result.routes.push(Route {
            dst: default,
            gw: Some(ip.gateway),
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        });
    }
    result
}

/// The datapath hook: veth pair, `eth0` in `att.netns` with the addresses and routes of `result`.
/// Owned by the datapath work; until it lands, ADD returns the IPAM result with no interfaces and
/// changes nothing on the host.
fn setup_network(_att: &AttachmentEnv, _result: &CniResult) -> Result<(), CniError> {
    Ok(())
}

async fn del(socket: &Path, att: &AttachmentEnv) -> Result<(), CniError> {
    // Container IDs and interface names are validated identifiers, safe as path segments.
    let uri = format!("/v1/ipam/{}/{}", att.container_id, att.ifname);
    let _: ReleaseResponse = agent_client::request_json(socket, hyper::Method::DELETE, &uri, None)
        .await
        .map_err(|e| agent_error(socket, e, "release pod addresses"))?;
    Ok(())
}

async fn listing(socket: &Path, what: &str) -> Result<IpamListing, CniError> {
    agent_client::get_json(socket, "/v1/ipam").await.map_err(|e| agent_error(socket, e, what))
}

fn holds(listing: &IpamListing, att: &AttachmentEnv) -> Vec<IpAddr> {
    listing
        .allocations
        .iter()
        .filter(|a| matches!(&a.owner, Owner::Endpoint { container_id, interface, .. } if *container_id == att.container_id && *interface == att.ifname))
        .map(|a| a.ip)
        .collect()
}

/// CHECK: every address of `prevResult` is still allocated to this attachment.
async fn check(socket: &Path, att: &AttachmentEnv, conf: &PluginConfig) -> Result<(), CniError> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(ErrorCode::INVALID_CONFIG, "CHECK needs prevResult", "the runtime passes the ADD result")
    })?;
    let held = holds(&listing(socket, "check pod addresses").await?, att);
    for ip in &prev.ips {
        if !held.contains(&ip.address.addr()) {
            return Err(CniError::new(
                ErrorCode::UNKNOWN_CONTAINER,
                format!("{} is not allocated to container {} ({})", ip.address.addr(), att.container_id, att.ifname),
                format!("the agent holds {held:?} for it"),
            ));
        }
    }
    Ok(())
}

/// STATUS: success only if an ADD could succeed now.
async fn status(socket: &Path) -> Result<(), CniError> {
    let listing = listing(socket, "report status").await.map_err(|e| {
        CniError::new(
            ErrorCode::NOT_AVAILABLE,
            "the beeline agent is not reachable",
            format!("{}: {}", e.msg, e.details),
        )
    })?;
    if !listing.ready {
        return Err(CniError::new(
            ErrorCode::NOT_AVAILABLE,
            "the beeline agent cannot allocate addresses yet",
            listing.waiting_for,
        ));
    }
    Ok(())
}

/// GC: release every pod address whose attachment is not in `cni.dev/valid-attachments`.
async fn gc(socket: &Path, conf: &PluginConfig) -> Result<(), CniError> {
    let valid = conf.valid_attachments.clone().unwrap_or_default();
    let listing = listing(socket, "collect garbage").await?;
    for a in &listing.allocations {
        if let Owner::Endpoint { container_id, interface, .. } = &a.owner {
            if !valid.iter().any(|v| v.container_id == *container_id && v.ifname == *interface) {
                let att = AttachmentEnv { container_id: container_id.clone(), ifname: interface.clone(), netns: None };
                del(socket, &att).await?;
            }
        }
    }
    Ok(())
}
