//! The maps shared by the programs. Names, key and value types come from `beeline-common`; the
//! layouts (and why they look like Cilium's) are documented there.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use beeline_common::{
    datapath::{drop_reason, DatapathConfig, DropStats},
    endpoint::{self, EndpointInfo, EndpointKey},
    ipcache::{self, IpcacheLpmData, RemoteEndpointInfo},
    policy::{self, PolicyEndpointConfig, PolicyEndpointKey, PolicyEntry, PolicyLpmData},
    nat::{self, NatEntry, NatTuple},
    tunnel::{self, TunnelKey, TunnelValue},
};

/// Local endpoints by IP (`cilium_lxc`).
#[map(name = "beeline_lxc")]
pub static ENDPOINTS: HashMap<EndpointKey, EndpointInfo> = HashMap::with_max_entries(endpoint::MAX_ENTRIES, 0);

/// Prefix → identity and tunnel endpoint (`cilium_ipcache`). LPM tries require NO_PREALLOC (aya
/// adds it).
#[map(name = "beeline_ipcache")]
pub static IPCACHE: LpmTrie<IpcacheLpmData, RemoteEndpointInfo> =
    LpmTrie::with_max_entries(ipcache::MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// Remote pod CIDR → node IP (`cilium_tunnel_map`).
#[map(name = "beeline_tunnel_map")]
pub static TUNNEL_MAP: HashMap<TunnelKey, TunnelValue> = HashMap::with_max_entries(tunnel::MAX_ENTRIES, 0);

/// Node-wide configuration, one entry.
#[map(name = "beeline_config")]
pub static CONFIG: Array<DatapathConfig> = Array::with_max_entries(1, 0);

/// Drop counters indexed by reason; per CPU, so counting never contends.
#[map(name = "beeline_drops")]
pub static DROPS: PerCpuArray<DropStats> = PerCpuArray::with_max_entries(drop_reason::MAX, 0);

/// Per-endpoint policy entries (Cilium's `cilium_policy_<ep>`, one trie for all endpoints).
#[map(name = "beeline_policy")]
pub static POLICY: LpmTrie<PolicyLpmData, PolicyEntry> = LpmTrie::with_max_entries(policy::MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// Per-endpoint enforcement flags; no entry = not enforcing.
#[map(name = "beeline_policy_ep")]
pub static POLICY_ENDPOINTS: HashMap<PolicyEndpointKey, PolicyEndpointConfig> =
    HashMap::with_max_entries(policy::ENDPOINT_MAX_ENTRIES, 0);
/// Masquerading (and later NodePort SNAT) translations, both directions (`cilium_snat_v4_external`).
/// LRU: idle flows age out without a garbage collector.
#[map(name = "beeline_snat_v4")]
pub static SNAT_V4: LruHashMap<NatTuple, NatEntry> = LruHashMap::with_max_entries(nat::SNAT_MAX_ENTRIES, 0);
