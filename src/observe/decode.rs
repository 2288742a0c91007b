//! Ring-buffer records → typed events. The record is `beeline_common::events::FlowEvent`; this is
//! the only place that interprets its multi-purpose fields (`point`, `reason`, `allowed`).

use std::net::Ipv4Addr;

use beeline_common::events::{kind, FlowEvent};

use crate::datapath::tables::from_be;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event record of {got} bytes, expected {want}")]
    Size { got: usize, want: usize },
    #[error("event record of unknown kind {0}")]
    Kind(u8),
}

/// What happened to the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// Seen at an observation point (`events::point::*`).
    Trace { point: u8 },
    /// Dropped with a reason (`datapath::drop_reason`).
    Drop { reason: u16 },
    /// A policy decision for a new flow.
    PolicyVerdict { egress: bool, allowed: bool, match_type: u8 },
}

/// An address and port (port 0 when the protocol has none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DatapathEvent {
    pub ktime_ns: u64,
    pub kind: EventKind,
    pub protocol: u8,
    pub tcp_flags: u8,
    /// 0 when the program did not know it (the agent's ipcache fills it in).
    pub src_identity: u32,
    pub dst_identity: u32,
    pub ifindex: u32,
    pub src: Endpoint,
    pub dst: Endpoint,
    /// Service translation: the frontend the client addressed.
    pub orig_dst: Option<Endpoint>,
    pub len: u32,
}

/// Decodes one record.
pub fn decode(bytes: &[u8]) -> Result<DatapathEvent, DecodeError> {
    let want = std::mem::size_of::<FlowEvent>();
    if bytes.len() != want {
        return Err(DecodeError::Size { got: bytes.len(), want });
    }
    // SAFETY: the length was checked; FlowEvent is plain old data (every bit pattern valid), and
    // read_unaligned copes with the ring's 8-byte alignment not being guaranteed here.
    let ev: FlowEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    from_record(&ev)
}

/// Interprets a record (also used by tests that build records directly).
pub fn from_record(ev: &FlowEvent) -> Result<DatapathEvent, DecodeError> {
    let kind = match ev.kind {
        kind::TRACE => EventKind::Trace { point: ev.point },
        kind::DROP => EventKind::Drop { reason: ev.reason },
        kind::POLICY_VERDICT => {
            EventKind::PolicyVerdict { egress: ev.point != 0, allowed: ev.allowed != 0, match_type: ev.policy_match }
        }
        other => return Err(DecodeError::Kind(other)),
    };
    let orig_dst = (ev.orig_daddr != 0).then(|| Endpoint { ip: from_be(ev.orig_daddr), port: ev.orig_dport });
    Ok(DatapathEvent {
        ktime_ns: ev.ktime_ns,
        kind,
        protocol: ev.protocol,
        tcp_flags: ev.tcp_flags,
        src_identity: ev.src_identity,
        dst_identity: ev.dst_identity,
        ifindex: ev.ifindex,
        src: Endpoint { ip: from_be(ev.saddr), port: ev.sport },
        dst: Endpoint { ip: from_be(ev.daddr), port: ev.dport },
        orig_dst,
        len: ev.len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::tables::be;
    use beeline_common::events::{point, policy_match};

    fn bytes(ev: &FlowEvent) -> Vec<u8> {
        // SAFETY: POD without padding.
        unsafe { std::slice::from_raw_parts((ev as *const FlowEvent).cast::<u8>(), size_of::<FlowEvent>()) }.to_vec()
    }

    fn record(kind: u8) -> FlowEvent {
        FlowEvent {
            ktime_ns: 7,
            kind,
            protocol: 6,
            tcp_flags: 0x02,
            src_identity: 51234,
            ifindex: 9,
            saddr: be("10.0.1.2".parse().unwrap()),
            daddr: be("10.0.2.3".parse().unwrap()),
            sport: 40000,
            dport: 80,
            len: 74,
            ..Default::default()
        }
    }

    #[test]
    fn every_kind_decodes_its_fields() {
        let trace = FlowEvent { point: point::TO_OVERLAY, ..record(kind::TRACE) };
        let drop = FlowEvent { reason: 133, ..record(kind::DROP) };
        let verdict =
            FlowEvent { point: 0, allowed: 1, policy_match: policy_match::L3_L4, ..record(kind::POLICY_VERDICT) };
        let service = FlowEvent {
            point: point::SERVICE,
            orig_daddr: be("10.96.0.10".parse().unwrap()),
            orig_dport: 8080,
            ..record(kind::TRACE)
        };
        let cases = [
            (trace, EventKind::Trace { point: point::TO_OVERLAY }, None),
            (drop, EventKind::Drop { reason: 133 }, None),
            (verdict, EventKind::PolicyVerdict { egress: false, allowed: true, match_type: policy_match::L3_L4 }, None),
            (
                service,
                EventKind::Trace { point: point::SERVICE },
                Some(Endpoint { ip: "10.96.0.10".parse().unwrap(), port: 8080 }),
            ),
        ];
        for (rec, want_kind, want_orig) in cases {
            let ev = decode(&bytes(&rec)).unwrap();
            assert_eq!(ev.kind, want_kind);
            assert_eq!(ev.orig_dst, want_orig);
            assert_eq!(ev.src, Endpoint { ip: "10.0.1.2".parse().unwrap(), port: 40000 });
            assert_eq!(ev.dst, Endpoint { ip: "10.0.2.3".parse().unwrap(), port: 80 });
            assert_eq!((ev.protocol, ev.tcp_flags, ev.src_identity, ev.ifindex, ev.len), (6, 2, 51234, 9, 74));
        }
    }

    #[test]
    fn wrong_sizes_and_unknown_kinds_are_errors() {
        let good = bytes(&record(kind::TRACE));
        assert_eq!(decode(&good[..55]), Err(DecodeError::Size { got: 55, want: 56 }));
        assert_eq!(decode(&[good.clone(), vec![0]].concat()), Err(DecodeError::Size { got: 57, want: 56 }));
        assert_eq!(decode(&bytes(&record(3))), Err(DecodeError::Kind(3)));
    }
}
