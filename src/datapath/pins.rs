//! Where beeline pins its objects under the agent's bpffs directory (`Config::pin_dir()`):
//!
//! ```text
//! <pin_dir>/beeline_ep_stats                      maps, by their name in the object
//! <pin_dir>/links/from_container-ingress-<ifname> one TCX link per (program, direction, interface)
//! ```
//!
//! bpffs refuses names containing `.` (EPERM, "reserved for future use"), so a dot in an interface
//! name (VLAN devices like `eth0.100`) is written as `:`, which Linux forbids in interface names.
//! Program names are Rust identifiers and never contain `-`, so the first two dashes separate.
//!
//! Pure path arithmetic; the loader and the CLI both use it so they always agree.

use std::path::{Path, PathBuf};

use beeline_common::{datapath, endpoint, events, ipcache, lb, map_names, nat, policy, tunnel};

/// Every map the loader pins, so a restarted agent (and the CLI) find the same kernel maps.
pub const PINNED_MAPS: &[&str] = &[
    map_names::ENDPOINT_STATS,
    endpoint::MAP_NAME,
    ipcache::MAP_NAME,
    tunnel::MAP_NAME,
    datapath::CONFIG_MAP_NAME,
    datapath::DROPS_MAP_NAME,
    policy::MAP_NAME,
    policy::ENDPOINT_MAP_NAME,
    // The load balancer's: the agent's map manager reopens the rows maps (same shapes), the
    // datapath alone writes conntrack and affinity.
    lb::map_names::LB4_SERVICES,
    lb::map_names::LB4_BACKENDS,
    lb::map_names::LB4_REVERSE_NAT,
    lb::map_names::LB_AFFINITY_MATCH,
    lb::map_names::LB4_MAGLEV,
    lb::map_names::LB4_AFFINITY,
    lb::map_names::LB4_SOURCE_RANGE,
    lb::map_names::LB_CONFIG,
    lb::map_names::CT4,
    lb::map_names::LB6_SERVICES,
    lb::map_names::LB6_BACKENDS,
    lb::map_names::LB6_REVERSE_NAT,
    lb::map_names::CT6,
    nat::SNAT_MAP_NAME,
    // Pinned so a restarted agent reads the ring the still-attached programs write.
    events::RING_MAP_NAME,
    events::LOST_MAP_NAME,
    events::AGG_MAP_NAME,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

impl serde::Serialize for Direction {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinLayout {
    dir: PathBuf,
}

impl PinLayout {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        PinLayout { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn links_dir(&self) -> PathBuf {
        self.dir.join("links")
    }

    pub fn link(&self, program: &str, direction: Direction, ifname: &str) -> PathBuf {
        self.links_dir().join(format!("{program}-{}-{}", direction.as_str(), ifname.replace('.', ":")))
    }

    /// The inverse of [`Self::link`] for a file name found in [`Self::links_dir`].
    pub fn parse_link_name(name: &str) -> Option<(&str, Direction, String)> {
        let (program, rest) = name.split_once('-')?;
        let (direction, ifname) = rest.split_once('-')?;
        let direction = match direction {
            "ingress" => Direction::Ingress,
            "egress" => Direction::Egress,
            _ => return None,
        };
        (!program.is_empty() && !ifname.is_empty()).then(|| (program, direction, ifname.replace(':', ".")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_stable() {
        let l = PinLayout::new("/sys/fs/bpf/beeline");
        assert_eq!(l.map("beeline_ep_stats"), PathBuf::from("/sys/fs/bpf/beeline/beeline_ep_stats"));
        assert_eq!(
            l.link("from_container", Direction::Ingress, "lxc12ab"),
            PathBuf::from("/sys/fs/bpf/beeline/links/from_container-ingress-lxc12ab")
        );
    }

    #[test]
    fn link_names_round_trip_and_junk_is_rejected() {
        let cases = [
            ("from_container-ingress-lxc0", Some(("from_container", Direction::Ingress, "lxc0"))),
            // Dashes after the second one belong to the interface name; `:` stands for `.`.
            ("to_netdev-egress-eth0:100", Some(("to_netdev", Direction::Egress, "eth0.100"))),
            ("to_netdev-egress-veth-a", Some(("to_netdev", Direction::Egress, "veth-a"))),
            ("from_container-sideways-lxc0", None),
            ("from_container-ingress-", None),
            ("nodashes", None),
        ];
        for (name, want) in cases {
            let want = want.map(|(p, d, i)| (p, d, i.to_string()));
            assert_eq!(PinLayout::parse_link_name(name), want, "{name}");
        }
        let l = PinLayout::new("/x");
        let p = l.link("a", Direction::Egress, "veth.1");
        let file = p.file_name().unwrap().to_str().unwrap();
        assert!(!file.contains('.'), "bpffs rejects dots: {file}");
        assert_eq!(PinLayout::parse_link_name(file), Some(("a", Direction::Egress, "veth.1".to_string())));
    }
}
