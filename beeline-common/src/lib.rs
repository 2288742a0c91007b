//! Map keys and values shared between the eBPF programs (`beeline-ebpf`) and userspace.
//!
//! Every type is `#[repr(C)]`, has no implicit padding (explicit `_pad` fields instead), and uses
//! integer flags (`u32`) rather than `bool`, so the byte layout is identical on both sides and the
//! verifier never sees uninitialised padding.
#![no_std]

pub mod lb;

/// Names of the pinned maps. Every map is pinned under the agent's bpffs directory with this name.
pub mod map_names {
    /// Per-endpoint packet and byte counters, keyed by the host-side veth's ifindex.
    pub const ENDPOINT_STATS: &str = "beeline_ep_stats";
}

/// Key of [`map_names::ENDPOINT_STATS`]: the ifindex of the host-side veth of an endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointStatsKey {
    pub ifindex: u32,
}

/// Value of [`map_names::ENDPOINT_STATS`]: what `from_container` saw leave the pod.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointStats {
    pub packets: u64,
    pub bytes: u64,
}

#[cfg(feature = "user")]
mod pod_impls {
    use super::*;
    // SAFETY: plain-old-data, #[repr(C)], no padding, every bit pattern valid.
    unsafe impl aya::Pod for EndpointStatsKey {}
    unsafe impl aya::Pod for EndpointStats {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(size_of::<EndpointStatsKey>(), 4);
        assert_eq!(size_of::<EndpointStats>(), 16);
    }
}
