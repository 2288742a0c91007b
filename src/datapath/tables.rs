//! Typed access to the connectivity maps through their pins: local endpoints (`beeline_lxc`), the
//! ipcache (`beeline_ipcache`), the tunnel map, the policy maps, the node configuration and the drop
//! counters.
//!
//! This is the thin kernel shell the agent's endpoint/node controllers will feed (through the map
//! manager for the hash maps, see [`super::manager::maps`]); tests populate maps with it directly.
//! Every function opens the pin it needs, so it also works while no agent runs (the CLI's view).

use std::{collections::BTreeMap, net::Ipv4Addr, path::Path};

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
use ipnet::Ipv4Net;

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

/// Adds or replaces the local endpoint with address `ip`.
pub fn upsert_endpoint(pin_dir: &Path, ip: Ipv4Addr, info: &EndpointInfo) -> Result<(), DatapathError> {
    endpoints(pin_dir)?.insert(EndpointKey::ipv4(be(ip)), info, 0).map_err(map_err(endpoint::MAP_NAME))
}

pub fn remove_endpoint(pin_dir: &Path, ip: Ipv4Addr) -> Result<(), DatapathError> {
    endpoints(pin_dir)?.remove(&EndpointKey::ipv4(be(ip))).map_err(map_err(endpoint::MAP_NAME))
}

/// Every local endpoint, by IPv4 address.
pub fn list_endpoints(pin_dir: &Path) -> Result<BTreeMap<Ipv4Addr, EndpointInfo>, DatapathError> {
    endpoints(pin_dir)?
        .iter()
        .map(|row| row.map(|(k, v)| (from_be(k.ip4), v)))
        .collect::<Result<_, _>>()
        .map_err(map_err(endpoint::MAP_NAME))
}

fn ipcache_map(pin_dir: &Path) -> Result<LpmTrie<MapData, IpcacheLpmData, RemoteEndpointInfo>, DatapathError> {
    LpmTrie::try_from(Map::LpmTrie(open(pin_dir, ipcache::MAP_NAME)?)).map_err(map_err(ipcache::MAP_NAME))
}

fn lpm_key(prefix: Ipv4Net) -> LpmKey<IpcacheLpmData> {
    let key = IpcacheKey::ipv4(be(prefix.addr()), u32::from(prefix.prefix_len()));
    LpmKey::new(key.prefixlen, key.data)
}

/// Adds or replaces the ipcache entry of `prefix` (host bits are ignored).
pub fn upsert_ipcache(pin_dir: &Path, prefix: Ipv4Net, info: &RemoteEndpointInfo) -> Result<(), DatapathError> {
    ipcache_map(pin_dir)?.insert(&lpm_key(prefix), info, 0).map_err(map_err(ipcache::MAP_NAME))
}

pub fn remove_ipcache(pin_dir: &Path, prefix: Ipv4Net) -> Result<(), DatapathError> {
    ipcache_map(pin_dir)?.remove(&lpm_key(prefix)).map_err(map_err(ipcache::MAP_NAME))
}

fn tunnel_map(pin_dir: &Path) -> Result<HashMap<MapData, TunnelKey, TunnelValue>, DatapathError> {
    HashMap::try_from(Map::HashMap(open(pin_dir, tunnel::MAP_NAME)?)).map_err(map_err(tunnel::MAP_NAME))
}

/// Routes `pod_cidr` (a remote node's allocation) to `node_ip` through the tunnel.
pub fn upsert_tunnel(pin_dir: &Path, pod_cidr: Ipv4Net, node_ip: Ipv4Addr) -> Result<(), DatapathError> {
    let value = TunnelValue { ip4: be(node_ip), family: endpoint::ENDPOINT_KEY_IPV4, ..Default::default() };
    tunnel_map(pin_dir)?.insert(TunnelKey::ipv4(be(pod_cidr.network())), value, 0).map_err(map_err(tunnel::MAP_NAME))
}

pub fn remove_tunnel(pin_dir: &Path, pod_cidr: Ipv4Net) -> Result<(), DatapathError> {
    tunnel_map(pin_dir)?.remove(&TunnelKey::ipv4(be(pod_cidr.network()))).map_err(map_err(tunnel::MAP_NAME))
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
