//! Dropping with a reason: every drop is counted per reason in `beeline_drops` (the CLI sums the
//! per-CPU rows) and reported as a drop event ([`crate::events`]).

use aya_ebpf::{bindings::TC_ACT_SHOT, programs::TcContext};

use crate::{events, maps::DROPS};

#[inline(always)]
pub fn drop(ctx: &TcContext, reason: u32) -> i32 {
    count(ctx, reason);
    TC_ACT_SHOT
}

/// Counts the packet under `reason` without deciding its fate (a rejected packet is answered,
/// e.g. with an ICMP error, but still shows up as dropped, like Cilium's drop notifications).
#[inline(always)]
pub fn count(ctx: &TcContext, reason: u32) {
    events::drop(ctx, reason);
    if let Some(stats) = DROPS.get_ptr_mut(reason) {
        // SAFETY: per-CPU slot from a successful lookup; nothing else writes it on this CPU now.
        unsafe {
            (*stats).packets += 1;
            (*stats).bytes += u64::from(ctx.len());
        }
    }
}
