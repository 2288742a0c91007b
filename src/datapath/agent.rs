//! The agent's datapath start-up.
//!
//! 1. [`start`] (at once, before anything else): load the object with its pinned maps — always,
//!    so a restarted agent swaps its programs in while traffic keeps flowing — and attach
//!    `from_container` to any `--datapath-interface`.
//! 2. [`AgentDatapath::setup_node`] (once IPAM knows the router IP of every enabled family): the
//!    node devices
//!    (`cilium_host`/`cilium_net`, the tunnel device in tunnel mode), `from_overlay` on the tunnel
//!    device, `from_netdev`/`to_netdev` on the uplinks, and the datapath config map.
//!
//! Links are only touched when the configuration names the node's uplinks (Cilium's `devices`
//! key): beeline has no device auto-detection, and an agent started without `devices` (tests that
//! run the real agent in the host namespace) loads programs and maps into its own bpffs directory
//! but creates no device and attaches nothing to the host's interfaces (docs/decisions.md).
//!
//! The CNI side gets the loaded [`Datapath`] through [`AgentDatapath`] (cheap to clone) and
//! attaches `from_container` to each pod's veth with [`AgentDatapath::attach_endpoint`].

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use beeline_common::datapath::{
    monitor_flags, DatapathConfig, CONFIG_F_MASQUERADE, CONFIG_F_MONITOR_MASK, TUNNEL_GENEVE, TUNNEL_NONE, TUNNEL_VXLAN,
};

use super::{
    attach::AttachMode,
    devices::{self, DeviceError, NodeDevices, NodeDevicesSpec, PerFamily, TunnelProtocol},
    loader::programs,
    tables, Attachment, Datapath, DatapathError, Direction,
};
use crate::config::{self, Config, RoutingMode};

#[derive(Clone, Debug, Default, clap::Args)]
pub struct DatapathArgs {
    /// Attach `from_container` (tc ingress) to this interface at start (repeatable). The link is
    /// pinned under `<bpf-root>/beeline` and stays attached after the agent exits; a restarted
    /// agent replaces the program atomically.
    #[arg(
        long = "datapath-interface",
        value_name = "IFNAME",
        env = "BEELINE_DATAPATH_INTERFACES",
        value_delimiter = ','
    )]
    pub interfaces: Vec<String>,
    /// How to attach tc programs.
    #[arg(long = "datapath-attach-mode", value_enum, default_value_t)]
    pub attach_mode: AttachMode,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentDatapathError {
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("node devices: {0}")]
    Devices(#[from] DeviceError),
    #[error("uplink {0} (from `devices`) has no {1} address to use as the node IP")]
    NoNodeIp(String, &'static str),
    #[error("the node set-up thread panicked")]
    Poisoned,
}

// ----- pure decisions ------------------------------------------------------------------------

/// What the agent knows about its node when it writes the config map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeFacts {
    pub router_ip: Option<Ipv4Addr>,
    pub node_ip: Option<Ipv4Addr>,
    /// ifindex of the tunnel device, once created.
    pub tunnel_ifindex: Option<u32>,
    /// The IPv6 router address on `cilium_host`.
    pub router_ip6: Option<Ipv6Addr>,
    /// The node's IPv6 underlay address (its uplink's first global one).
    pub node_ip6: Option<Ipv6Addr>,
}

/// The router addresses node set-up waits for: one per enabled family, `None` until IPAM has
/// reserved each of them (`v4`/`v6`: what IPAM holds now).
pub fn routers_ready(config: &Config, v4: Option<IpAddr>, v6: Option<IpAddr>) -> Option<PerFamily> {
    let v4 = match v4 {
        Some(IpAddr::V4(ip)) if config.enable_ipv4 => Some(ip),
        _ if config.enable_ipv4 => return None,
        _ => None,
    };
    let v6 = match v6 {
        Some(IpAddr::V6(ip)) if config.enable_ipv6 => Some(ip),
        _ if config.enable_ipv6 => return None,
        _ => None,
    };
    Some(PerFamily { v4, v6 })
}

/// Whether the agent manages links (devices, attachments) at all.
pub fn manages_devices(config: &Config) -> bool {
    !config.devices.is_empty()
}

/// Pod egress is masqueraded in BPF only with both of Cilium's keys (beeline has no iptables
/// masquerading to fall back to).
pub fn bpf_masquerade(config: &Config) -> bool {
    config.enable_ipv4_masquerade && config.enable_bpf_masquerade
}

/// The tunnel device the configuration asks for (`None` in native routing).
pub fn tunnel_of(config: &Config) -> Option<TunnelProtocol> {
    match (config.routing_mode, config.tunnel_protocol) {
        (RoutingMode::Native, _) => None,
        (RoutingMode::Tunnel, config::TunnelProtocol::Vxlan) => Some(TunnelProtocol::Vxlan),
        (RoutingMode::Tunnel, config::TunnelProtocol::Geneve) => Some(TunnelProtocol::Geneve),
    }
}

/// The config map row for `config` and what is known of the node. Addresses not known yet keep
/// the value of `previous` (the pinned row a previous agent wrote), so a restart does not blank
/// the router IP while IPAM catches up.
pub fn datapath_config(config: &Config, facts: &NodeFacts, previous: &DatapathConfig) -> DatapathConfig {
    let tunnel = tunnel_of(config);
    let mut flags = previous.flags & !(CONFIG_F_MASQUERADE | CONFIG_F_MONITOR_MASK);
    if bpf_masquerade(config) {
        flags |= CONFIG_F_MASQUERADE;
    }
    flags |= monitor_flags(
        config.monitor_aggregation,
        config.bpf_events_trace,
        config.bpf_events_drop,
        config.bpf_events_policy_verdict,
    );
    let (native_cidr, native_cidr_prefix_len) = match config.ipv4_native_routing_cidr {
        Some(net) => (tables::be(net.network()), u32::from(net.prefix_len())),
        None => (0, 0),
    };
    let v6 = |fact: Option<Ipv6Addr>, previous: [u8; 16]| match config.enable_ipv6 {
        true => fact.map_or(previous, |ip| ip.octets()),
        false => [0; 16],
    };
    DatapathConfig {
        router_ip: if config.enable_ipv4 { facts.router_ip.map_or(previous.router_ip, tables::be) } else { 0 },
        node_ip: facts.node_ip.map_or(previous.node_ip, tables::be),
        tunnel_ifindex: match tunnel {
            Some(_) => facts.tunnel_ifindex.unwrap_or(previous.tunnel_ifindex),
            None => 0,
        },
        tunnel_proto: match tunnel {
            None => TUNNEL_NONE,
            Some(TunnelProtocol::Vxlan) => TUNNEL_VXLAN,
            Some(TunnelProtocol::Geneve) => TUNNEL_GENEVE,
        },
        pod_cidr_prefix_len: u32::from(config.cluster_pool_ipv4_mask_size),
        flags,
        native_cidr,
        native_cidr_prefix_len,
        nat_port_min: previous.nat_port_min,
        nat_port_max: previous.nat_port_max,
        router_ip6: v6(facts.router_ip6, previous.router_ip6),
        node_ip6: v6(facts.node_ip6, previous.node_ip6),
        pod_cidr6_prefix_len: if config.enable_ipv6 { u32::from(config.cluster_pool_ipv6_mask_size) } else { 0 },
    }
}

/// The (program, interface, direction) attachments the node needs, given its devices.
pub fn node_attachments(config: &Config) -> Vec<(&'static str, String, Direction)> {
    let mut out = Vec::new();
    if let Some(tunnel) = tunnel_of(config) {
        out.push((programs::FROM_OVERLAY, tunnel.device().to_string(), Direction::Ingress));
    }
    for dev in &config.devices {
        out.push((programs::FROM_NETDEV, dev.clone(), Direction::Ingress));
        out.push((programs::TO_NETDEV, dev.clone(), Direction::Egress));
    }
    out
}

// ----- shell ---------------------------------------------------------------------------------

/// The loaded datapath, shared by the agent's tasks (node set-up, the CNI handler). Clones share
/// one [`Datapath`]; attaching needs `&mut`, hence the mutex (attachments are rare and short).
#[derive(Clone, Debug)]
pub struct AgentDatapath {
    datapath: Arc<Mutex<Datapath>>,
    pin_dir: PathBuf,
    attach_mode: AttachMode,
}

/// What [`AgentDatapath::setup_node`] did.
#[derive(Debug)]
pub struct NodeSetup {
    pub devices: Option<NodeDevices>,
    pub attachments: Vec<Attachment>,
    pub config: DatapathConfig,
}

/// Loads the datapath (always) and attaches `from_container` to `--datapath-interface`s.
pub fn start(args: &DatapathArgs, pin_dir: &Path) -> Result<(AgentDatapath, Vec<Attachment>), DatapathError> {
    let datapath = Datapath::load(pin_dir)?;
    let agent = AgentDatapath {
        datapath: Arc::new(Mutex::new(datapath)),
        pin_dir: pin_dir.to_path_buf(),
        attach_mode: args.attach_mode,
    };
    let mut attachments = Vec::new();
    for ifname in &args.interfaces {
        attachments.push(agent.attach(programs::FROM_CONTAINER, ifname, Direction::Ingress)?);
    }
    Ok((agent, attachments))
}

impl AgentDatapath {
    /// The loaded object (programs and open maps).
    pub fn datapath(&self) -> &Arc<Mutex<Datapath>> {
        &self.datapath
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    fn attach(&self, program: &str, ifname: &str, direction: Direction) -> Result<Attachment, DatapathError> {
        let mut datapath = self.datapath.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        datapath.attach(program, ifname, direction, self.attach_mode)
    }

    /// Attaches `from_container` (tc ingress) to a pod's host-side veth, in the calling thread's
    /// network namespace (CNI ADD; idempotent — a repeated ADD swaps the program in place).
    pub fn attach_endpoint(&self, host_ifname: &str) -> Result<Attachment, DatapathError> {
        self.attach(programs::FROM_CONTAINER, host_ifname, Direction::Ingress)
    }

    /// Brings the node to `config` once the router IPs of the enabled families are known
    /// (`routers`, see [`routers_ready`]): devices and attachments when [`manages_devices`], the
    /// config map always. Blocking (runs `ip`); idempotent.
    #[tracing::instrument(level = "info", skip_all, fields(router_ip = ?routers.v4, router_ip6 = ?routers.v6))]
    pub fn setup_node(&self, config: &Config, routers: PerFamily) -> Result<NodeSetup, AgentDatapathError> {
        let mut facts = NodeFacts { router_ip: routers.v4, router_ip6: routers.v6, ..Default::default() };
        let mut devices = None;
        let mut attachments = Vec::new();
        if manages_devices(config) {
            let spec = NodeDevicesSpec { router_ip: routers.v4, router_ip6: routers.v6, tunnel: tunnel_of(config) };
            let (devs, steps) = devices::ensure(&spec)?;
            tracing::info!(steps = steps.len(), ?devs, "node devices in place");
            let uplink = &config.devices[0];
            let missing = |family| AgentDatapathError::NoNodeIp(uplink.clone(), family);
            // The IPv4 node address is the tunnels' source and what masquerading rewrites to;
            // an IPv6-only node has none and needs its IPv6 one instead.
            if config.enable_ipv4 {
                facts.node_ip = Some(devices::ipv4_address(uplink)?.ok_or_else(|| missing("IPv4"))?);
            }
            if config.enable_ipv6 {
                facts.node_ip6 = devices::ipv6_address(uplink)?;
                if facts.node_ip6.is_none() && !config.enable_ipv4 {
                    return Err(missing("global IPv6"));
                }
            }
            facts.tunnel_ifindex = devs.tunnel;
            devices = Some(devs);
            for (program, ifname, direction) in node_attachments(config) {
                attachments.push(self.attach(program, &ifname, direction)?);
            }
        }
        let previous = tables::read_config(&self.pin_dir)?;
        let row = datapath_config(config, &facts, &previous);
        tables::write_config(&self.pin_dir, &row)?;
        if config.enable_ipv4_masquerade && !config.enable_bpf_masquerade {
            tracing::warn!("enable-ipv4-masquerade without enable-bpf-masquerade: beeline has no iptables masquerading, pod egress leaves unmasqueraded");
        }
        tracing::info!(config = ?row, attachments = attachments.len(), "node datapath configured");
        Ok(NodeSetup { devices, attachments, config: row })
    }
}

/// The agent task: waits until IPAM (whichever allocator serves the mode) has reserved the router
/// address of every enabled family (an IPv6-only node waits for no IPv4 one), sets the node up
/// once (on a blocking thread), then idles until shutdown. A failed set-up fails the agent, like
/// a Cilium agent that cannot create its devices.
pub async fn run_node_setup(
    datapath: AgentDatapath,
    config: Config,
    ipam: Arc<dyn crate::controllers::agent::pod_ipam::PodIpam>,
    token: tokio_util::sync::CancellationToken,
) -> Result<(), AgentDatapathError> {
    let mut changes = ipam.subscribe();
    let routers = loop {
        let router = |family| ipam.addr_of(family, &crate::ipam::node_alloc::Owner::Router);
        if let Some(routers) = routers_ready(&config, router(crate::ipam::Family::V4), router(crate::ipam::Family::V6))
        {
            break routers;
        }
        tokio::select! {
            _ = token.cancelled() => return Ok(()),
            changed = changes.changed() => if changed.is_err() { return Ok(()) },
        }
    };
    let setup = tokio::task::spawn_blocking(move || datapath.setup_node(&config, routers))
        .await
        .map_err(|_| AgentDatapathError::Poisoned)??;
    tracing::info!(devices = ?setup.devices, "node datapath ready");
    token.cancelled().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Sources;

    fn config(sets: &[&str]) -> Config {
        Sources { sets: sets.iter().map(|s| s.to_string()).collect(), ..Default::default() }.load().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn config_rows_follow_routing_mode_and_masquerade_keys() {
        let facts = NodeFacts {
            router_ip: Some(ip("10.0.1.1")),
            node_ip: Some(ip("192.168.0.1")),
            tunnel_ifindex: Some(7),
            ..Default::default()
        };
        let none = DatapathConfig::default();
        let tunnel = datapath_config(&config(&[]), &facts, &none);
        assert_eq!(
            (tunnel.tunnel_proto, tunnel.tunnel_ifindex, tunnel.flags, tunnel.pod_cidr_prefix_len),
            (TUNNEL_VXLAN, 7, 0, 24),
            "defaults: vxlan, no BPF masquerading"
        );
        assert_eq!((tunnel.router_ip, tunnel.node_ip), (tables::be(ip("10.0.1.1")), tables::be(ip("192.168.0.1"))));

        let native = datapath_config(
            &config(&["routing-mode=native", "ipv4-native-routing-cidr=10.0.0.0/8", "enable-bpf-masquerade=true"]),
            &facts,
            &none,
        );
        assert_eq!((native.tunnel_proto, native.tunnel_ifindex), (TUNNEL_NONE, 0));
        assert_eq!(native.flags & CONFIG_F_MASQUERADE, CONFIG_F_MASQUERADE);
        assert_eq!((native.native_cidr, native.native_cidr_prefix_len), (tables::be(ip("10.0.0.0")), 8));

        let geneve = datapath_config(
            &config(&["tunnel-protocol=geneve", "enable-ipv4-masquerade=false", "enable-bpf-masquerade=true"]),
            &facts,
            &none,
        );
        assert_eq!((geneve.tunnel_proto, geneve.flags), (TUNNEL_GENEVE, 0), "masquerading needs both keys");
    }

    #[test]
    fn ipv6_fields_follow_the_enabled_families() {
        let router6: Ipv6Addr = "fd00::1".parse().unwrap();
        let node6: Ipv6Addr = "fc00::2".parse().unwrap();
        let facts = NodeFacts {
            router_ip: Some(ip("10.0.1.1")),
            node_ip: Some(ip("192.168.0.1")),
            router_ip6: Some(router6),
            node_ip6: Some(node6),
            ..Default::default()
        };
        let stale = DatapathConfig { router_ip6: [9; 16], node_ip6: [9; 16], ..Default::default() };
        type Case = (&'static str, Vec<&'static str>, bool, bool, u32);
        let cases: Vec<Case> = vec![
            ("IPv4 only: IPv6 fields cleared", vec![], true, false, 0),
            ("dual stack", vec!["enable-ipv6=true"], true, true, 120),
            (
                "IPv6 only, /64 per node",
                vec![
                    "enable-ipv4=false",
                    "enable-ipv6=true",
                    "routing-mode=native",
                    "cluster-pool-ipv6-cidr=fd00::/56",
                    "cluster-pool-ipv6-mask-size=64",
                ],
                false,
                true,
                64,
            ),
        ];
        for (name, sets, v4, v6, len) in cases {
            let row = datapath_config(&config(&sets), &facts, &stale);
            let want6 = |ip: Ipv6Addr| if v6 { ip.octets() } else { [0; 16] };
            assert_eq!((row.router_ip6, row.node_ip6), (want6(router6), want6(node6)), "{name}");
            assert_eq!(row.pod_cidr6_prefix_len, len, "{name}");
            assert_eq!(row.router_ip, if v4 { tables::be(ip("10.0.1.1")) } else { 0 }, "{name}");
        }
        let keep = datapath_config(&config(&["enable-ipv6=true"]), &NodeFacts::default(), &stale);
        assert_eq!((keep.router_ip6, keep.node_ip6), ([9; 16], [9; 16]), "unknown yet: the pinned row's");
    }

    #[test]
    fn node_setup_waits_for_the_router_of_every_enabled_family() {
        let v4: IpAddr = "10.0.1.1".parse().unwrap();
        let v6: IpAddr = "fd00::1".parse().unwrap();
        let ipv6_only = ["enable-ipv4=false", "enable-ipv6=true", "routing-mode=native"];
        type Case<'a> = (&'a str, Vec<&'a str>, Option<IpAddr>, Option<IpAddr>, Option<(bool, bool)>);
        let cases: Vec<Case> = vec![
            ("IPv4: waits for its router", vec![], None, None, None),
            ("IPv4: ready", vec![], Some(v4), None, Some((true, false))),
            ("IPv4: an IPv6 router is not used", vec![], Some(v4), Some(v6), Some((true, false))),
            ("dual stack: IPv4 alone is not enough", vec!["enable-ipv6=true"], Some(v4), None, None),
            ("dual stack: IPv6 alone is not enough", vec!["enable-ipv6=true"], None, Some(v6), None),
            ("dual stack: ready", vec!["enable-ipv6=true"], Some(v4), Some(v6), Some((true, true))),
            ("IPv6 only: no IPv4 router to wait for", ipv6_only.to_vec(), None, Some(v6), Some((false, true))),
            ("IPv6 only: waits for its router", ipv6_only.to_vec(), None, None, None),
        ];
        for (name, sets, r4, r6, want) in cases {
            let got = routers_ready(&config(&sets), r4, r6).map(|r| (r.v4.is_some(), r.v6.is_some()));
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn unknown_addresses_keep_what_a_previous_agent_wrote() {
        let previous = DatapathConfig {
            router_ip: tables::be(ip("10.0.1.1")),
            node_ip: tables::be(ip("192.168.0.1")),
            tunnel_ifindex: 9,
            flags: CONFIG_F_MASQUERADE,
            nat_port_min: 40000,
            ..Default::default()
        };
        let row = datapath_config(&config(&[]), &NodeFacts::default(), &previous);
        assert_eq!((row.router_ip, row.node_ip, row.tunnel_ifindex), (previous.router_ip, previous.node_ip, 9));
        assert_eq!(row.flags, 0, "masquerading follows the current configuration");
        assert_eq!(row.nat_port_min, 40000);
    }

    #[test]
    fn devices_decide_what_gets_attached() {
        assert!(!manages_devices(&config(&[])), "no devices: the agent touches no links");
        assert!(node_attachments(&config(&[])).iter().all(|(p, _, _)| *p == programs::FROM_OVERLAY));
        let cfg = config(&["devices=eth0 eth1"]);
        assert!(manages_devices(&cfg));
        let got: Vec<(&str, String, Direction)> = node_attachments(&cfg);
        assert_eq!(
            got,
            vec![
                (programs::FROM_OVERLAY, "cilium_vxlan".to_string(), Direction::Ingress),
                (programs::FROM_NETDEV, "eth0".to_string(), Direction::Ingress),
                (programs::TO_NETDEV, "eth0".to_string(), Direction::Egress),
                (programs::FROM_NETDEV, "eth1".to_string(), Direction::Ingress),
                (programs::TO_NETDEV, "eth1".to_string(), Direction::Egress),
            ]
        );
        let native = config(&["routing-mode=native", "ipv4-native-routing-cidr=10.0.0.0/8", "devices=eth0"]);
        assert_eq!(node_attachments(&native).len(), 2, "no tunnel device in native routing");
    }
}
