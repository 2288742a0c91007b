//! The pod's side of ADD/DEL/CHECK: the veth pair `lxc<hash>` (host, up, no address) / `eth0` (in
//! the pod's namespace) with the pod's addresses as /32 (/128), a link-scope route to the router
//! address and the default route via it; on the host a route `<pod-ip>/32 dev lxc<hash>`.
//!
//! Done with `ip` (iproute2), like [`crate::datapath::devices`]: every plugin invocation is its own
//! short-lived process, so netlink sockets buy nothing over a handful of `ip` runs, and commands
//! for the pod's namespace go through one `ip -batch` started inside it (`setns` before `exec`,
//! the mounts untouched). Concurrent ADDs never share a name: the host side is named after the
//! container ID, the pod side lives in its own namespace, the peer is created directly there.
//!
//! The pure parts ([`host_ifname`], [`pod_commands`], [`host_commands`], [`add_result`],
//! [`verify_pod`]) are table-tested; [`setup`], [`teardown`] and [`check`] run them.

use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use ipnet::IpNet;
use serde::Deserialize;

use super::types::{CniError, CniResult, ErrorCode, Interface, IpConfig, Route};
use crate::datapath::netns::NetNs;

/// Linux limits interface names to 15 bytes: `lxc` + 12 hex digits.
const HASH_DIGITS: usize = 12;

/// The host-side veth name of a container: `lxc` and 12 hex digits of a stable hash of its ID
/// (the same on every node and after restarts, so DEL finds it without any saved state).
pub fn host_ifname(container_id: &str) -> String {
    let hash = crate::services::maglev::fnv1a(0x6c78_6300, container_id.as_bytes());
    format!("lxc{:0width$x}", hash >> (64 - 4 * HASH_DIGITS), width = HASH_DIGITS)
}

/// What ADD builds for one attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetwork {
    /// `CNI_IFNAME` (`eth0`).
    pub ifname: String,
    pub host_ifname: String,
    pub mtu: u32,
    /// Each pod address with its gateway (the node's router address of that family).
    pub addresses: Vec<(IpAddr, IpAddr)>,
}

fn host_prefix(ip: IpAddr) -> IpNet {
    IpNet::new(ip, if ip.is_ipv4() { 32 } else { 128 }).expect("host prefix is valid")
}

/// The `ip -batch` lines run inside the pod's namespace once `eth0` is there.
pub fn pod_commands(net: &PodNetwork) -> Vec<String> {
    let dev = &net.ifname;
    let mut lines = vec!["link set lo up".to_string(), format!("link set {dev} up")];
    // `ip -batch` takes no per-line options: the family follows from the addresses.
    for (ip, gateway) in &net.addresses {
        // No duplicate address detection: the address is ours by allocation, and DAD would
        // leave an IPv6 address "tentative" (unusable) for a second after ADD returns.
        let nodad = if ip.is_ipv6() { " nodad" } else { "" };
        lines.push(format!("addr add {} dev {dev}{nodad}", host_prefix(*ip)));
        lines.push(format!("route add {} dev {dev} scope link", host_prefix(*gateway)));
        lines.push(format!("route add default via {gateway} dev {dev}"));
    }
    lines
}

/// The `ip -batch` lines run on the host once the pair exists: the host side up (no address) and
/// a route per pod address to it.
pub fn host_commands(net: &PodNetwork) -> Vec<String> {
    let dev = &net.host_ifname;
    let mut lines = vec![format!("link set {dev} up")];
    for (ip, _) in &net.addresses {
        lines.push(format!("route replace {} dev {dev}", host_prefix(*ip)));
    }
    lines
}

/// An interface as `ip -j link show` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LinkInfo {
    pub ifindex: u32,
    pub ifname: String,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub mtu: u32,
}

/// The ADD result (CNI 1.1 §"ADD Success"): interface 0 is the host veth, interface 1 the pod's
/// (with its `sandbox`), every address points at interface 1, routes as installed in the pod.
pub fn add_result(net: &PodNetwork, host: &LinkInfo, pod: &LinkInfo, netns: &Path) -> CniResult {
    let mut result = CniResult {
        interfaces: vec![
            Interface {
                name: host.ifname.clone(),
                mac: Some(host.address.clone()),
                mtu: Some(net.mtu),
                ..Default::default()
            },
            Interface {
                name: pod.ifname.clone(),
                mac: Some(pod.address.clone()),
                mtu: Some(net.mtu),
                sandbox: Some(netns.display().to_string()),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    for (ip, gateway) in &net.addresses {
        result.ips.push(IpConfig {
            address: host_prefix(*ip),
            gateway: Some(*gateway),
            interface: Some(1),
            version: None,
        });
        let default: IpNet = if ip.is_ipv4() { "0.0.0.0/0" } else { "::/0" }.parse().expect("valid");
        result.routes.push(Route {
            dst: default,
            gw: Some(*gateway),
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        });
    }
    result
}

/// One address of `ip -j addr show`.
#[derive(Debug, Clone, Deserialize)]
pub struct AddrInfo {
    pub local: IpAddr,
    pub prefixlen: u8,
}

#[derive(Debug, Clone, Deserialize)]
struct AddrLink {
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

/// One route of `ip -j route show dev <if>`: `dst` is `default` or an address/prefix.
#[derive(Debug, Clone, Deserialize)]
pub struct RouteInfo {
    pub dst: String,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    #[serde(default)]
    pub scope: Option<String>,
}

/// CHECK's comparison: every address of `prev` is on the pod interface as a host prefix, the
/// router is reachable by a link route and is the default gateway. Returns what is missing.
pub fn verify_pod(prev: &CniResult, addrs: &[AddrInfo], routes: &[RouteInfo]) -> Result<(), String> {
    let mut missing = Vec::new();
    for ip in &prev.ips {
        let want = host_prefix(ip.address.addr());
        if !addrs.iter().any(|a| a.local == want.addr() && a.prefixlen == want.prefix_len()) {
            missing.push(format!("address {want}"));
        }
        let Some(gateway) = ip.gateway else { continue };
        let link_route = routes.iter().any(|r| {
            (r.dst == gateway.to_string() || r.dst == host_prefix(gateway).to_string())
                && r.scope.as_deref() == Some("link")
        });
        if !link_route {
            missing.push(format!("route {} scope link", host_prefix(gateway)));
        }
        if !routes.iter().any(|r| r.dst == "default" && r.gateway == Some(gateway)) {
            missing.push(format!("default route via {gateway}"));
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing.join(", "))
    }
}

// ----- shell ---------------------------------------------------------------------------------

fn io_error(msg: impl Into<String>, details: impl Into<String>) -> CniError {
    CniError::new(ErrorCode::IO_FAILURE, msg, details)
}

/// The `ip` binary: found on `PATH`, or in the usual system directories when the runtime runs
/// the plugin without one.
fn ip_binary() -> std::path::PathBuf {
    if std::env::var_os("PATH").is_some_and(|p| !p.is_empty()) {
        return "ip".into();
    }
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| "ip".into())
}

/// Runs `ip <args>` (optionally with batch lines on stdin), in `ns` when given; stdout on success.
fn run_ip(ns: Option<&NetNs>, args: &[&str], stdin: Option<&[String]>) -> Result<String, String> {
    use std::io::Write;
    let mut cmd = match ns {
        Some(ns) => ns.command(ip_binary()).map_err(|e| format!("entering {}: {e}", ns.name()))?,
        None => Command::new(ip_binary()),
    };
    cmd.args(args).stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot run ip: {e}"))?;
    if let Some(lines) = stdin {
        let mut input = child.stdin.take().expect("piped");
        input.write_all((lines.join("\n") + "\n").as_bytes()).map_err(|e| format!("writing to ip: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("waiting for ip: {e}"))?;
    if !out.status.success() {
        return Err(format!("`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn batch(ns: Option<&NetNs>, lines: &[String]) -> Result<(), String> {
    run_ip(ns, &["-batch", "-"], Some(lines)).map(drop).map_err(|e| format!("{e} (commands: {})", lines.join("; ")))
}

fn link_info(ns: Option<&NetNs>, ifname: &str) -> Result<LinkInfo, String> {
    let out = run_ip(ns, &["-j", "link", "show", "dev", ifname], None)?;
    let links: Vec<LinkInfo> = serde_json::from_str(&out).map_err(|e| format!("decoding `ip -j link show`: {e}"))?;
    links.into_iter().next().ok_or_else(|| format!("{ifname} not found"))
}

fn open_netns(netns: &Path) -> Result<NetNs, CniError> {
    NetNs::open_path(netns)
        .map_err(|e| io_error(format!("cannot open the pod's network namespace {}", netns.display()), e.to_string()))
}

/// Creates the pair and configures both sides. On failure everything created is removed again,
/// so a retried ADD starts clean. A leftover pair of the same container (an ADD retried after a
/// crash) is replaced.
pub fn setup(netns: &Path, net: &PodNetwork) -> Result<(LinkInfo, LinkInfo), CniError> {
    let ns = open_netns(netns)?;
    delete_link(&net.host_ifname).map_err(|e| io_error("cannot remove a leftover host veth", e))?;
    let mtu = net.mtu.to_string();
    let netns_arg = netns.display().to_string();
    let add = [
        "link",
        "add",
        &net.host_ifname,
        "mtu",
        &mtu,
        "type",
        "veth",
        "peer",
        "name",
        &net.ifname,
        "mtu",
        &mtu,
        "netns",
        &netns_arg,
    ];
    run_ip(None, &add, None).map_err(|e| {
        io_error(format!("cannot create the veth pair {}/{} for the pod", net.host_ifname, net.ifname), e)
    })?;
    let configured = (|| {
        batch(Some(&ns), &pod_commands(net)).map_err(|e| format!("configuring {} in the pod: {e}", net.ifname))?;
        batch(None, &host_commands(net)).map_err(|e| format!("configuring {} on the host: {e}", net.host_ifname))?;
        Ok::<_, String>((link_info(None, &net.host_ifname)?, link_info(Some(&ns), &net.ifname)?))
    })();
    configured.map_err(|e| {
        let _ = delete_link(&net.host_ifname);
        io_error("cannot set up the pod's network", e)
    })
}

/// Deletes a link by name on the host; a missing one is success. Deleting one side of a veth
/// pair removes the other side and the routes through it.
pub fn delete_link(ifname: &str) -> Result<(), String> {
    match run_ip(None, &["link", "del", ifname], None) {
        Ok(_) => Ok(()),
        Err(e) if e.contains("Cannot find device") || e.contains("does not exist") => Ok(()),
        Err(e) => Err(e),
    }
}

/// DEL's network part: the host veth goes (and with it the pod's side and the host route).
/// Idempotent: nothing there is success, the pod's namespace may already be gone.
pub fn teardown(container_id: &str) -> Result<(), CniError> {
    let ifname = host_ifname(container_id);
    delete_link(&ifname).map_err(|e| io_error(format!("cannot delete the host veth {ifname}"), e))
}

/// CHECK's network part: the host veth exists, and the pod interface carries `prev`'s addresses
/// and routes.
pub fn check(netns: &Path, container_id: &str, ifname: &str, prev: &CniResult) -> Result<(), CniError> {
    let host = host_ifname(container_id);
    link_info(None, &host).map_err(|e| io_error(format!("the host veth {host} is missing"), e))?;
    let ns = open_netns(netns)?;
    let addrs = run_ip(Some(&ns), &["-j", "addr", "show", "dev", ifname], None)
        .map_err(|e| io_error(format!("{ifname} is missing in the pod"), e))?;
    let addrs: Vec<AddrLink> =
        serde_json::from_str(&addrs).map_err(|e| io_error("cannot decode `ip -j addr show`", e.to_string()))?;
    let addrs: Vec<AddrInfo> = addrs.into_iter().flat_map(|l| l.addr_info).collect();
    let mut routes = Vec::new();
    for flag in ["-4", "-6"] {
        let out = run_ip(Some(&ns), &["-j", flag, "route", "show", "dev", ifname], None)
            .map_err(|e| io_error(format!("cannot list the routes of {ifname} in the pod"), e))?;
        let mut found: Vec<RouteInfo> =
            serde_json::from_str(&out).map_err(|e| io_error("cannot decode `ip -j route show`", e.to_string()))?;
        routes.append(&mut found);
    }
    verify_pod(prev, &addrs, &routes).map_err(|missing| {
        io_error(
            format!("the pod's network does not match its ADD result ({ifname} in {})", netns.display()),
            format!("missing: {missing}"),
        )
    })
}

#[cfg(test)]
#[path = "network_tests.rs"]
mod tests;
