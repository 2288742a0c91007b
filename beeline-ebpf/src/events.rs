//! Flow events into the `beeline_events` ring buffer (Cilium's `send_trace_notify`,
//! `send_drop_notify`, `send_policy_verdict_notify`). Record layout and the aggregation rule are
//! in `beeline_common::events`.
//!
//! Call sites stay one short line: the public functions take the context and what the caller
//! already knows (point, identities, reason); the 5-tuple is read from the packet here. The work
//! happens in `#[inline(never)]` subprograms taking the raw `__sk_buff` (a ctx pointer the
//! verifier lets through BPF-to-BPF calls), so the many call sites do not each inline a parser.
//!
//! Aggregation ("medium", `monitorAggregation: medium`): trace and allowed policy-verdict events
//! only for a flow's first packet at a point, the first SYN/FIN/RST, and then at most every
//! `AGG_INTERVAL_SECS` (state in the LRU `beeline_events_agg`); drops and denials always. A full
//! ring buffer costs the event, never the packet, and is counted in `beeline_events_lost`.
//!
//! The agent picks the level and switches event kinds off through `DatapathConfig::flags`
//! (`monitor-aggregation`, `bpf-events-{trace,drop,policy-verdict}-enabled`): `none` traces every
//! packet at every point, `lowest`/`low` every packet but not at receive points, `medium`/`maximum`
//! (all flags clear, the default) as above without receive points.

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_OK},
    helpers::generated::bpf_ktime_get_ns,
    macros::map,
    maps::{lpm_trie::Key, LruHashMap, PerCpuArray, RingBuf},
    programs::TcContext,
};
use beeline_common::{
    datapath::{
        CONFIG_F_NO_DROP_EVENTS, CONFIG_F_NO_POLICY_VERDICT_EVENTS, CONFIG_F_NO_TRACE_EVENTS, CONFIG_F_TRACE_EVERY_PACKET,
        CONFIG_F_TRACE_RX,
    },
    events::{
        kind, metric_dir, policy_match, should_report, AggKey, AggValue, FlowEvent, AGG_MAX_ENTRIES,
        AGG_REPORT_FLAGS, DEFAULT_RING_BYTES,
    },
    datapath::DropStats,
    policy::{PolicyLpmData, STATIC_PREFIX_BITS},
};
use beeline_common::endpoint::EndpointInfo;

use crate::{
    maps::{CONFIG, POLICY},
    parse::{self, ETH_HLEN, IPPROTO_TCP, IPPROTO_UDP},
};

#[map(name = "beeline_events")]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

#[map(name = "beeline_events_lost")]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "beeline_events_scratch")]
static SCRATCH: PerCpuArray<FlowEvent> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "beeline_events_agg")]
static AGG: LruHashMap<AggKey, AggValue> = LruHashMap::with_max_entries(AGG_MAX_ENTRIES, 0);

/// Aggregation keys of policy verdicts live beside the trace points' (`point` = this + direction).
const AGG_POLICY_BASE: u8 = 200;

const IPPROTO_SCTP: u8 = 132;

#[map(name = "beeline_metrics")]
static METRICS: PerCpuArray<DropStats> = PerCpuArray::with_max_entries(metric_dir::MAX, 0);

/// A trace event at `point` (`events::point::*`); identities 0 when not known here.
#[inline(always)]
pub fn trace(ctx: &TcContext, point: u8, src_identity: u32, dst_identity: u32) {
    // Every packet, before aggregation decides about the event (`point` is a constant at each
    // call site, so `from-*` points compile to nothing here).
    if let Some(dir) = metric_dir::of_point(point) {
        count_forward(ctx.skb.skb, dir);
    }
    emit_trace(ctx.skb.skb, point, src_identity, dst_identity, 0);
}

/// Counts a forwarded packet in `beeline_metrics` (Cilium's `update_metrics`).
#[inline(never)]
fn count_forward(skb: *mut __sk_buff, dir: u32) {
    let ctx = TcContext::new(skb);
    if let Some(stats) = METRICS.get_ptr_mut(dir) {
        // SAFETY: per-CPU slot from a successful lookup; nothing else writes it on this CPU now.
        unsafe {
            (*stats).packets += 1;
            (*stats).bytes += u64::from(ctx.len());
        }
    }
}

/// [`trace`], then hand the packet to the stack (`TC_ACT_OK`).
#[inline(always)]
pub fn pass(ctx: &TcContext, point: u8, src_identity: u32, dst_identity: u32) -> i32 {
    trace(ctx, point, src_identity, dst_identity);
    TC_ACT_OK
}

/// The service translation just written: the packet now goes to the backend, `orig` was the
/// frontend (address network order, port as in the packet — network order).
#[inline(always)]
pub fn service(ctx: &TcContext, orig_daddr: u32, orig_dport_be: u16) {
    let orig = (u64::from(u16::from_be(orig_dport_be)) << 32) | u64::from(orig_daddr);
    emit_trace(ctx.skb.skb, beeline_common::events::point::SERVICE, 0, 0, orig);
}

/// A drop with `reason`: always reported.
#[inline(always)]
pub fn drop(ctx: &TcContext, reason: u32) {
    emit_drop(ctx.skb.skb, reason);
}

/// The policy decision of `denied` in `policy.rs`: `specific`/`wildcard` are its two lookup
/// results (0 no match, 1 allow, 2 deny); the match type comes from one more lookup for an L3 entry.
#[inline(always)]
pub fn policy_verdict(ctx: &TcContext, ep: &EndpointInfo, egress: u8, peer: u32, specific: u8, wildcard: u8) {
    let endpoint_id = u32::from(ep.lxc_id);
    let verdict = specific.max(wildcard);
    let by_peer = specific >= wildcard;
    let identity = if by_peer { peer } else { 0 };
    let l3 = Key::new(STATIC_PREFIX_BITS, PolicyLpmData::lookup(endpoint_id, identity, egress, 0, 0));
    let has_l3 = POLICY.get(&l3).is_some();
    let matched = match (verdict, by_peer, has_l3) {
        (0, _, _) => policy_match::NONE,
        (_, true, true) => policy_match::L3_ONLY,
        (_, true, false) => policy_match::L3_L4,
        (_, false, true) => policy_match::ALL,
        (_, false, false) => policy_match::L4_ONLY,
    };
    let allowed = u32::from(verdict == 1);
    emit_policy(ctx.skb.skb, u32::from(egress) | allowed << 8 | u32::from(matched) << 16, peer, ep.sec_id);
}

/// The packet's 5-tuple and TCP flags into `ev` (ports stay 0 for fragments and other protocols).
#[inline(always)]
fn fill_tuple(ctx: &TcContext, ev: &mut FlowEvent) -> bool {
    let Ok(ip) = parse::ipv4(ctx) else {
        return false;
    };
    ev.saddr = ip.saddr_be();
    ev.daddr = ip.daddr_be();
    ev.protocol = ip.protocol;
    if ip.fragment_offset() == 0 && matches!(ip.protocol, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP) {
        let l4 = ETH_HLEN + ip.header_len();
        if let Ok(ports) = ctx.load::<[u8; 4]>(l4) {
            ev.sport = u16::from_be_bytes([ports[0], ports[1]]);
            ev.dport = u16::from_be_bytes([ports[2], ports[3]]);
        }
        if ip.protocol == IPPROTO_TCP {
            ev.tcp_flags = ctx.load::<u8>(l4 + 13).unwrap_or(0);
        }
    }
    true
}

/// This CPU's event under construction, reset for `kind`. The record lives in a per-CPU map
/// rather than on the stack: the subprogram's frame plus `from_container`'s must stay under the
/// verifier's 512-byte combined stack limit.
#[inline(always)]
fn new_event(ctx: &TcContext, kind: u8) -> Option<&'static mut FlowEvent> {
    let ev = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU slot from a successful lookup; programs do not migrate CPUs mid-run, so
    // nothing else touches it until this program returns.
    let ev = unsafe { &mut *ev };
    // Field by field: every field is written, so nothing of the previous event remains.
    // SAFETY: plain helper call.
    ev.ktime_ns = unsafe { bpf_ktime_get_ns() };
    ev.kind = kind;
    ev.point = 0;
    ev.protocol = 0;
    ev.tcp_flags = 0;
    ev.reason = 0;
    ev.allowed = 0;
    ev.policy_match = 0;
    ev.src_identity = 0;
    ev.dst_identity = 0;
    // SAFETY: reading a field of the kernel's __sk_buff.
    ev.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    ev.saddr = 0;
    ev.daddr = 0;
    ev.sport = 0;
    ev.dport = 0;
    ev.orig_daddr = 0;
    ev.orig_dport = 0;
    ev._pad = 0;
    ev.len = ctx.len();
    Some(ev)
}

/// Whether this packet is reported under aggregation key `point`; records the report.
#[inline(always)]
fn aggregate(ev: &FlowEvent, point: u8) -> bool {
    let key = AggKey {
        saddr: ev.saddr,
        daddr: ev.daddr,
        sport: ev.sport,
        dport: ev.dport,
        protocol: ev.protocol,
        point,
        _pad: 0,
    };
    let now = (ev.ktime_ns / 1_000_000_000) as u32;
    // SAFETY: the value is copied out at once.
    let prev = unsafe { AGG.get(&key).copied() };
    if !should_report(prev, ev.tcp_flags, now) {
        return false;
    }
    let flags_seen = prev.map(|p| p.flags_seen).unwrap_or(0) | (ev.tcp_flags & AGG_REPORT_FLAGS);
    // A full LRU evicts; a failed insert only means the next packet is reported again.
    let _ = AGG.insert(&key, &AggValue { last_report: now, flags_seen, _pad: [0; 3] }, 0);
    true
}

/// The node's event flags (`CONFIG_F_*`); all clear (medium, every kind on) before the agent
/// writes the config row. Reads the one field, not the whole row, to keep the stack small.
#[inline(always)]
fn config_flags() -> u32 {
    CONFIG.get(0).map(|c| c.flags).unwrap_or(0)
}

#[inline(always)]
fn output(ev: &FlowEvent) {
    if EVENTS.output::<FlowEvent>(ev, 0).is_err() {
        if let Some(lost) = LOST.get_ptr_mut(0) {
            // SAFETY: per-CPU slot from a successful lookup.
            unsafe { *lost += 1 };
        }
    }
}

#[inline(never)]
fn emit_trace(skb: *mut __sk_buff, point: u8, src_identity: u32, dst_identity: u32, orig: u64) {
    let flags = config_flags();
    if flags & CONFIG_F_NO_TRACE_EVENTS != 0
        || (flags & CONFIG_F_TRACE_RX == 0 && beeline_common::events::point::is_receive(point))
    {
        return;
    }
    let ctx = TcContext::new(skb);
    let Some(ev) = new_event(&ctx, kind::TRACE) else {
        return;
    };
    if !fill_tuple(&ctx, ev) || (flags & CONFIG_F_TRACE_EVERY_PACKET == 0 && !aggregate(ev, point)) {
        return;
    }
    ev.point = point;
    ev.src_identity = src_identity;
    ev.dst_identity = dst_identity;
    ev.orig_daddr = orig as u32;
    ev.orig_dport = (orig >> 32) as u16;
    output(ev);
}

#[inline(never)]
fn emit_drop(skb: *mut __sk_buff, reason: u32) {
    if config_flags() & CONFIG_F_NO_DROP_EVENTS != 0 {
        return;
    }
    let ctx = TcContext::new(skb);
    let Some(ev) = new_event(&ctx, kind::DROP) else {
        return;
    };
    // A malformed packet is reported without its tuple.
    fill_tuple(&ctx, ev);
    ev.reason = reason as u16;
    output(ev);
}

/// `packed` = direction | allowed << 8 | match type << 16 (five arguments at most per call).
#[inline(never)]
fn emit_policy(skb: *mut __sk_buff, packed: u32, peer: u32, local_identity: u32) {
    if config_flags() & CONFIG_F_NO_POLICY_VERDICT_EVENTS != 0 {
        return;
    }
    let ctx = TcContext::new(skb);
    let Some(ev) = new_event(&ctx, kind::POLICY_VERDICT) else {
        return;
    };
    if !fill_tuple(&ctx, ev) {
        return;
    }
    let egress = packed as u8;
    ev.point = egress;
    ev.allowed = (packed >> 8) as u8;
    ev.policy_match = (packed >> 16) as u8;
    if ev.allowed != 0 && !aggregate(ev, AGG_POLICY_BASE + egress) {
        return;
    }
    // The peer is the source on ingress and the destination on egress.
    let (src, dst) = if egress == 0 { (peer, local_identity) } else { (local_identity, peer) };
    ev.src_identity = src;
    ev.dst_identity = dst;
    output(ev);
}
