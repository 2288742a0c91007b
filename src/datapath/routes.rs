//! Kernel routes to remote pod CIDRs, reconciled: added, replaced when they differ, removed when
//! the node goes — and never a route beeline did not create.
//!
//! Ownership is marked in the kernel itself: every route beeline installs carries the routing
//! protocol [`ROUTE_PROTO`], so after an agent restart the routes of the previous agent are still
//! recognised as ours (and those of nodes deleted meanwhile removed), while routes of other
//! protocols (`kernel`, `boot`, `static`, a routing daemon's) are left alone. A desired prefix that
//! already has a foreign route is skipped with a note rather than overwritten.
//!
//! [`plan`] is pure (desired routes + what exists → steps); [`RouteTable`] is the I/O, with
//! [`IpRouteTable`] running `ip route` in the calling thread's namespace.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;

use super::devices::{self, DeviceError, CILIUM_HOST};

/// The `proto` of beeline's routes (not one of iproute2's named protocols).
pub const ROUTE_PROTO: u8 = 196;

/// How a remote pod CIDR is reached.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteVia {
    /// Tunnel mode: via the router IP on `cilium_host`, with the pod MTU, so host-originated
    /// traffic enters the BPF datapath.
    /// The router IP is of the prefix's family.
    CiliumHost { router_ip: IpAddr, mtu: u32 },
    /// Native routing with `auto-direct-node-routes`: via the peer node's IP on the underlay (of
    /// the prefix's family).
    Node { node_ip: IpAddr },
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteSpec {
    pub prefix: IpNet,
    pub via: RouteVia,
}

impl RouteSpec {
    /// The `ip route replace` arguments (after `ip route replace`), protocol included.
    pub fn args(&self) -> Vec<String> {
        let mut args = match self.via {
            RouteVia::CiliumHost { router_ip, mtu } => devices::tunnel_route(self.prefix, router_ip, mtu),
            RouteVia::Node { node_ip } => devices::direct_route(self.prefix, node_ip),
        };
        args.extend(["proto".to_string(), ROUTE_PROTO.to_string()]);
        args
    }

    /// Whether the kernel's route already is this one.
    fn matches(&self, r: &ExistingRoute) -> bool {
        match self.via {
            RouteVia::CiliumHost { router_ip, mtu } => {
                // IPv6 routes on-link (see `devices::tunnel_route`).
                let gateway = router_ip.is_ipv4().then_some(router_ip);
                r.gateway == gateway
                    && r.dev.as_deref() == Some(CILIUM_HOST)
                    && r.prefsrc == Some(router_ip)
                    && r.mtu == Some(mtu)
            }
            // The device is whatever reaches the node; the kernel picks it.
            RouteVia::Node { node_ip } => r.gateway == Some(node_ip) && r.mtu.is_none(),
        }
    }
}

/// A main-table route (either family) as `ip -j -d route show` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExistingRoute {
    pub prefix: IpNet,
    pub gateway: Option<IpAddr>,
    pub dev: Option<String>,
    pub prefsrc: Option<IpAddr>,
    pub mtu: Option<u32>,
    /// `protocol` as printed: a name (`kernel`, `boot`) or a number.
    pub protocol: String,
}

impl ExistingRoute {
    pub fn is_ours(&self) -> bool {
        self.protocol == ROUTE_PROTO.to_string()
    }
}

/// One step of a reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteStep {
    Replace(RouteSpec),
    Delete(IpNet),
    /// A desired prefix routed by someone else: left alone.
    Foreign {
        prefix: IpNet,
        protocol: String,
    },
}

/// The steps that bring `existing` to `desired`: ours that differ are replaced, ours that are not
/// desired deleted, foreign routes reported and never touched.
pub fn plan(desired: &BTreeSet<RouteSpec>, existing: &[ExistingRoute]) -> Vec<RouteStep> {
    let mut steps = Vec::new();
    let wanted: BTreeSet<IpNet> = desired.iter().map(|r| r.prefix).collect();
    for r in existing.iter().filter(|r| r.is_ours() && !wanted.contains(&r.prefix)) {
        steps.push(RouteStep::Delete(r.prefix));
    }
    for spec in desired {
        let same_prefix: Vec<&ExistingRoute> = existing.iter().filter(|r| r.prefix == spec.prefix).collect();
        if let Some(foreign) = same_prefix.iter().find(|r| !r.is_ours()) {
            steps.push(RouteStep::Foreign { prefix: spec.prefix, protocol: foreign.protocol.clone() });
            continue;
        }
        if !same_prefix.iter().any(|r| spec.matches(r)) {
            steps.push(RouteStep::Replace(spec.clone()));
        }
    }
    steps
}

/// Parses `ip -j -d route show` output (one family, one table); `default` and unparsable rows are
/// left out.
pub fn parse_routes(text: &str) -> Result<Vec<ExistingRoute>, DeviceError> {
    let rows: Vec<serde_json::Value> = serde_json::from_str(text).map_err(DeviceError::Parse)?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let dst = r["dst"].as_str()?;
            let prefix: IpNet =
                if dst.contains('/') { dst.parse().ok()? } else { IpNet::from(dst.parse::<IpAddr>().ok()?) };
            let ip = |field: &str| r[field].as_str().and_then(|s| s.parse().ok());
            let mtu = r["metrics"]
                .as_array()
                .and_then(|m| m.iter().find_map(|x| x["mtu"].as_u64()))
                .and_then(|m| u32::try_from(m).ok());
            let protocol = match &r["protocol"] {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                _ => "unspec".to_string(),
            };
            Some(ExistingRoute {
                prefix,
                gateway: ip("gateway"),
                dev: r["dev"].as_str().map(str::to_string),
                prefsrc: ip("prefsrc"),
                mtu,
                protocol,
            })
        })
        .collect())
}

/// Where routes are read and written.
pub trait RouteTable: Send {
    /// Why routes cannot be programmed here (e.g. the node devices do not exist), if so.
    fn unavailable(&mut self) -> Option<String>;
    fn list(&mut self) -> Result<Vec<ExistingRoute>, DeviceError>;
    fn replace(&mut self, route: &RouteSpec) -> Result<(), DeviceError>;
    fn delete(&mut self, prefix: IpNet) -> Result<(), DeviceError>;
}

/// What one reconcile did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteReport {
    pub replaced: usize,
    pub deleted: usize,
    pub foreign: usize,
    pub failed: usize,
    /// Set when nothing was done because the table is unavailable.
    pub skipped: Option<String>,
}

/// Brings `table` to `desired`; failures are counted and logged (the caller retries).
#[tracing::instrument(level = "debug", skip_all, fields(desired = desired.len()))]
pub fn reconcile(table: &mut dyn RouteTable, desired: &BTreeSet<RouteSpec>) -> RouteReport {
    let mut report = RouteReport::default();
    if let Some(reason) = table.unavailable() {
        report.skipped = Some(reason);
        return report;
    }
    let existing = match table.list() {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list routes");
            report.failed += 1;
            return report;
        }
    };
    for step in plan(desired, &existing) {
        let result = match &step {
            RouteStep::Replace(spec) => table.replace(spec).map(|()| report.replaced += 1),
            RouteStep::Delete(prefix) => table.delete(*prefix).map(|()| report.deleted += 1),
            RouteStep::Foreign { prefix, protocol } => {
                tracing::warn!(%prefix, %protocol, "a route beeline did not create covers this pod CIDR; leaving it alone");
                report.foreign += 1;
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::warn!(?step, error = %e, "route change failed; will retry");
            report.failed += 1;
        }
    }
    report
}

/// The main routing table of the calling thread's namespace, through `ip`. Unavailable while
/// `cilium_host` does not exist: routes only ever point into beeline's own devices (tunnel mode),
/// or are installed where beeline set the node up (native mode), never into a host that merely
/// runs an agent without node devices (the process tests do that in the host's namespace).
#[derive(Debug, Default)]
pub struct IpRouteTable;

impl RouteTable for IpRouteTable {
    fn unavailable(&mut self) -> Option<String> {
        super::attach::ifindex(CILIUM_HOST)
            .is_none()
            .then(|| format!("{CILIUM_HOST} does not exist (node devices not set up here)"))
    }

    /// Both families' main tables (`ip -j` prints one family at a time).
    fn list(&mut self) -> Result<Vec<ExistingRoute>, DeviceError> {
        let mut routes = Vec::new();
        for family in ["-4", "-6"] {
            let args: Vec<String> = [family, "-j", "-d", "route", "show", "table", "main"].map(String::from).to_vec();
            routes.extend(parse_routes(&devices::run_ip(&args)?)?);
        }
        Ok(routes)
    }

    fn replace(&mut self, route: &RouteSpec) -> Result<(), DeviceError> {
        devices::replace_route(&route.args())
    }

    fn delete(&mut self, prefix: IpNet) -> Result<(), DeviceError> {
        let args = ["route", "del", &prefix.to_string(), "proto", &ROUTE_PROTO.to_string(), "table", "main"];
        devices::run_ip(&args.map(String::from)).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn tunnel(prefix: &str) -> RouteSpec {
        RouteSpec {
            prefix: net(prefix),
            via: RouteVia::CiliumHost { router_ip: "10.0.2.241".parse().unwrap(), mtu: 1450 },
        }
    }

    fn direct(prefix: &str, node: &str) -> RouteSpec {
        RouteSpec { prefix: net(prefix), via: RouteVia::Node { node_ip: node.parse().unwrap() } }
    }

    fn tunnel6(prefix: &str) -> RouteSpec {
        RouteSpec {
            prefix: net(prefix),
            via: RouteVia::CiliumHost { router_ip: "fd00:10:244::1".parse().unwrap(), mtu: 1450 },
        }
    }

    /// An IPv6 tunnel-mode route as the kernel lists it: on-link, no gateway.
    fn existing_tunnel6(prefix: &str, protocol: &str) -> ExistingRoute {
        ExistingRoute {
            prefix: net(prefix),
            gateway: None,
            dev: Some(CILIUM_HOST.into()),
            prefsrc: Some("fd00:10:244::1".parse().unwrap()),
            mtu: Some(1450),
            protocol: protocol.into(),
        }
    }

    fn existing_tunnel(prefix: &str, mtu: u32, protocol: &str) -> ExistingRoute {
        ExistingRoute {
            prefix: net(prefix),
            gateway: Some("10.0.2.241".parse().unwrap()),
            dev: Some(CILIUM_HOST.into()),
            prefsrc: Some("10.0.2.241".parse().unwrap()),
            mtu: Some(mtu),
            protocol: protocol.into(),
        }
    }

    #[test]
    fn plans_add_replace_delete_and_leave_foreign_routes_alone() {
        let ours = ROUTE_PROTO.to_string();
        let foreign_static = ExistingRoute {
            prefix: net("10.0.7.0/24"),
            gateway: Some("192.168.1.1".parse().unwrap()),
            dev: Some("eth0".into()),
            prefsrc: None,
            mtu: None,
            protocol: "static".into(),
        };
        type Case = (&'static str, Vec<RouteSpec>, Vec<ExistingRoute>, Vec<RouteStep>);
        let cases: Vec<Case> = vec![
            ("nothing", vec![], vec![], vec![]),
            (
                "IPv6 peers",
                vec![tunnel6("fd00:10:244:1::/64"), direct("fd00:10:244:2::/64", "fc00::3")],
                vec![existing_tunnel6("fd00:10:244:1::/64", &ours)],
                vec![RouteStep::Replace(direct("fd00:10:244:2::/64", "fc00::3"))],
            ),
            ("node added", vec![tunnel("10.0.1.0/24")], vec![], vec![RouteStep::Replace(tunnel("10.0.1.0/24"))]),
            ("in place", vec![tunnel("10.0.1.0/24")], vec![existing_tunnel("10.0.1.0/24", 1450, &ours)], vec![]),
            (
                "mtu changed",
                vec![tunnel("10.0.1.0/24")],
                vec![existing_tunnel("10.0.1.0/24", 1500, &ours)],
                vec![RouteStep::Replace(tunnel("10.0.1.0/24"))],
            ),
            (
                "node removed",
                vec![],
                vec![existing_tunnel("10.0.1.0/24", 1450, &ours)],
                vec![RouteStep::Delete(net("10.0.1.0/24"))],
            ),
            ("someone else's route is never deleted", vec![], vec![foreign_static.clone()], vec![]),
            (
                "nor replaced",
                vec![tunnel("10.0.7.0/24")],
                vec![foreign_static],
                vec![RouteStep::Foreign { prefix: net("10.0.7.0/24"), protocol: "static".into() }],
            ),
            (
                "tunnel to native",
                vec![direct("10.0.1.0/24", "192.168.0.2")],
                vec![existing_tunnel("10.0.1.0/24", 1450, &ours)],
                vec![RouteStep::Replace(direct("10.0.1.0/24", "192.168.0.2"))],
            ),
        ];
        for (name, desired, existing, want) in cases {
            let desired: BTreeSet<RouteSpec> = desired.into_iter().collect();
            assert_eq!(plan(&desired, &existing), want, "{name}");
        }
    }

    #[test]
    fn route_arguments_carry_beelines_protocol() {
        assert_eq!(
            tunnel("10.0.1.0/24").args().join(" "),
            "10.0.1.0/24 via 10.0.2.241 dev cilium_host src 10.0.2.241 mtu 1450 proto 196"
        );
        assert_eq!(direct("10.0.1.0/24", "192.168.0.2").args().join(" "), "10.0.1.0/24 via 192.168.0.2 proto 196");
    }

    #[test]
    fn parses_ip_route_json() {
        let text = r#"[{"type":"unicast","dst":"default","gateway":"192.0.2.1","dev":"eth0","protocol":"boot","flags":[]},
            {"type":"unicast","dst":"10.0.1.0/24","gateway":"10.0.2.241","dev":"cilium_host","protocol":"196",
             "scope":"global","prefsrc":"10.0.2.241","metrics":[{"mtu":1450}],"flags":[]},
            {"type":"unicast","dst":"10.9.9.9","dev":"eth0","protocol":"static","flags":[]}]"#;
        let routes = parse_routes(text).unwrap();
        assert_eq!(routes.len(), 2, "default is left out");
        assert_eq!(routes[0], existing_tunnel("10.0.1.0/24", 1450, "196"));
        assert!(routes[0].is_ours());
        assert_eq!(routes[1].prefix, net("10.9.9.9/32"));
        assert!(!routes[1].is_ours());
    }
}
