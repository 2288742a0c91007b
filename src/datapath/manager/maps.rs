//! Map definitions: name, kind, size and the ordering hook of every map the manager syncs. The
//! ordering lives here, with the map, so controllers only express rows ("service with N backends")
//! and never the order they must reach the kernel in.

use beeline_common::{
    endpoint::{self, EndpointInfo, EndpointKey},
    ipcache::{self, IpcacheKey, RemoteEndpointInfo},
    lb::{
        self, Lb4Backend, Lb4BackendKey, Lb4Key, Lb4RevNatKey, Lb4ReverseNat, Lb4Service, Lb4SrcRangeKey, Lb6Backend,
        Lb6BackendKey, Lb6Key, Lb6RevNatKey, Lb6ReverseNat, Lb6Service, LbAffinityMatchKey, LbMaglevKey,
    },
    policy::{self, PolicyEndpointConfig, PolicyEndpointKey, PolicyEntry, PolicyKey},
    tunnel::{self, TunnelKey, TunnelValue},
};
use serde_json::json;

use super::{MapDef, MapKind, WriteOrder};
use crate::datapath::tables;

/// `BPF_F_NO_PREALLOC`: entries are allocated on insert (Cilium's default for its LB maps).
pub const BPF_F_NO_PREALLOC: u32 = 1;

/// The load-balancer maps share one writer (see [`LB_GROUP`]): backends and rev-NAT entries are
/// written before the service slots that refer to them, slots before the master entry that makes the
/// service visible; deletion runs the other way round.
pub const LB_GROUP: (&str, WriteOrder) = ("lb4", WriteOrder::MakeBeforeBreak);

pub struct Lb4Services;
pub struct Lb4Backends;
pub struct Lb4RevNat;

fn ipv4(be: u32) -> String {
    std::net::Ipv4Addr::from(u32::from_be(be)).to_string()
}

impl MapDef for Lb4Services {
    type Key = Lb4Key;
    type Value = Lb4Service;
    const NAME: &'static str = lb::map_names::LB4_SERVICES;
    const KIND: MapKind = MapKind::Hash;
    const MAX_ENTRIES: u32 = 65536;
    const FLAGS: u32 = BPF_F_NO_PREALLOC;

    /// Slots (phase 0) before the master entry, slot 0 (phase 1).
    fn phase(key: &Lb4Key) -> u8 {
        u8::from(key.backend_slot == 0)
    }

    fn row_json(k: &Lb4Key, v: &Lb4Service) -> serde_json::Value {
        json!({
            "frontend": format!("{}:{}", ipv4(k.address), u16::from_be(k.dport)),
            "proto": k.proto, "scope": k.scope, "slot": k.backend_slot,
            "backend_id": v.backend_id, "count": v.count, "rev_nat_index": v.rev_nat_index,
            "flags": v.flags, "flags2": v.flags2, "qcount": v.qcount,
        })
    }
}

impl MapDef for Lb4Backends {
    type Key = Lb4BackendKey;
    type Value = Lb4Backend;
    const NAME: &'static str = lb::map_names::LB4_BACKENDS;
    const KIND: MapKind = MapKind::Hash;
    const MAX_ENTRIES: u32 = 65536;
    const FLAGS: u32 = BPF_F_NO_PREALLOC;

    fn row_json(k: &Lb4BackendKey, v: &Lb4Backend) -> serde_json::Value {
        json!({
            "backend_id": k.backend_id,
            "address": format!("{}:{}", ipv4(v.address), u16::from_be(v.port)),
            "proto": v.proto, "flags": v.flags, "cluster_id": v.cluster_id, "zone": v.zone,
        })
    }
}

impl MapDef for Lb4RevNat {
    type Key = Lb4RevNatKey;
    type Value = Lb4ReverseNat;
    const NAME: &'static str = lb::map_names::LB4_REVERSE_NAT;
    const KIND: MapKind = MapKind::Hash;
    const MAX_ENTRIES: u32 = 65536;
    const FLAGS: u32 = BPF_F_NO_PREALLOC;

    fn row_json(k: &Lb4RevNatKey, v: &Lb4ReverseNat) -> serde_json::Value {
        json!({
            "rev_nat_index": k.rev_nat_index,
            "frontend": format!("{}:{}", ipv4(v.address), u16::from_be(v.port)),
        })
    }
}

/// The IPv6 service maps (Cilium's `cilium_lb6_services_v2`, `_backends_v3`, `_reverse_nat`): the
/// same rows and write order as the IPv4 ones, in the same writer group.
pub struct Lb6Services;
pub struct Lb6Backends;
pub struct Lb6RevNat;

/// `[addr]:port`, as IPv6 socket addresses are written.
fn ipv6_port(addr: [u8; 16], port_be: u16) -> String {
    std::net::SocketAddrV6::new(addr.into(), u16::from_be(port_be), 0, 0).to_string()
}

impl MapDef for Lb6Services {
    type Key = Lb6Key;
    type Value = Lb6Service;
    const NAME: &'static str = lb::map_names::LB6_SERVICES;
    const KIND: MapKind = MapKind::Hash;
    const MAX_ENTRIES: u32 = 65536;
    const FLAGS: u32 = BPF_F_NO_PREALLOC;

    /// Slots (phase 0) before the master entry, slot 0 (phase 1).
    fn phase(key: &Lb6Key) -> u8 {
        u8::from(key.backend_slot == 0)
    }

    fn row_json(k: &Lb6Key, v: &Lb6Service) -> serde_json::Value {
        json!({
            "frontend": ipv6_port(k.address, k.dport),
            "proto": k.proto, "scope": k.scope, "slot": k.backend_slot,
            "backend_id": v.backend_id, "count": v.count, "rev_nat_index": v.rev_nat_index,
            "flags": v.flags, "flags2": v.flags2, "qcount": v.qcount,
        })
    }
}

impl MapDef for Lb6Backends {
    type Key = Lb6BackendKey;
    type Value = Lb6Backend;
    const NAME: &'static str = lb::map_names::LB6_BACKENDS;
    const KIND: MapKind = MapKind::Hash;
    const MAX_ENTRIES: u32 = 65536;
    const FLAGS: u32 = BPF_F_NO_PREALLOC;

    fn row_json(k: &Lb6BackendKey, v: &Lb6Backend) -> serde_json::Value {
        json!({
            "backend_id": k.backend_id,
            "address": ipv6_port(v.address, v.port),
            "proto": v.proto, "flags": v.flags, "cluster_id": v.cluster_id, "zone": v.zone,
        })
    }
}

impl MapDef for Lb6RevNat {
    type Key = Lb6RevNatKey;
    type Value = Lb6ReverseNat;
    const NAME: &'static str = lb::map_names::LB6_REVERSE_NAT;
    const KIND: MapKind = MapKind::Hash;
    const MAX_ENTRIES: u32 = 65536;
    const FLAGS: u32 = BPF_F_NO_PREALLOC;

    fn row_json(k: &Lb6RevNatKey, v: &Lb6ReverseNat) -> serde_json::Value {
        json!({ "rev_nat_index": k.rev_nat_index, "frontend": ipv6_port(v.address, v.port) })
    }
}

/// Which backends a stored ClientIP affinity may still point at, per service (Cilium's
/// `cilium_lb_affinity_match`); the value is unused.
pub struct LbAffinityMatch;

/// Flat Maglev lookup tables: (rev-NAT ID, index) → backend ID. Written in phase 0 with the slots,
/// so a master entry never names a table that is not there yet.
pub struct Lb4Maglev;

impl MapDef for LbAffinityMatch {
    type Key = LbAffinityMatchKey;
    type Value = u8;
    const NAME: &'static str = lb::map_names::LB_AFFINITY_MATCH;
    const KIND: MapKind = MapKind::Hash;
    const MAX_ENTRIES: u32 = 65536;
    const FLAGS: u32 = BPF_F_NO_PREALLOC;

    fn row_json(k: &LbAffinityMatchKey, _v: &u8) -> serde_json::Value {
        json!({ "backend_id": k.backend_id, "rev_nat_index": k.rev_nat_id })
    }
}

impl MapDef for Lb4Maglev {
    type Key = LbMaglevKey;
    type Value = u32;
    const NAME: &'static str = lb::map_names::LB4_MAGLEV;
    const KIND: MapKind = MapKind::Hash;
    const MAX_ENTRIES: u32 = 1 << 20;
    const FLAGS: u32 = BPF_F_NO_PREALLOC;

    fn row_json(k: &LbMaglevKey, v: &u32) -> serde_json::Value {
        json!({ "rev_nat_index": k.rev_nat_id, "index": k.index, "backend_id": v })
    }
}

/// `loadBalancerSourceRanges` (Cilium's `cilium_lb4_source_range`), an LPM trie keyed by rev-NAT ID
/// and CIDR. Phase 0: written before the master entry whose `SOURCE_RANGE` flag makes the datapath
/// consult it, so a new service never denies everyone for a moment.
pub struct Lb4SourceRange;

impl MapDef for Lb4SourceRange {
    type Key = Lb4SrcRangeKey;
    type Value = u8;
    const NAME: &'static str = lb::map_names::LB4_SOURCE_RANGE;
    const KIND: MapKind = MapKind::LpmTrie;
    const MAX_ENTRIES: u32 = 65536;
    const FLAGS: u32 = BPF_F_NO_PREALLOC;

    fn row_json(k: &Lb4SrcRangeKey, _v: &u8) -> serde_json::Value {
        let len = k.prefixlen.saturating_sub(lb::SRC_RANGE_STATIC_PREFIX);
        json!({ "rev_nat_index": k.data.rev_nat_id, "cidr": format!("{}/{len}", ipv4(k.data.address)) })
    }
}

/// Local endpoints (`beeline_lxc`, Cilium's `cilium_lxc`). Same shape as the map the eBPF object
/// declares (hash, no flags), so the manager and the loader share one pinned map.
pub struct Endpoints;

/// Remote pod CIDR → node IP (`beeline_tunnel_map`, Cilium's `cilium_tunnel_map`).
pub struct TunnelMap;

fn mac(m: &[u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

impl MapDef for Endpoints {
    type Key = EndpointKey;
    type Value = EndpointInfo;
    const NAME: &'static str = endpoint::MAP_NAME;
    const KIND: MapKind = MapKind::Hash;
    const MAX_ENTRIES: u32 = endpoint::MAX_ENTRIES;

    fn row_json(k: &EndpointKey, v: &EndpointInfo) -> serde_json::Value {
        json!({
            "address": tables::endpoint_key_ip(k).to_string(), "ifindex": v.ifindex, "lxc_id": v.lxc_id, "flags": v.flags,
            "mac": mac(&v.mac), "node_mac": mac(&v.node_mac), "identity": v.sec_id,
        })
    }
}

impl MapDef for TunnelMap {
    type Key = TunnelKey;
    type Value = TunnelValue;
    const NAME: &'static str = tunnel::MAP_NAME;
    const KIND: MapKind = MapKind::Hash;
    const MAX_ENTRIES: u32 = tunnel::MAX_ENTRIES;

    fn row_json(k: &TunnelKey, v: &TunnelValue) -> serde_json::Value {
        json!({
            "prefix": tables::union_ip(k.family, k.ip4, k.ip6_rest).to_string(),
            "endpoint": tables::union_ip(v.family, v.ip4, v.ip6_rest).to_string(),
        })
    }
}

/// Policy entries of every local endpoint (`beeline_policy`, Cilium's `cilium_policy_<ep>`). An LPM
/// trie: the key is the whole kernel key, prefix length first.
pub struct PolicyMap;

/// Per-endpoint enforcement flags (`beeline_policy_ep`).
pub struct PolicyEndpoints;

/// The policy maps share one writer, [`PolicyMap`] added before [`PolicyEndpoints`]: enforcement
/// flags are upserted after the entries and deleted before them, so an endpoint never starts
/// enforcing a half-written policy.
pub const POLICY_GROUP: (&str, WriteOrder) = ("policy", WriteOrder::MakeBeforeBreak);

impl MapDef for PolicyMap {
    type Key = PolicyKey;
    type Value = PolicyEntry;
    const NAME: &'static str = policy::MAP_NAME;
    const KIND: MapKind = MapKind::LpmTrie;
    const MAX_ENTRIES: u32 = policy::MAX_ENTRIES;
    const FLAGS: u32 = BPF_F_NO_PREALLOC;

    fn row_json(k: &PolicyKey, v: &PolicyEntry) -> serde_json::Value {
        let d = &k.data;
        json!({
            "endpoint": d.endpoint_id, "identity": d.identity,
            "direction": if d.egress == policy::DIR_EGRESS { "egress" } else { "ingress" },
            "protocol": d.protocol, "port": u16::from_be(d.dport_be), "port_prefix_len": k.port_prefix_len(),
            "verdict": if v.is_deny() { "deny" } else { "allow" },
        })
    }
}

impl MapDef for PolicyEndpoints {
    type Key = PolicyEndpointKey;
    type Value = PolicyEndpointConfig;
    const NAME: &'static str = policy::ENDPOINT_MAP_NAME;
    const KIND: MapKind = MapKind::Hash;
    const MAX_ENTRIES: u32 = policy::ENDPOINT_MAX_ENTRIES;

    fn row_json(k: &PolicyEndpointKey, v: &PolicyEndpointConfig) -> serde_json::Value {
        json!({
            "endpoint": k.endpoint_id,
            "ingress_enforcing": v.flags & policy::EP_F_INGRESS_ENFORCE != 0,
            "egress_enforcing": v.flags & policy::EP_F_EGRESS_ENFORCE != 0,
        })
    }
}

/// The remote side of the datapath shares one writer: tunnel rows before the ipcache rows whose
/// destinations they carry, and removal the other way round (make before break), so a pod CIDR is
/// never in the ipcache without a way to reach its node.
pub const REMOTE_GROUP: (&str, WriteOrder) = ("remote", WriteOrder::MakeBeforeBreak);

/// Prefix → identity and tunnel endpoint (`beeline_ipcache`, Cilium's `cilium_ipcache`): an LPM
/// trie of the same shape as the eBPF object's, so the loader and the manager share the pin.
pub struct Ipcache;

impl MapDef for Ipcache {
    type Key = IpcacheKey;
    type Value = RemoteEndpointInfo;
    const NAME: &'static str = ipcache::MAP_NAME;
    const KIND: MapKind = MapKind::LpmTrie;
    const MAX_ENTRIES: u32 = ipcache::MAX_ENTRIES;
    const FLAGS: u32 = BPF_F_NO_PREALLOC;

    fn row_json(k: &IpcacheKey, v: &RemoteEndpointInfo) -> serde_json::Value {
        json!({
            "prefix": tables::ipcache_prefix(k).to_string(),
            "identity": v.sec_identity,
            "tunnel_endpoint": ipv4(v.tunnel_endpoint),
            "flags": v.flags,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_master_entry_is_the_last_phase() {
        let slot = |s| Lb4Key { backend_slot: s, ..Default::default() };
        assert_eq!(Lb4Services::phase(&slot(0)), 1);
        assert_eq!(Lb4Services::phase(&slot(1)), 0);
        assert_eq!(Lb4Services::phase(&slot(65535)), 0);
        assert_eq!(Lb4Backends::phase(&Lb4BackendKey { backend_id: 1 }), 0);
    }

    #[test]
    fn rows_render_addresses_in_host_order() {
        let k = Lb4Key {
            address: u32::from(std::net::Ipv4Addr::new(10, 96, 0, 1)).to_be(),
            dport: 80u16.to_be(),
            ..Default::default()
        };
        let v = Lb4Service { count: 2, ..Default::default() };
        let row = Lb4Services::row_json(&k, &v);
        assert_eq!(row["frontend"], "10.96.0.1:80");
        assert_eq!(row["count"], 2);
    }

    #[test]
    fn ipv6_rows_render_bracketed_socket_addresses_and_masters_last() {
        let address: std::net::Ipv6Addr = "fd00:10:96::a".parse().unwrap();
        let k = Lb6Key { address: address.octets(), dport: 80u16.to_be(), ..Default::default() };
        let row = Lb6Services::row_json(&k, &Lb6Service { count: 1, ..Default::default() });
        assert_eq!(row["frontend"], "[fd00:10:96::a]:80");
        assert_eq!(Lb6Services::phase(&k), 1);
        assert_eq!(Lb6Services::phase(&Lb6Key { backend_slot: 1, ..k }), 0);
        let backend = Lb6Backend { address: address.octets(), port: 8080u16.to_be(), proto: 6, ..Default::default() };
        assert_eq!(
            Lb6Backends::row_json(&Lb6BackendKey { backend_id: 3 }, &backend)["address"],
            "[fd00:10:96::a]:8080"
        );
    }

    #[test]
    fn ipcache_rows_render_the_prefix_without_the_static_bits() {
        let k = IpcacheKey::ipv4(u32::from_ne_bytes([10, 0, 1, 77]), 24);
        let v = RemoteEndpointInfo {
            sec_identity: 2,
            tunnel_endpoint: u32::from_ne_bytes([172, 18, 0, 5]),
            ..Default::default()
        };
        let row = Ipcache::row_json(&k, &v);
        assert_eq!(row["prefix"], "10.0.1.0/24", "host bits cleared, /24 not /56");
        assert_eq!(row["tunnel_endpoint"], "172.18.0.5");
        assert_eq!(row["identity"], 2);
        let k6 = IpcacheKey::ipv6("fd00:10:244:1::7".parse::<std::net::Ipv6Addr>().unwrap().octets(), 64);
        assert_eq!(Ipcache::row_json(&k6, &v)["prefix"], "fd00:10:244:1::/64");
    }

    #[test]
    fn endpoint_rows_render_addresses_and_macs() {
        let k = EndpointKey::ipv4(u32::from_ne_bytes([10, 0, 2, 183]));
        let v = EndpointInfo {
            ifindex: 17,
            lxc_id: 594,
            mac: [0xb6, 0x78, 0xbb, 0xf4, 0x81, 0xcc],
            sec_id: 31383,
            ..Default::default()
        };
        let row = Endpoints::row_json(&k, &v);
        assert_eq!(row["address"], "10.0.2.183");
        assert_eq!(row["mac"], "b6:78:bb:f4:81:cc");
        let v6 =
            Endpoints::row_json(&EndpointKey::ipv6("fd00::b7".parse::<std::net::Ipv6Addr>().unwrap().octets()), &v);
        assert_eq!(v6["address"], "fd00::b7");
        assert_eq!((row["lxc_id"].as_u64(), row["identity"].as_u64()), (Some(594), Some(31383)));
    }
}
