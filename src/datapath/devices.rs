//! The node's own devices, as Cilium lays them out:
//!
//! - `cilium_host` / `cilium_net`: a veth pair; `cilium_host` carries the router IP as a /32 (the
//!   pods' gateway) and is where routes to remote pod CIDRs point in tunnel mode;
//! - `cilium_vxlan` (UDP 8472) or `cilium_geneve` (UDP 6081) in collect-metadata ("external")
//!   mode: one device for all remote nodes, the BPF program picks the remote node and the VNI per
//!   packet with `bpf_skb_set_tunnel_key`;
//! - sysctls: forwarding on, reverse-path filtering off on these devices (packets arrive on the
//!   "wrong" device by design when BPF redirects).
//!
//! [`plan`] is pure: desired spec + what exists → the steps to run. [`ensure`] is the shell: it
//! reads the current links with `ip -d -j link show`, runs the steps with `ip`, and is idempotent —
//! an agent restart finds everything in place and changes nothing. Everything acts on the calling
//! thread's network namespace (the lab and tests enter a node's namespace first).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::Command,
};

use ipnet::IpNet;

pub const CILIUM_HOST: &str = "cilium_host";
pub const CILIUM_NET: &str = "cilium_net";
pub const CILIUM_VXLAN: &str = "cilium_vxlan";
pub const CILIUM_GENEVE: &str = "cilium_geneve";
pub const VXLAN_PORT: u16 = 8472;
pub const GENEVE_PORT: u16 = 6081;

/// Outer IPv4 (20) + UDP (8) + VXLAN/Geneve base header (8) + inner Ethernet (14) = 50 bytes, the
/// overhead Cilium subtracts from the pod MTU in tunnel mode.
pub const TUNNEL_OVERHEAD: u32 = 50;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelProtocol {
    Vxlan,
    Geneve,
}

impl TunnelProtocol {
    pub fn device(self) -> &'static str {
        match self {
            TunnelProtocol::Vxlan => CILIUM_VXLAN,
            TunnelProtocol::Geneve => CILIUM_GENEVE,
        }
    }

    pub fn port(self) -> u16 {
        match self {
            TunnelProtocol::Vxlan => VXLAN_PORT,
            TunnelProtocol::Geneve => GENEVE_PORT,
        }
    }

    /// The link kind `ip` uses.
    pub fn kind(self) -> &'static str {
        match self {
            TunnelProtocol::Vxlan => "vxlan",
            TunnelProtocol::Geneve => "geneve",
        }
    }
}

/// One address per IP family (e.g. the router addresses of a node; `None` for a family it lacks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PerFamily {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

impl PerFamily {
    /// Keeps the first address of each family.
    pub fn offer(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => {
                self.v4.get_or_insert(v4);
            }
            IpAddr::V6(v6) => {
                self.v6.get_or_insert(v6);
            }
        }
    }

    /// The address of the family `family` belongs to.
    pub fn of(&self, family: IpAddr) -> Option<IpAddr> {
        match family {
            IpAddr::V4(_) => self.v4.map(IpAddr::V4),
            IpAddr::V6(_) => self.v6.map(IpAddr::V6),
        }
    }

    /// Each family's address from `self`, else from `other`.
    pub fn or(self, other: PerFamily) -> PerFamily {
        PerFamily { v4: self.v4.or(other.v4), v6: self.v6.or(other.v6) }
    }

    /// Both addresses, IPv4 first.
    pub fn addrs(&self) -> impl Iterator<Item = IpAddr> {
        self.v4.map(IpAddr::V4).into_iter().chain(self.v6.map(IpAddr::V6))
    }
}

/// What the node's devices should look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeDevicesSpec {
    /// The IPv4 router address on `cilium_host` (`None` with IPv4 disabled).
    pub router_ip: Option<Ipv4Addr>,
    /// The IPv6 router address on `cilium_host` (`None` with IPv6 disabled): Cilium gives
    /// `cilium_host` one router address per enabled family.
    pub router_ip6: Option<Ipv6Addr>,
    /// `None` in native-routing mode.
    pub tunnel: Option<TunnelProtocol>,
}

/// The MTU pods get: the underlay's minus the encapsulation overhead in tunnel mode.
pub fn pod_mtu(underlay_mtu: u32, tunnel: Option<TunnelProtocol>) -> u32 {
    match tunnel {
        Some(_) => underlay_mtu.saturating_sub(TUNNEL_OVERHEAD),
        None => underlay_mtu,
    }
}

/// An existing link as far as [`plan`] cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExistingLink {
    pub name: String,
    /// `veth`, `vxlan`, `geneve`, … (`None` for kinds `ip` does not name).
    pub kind: Option<String>,
    /// Collect-metadata mode of a tunnel device.
    pub external: bool,
    /// UDP destination port of a tunnel device.
    pub port: Option<u16>,
    pub up: bool,
}

/// One `ip` invocation (arguments after `ip`) or a sysctl write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Ip(Vec<String>),
    Sysctl { key: String, value: String },
}

fn ip(args: &[&str]) -> Step {
    Step::Ip(args.iter().map(|s| s.to_string()).collect())
}

fn sysctl(key: &str, value: &str) -> Step {
    Step::Sysctl { key: key.to_string(), value: value.to_string() }
}

/// The steps that bring `existing` to `spec`. Addresses use `replace` (idempotent by itself);
/// links are created only when missing and recreated only when of the wrong kind or
/// configuration.
pub fn plan(spec: &NodeDevicesSpec, existing: &[ExistingLink]) -> Vec<Step> {
    let find = |name: &str| existing.iter().find(|l| l.name == name);
    let mut steps = Vec::new();

    match find(CILIUM_HOST) {
        Some(l) if l.kind.as_deref() == Some("veth") && find(CILIUM_NET).is_some() => {}
        Some(_) => {
            steps.push(ip(&["link", "del", CILIUM_HOST]));
            steps.push(ip(&["link", "add", CILIUM_HOST, "type", "veth", "peer", "name", CILIUM_NET]));
        }
        None => {
            if find(CILIUM_NET).is_some() {
                steps.push(ip(&["link", "del", CILIUM_NET]));
            }
            steps.push(ip(&["link", "add", CILIUM_HOST, "type", "veth", "peer", "name", CILIUM_NET]));
        }
    }
    for dev in [CILIUM_HOST, CILIUM_NET] {
        if !find(dev).is_some_and(|l| l.up) || !steps.is_empty() {
            steps.push(ip(&["link", "set", dev, "up"]));
        }
    }
    if let Some(router_ip) = spec.router_ip {
        let router = format!("{router_ip}/32");
        steps.push(ip(&["addr", "replace", &router, "dev", CILIUM_HOST, "scope", "link"]));
    }
    if let Some(router_ip6) = spec.router_ip6 {
        // `nodad`: the address is ours by allocation; DAD would keep it tentative (unusable as a
        // source) for a second.
        let router = format!("{router_ip6}/128");
        steps.push(ip(&["addr", "replace", &router, "dev", CILIUM_HOST, "nodad"]));
    }

    for proto in [TunnelProtocol::Vxlan, TunnelProtocol::Geneve] {
        let dev = proto.device();
        let wanted = spec.tunnel == Some(proto);
        let current = find(dev);
        let port = proto.port().to_string();
        let create = ["link", "add", dev, "type", proto.kind(), "external", "dstport", &port];
        match (wanted, current) {
            (false, Some(_)) => steps.push(ip(&["link", "del", dev])),
            (false, None) => {}
            (true, None) => {
                steps.push(ip(&create));
                steps.push(ip(&["link", "set", dev, "up"]));
            }
            (true, Some(l)) => {
                let right = l.kind.as_deref() == Some(proto.kind()) && l.external && l.port == Some(proto.port());
                if !right {
                    steps.push(ip(&["link", "del", dev]));
                    steps.push(ip(&create));
                }
                if !right || !l.up {
                    steps.push(ip(&["link", "set", dev, "up"]));
                }
            }
        }
    }

    steps.push(sysctl("net.ipv4.ip_forward", "1"));
    let mut devices = vec![CILIUM_HOST, CILIUM_NET];
    devices.extend(spec.tunnel.map(TunnelProtocol::device));
    for dev in devices {
        steps.push(sysctl(&format!("net.ipv4.conf.{dev}.rp_filter"), "0"));
        steps.push(sysctl(&format!("net.ipv4.conf.{dev}.forwarding"), "1"));
    }
    if spec.router_ip6.is_some() {
        // IPv6 forwarding is per namespace through `all` (it also turns off accepting router
        // advertisements, which a node routing pods must not act on).
        steps.push(sysctl("net.ipv6.conf.all.forwarding", "1"));
    }
    steps
}

/// The route to a remote node's pod CIDR in tunnel mode: via the router IP on `cilium_host`
/// (`10.0.1.0/24 via 10.0.2.241 dev cilium_host src 10.0.2.241 mtu 1450`, as in the seeds), so
/// host-originated traffic to remote pods reaches the BPF datapath. IPv6 refuses a gateway that is
/// a local address ("Gateway can not be a local address"), so an IPv6 pod CIDR is routed on-link
/// through `cilium_host` with the router IPv6 as source (docs/decisions.md).
pub fn tunnel_route(pod_cidr: impl Into<IpNet>, router_ip: impl Into<IpAddr>, mtu: u32) -> Vec<String> {
    let router = router_ip.into().to_string();
    let pod_cidr = pod_cidr.into();
    let mut route = vec![pod_cidr.to_string()];
    if pod_cidr.addr().is_ipv4() {
        route.extend(["via".to_string(), router.clone()]);
    }
    route.extend(["dev", CILIUM_HOST, "src", &router, "mtu", &mtu.to_string()].iter().map(|s| s.to_string()));
    route
}

/// The route to a remote node's pod CIDR in native routing with `autoDirectNodeRoutes` (the node
/// address of the CIDR's family).
pub fn direct_route(pod_cidr: impl Into<IpNet>, node_ip: impl Into<IpAddr>) -> Vec<String> {
    vec![pod_cidr.into().to_string(), "via".into(), node_ip.into().to_string()]
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("`ip {args}` failed: {stderr}")]
    Ip { args: String, stderr: String },
    #[error("cannot run `ip`: {0}")]
    Spawn(std::io::Error),
    #[error("sysctl {key}={value}: {source}")]
    Sysctl { key: String, value: String, source: std::io::Error },
    #[error("cannot parse `ip -j link` output: {0}")]
    Parse(serde_json::Error),
    #[error("the kernel cannot create {kind} devices (built without CONFIG_{upper}?): `ip {args}`", upper = kind.to_uppercase())]
    Unsupported { kind: String, args: String },
    #[error("device {0} has no ifindex after setup")]
    Missing(&'static str),
}

pub(crate) fn run_ip(args: &[String]) -> Result<String, DeviceError> {
    let out = Command::new("ip").args(args).output().map_err(DeviceError::Spawn)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("Unknown device type") {
            let kind = args.iter().skip_while(|a| *a != "type").nth(1).cloned().unwrap_or_default();
            return Err(DeviceError::Unsupported { kind, args: args.join(" ") });
        }
        return Err(DeviceError::Ip {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The links of the calling thread's namespace, from `ip -d -j link show`.
pub fn existing_links() -> Result<Vec<ExistingLink>, DeviceError> {
    let text = run_ip(&["-d".into(), "-j".into(), "link".into(), "show".into()])?;
    parse_links(&text)
}

/// Parses `ip -d -j link show` output.
pub fn parse_links(text: &str) -> Result<Vec<ExistingLink>, DeviceError> {
    let links: Vec<serde_json::Value> = serde_json::from_str(text).map_err(DeviceError::Parse)?;
    Ok(links
        .iter()
        .filter_map(|l| {
            let name = l["ifname"].as_str()?.to_string();
            let info = &l["linkinfo"];
            let data = &info["info_data"];
            Some(ExistingLink {
                name,
                kind: info["info_kind"].as_str().map(str::to_string),
                external: data["external"].as_bool().unwrap_or(false),
                port: data["port"].as_u64().and_then(|p| u16::try_from(p).ok()),
                up: l["flags"].as_array().is_some_and(|f| f.iter().any(|x| x == "UP")),
            })
        })
        .collect())
}

/// ifindexes of the devices after [`ensure`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeDevices {
    pub cilium_host: u32,
    pub cilium_net: u32,
    pub tunnel: Option<u32>,
}

/// Brings the calling thread's namespace to `spec`; returns the steps it ran (empty apart from the
/// always-idempotent address and sysctl writes when nothing changed).
#[tracing::instrument(level = "info", skip_all, fields(router_ip = ?spec.router_ip, router_ip6 = ?spec.router_ip6, tunnel = ?spec.tunnel))]
pub fn ensure(spec: &NodeDevicesSpec) -> Result<(NodeDevices, Vec<Step>), DeviceError> {
    let steps = plan(spec, &existing_links()?);
    for step in &steps {
        match step {
            Step::Ip(args) => {
                run_ip(args)?;
            }
            Step::Sysctl { key, value } => {
                let path = format!("/proc/sys/{}", key.replace('.', "/"));
                std::fs::write(&path, value).map_err(|source| DeviceError::Sysctl {
                    key: key.clone(),
                    value: value.clone(),
                    source,
                })?;
            }
        }
    }
    let index = |name: &'static str| super::attach::ifindex(name).ok_or(DeviceError::Missing(name));
    let devices = NodeDevices {
        cilium_host: index(CILIUM_HOST)?,
        cilium_net: index(CILIUM_NET)?,
        tunnel: spec.tunnel.map(|t| index(t.device())).transpose()?,
    };
    Ok((devices, steps))
}

/// The first IPv4 address of `ifname` in the calling thread's namespace (the node IP when
/// `ifname` is the uplink).
pub fn ipv4_address(ifname: &str) -> Result<Option<Ipv4Addr>, DeviceError> {
    let args: Vec<String> = ["-4", "-j", "addr", "show", "dev", ifname].iter().map(|s| s.to_string()).collect();
    parse_ipv4_address(&run_ip(&args)?)
}

/// Parses `ip -4 -j addr show dev X` output: the first `local` address.
pub fn parse_ipv4_address(text: &str) -> Result<Option<Ipv4Addr>, DeviceError> {
    Ok(parse_addresses(text)?.into_iter().find_map(|ip| match ip {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(_) => None,
    }))
}

/// The first global IPv6 address of `ifname` in the calling thread's namespace (the node's IPv6
/// underlay address when `ifname` is the uplink); link-local addresses are not node addresses.
pub fn ipv6_address(ifname: &str) -> Result<Option<Ipv6Addr>, DeviceError> {
    let args: Vec<String> =
        ["-6", "-j", "addr", "show", "dev", ifname, "scope", "global"].iter().map(|s| s.to_string()).collect();
    parse_ipv6_address(&run_ip(&args)?)
}

/// Parses `ip -6 -j addr show dev X scope global` output: the first global `local` address.
pub fn parse_ipv6_address(text: &str) -> Result<Option<Ipv6Addr>, DeviceError> {
    Ok(parse_addresses(text)?.into_iter().find_map(|ip| match ip {
        IpAddr::V6(v6) if !v6.is_unicast_link_local() => Some(v6),
        _ => None,
    }))
}

/// Every `local` address of `ip -j addr show` output, in order.
fn parse_addresses(text: &str) -> Result<Vec<IpAddr>, DeviceError> {
    let links: Vec<serde_json::Value> = serde_json::from_str(text).map_err(DeviceError::Parse)?;
    Ok(links
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["local"].as_str().and_then(|s| s.parse().ok()))
        .collect())
}

/// `ip route replace <route>` in the calling thread's namespace.
pub fn replace_route(route: &[String]) -> Result<(), DeviceError> {
    let mut args = vec!["route".to_string(), "replace".to_string()];
    args.extend_from_slice(route);
    run_ip(&args).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, kind: &str, external: bool, port: Option<u16>, up: bool) -> ExistingLink {
        ExistingLink { name: name.into(), kind: Some(kind.into()), external, port, up }
    }

    fn spec(tunnel: Option<TunnelProtocol>) -> NodeDevicesSpec {
        NodeDevicesSpec { router_ip: Some("10.0.2.241".parse().unwrap()), router_ip6: None, tunnel }
    }

    fn ip_steps(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Ip(a) => Some(a.join(" ")),
                Step::Sysctl { .. } => None,
            })
            .collect()
    }

    #[test]
    fn plans_from_nothing_to_existing_to_switched_tunnel() {
        let host_pair =
            || vec![link(CILIUM_HOST, "veth", false, None, true), link(CILIUM_NET, "veth", false, None, true)];
        let mut vxlan_present = host_pair();
        vxlan_present.push(link(CILIUM_VXLAN, "vxlan", true, Some(8472), true));
        let mut vxlan_wrong_port = host_pair();
        vxlan_wrong_port.push(link(CILIUM_VXLAN, "vxlan", true, Some(4789), true));
        let mut vxlan_down = host_pair();
        vxlan_down.push(link(CILIUM_VXLAN, "vxlan", true, Some(8472), false));
        let addr = "addr replace 10.0.2.241/32 dev cilium_host scope link";
        type Case<'a> = (&'a str, Option<TunnelProtocol>, Vec<ExistingLink>, Vec<&'a str>);
        let cases: Vec<Case> = vec![
            (
                "fresh node, vxlan",
                Some(TunnelProtocol::Vxlan),
                vec![],
                vec![
                    "link add cilium_host type veth peer name cilium_net",
                    "link set cilium_host up",
                    "link set cilium_net up",
                    addr,
                    "link add cilium_vxlan type vxlan external dstport 8472",
                    "link set cilium_vxlan up",
                ],
            ),
            ("restart: nothing to change", Some(TunnelProtocol::Vxlan), vxlan_present.clone(), vec![addr]),
            (
                "switch to geneve",
                Some(TunnelProtocol::Geneve),
                vxlan_present.clone(),
                vec![
                    addr,
                    "link del cilium_vxlan",
                    "link add cilium_geneve type geneve external dstport 6081",
                    "link set cilium_geneve up",
                ],
            ),
            ("native routing removes the tunnel", None, vxlan_present, vec![addr, "link del cilium_vxlan"]),
            (
                "wrong port is recreated",
                Some(TunnelProtocol::Vxlan),
                vxlan_wrong_port,
                vec![
                    addr,
                    "link del cilium_vxlan",
                    "link add cilium_vxlan type vxlan external dstport 8472",
                    "link set cilium_vxlan up",
                ],
            ),
            (
                "down device is brought up",
                Some(TunnelProtocol::Vxlan),
                vxlan_down,
                vec![addr, "link set cilium_vxlan up"],
            ),
            (
                "a dummy named cilium_host is replaced",
                None,
                vec![link(CILIUM_HOST, "dummy", false, None, true)],
                vec![
                    "link del cilium_host",
                    "link add cilium_host type veth peer name cilium_net",
                    "link set cilium_host up",
                    "link set cilium_net up",
                    addr,
                ],
            ),
        ];
        for (name, tunnel, existing, want) in cases {
            assert_eq!(ip_steps(&plan(&spec(tunnel), &existing)), want, "{name}");
        }
    }

    #[test]
    fn router_addresses_follow_the_enabled_families() {
        let v4 = "addr replace 10.0.2.241/32 dev cilium_host scope link";
        let v6 = "addr replace fd00:10:244::1/128 dev cilium_host nodad";
        type Case = (&'static str, Option<&'static str>, Option<&'static str>, Vec<&'static str>, bool);
        let cases: Vec<Case> = vec![
            ("IPv4 only", Some("10.0.2.241"), None, vec![v4], false),
            ("dual stack", Some("10.0.2.241"), Some("fd00:10:244::1"), vec![v4, v6], true),
            ("IPv6 only", None, Some("fd00:10:244::1"), vec![v6], true),
        ];
        let host_pair = [link(CILIUM_HOST, "veth", false, None, true), link(CILIUM_NET, "veth", false, None, true)];
        for (name, router, router6, want, v6_forwarding) in cases {
            let spec = NodeDevicesSpec {
                router_ip: router.map(|s| s.parse().unwrap()),
                router_ip6: router6.map(|s| s.parse().unwrap()),
                tunnel: None,
            };
            let steps = plan(&spec, &host_pair);
            assert_eq!(ip_steps(&steps), want, "{name}");
            let forwarding = steps.iter().any(
                |s| matches!(s, Step::Sysctl { key, value } if key == "net.ipv6.conf.all.forwarding" && value == "1"),
            );
            assert_eq!(forwarding, v6_forwarding, "{name}");
        }
    }

    #[test]
    fn parses_the_first_global_ipv6_address() {
        let text = r#"[{"ifindex":2,"ifname":"eth0","addr_info":[{"family":"inet6","local":"fe80::1","prefixlen":64},
            {"family":"inet6","local":"fc00::2","prefixlen":64}]}]"#;
        assert_eq!(parse_ipv6_address(text).unwrap(), Some("fc00::2".parse().unwrap()));
        assert_eq!(parse_ipv6_address(r#"[{"ifindex":2,"addr_info":[]}]"#).unwrap(), None);
    }

    #[test]
    fn sysctls_cover_forwarding_and_rp_filter_of_the_tunnel_device() {
        let steps = plan(&spec(Some(TunnelProtocol::Geneve)), &[]);
        for key in
            ["net.ipv4.ip_forward", "net.ipv4.conf.cilium_geneve.rp_filter", "net.ipv4.conf.cilium_host.rp_filter"]
        {
            assert!(steps.iter().any(|s| matches!(s, Step::Sysctl { key: k, .. } if k == key)), "{key}");
        }
    }

    #[test]
    fn pod_mtu_accounts_for_encapsulation() {
        assert_eq!(pod_mtu(1500, Some(TunnelProtocol::Vxlan)), 1450);
        assert_eq!(pod_mtu(1500, Some(TunnelProtocol::Geneve)), 1450);
        assert_eq!(pod_mtu(9000, None), 9000);
        assert_eq!(pod_mtu(20, Some(TunnelProtocol::Vxlan)), 0);
    }

    #[test]
    fn routes_look_like_ciliums() {
        let cidr: IpNet = "10.0.1.0/24".parse().unwrap();
        assert_eq!(
            tunnel_route(cidr, "10.0.2.241".parse::<IpAddr>().unwrap(), 1450).join(" "),
            "10.0.1.0/24 via 10.0.2.241 dev cilium_host src 10.0.2.241 mtu 1450"
        );
        assert_eq!(direct_route(cidr, "172.19.0.2".parse::<IpAddr>().unwrap()).join(" "), "10.0.1.0/24 via 172.19.0.2");
        let cidr6: IpNet = "fd00:10:244:1::/64".parse().unwrap();
        assert_eq!(
            tunnel_route(cidr6, "fd00:10:244::1".parse::<IpAddr>().unwrap(), 1450).join(" "),
            "fd00:10:244:1::/64 dev cilium_host src fd00:10:244::1 mtu 1450",
            "IPv6: on-link, a local gateway is refused"
        );
        assert_eq!(
            direct_route(cidr6, "fc00::3".parse::<IpAddr>().unwrap()).join(" "),
            "fd00:10:244:1::/64 via fc00::3"
        );
    }

    #[test]
    fn parses_the_first_ipv4_address() {
        let text = r#"[{"ifindex":2,"ifname":"eth0","addr_info":[{"family":"inet","local":"192.168.1.1","prefixlen":24},
            {"family":"inet","local":"192.168.1.9","prefixlen":24}]}]"#;
        assert_eq!(parse_ipv4_address(text).unwrap(), Some("192.168.1.1".parse().unwrap()));
        assert_eq!(parse_ipv4_address(r#"[{"ifindex":2,"addr_info":[]}]"#).unwrap(), None);
        assert_eq!(parse_ipv4_address("[]").unwrap(), None);
    }

    #[test]
    fn parses_ip_json() {
        let text = r#"[{"ifindex":4,"ifname":"cilium_vxlan","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],
            "linkinfo":{"info_kind":"vxlan","info_data":{"external":true,"port":8472}}},
            {"ifindex":1,"ifname":"lo","flags":["LOOPBACK"]}]"#;
        let links = parse_links(text).unwrap();
        assert_eq!(links[0], link(CILIUM_VXLAN, "vxlan", true, Some(8472), true));
        assert_eq!(links[1], ExistingLink { name: "lo".into(), kind: None, external: false, port: None, up: false });
    }
}
