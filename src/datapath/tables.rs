//! Typed access to the connectivity maps through their pins: local endpoints (`beeline_lxc`), the
//! ipcache (`beeline_ipcache`), the tunnel map, the policy maps, the node configuration and the drop
//! counters.
//!
//! This is the thin kernel shell the agent's endpoint/node controllers will feed (through the map
//! manager for the hash maps, see [`super::manager::maps`]); tests populate maps with it directly.
//! Every function opens the pin it needs, so it also works while no agent runs (the CLI's view).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use aya::maps::{
    lpm_trie::{Key as LpmKey, LpmTrie},
    Array, HashMap, Map, MapData, MapError, PerCpuArray,
};
use beeline_common::nat::{self, NatEntry, NatTuple};
use beeline_common::{
    datapath::{self, drop_reason, DatapathConfig, DropStats},
    endpoint::{self, EndpointInfo, EndpointKey},
    ipcache::{self, IpcacheKey, IpcacheLpmData, RemoteEndpointInfo},
    policy::{self, PolicyEndpointConfig, PolicyEndpointKey, PolicyEntry, PolicyKey, PolicyLpmData},
    tunnel::{self, TunnelKey, TunnelValue},
};
use ipnet::IpNet;

use super::{loader::DatapathError, pins::PinLayout};

/// An IPv4 address as map keys hold it (network byte order in memory).
pub fn be(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// The inverse of [`be`].
pub fn from_be(value: u32) -> Ipv4Addr {
    Ipv4Addr::from(value.to_ne_bytes())
}

fn open(pin_dir: &Path, name: &str) -> Result<MapData, DatapathError> {
    MapData::from_pin(PinLayout::new(pin_dir).map(name)).map_err(|e| DatapathError::map(name, e))
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> DatapathError {
    move |e| DatapathError::map(name, e)
}

fn endpoints(pin_dir: &Path) -> Result<HashMap<MapData, EndpointKey, EndpointInfo>, DatapathError> {
    HashMap::try_from(Map::HashMap(open(pin_dir, endpoint::MAP_NAME)?)).map_err(map_err(endpoint::MAP_NAME))
}

/// The `beeline_lxc` key of a local endpoint address of either family.
pub fn endpoint_key(ip: IpAddr) -> EndpointKey {
    match ip {
        IpAddr::V4(v4) => EndpointKey::ipv4(be(v4)),
        IpAddr::V6(v6) => EndpointKey::ipv6(v6.octets()),
    }
}

/// The address held in the 16-byte union of Cilium's keys (`endpoint_key`, `ipcache_key`,
/// `tunnel_key`/`tunnel_value`): `ip4` alone for IPv4, all four words for `ENDPOINT_KEY_IPV6`.
pub fn union_ip(family: u8, ip4: u32, ip6_rest: [u32; 3]) -> IpAddr {
    if family == endpoint::ENDPOINT_KEY_IPV6 {
        let mut octets = [0u8; 16];
        for (i, word) in std::iter::once(ip4).chain(ip6_rest).enumerate() {
            octets[4 * i..4 * i + 4].copy_from_slice(&word.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(octets))
    } else {
        IpAddr::V4(from_be(ip4))
    }
}

/// The address of a `beeline_lxc` key (the inverse of [`endpoint_key`]).
pub fn endpoint_key_ip(key: &EndpointKey) -> IpAddr {
    union_ip(key.family, key.ip4, key.ip6_rest)
}

/// The ipcache key of `prefix` (either family; host bits are cleared).
pub fn ipcache_key(prefix: IpNet) -> IpcacheKey {
    match prefix {
        IpNet::V4(net) => IpcacheKey::ipv4(be(net.addr()), u32::from(net.prefix_len())),
        IpNet::V6(net) => IpcacheKey::ipv6(net.addr().octets(), u32::from(net.prefix_len())),
    }
}

/// The prefix of an ipcache key (the inverse of [`ipcache_key`]).
pub fn ipcache_prefix(key: &IpcacheKey) -> IpNet {
    let d = &key.data;
    let ip = union_ip(d.family, d.ip4, d.ip6_rest);
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = key.prefixlen.saturating_sub(ipcache::STATIC_PREFIX_BITS).min(max);
    IpNet::new(ip, u8::try_from(len).expect("at most 128")).expect("length within the family's")
}

/// The tunnel map key of a remote pod CIDR (either family).
pub fn tunnel_key(pod_cidr: IpNet) -> TunnelKey {
    match pod_cidr {
        IpNet::V4(net) => TunnelKey::ipv4(be(net.network())),
        IpNet::V6(net) => TunnelKey::ipv6(net.network().octets()),
    }
}

/// The tunnel map value of a remote node's IPv4 underlay address (the outer header stays IPv4 for
/// pod CIDRs of both families).
pub fn tunnel_value(node_ip: Ipv4Addr) -> TunnelValue {
    TunnelValue { ip4: be(node_ip), family: endpoint::ENDPOINT_KEY_IPV4, ..Default::default() }
}

/// Adds or replaces the local endpoint with address `ip` (either family).
pub fn upsert_endpoint(pin_dir: &Path, ip: IpAddr, info: &EndpointInfo) -> Result<(), DatapathError> {
    endpoints(pin_dir)?.insert(endpoint_key(ip), info, 0).map_err(map_err(endpoint::MAP_NAME))
}

pub fn remove_endpoint(pin_dir: &Path, ip: IpAddr) -> Result<(), DatapathError> {
    endpoints(pin_dir)?.remove(&endpoint_key(ip)).map_err(map_err(endpoint::MAP_NAME))
}

/// Every local endpoint, by address (IPv4 rows first).
pub fn list_endpoints(pin_dir: &Path) -> Result<BTreeMap<IpAddr, EndpointInfo>, DatapathError> {
    endpoints(pin_dir)?
        .iter()
        .map(|row| row.map(|(k, v)| (endpoint_key_ip(&k), v)))
        .collect::<Result<_, _>>()
        .map_err(map_err(endpoint::MAP_NAME))
}

fn ipcache_map(pin_dir: &Path) -> Result<LpmTrie<MapData, IpcacheLpmData, RemoteEndpointInfo>, DatapathError> {
    LpmTrie::try_from(Map::LpmTrie(open(pin_dir, ipcache::MAP_NAME)?)).map_err(map_err(ipcache::MAP_NAME))
}

fn lpm_key(prefix: IpNet) -> LpmKey<IpcacheLpmData> {
    let key = ipcache_key(prefix);
    LpmKey::new(key.prefixlen, key.data)
}

/// Adds or replaces the ipcache entry of `prefix` (either family; host bits are ignored).
pub fn upsert_ipcache(pin_dir: &Path, prefix: IpNet, info: &RemoteEndpointInfo) -> Result<(), DatapathError> {
    ipcache_map(pin_dir)?.insert(&lpm_key(prefix), info, 0).map_err(map_err(ipcache::MAP_NAME))
}

pub fn remove_ipcache(pin_dir: &Path, prefix: IpNet) -> Result<(), DatapathError> {
    ipcache_map(pin_dir)?.remove(&lpm_key(prefix)).map_err(map_err(ipcache::MAP_NAME))
}

fn tunnel_map(pin_dir: &Path) -> Result<HashMap<MapData, TunnelKey, TunnelValue>, DatapathError> {
    HashMap::try_from(Map::HashMap(open(pin_dir, tunnel::MAP_NAME)?)).map_err(map_err(tunnel::MAP_NAME))
}

/// Routes `pod_cidr` (a remote node's allocation, either family) to `node_ip` through the tunnel.
pub fn upsert_tunnel(pin_dir: &Path, pod_cidr: IpNet, node_ip: Ipv4Addr) -> Result<(), DatapathError> {
    tunnel_map(pin_dir)?.insert(tunnel_key(pod_cidr), tunnel_value(node_ip), 0).map_err(map_err(tunnel::MAP_NAME))
}

pub fn remove_tunnel(pin_dir: &Path, pod_cidr: IpNet) -> Result<(), DatapathError> {
    tunnel_map(pin_dir)?.remove(&tunnel_key(pod_cidr)).map_err(map_err(tunnel::MAP_NAME))
}

/// Writes the node configuration the programs read on every packet.
pub fn write_config(pin_dir: &Path, config: &DatapathConfig) -> Result<(), DatapathError> {
    let name = datapath::CONFIG_MAP_NAME;
    let mut map: Array<MapData, DatapathConfig> =
        Array::try_from(Map::Array(open(pin_dir, name)?)).map_err(map_err(name))?;
    map.set(0, config, 0).map_err(map_err(name))
}

pub fn read_config(pin_dir: &Path) -> Result<DatapathConfig, DatapathError> {
    let name = datapath::CONFIG_MAP_NAME;
    let map: Array<MapData, DatapathConfig> =
        Array::try_from(Map::Array(open(pin_dir, name)?)).map_err(map_err(name))?;
    map.get(&0, 0).map_err(map_err(name))
}

/// Drop counters summed over CPUs, by reason; reasons never seen are left out.
pub fn read_drops(pin_dir: &Path) -> Result<BTreeMap<u32, DropStats>, DatapathError> {
    let name = datapath::DROPS_MAP_NAME;
    let map: PerCpuArray<MapData, DropStats> =
        PerCpuArray::try_from(Map::PerCpuArray(open(pin_dir, name)?)).map_err(map_err(name))?;
    let mut out = BTreeMap::new();
    for reason in 0..drop_reason::MAX {
        let per_cpu = map.get(&reason, 0).map_err(map_err(name))?;
        let total = per_cpu.iter().fold(DropStats::default(), |acc, s| DropStats {
            packets: acc.packets + s.packets,
            bytes: acc.bytes + s.bytes,
        });
        if total.packets > 0 {
            out.insert(reason, total);
        }
    }
    Ok(out)
}

fn policy_map(pin_dir: &Path) -> Result<LpmTrie<MapData, PolicyLpmData, PolicyEntry>, DatapathError> {
    LpmTrie::try_from(Map::LpmTrie(open(pin_dir, policy::MAP_NAME)?)).map_err(map_err(policy::MAP_NAME))
}

/// Adds or replaces one policy entry.
pub fn upsert_policy(pin_dir: &Path, key: &PolicyKey, entry: &PolicyEntry) -> Result<(), DatapathError> {
    policy_map(pin_dir)?.insert(&LpmKey::new(key.prefixlen, key.data), entry, 0).map_err(map_err(policy::MAP_NAME))
}

pub fn remove_policy(pin_dir: &Path, key: &PolicyKey) -> Result<(), DatapathError> {
    policy_map(pin_dir)?.remove(&LpmKey::new(key.prefixlen, key.data)).map_err(map_err(policy::MAP_NAME))
}

/// Every policy entry (all endpoints).
pub fn list_policy(pin_dir: &Path) -> Result<Vec<(PolicyKey, PolicyEntry)>, DatapathError> {
    policy_map(pin_dir)?
        .iter()
        .map(|row| row.map(|(k, v)| (PolicyKey { prefixlen: k.prefix_len(), data: k.data() }, v)))
        .collect::<Result<_, _>>()
        .map_err(map_err(policy::MAP_NAME))
}

fn policy_endpoints(
    pin_dir: &Path,
) -> Result<HashMap<MapData, PolicyEndpointKey, PolicyEndpointConfig>, DatapathError> {
    HashMap::try_from(Map::HashMap(open(pin_dir, policy::ENDPOINT_MAP_NAME)?))
        .map_err(map_err(policy::ENDPOINT_MAP_NAME))
}

/// Sets endpoint `endpoint_id`'s enforcement flags (`policy::EP_F_*`).
pub fn set_policy_enforcement(pin_dir: &Path, endpoint_id: u32, flags: u32) -> Result<(), DatapathError> {
    policy_endpoints(pin_dir)?
        .insert(PolicyEndpointKey { endpoint_id }, PolicyEndpointConfig { flags }, 0)
        .map_err(map_err(policy::ENDPOINT_MAP_NAME))
}

/// Every endpoint's enforcement flags, by endpoint ID.
pub fn list_policy_enforcement(pin_dir: &Path) -> Result<BTreeMap<u32, u32>, DatapathError> {
    policy_endpoints(pin_dir)?
        .iter()
        .map(|row| row.map(|(k, v)| (k.endpoint_id, v.flags)))
        .collect::<Result<_, _>>()
        .map_err(map_err(policy::ENDPOINT_MAP_NAME))
}

/// Every row of the SNAT map (both directions), for the CLI and tests.
pub fn list_snat(pin_dir: &Path) -> Result<Vec<(NatTuple, NatEntry)>, DatapathError> {
    let name = nat::SNAT_MAP_NAME;
    let map: HashMap<MapData, NatTuple, NatEntry> =
        HashMap::try_from(Map::LruHashMap(open(pin_dir, name)?)).map_err(map_err(name))?;
    map.iter().collect::<Result<_, _>>().map_err(map_err(name))
}

/// Adds a SNAT row directly (tests: occupy ports to exercise allocation).
pub fn insert_snat(pin_dir: &Path, tuple: &NatTuple, entry: &NatEntry) -> Result<(), DatapathError> {
    let name = nat::SNAT_MAP_NAME;
    let mut map: HashMap<MapData, NatTuple, NatEntry> =
        HashMap::try_from(Map::LruHashMap(open(pin_dir, name)?)).map_err(map_err(name))?;
    map.insert(tuple, entry, 0).map_err(map_err(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_both_families_round_trip() {
        for text in ["10.0.1.7", "fd00:10:244:1::7", "::1"] {
            let ip: IpAddr = text.parse().unwrap();
            let key = endpoint_key(ip);
            let want = if ip.is_ipv4() { endpoint::ENDPOINT_KEY_IPV4 } else { endpoint::ENDPOINT_KEY_IPV6 };
            assert_eq!((endpoint_key_ip(&key), key.family), (ip, want), "{text}");
        }
        type Case = (&'static str, &'static str);
        let cases: &[Case] = &[
            ("10.0.1.77/24", "10.0.1.0/24"),
            ("10.0.1.7/32", "10.0.1.7/32"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("fd00:10:244:1::7/128", "fd00:10:244:1::7/128"),
            ("fd00:10:244:1::ff/120", "fd00:10:244:1::/120"),
            ("::/0", "::/0"),
        ];
        for (prefix, want) in cases {
            let got = ipcache_prefix(&ipcache_key(prefix.parse().unwrap()));
            assert_eq!(got.to_string(), *want, "{prefix}");
        }
        let v6 = tunnel_key("fd00:10:244:1::/64".parse().unwrap());
        assert_eq!(union_ip(v6.family, v6.ip4, v6.ip6_rest), "fd00:10:244:1::".parse::<IpAddr>().unwrap());
        let v4 = tunnel_key("10.0.1.0/24".parse().unwrap());
        assert_eq!(union_ip(v4.family, v4.ip4, v4.ip6_rest), "10.0.1.0".parse::<IpAddr>().unwrap());
    }
}
