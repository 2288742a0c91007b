//! IPv4 source NAT over `beeline_snat_v4` (layout and direction rules in `beeline_common::nat`).
//!
//! The API the callers use (pod masquerading in [`crate::netdev`]; NodePort SNAT later):
//! - [`snat_v4`]: egress — rewrite the source to a [`SnatTarget`], creating the mapping (with a
//!   freshly allocated port) on a flow's first packet;
//! - [`rev_snat_v4`]: ingress — if the packet answers a translated flow, rewrite its destination
//!   back and say to whom.
//!
//! Both fix the IPv4 checksum and the L4 checksum (TCP/UDP: pseudo-header + port; ICMP echo: the
//! identifier) incrementally, which also keeps `CHECKSUM_PARTIAL` packets (GSO from pods) right:
//! the kernel updates only the pseudo-header seed there.

use core::num::NonZeroU32;

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_NOEXIST},
    helpers::generated::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    programs::TcContext,
};
use beeline_common::{
    datapath::drop_reason,
    nat::{port_range, NatEntry, NatTuple, NAT_COLLISION_RETRIES, NAT_DIR_EGRESS, NAT_DIR_INGRESS},
};

use crate::{
    maps::SNAT_V4,
    parse::{Ipv4Hdr, ETH_HLEN, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPV4_CSUM_OFF, IPV4_DADDR_OFF, IPV4_SADDR_OFF},
};

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;

/// The address and port range a flow's source is translated to.
#[derive(Clone, Copy)]
pub struct SnatTarget {
    /// Network byte order.
    pub addr_be: u32,
    /// Host byte order; 0 = `nat::NAT_PORT_{MIN,MAX}_DEFAULT`.
    pub port_min: u16,
    pub port_max: u16,
}

/// Where the translated L4 fields sit in this packet.
#[derive(Clone, Copy)]
struct L4 {
    /// Offset of the source port (TCP/UDP) or the echo identifier (ICMP).
    sport_off: usize,
    /// Offset of the destination port (TCP/UDP) or the echo identifier (ICMP).
    dport_off: usize,
    csum_off: usize,
    /// `l4_csum_replace` flags: pseudo-header participation and UDP's "0 = no checksum".
    addr_flags: u64,
    port_flags: u64,
}

/// The tuple of `ip`'s packet as the wire has it, for direction `dir` (only ICMP echo requests
/// are translated on egress and echo replies on ingress).
#[inline(always)]
fn tuple_v4(ctx: &TcContext, ip: &Ipv4Hdr, dir: u8) -> Result<(NatTuple, L4), u32> {
    let l4 = ETH_HLEN + ip.header_len();
    let mut tuple =
        NatTuple { daddr: ip.daddr_be(), saddr: ip.saddr_be(), nexthdr: ip.protocol, flags: dir, ..Default::default() };
    let layout = match ip.protocol {
        IPPROTO_TCP | IPPROTO_UDP => {
            let ports: [u16; 2] = ctx.load(l4).map_err(|_| drop_reason::INVALID)?;
            tuple.sport = ports[0];
            tuple.dport = ports[1];
            let (csum_off, mangled) =
                if ip.protocol == IPPROTO_TCP { (l4 + 16, 0) } else { (l4 + 6, u64::from(BPF_F_MARK_MANGLED_0)) };
            L4 {
                sport_off: l4,
                dport_off: l4 + 2,
                csum_off,
                addr_flags: u64::from(BPF_F_PSEUDO_HDR) | mangled | 4,
                port_flags: mangled | 2,
            }
        }
        IPPROTO_ICMP => {
            let head: [u8; 2] = ctx.load(l4).map_err(|_| drop_reason::INVALID)?;
            let id: u16 = ctx.load(l4 + 4).map_err(|_| drop_reason::INVALID)?;
            match (head[0], dir) {
                (ICMP_ECHO_REQUEST, NAT_DIR_EGRESS) => tuple.sport = id,
                (ICMP_ECHO_REPLY, NAT_DIR_INGRESS) => tuple.dport = id,
                _ => return Err(drop_reason::NAT_UNSUPP_PROTO),
            }
            // No pseudo-header in ICMPv4: an address change leaves its checksum alone.
            L4 { sport_off: l4 + 4, dport_off: l4 + 4, csum_off: l4 + 2, addr_flags: 0, port_flags: 2 }
        }
        _ => return Err(drop_reason::NAT_UNSUPP_PROTO),
    };
    Ok((tuple, layout))
}

/// Rewrites one address (at `addr_off`) and one port (at `port_off`) with checksum fix-ups.
#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    l4: &L4,
    addr_off: usize,
    (old_addr, new_addr): (u32, u32),
    port_off: usize,
    (old_port, new_port): (u16, u16),
) -> Result<(), u32> {
    let err = |_| drop_reason::WRITE_ERROR;
    if old_addr != new_addr {
        ctx.l3_csum_replace(IPV4_CSUM_OFF, u64::from(old_addr), u64::from(new_addr), 4).map_err(err)?;
        if l4.addr_flags != 0 {
            ctx.l4_csum_replace(l4.csum_off, u64::from(old_addr), u64::from(new_addr), l4.addr_flags).map_err(err)?;
        }
        ctx.store(addr_off, &new_addr, 0).map_err(err)?;
    }
    if old_port != new_port {
        ctx.l4_csum_replace(l4.csum_off, u64::from(old_port), u64::from(new_port), l4.port_flags).map_err(err)?;
        ctx.store(port_off, &new_port, 0).map_err(err)?;
    }
    Ok(())
}

/// Egress: translates the packet's source to `target` (Err = drop reason).
#[inline(always)]
pub fn snat_v4(ctx: &TcContext, ip: &Ipv4Hdr, target: &SnatTarget) -> Result<(), u32> {
    if ip.fragment_offset() != 0 {
        return Err(drop_reason::FRAG_NOSUPPORT);
    }
    let (tuple, l4) = tuple_v4(ctx, ip, NAT_DIR_EGRESS)?;
    // SAFETY: copied out at once.
    let entry = match unsafe { SNAT_V4.get(tuple) } {
        Some(entry) => *entry,
        None => new_mapping(&tuple, target)?,
    };
    rewrite(ctx, &l4, IPV4_SADDR_OFF, (tuple.saddr, entry.to_addr), l4.sport_off, (tuple.sport, entry.to_port))
}

/// Ingress: when the packet answers a translated flow, rewrites its destination back and returns
/// the original source address (network byte order); `Ok(None)` when it is not ours.
#[inline(always)]
pub fn rev_snat_v4(ctx: &TcContext, ip: &Ipv4Hdr) -> Result<Option<u32>, u32> {
    if ip.fragment_offset() != 0 {
        return Ok(None);
    }
    let Ok((tuple, l4)) = tuple_v4(ctx, ip, NAT_DIR_INGRESS) else {
        return Ok(None);
    };
    // SAFETY: copied out at once.
    let Some(entry) = (unsafe { SNAT_V4.get(tuple) }).copied() else {
        return Ok(None);
    };
    rewrite(ctx, &l4, IPV4_DADDR_OFF, (tuple.daddr, entry.to_addr), l4.dport_off, (tuple.dport, entry.to_port))?;
    Ok(Some(entry.to_addr))
}

/// Allocates a source port for a new flow: the original port when it lies in the range (no
/// rewrite needed), then random candidates, at most `NAT_COLLISION_RETRIES`. The reverse row is
/// claimed first with `BPF_NOEXIST` — that is what makes a port ours.
#[inline(always)]
fn new_mapping(tuple: &NatTuple, target: &SnatTarget) -> Result<NatEntry, u32> {
    let (min, max) = port_range(target.port_min, target.port_max).ok_or(drop_reason::NAT_NO_MAPPING)?;
    let span = NonZeroU32::new(u32::from(max - min) + 1).ok_or(drop_reason::NAT_NO_MAPPING)?;
    let random = || {
        // SAFETY: plain helper call.
        let r = unsafe { bpf_get_prandom_u32() };
        min.wrapping_add((r % span) as u16)
    };
    let original = u16::from_be(tuple.sport);
    let mut port = if original >= min && original <= max { original } else { random() };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let back = NatEntry { created: now, to_addr: tuple.saddr, to_port: tuple.sport, pad: 0 };
    for _ in 0..NAT_COLLISION_RETRIES {
        let reply = tuple.reply_after_snat(target.addr_be, port.to_be());
        if SNAT_V4.insert(reply, back, u64::from(BPF_NOEXIST)).is_ok() {
            let out = NatEntry { created: now, to_addr: target.addr_be, to_port: port.to_be(), pad: 0 };
            if SNAT_V4.insert(tuple, out, 0).is_err() {
                let _ = SNAT_V4.remove(reply);
                return Err(drop_reason::NAT_NO_MAPPING);
            }
            return Ok(out);
        }
        port = random();
    }
    Err(drop_reason::NAT_NO_MAPPING)
}
