//! `from_container`: tc ingress on the host side of a pod's veth (packets leaving the pod).
//!
//! First piece: per-endpoint packet/byte counters. Forwarding decisions come with later issues;
//! until then the packet continues into the host stack (TC_ACT_OK).

use aya_ebpf::{
    bindings::TC_ACT_OK,
    macros::{classifier, map},
    maps::HashMap,
    programs::TcContext,
};
use beeline_common::{EndpointStats, EndpointStatsKey};

/// Keyed by the ingress ifindex (the host-side veth), so one pinned map serves every endpoint.
#[map(name = "beeline_ep_stats")]
static ENDPOINT_STATS: HashMap<EndpointStatsKey, EndpointStats> = HashMap::with_max_entries(65536, 0);

#[classifier]
pub fn from_container(ctx: TcContext) -> i32 {
    // SAFETY: `skb` is the kernel's __sk_buff for this invocation.
    let (ifindex, len) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).len) };
    let key = EndpointStatsKey { ifindex };
    match ENDPOINT_STATS.get_ptr_mut(&key) {
        Some(stats) => {
            // SAFETY: the pointer comes from a successful map lookup and is valid for this call.
            // Counters are per endpoint; concurrent CPUs may race, which only costs precision.
            unsafe {
                (*stats).packets += 1;
                (*stats).bytes += u64::from(len);
            }
        }
        None => {
            let first = EndpointStats { packets: 1, bytes: u64::from(len) };
            // A full map only loses the count, never the packet.
            let _ = ENDPOINT_STATS.insert(&key, &first, 0);
        }
    }
    TC_ACT_OK
}
