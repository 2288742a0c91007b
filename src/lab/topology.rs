//! Network-namespace topologies: namespaces, veth pairs, addresses, routes and an underlay bridge
//! that lives in its own namespace (nothing touches the host's namespace).
//!
//! Used by the lab and by the real-kernel tests (`tests/integration`), which extend it rather than
//! writing their own. Every namespace is named `<prefix>-<role>` with a prefix unique to this
//! process and topology, so tests run in parallel; all of them are deleted when the [`Topology`]
//! drops — also while unwinding from a panic.
//!
//! Configuration goes through `ip -n <ns> ...` (iproute2): one short command per step, errors
//! carry its stderr. Namespace entry for code and processes is `setns` ([`NetNs`]).

use std::{
    io,
    net::IpAddr,
    sync::atomic::{AtomicU32, Ordering},
};

use crate::datapath::netns::{run_ip, NetNs};

static NEXT_TOPOLOGY: AtomicU32 = AtomicU32::new(0);

/// Name of the bridge in the underlay namespace.
pub const UNDERLAY_BRIDGE: &str = "br0";

#[derive(Debug)]
pub struct Topology {
    prefix: String,
    /// Full names, in creation order; deleted in reverse.
    namespaces: Vec<String>,
    underlay: Option<NetNs>,
    underlay_ports: u32,
}

impl Topology {
    /// An empty topology whose namespace names start with `bl-<label>-<pid>-<n>`.
    pub fn new(label: &str) -> Topology {
        let n = NEXT_TOPOLOGY.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("bl-{label}-{}-{n}", std::process::id());
        Topology { prefix, namespaces: Vec::new(), underlay: None, underlay_ports: 0 }
    }

    /// An empty topology with an exact prefix, for a long-lived lab whose names must be found
    /// again by a later process (`beeline lab down`). The caller keeps prefixes unique.
    pub fn with_prefix(prefix: &str) -> Topology {
        Topology { prefix: prefix.to_string(), namespaces: Vec::new(), underlay: None, underlay_ports: 0 }
    }

    /// Gives up ownership: the namespaces outlive this value (no cleanup on drop) and their names
    /// are returned, for a lab that keeps running after the process that built it exits.
    pub fn keep(mut self) -> Vec<String> {
        self.underlay = None;
        std::mem::take(&mut self.namespaces)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The namespace names this topology owns (for diagnostics).
    pub fn namespace_names(&self) -> &[String] {
        &self.namespaces
    }

    /// Creates namespace `<prefix>-<role>` with its loopback up.
    pub fn namespace(&mut self, role: &str) -> io::Result<NetNs> {
        let name = format!("{}-{role}", self.prefix);
        let ns = NetNs::create(&name)?;
        self.namespaces.push(name.clone());
        run_ip(&["-n", &name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A veth pair with one end in each namespace, both up. Names are per namespace, so
    /// parallel topologies may reuse them.
    pub fn veth(&mut self, a: (&NetNs, &str), b: (&NetNs, &str)) -> io::Result<()> {
        let (ns_a, if_a) = a;
        let (ns_b, if_b) = b;
        run_ip(&["-n", ns_a.name(), "link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", ns_b.name()])?;
        run_ip(&["-n", ns_a.name(), "link", "set", if_a, "up"])?;
        run_ip(&["-n", ns_b.name(), "link", "set", if_b, "up"])?;
        Ok(())
    }

    /// Adds `cidr` (e.g. `10.0.0.2/24` or `fd00::2/64`) to `ifname`. IPv6 addresses skip DAD so
    /// they are usable at once.
    pub fn address(&self, ns: &NetNs, ifname: &str, cidr: &str) -> io::Result<()> {
        let mut args = vec!["-n", ns.name(), "addr", "add", cidr, "dev", ifname];
        if cidr.contains(':') {
            args.push("nodad");
        }
        run_ip(&args)
    }

    /// `ip route add <route...>` in `ns`, e.g. `&["default", "via", "10.0.0.1"]`.
    pub fn route(&self, ns: &NetNs, route: &[&str]) -> io::Result<()> {
        let family = if route.iter().any(|w| w.contains(':')) { "-6" } else { "-4" };
        let mut args = vec![family, "-n", ns.name(), "route", "add"];
        args.extend_from_slice(route);
        run_ip(&args)
    }

    /// Writes a sysctl inside `ns`, e.g. `("net.ipv4.ip_forward", "1")`. Network sysctls resolve
    /// against the writer's namespace, so this runs on a thread inside `ns`.
    pub fn sysctl(&self, ns: &NetNs, key: &str, value: &str) -> io::Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        ns.run(|| std::fs::write(&path, value))?
            .map_err(|e| io::Error::new(e.kind(), format!("sysctl {key}={value} in {}: {e}", ns.name())))
    }

    /// The underlay namespace with bridge [`UNDERLAY_BRIDGE`], created on first use.
    pub fn underlay(&mut self) -> io::Result<&NetNs> {
        if self.underlay.is_none() {
            let ns = self.namespace("underlay")?;
            run_ip(&["-n", ns.name(), "link", "add", UNDERLAY_BRIDGE, "type", "bridge"])?;
            run_ip(&["-n", ns.name(), "link", "set", UNDERLAY_BRIDGE, "up"])?;
            self.underlay = Some(ns);
        }
        Ok(self.underlay.as_ref().expect("just created"))
    }

    /// Plugs `ns` into the underlay bridge through a veth named `ifname` in `ns`, with `cidrs`.
    pub fn connect_to_underlay(&mut self, ns: &NetNs, ifname: &str, cidrs: &[&str]) -> io::Result<()> {
        let port = format!("p{}", self.underlay_ports);
        self.underlay_ports += 1;
        let underlay_name = self.underlay()?.name().to_string();
        let underlay = NetNs::open(&underlay_name)?;
        self.veth((ns, ifname), (&underlay, &port))?;
        run_ip(&["-n", &underlay_name, "link", "set", &port, "master", UNDERLAY_BRIDGE])?;
        for cidr in cidrs {
            self.address(ns, ifname, cidr)?;
        }
        Ok(())
    }

    /// Deletes every namespace now (also done on drop); returns the first error.
    pub fn teardown(&mut self) -> io::Result<()> {
        self.underlay = None;
        let mut first_error = None;
        while let Some(name) = self.namespaces.pop() {
            if let Err(e) = NetNs::delete(&name) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("topology {}: cleanup failed: {e}", self.prefix);
        }
    }
}

/// The address part of a CIDR string (`10.0.0.2/24` → `10.0.0.2`).
pub fn host_of(cidr: &str) -> IpAddr {
    cidr.split('/').next().and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("not an address/prefix: {cidr}"))
}

/// A two-namespace "node + pod" pair: `pod` reaches `node` over a veth whose host side
/// (`host_if`, in `node`) is where `from_container` attaches.
#[derive(Debug)]
pub struct PodOnNode {
    pub node: NetNs,
    pub pod: NetNs,
    pub host_if: String,
    pub pod_if: String,
    pub node_addr: IpAddr,
    pub pod_addr: IpAddr,
}

impl PodOnNode {
    /// Registers the pod as the endpoint behind its host-side veth (`beeline_lxc` under
    /// `pin_dir`), as the agent does at CNI ADD: `from_container` drops sources it does not know
    /// ("Invalid source ip"), and its ARP responder answers with the host veth's MAC.
    pub fn register_endpoint(&self, topo: &Topology, pin_dir: &std::path::Path) -> io::Result<()> {
        let IpAddr::V4(addr) = self.pod_addr else {
            return Err(io::Error::other(format!("IPv4 pods only: {}", self.pod_addr)));
        };
        let ifindex = self
            .node
            .run(|| crate::datapath::attach::ifindex(&self.host_if))?
            .ok_or_else(|| io::Error::other(format!("no interface {} in {}", self.host_if, self.node.name())))?;
        let info = beeline_common::endpoint::EndpointInfo {
            ifindex,
            mac: topo.mac(&self.pod, &self.pod_if)?,
            node_mac: topo.mac(&self.node, &self.host_if)?,
            ..Default::default()
        };
        crate::datapath::tables::upsert_endpoint(pin_dir, addr.into(), &info).map_err(io::Error::other)
    }
}

impl Topology {
    /// Builds [`PodOnNode`] with IPv4 `subnet_base` like `10.200.0` (.1 node side, .2 pod side).
    pub fn pod_on_node(&mut self, subnet_base: &str) -> io::Result<PodOnNode> {
        let node = self.namespace("node")?;
        let pod = self.namespace("pod")?;
        let (host_if, pod_if) = ("lxc0".to_string(), "eth0".to_string());
        self.veth((&node, &host_if), (&pod, &pod_if))?;
        let node_cidr = format!("{subnet_base}.1/24");
        let pod_cidr = format!("{subnet_base}.2/24");
        self.address(&node, &host_if, &node_cidr)?;
        self.address(&pod, &pod_if, &pod_cidr)?;
        self.route(&pod, &["default", "via", &format!("{subnet_base}.1")])?;
        Ok(PodOnNode { node, pod, host_if, pod_if, node_addr: host_of(&node_cidr), pod_addr: host_of(&pod_cidr) })
    }
}

/// A pod plugged in the way Cilium's CNI plugin does it: the host side of its veth stays in the
/// node namespace without an address (the BPF datapath answers ARP and forwards), the pod side is
/// `eth0` with a /32, a link route to the gateway and a default route through it.
#[derive(Debug)]
pub struct RoutedPod {
    pub ns: NetNs,
    /// The host-side veth, in the node namespace.
    pub host_if: String,
    pub addr: std::net::Ipv4Addr,
}

impl Topology {
    /// Creates pod namespace `<prefix>-<role>` behind `host_if` in `node`, with address `addr`/32,
    /// gateway `gateway` and `mtu` on the pod's `eth0`.
    pub fn routed_pod(
        &mut self,
        node: &NetNs,
        role: &str,
        host_if: &str,
        addr: std::net::Ipv4Addr,
        gateway: std::net::Ipv4Addr,
        mtu: u32,
    ) -> io::Result<RoutedPod> {
        let ns = self.namespace(role)?;
        self.veth((node, host_if), (&ns, "eth0"))?;
        run_ip(&["-n", ns.name(), "link", "set", "eth0", "mtu", &mtu.to_string()])?;
        self.address(&ns, "eth0", &format!("{addr}/32"))?;
        let gw = gateway.to_string();
        self.route(&ns, &[&gw, "dev", "eth0", "scope", "link"])?;
        self.route(&ns, &["default", "via", &gw, "dev", "eth0"])?;
        Ok(RoutedPod { ns, host_if: host_if.to_string(), addr })
    }

    /// The MAC address of `ifname` in `ns`.
    pub fn mac(&self, ns: &NetNs, ifname: &str) -> io::Result<[u8; 6]> {
        let out =
            std::process::Command::new("ip").args(["-n", ns.name(), "-br", "link", "show", "dev", ifname]).output()?;
        // "eth0@if5   UP   0a:1b:2c:3d:4e:5f <BROADCAST,...>"
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .find_map(parse_mac)
            .ok_or_else(|| io::Error::other(format!("no MAC for {ifname} in {}: {text}", ns.name())))
    }
}

/// `aa:bb:cc:dd:ee:ff` → bytes.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = text.split(':').map(|p| u8::from_str_radix(p, 16).ok()).collect::<Option<_>>()?;
    (parts.len() == 6 && text.len() == 17).then(|| parts.try_into().ok()).flatten()
}
