//! Datapath flow events: what the programs write into the `beeline_events` ring buffer and the
//! agent turns into Hubble-shaped flows.
//!
//! Cilium's monitor has one notification struct per type (`trace_notify`, `drop_notify`,
//! `policy_verdict_notify`) behind a common header. beeline writes **one** fixed-size record,
//! [`FlowEvent`], whose `kind` says which fields mean something: every event carries the 5-tuple,
//! the observation ifindex and the identities the program knew (0 = not known there; the agent
//! fills them from its ipcache), so one decoder and one ring buffer reservation size serve all
//! three (see `docs/decisions.md`).

pub const RING_MAP_NAME: &str = "beeline_events";
/// Per-CPU count of events the ring buffer had no room for (Cilium's "lost events").
pub const LOST_MAP_NAME: &str = "beeline_events_lost";
/// Aggregation state (first packet of a flow, TCP flags seen) per flow and observation point.
pub const AGG_MAP_NAME: &str = "beeline_events_agg";
/// Forwarded packets and bytes per direction (Cilium's `cilium_metrics` rows with reason 0,
/// "forwarded"; drops are counted per reason in `beeline_drops`): a per-CPU array indexed by
/// [`metric_dir`], values [`crate::datapath::DropStats`] (packets, bytes); sum over CPUs to read.
pub const METRICS_MAP_NAME: &str = "beeline_metrics";

/// Directions of [`METRICS_MAP_NAME`] (Cilium's `METRIC_INGRESS` / `METRIC_EGRESS`).
pub mod metric_dir {
    pub const INGRESS: u32 = 1;
    pub const EGRESS: u32 = 2;
    /// Rows of the map (index 0 is unused, as in Cilium's numbering).
    pub const MAX: u32 = 3;

    /// Where a packet traced at `point` is counted as forwarded, as Cilium's
    /// `update_trace_metrics`: delivery to a pod is ingress; leaving to the stack, the overlay or
    /// the network is egress; `from-*` points and service translation are not forwards.
    pub const fn of_point(point: u8) -> Option<u32> {
        match point {
            super::point::TO_ENDPOINT => Some(INGRESS),
            super::point::TO_STACK | super::point::TO_OVERLAY | super::point::TO_NETWORK => Some(EGRESS),
            _ => None,
        }
    }

    pub fn name(dir: u32) -> &'static str {
        match dir {
            INGRESS => "INGRESS",
            EGRESS => "EGRESS",
            _ => "UNKNOWN",
        }
    }
}

/// Default ring buffer size in bytes (a power of two and a multiple of the page size); the
/// loader can override it (`Datapath::load_with`).
pub const DEFAULT_RING_BYTES: u32 = 1 << 20;
pub const AGG_MAX_ENTRIES: u32 = 65_536;

/// [`FlowEvent::kind`], numbered as Cilium's message types (`pkg/monitor/api/types.go`).
pub mod kind {
    pub const DROP: u8 = 1;
    pub const TRACE: u8 = 4;
    pub const POLICY_VERDICT: u8 = 9;
}

/// [`FlowEvent::point`] of trace events, Cilium's `TRACE_*` numbers (`bpf/lib/trace.h`), which
/// Hubble shows by name (`to-endpoint`, …). [`SERVICE`] is beeline's own: the service translation
/// seen in `lb.rs` (Cilium reports it through the `orig_ip` of its other traces).
pub mod point {
    pub const TO_ENDPOINT: u8 = 0;
    pub const TO_STACK: u8 = 3;
    pub const TO_OVERLAY: u8 = 4;
    pub const FROM_ENDPOINT: u8 = 5;
    pub const FROM_STACK: u8 = 8;
    pub const FROM_OVERLAY: u8 = 9;
    pub const FROM_NETWORK: u8 = 10;
    pub const TO_NETWORK: u8 = 11;
    pub const SERVICE: u8 = 100;

    /// The receive points (Cilium's `TRACE_FROM_*`), which every `monitor-aggregation` level
    /// above `none` hides: the matching `to-*` point tells the same story.
    pub const fn is_receive(point: u8) -> bool {
        // 6 and 7 are Cilium's from-proxy and from-host, not emitted by beeline yet.
        matches!(point, FROM_ENDPOINT | 6 | 7 | FROM_STACK | FROM_OVERLAY | FROM_NETWORK)
    }

    /// Hubble's name for the observation point.
    pub fn name(point: u8) -> &'static str {
        match point {
            TO_ENDPOINT => "to-endpoint",
            TO_STACK => "to-stack",
            TO_OVERLAY => "to-overlay",
            FROM_ENDPOINT => "from-endpoint",
            FROM_STACK => "from-stack",
            FROM_OVERLAY => "from-overlay",
            FROM_NETWORK => "from-network",
            TO_NETWORK => "to-network",
            SERVICE => "service-translation",
            _ => "unknown",
        }
    }
}

/// [`FlowEvent::policy_match`] (Cilium's `POLICY_MATCH_*`, shown as `policy-verdict:<type>`).
pub mod policy_match {
    pub const NONE: u8 = 0;
    pub const L3_ONLY: u8 = 1;
    pub const L3_L4: u8 = 2;
    pub const L4_ONLY: u8 = 3;
    pub const ALL: u8 = 4;

    pub fn name(m: u8) -> &'static str {
        match m {
            L3_ONLY => "L3-Only",
            L3_L4 => "L3-L4",
            L4_ONLY => "L4-Only",
            ALL => "all",
            _ => "none",
        }
    }
}

/// One event (56 bytes). Addresses are network byte order in memory (as map keys hold them),
/// ports host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    /// `bpf_ktime_get_ns` (monotonic; the agent converts to wall time).
    pub ktime_ns: u64,
    /// `kind::*`.
    pub kind: u8,
    /// Trace: `point::*`. Policy verdict: `policy::DIR_*` (1 = egress).
    pub point: u8,
    /// IP protocol.
    pub protocol: u8,
    /// TCP flags of the packet (0 for other protocols).
    pub tcp_flags: u8,
    /// Drop: reason (`datapath::drop_reason`). 0 otherwise.
    pub reason: u16,
    /// Policy verdict: 1 allowed, 0 denied. Trace/drop: 0.
    pub allowed: u8,
    /// Policy verdict: `policy_match::*`.
    pub policy_match: u8,
    pub src_identity: u32,
    pub dst_identity: u32,
    /// The interface the program runs on.
    pub ifindex: u32,
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    /// Service translation: the frontend the client addressed (`daddr:dport` is the backend).
    pub orig_daddr: u32,
    pub orig_dport: u16,
    pub _pad: u16,
    /// Packet length in bytes.
    pub len: u32,
}

/// Key of [`AGG_MAP_NAME`]: one flow direction at one observation point.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AggKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub protocol: u8,
    pub point: u8,
    pub _pad: u16,
}

/// Value of [`AGG_MAP_NAME`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AggValue {
    /// Monotonic seconds of the last report.
    pub last_report: u32,
    /// TCP flags reported so far (OR of all).
    pub flags_seen: u8,
    pub _pad: [u8; 3],
}

/// Cilium's `monitor-aggregation-interval` default: a flow is reported again at most this often
/// when nothing new (no new TCP flag) happens on it.
pub const AGG_INTERVAL_SECS: u32 = 5;

/// TCP flags whose first appearance on a flow is always reported ("medium" aggregation reports
/// SYN, FIN and RST; ACK alone and PSH are aggregated away).
pub const AGG_REPORT_FLAGS: u8 = 0x01 | 0x02 | 0x04;

/// The aggregation decision, pure so both sides can test it: report when the flow is new, when a
/// reportable TCP flag appears for the first time, or when the interval has passed.
pub const fn should_report(prev: Option<AggValue>, tcp_flags: u8, now: u32) -> bool {
    match prev {
        None => true,
        Some(v) => {
            let new_flags = tcp_flags & AGG_REPORT_FLAGS & !v.flags_seen;
            new_flags != 0 || now.wrapping_sub(v.last_report) >= AGG_INTERVAL_SECS
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_count_by_direction_like_cilium() {
        let cases = [
            (point::TO_ENDPOINT, Some(metric_dir::INGRESS)),
            (point::TO_STACK, Some(metric_dir::EGRESS)),
            (point::TO_OVERLAY, Some(metric_dir::EGRESS)),
            (point::TO_NETWORK, Some(metric_dir::EGRESS)),
            (point::FROM_ENDPOINT, None),
            (point::FROM_OVERLAY, None),
            (point::FROM_NETWORK, None),
            (point::SERVICE, None),
        ];
        for (p, want) in cases {
            assert_eq!(metric_dir::of_point(p), want, "{}", point::name(p));
        }
        const { assert!(metric_dir::INGRESS < metric_dir::MAX && metric_dir::EGRESS < metric_dir::MAX) };
    }

    #[test]
    fn event_layout_is_fixed() {
        assert_eq!(core::mem::size_of::<FlowEvent>(), 56);
        assert_eq!(core::mem::size_of::<AggKey>(), 16);
        assert_eq!(core::mem::size_of::<AggValue>(), 8);
    }

    #[test]
    fn aggregation_reports_new_flows_new_flags_and_stale_flows() {
        let seen = |flags_seen, last_report| Some(AggValue { last_report, flags_seen, _pad: [0; 3] });
        let (syn, ack, fin, rst, psh) = (0x02, 0x10, 0x01, 0x04, 0x08);
        let cases = [
            ("first packet", None, ack, 100, true),
            ("second SYN", seen(syn, 100), syn, 100, false),
            ("plain ACK", seen(syn, 100), ack, 101, false),
            ("PSH|ACK", seen(syn, 100), psh | ack, 101, false),
            ("first FIN", seen(syn, 100), fin | ack, 101, true),
            ("second FIN", seen(syn | fin, 100), fin | ack, 101, false),
            ("RST", seen(syn | fin, 100), rst, 101, true),
            ("interval passed", seen(syn, 100), ack, 105, true),
            ("just inside the interval", seen(syn, 100), ack, 104, false),
            ("udp, repeated", seen(0, 100), 0, 102, false),
        ];
        for (name, prev, flags, now, want) in cases {
            assert_eq!(should_report(prev, flags, now), want, "{name}");
        }
    }
}
