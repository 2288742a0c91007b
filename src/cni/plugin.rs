//! The plugin's commands: parse the CNI environment and stdin, ask the agent over its unix socket
//! (path from the plugin config's `"agent-socket"`), set up the pod's network, print a CNI result
//! or error.
//!
//! ADD: allocate the pod's addresses (`POST /v1/ipam`), build the veth pair and routes
//! ([`super::network`]), register the endpoint (`PUT /v1/endpoint/{containerID}`); a failure in a
//! later step undoes the earlier ones, so the runtime's retry starts clean. DEL, in reverse:
//! remove the endpoint, delete the veth, release the addresses — each idempotent, so DEL of an
//! unknown container or with the pod's namespace gone is success. CHECK: the agent still holds
//! the addresses and the pod's interface, addresses and routes match `prevResult`.
//!
//! Error codes: 11 ("try again later") when the agent is unreachable or not ready yet (the
//! runtime retries), 7 for bad config, 4 for a bad environment, 5 when the pod's network cannot
//! be set up, [`ERR_IPAM_EXHAUSTED`] when the node's CIDR is full, 3 when CHECK finds no
//! allocation, 50 from STATUS when ADD cannot work.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::env::{AttachmentEnv, CniEnv, Command};
use super::network::{self, PodNetwork};
use super::types::{CniError, ErrorCode, PluginConfig, VersionResult};
use crate::agent::endpoint_core::{Endpoint, EndpointRequest};
use crate::agent::endpoints::RemoveOutcome;
use crate::agent::ipam_api::{AllocateRequest, AllocateResponse, ApiError, ReleaseResponse};
use crate::cli::agent_client::{self, AgentClientError};
use crate::controllers::agent::ipam_state::IpamListing;
use crate::ipam::Owner;

/// Where the agent listens when the plugin config does not say.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/beeline/beeline.sock";
/// Plugin-specific code (spec: 100+): the node's pod CIDR has no free address.
pub const ERR_IPAM_EXHAUSTED: ErrorCode = ErrorCode(100);
/// The pod MTU when neither the plugin config (`"mtu"`) nor the agent says.
pub const DEFAULT_MTU: u32 = 1500;

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
    let netns = att.netns.clone().expect("CNI_NETNS is validated for ADD");
    let namespace = env.args.pod_namespace().unwrap_or_default().to_string();
    let pod = env.args.pod_name().unwrap_or_default().to_string();
    let request = AllocateRequest {
        namespace: namespace.clone(),
        pod: pod.clone(),
        container_id: att.container_id.clone(),
        ifname: att.ifname.clone(),
        family: None,
    };
    let body = serde_json::to_vec(&request).expect("serialisable");
    let allocated: AllocateResponse = agent_client::request_json(socket, hyper::Method::POST, "/v1/ipam", Some(body))
        .await
        .map_err(|e| agent_error(socket, e, "allocate pod addresses"))?;
    let mtu = conf.plugin_field::<u32>("mtu")?.filter(|m| *m > 0).or(allocated.mtu).unwrap_or(DEFAULT_MTU);
    let net = PodNetwork {
        ifname: att.ifname.clone(),
        host_ifname: network::host_ifname(&att.container_id),
        mtu,
        addresses: allocated.ips.iter().map(|ip| (ip.ip, ip.gateway)).collect(),
    };
    let (host, pod_link) = match network::setup(&netns, &net) {
        Ok(links) => links,
        Err(e) => {
            let _ = release(socket, att).await;
            return Err(e);
        }
    };
    let registration = EndpointRequest {
        namespace,
        pod,
        ifname: att.ifname.clone(),
        host_ifname: host.ifname.clone(),
        host_ifindex: host.ifindex,
        host_mac: host.address.clone(),
        mac: pod_link.address.clone(),
        ips: net.addresses.iter().map(|(ip, _)| *ip).collect(),
        netns: netns.display().to_string(),
    };
    let uri = format!("/v1/endpoint/{}", att.container_id);
    let body = serde_json::to_vec(&registration).expect("serialisable");
    let registered: Result<Endpoint, _> =
        agent_client::request_json(socket, hyper::Method::PUT, &uri, Some(body)).await;
    if let Err(e) = registered {
        let _ = network::teardown(&att.container_id);
        let _ = release(socket, att).await;
        return Err(agent_error(socket, e, "register the pod's endpoint"));
    }
    let result = network::add_result(&net, &host, &pod_link, &netns);
    Ok(serde_json::to_string(&result.for_version(conf.version())).expect("serialisable"))
}

/// DEL: the endpoint (and with it the datapath's state) first, then the veth, then the addresses.
async fn del(socket: &Path, att: &AttachmentEnv) -> Result<(), CniError> {
    // Container IDs are validated identifiers, safe as path segments.
    let uri = format!("/v1/endpoint/{}", att.container_id);
    let _: RemoveOutcome = agent_client::request_json(socket, hyper::Method::DELETE, &uri, None)
        .await
        .map_err(|e| agent_error(socket, e, "remove the pod's endpoint"))?;
    network::teardown(&att.container_id)?;
    release(socket, att).await
}

/// Releases what the attachment holds (nothing held is success).
async fn release(socket: &Path, att: &AttachmentEnv) -> Result<(), CniError> {
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

/// CHECK: every address of `prevResult` is still allocated to this attachment, and the pod's
/// interface, addresses and routes are as ADD left them.
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
    let netns = att.netns.as_deref().expect("CNI_NETNS is validated for CHECK");
    network::check(netns, &att.container_id, &att.ifname, prev)
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
