//! Packet builders, a parser and checksum verifiers for datapath tests.
//!
//! Build a frame layer by layer; every length and checksum is computed on [`FrameBuilder::build`]:
//!
//! ```
//! use beeline::datapath::testing::packet::{FrameBuilder, parse, verify_checksums};
//! let frame = FrameBuilder::new([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
//!     .ipv4("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap())
//!     .udp(1234, 53)
//!     .payload(b"hello")
//!     .build();
//! verify_checksums(&frame).unwrap();
//! assert_eq!(parse(&frame).unwrap().payload, b"hello");
//! ```
//!
//! Scope: Ethernet II without VLAN tags; IPv4 with or without options; IPv6 without extension
//! headers. That is what the datapath sees from pods today; extend here when a test needs more.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub type Mac = [u8; 6];

pub const BROADCAST_MAC: Mac = [0xff; 6];

pub mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    pub const IPV6: u16 = 0x86dd;
}

pub mod ipproto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
}

pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

pub mod icmp_type {
    pub const V4_ECHO_REPLY: u8 = 0;
    pub const V4_DEST_UNREACHABLE: u8 = 3;
    pub const V4_ECHO_REQUEST: u8 = 8;
    pub const V6_DEST_UNREACHABLE: u8 = 1;
    pub const V6_ECHO_REQUEST: u8 = 128;
    pub const V6_ECHO_REPLY: u8 = 129;
    pub const V6_NEIGHBOR_SOLICITATION: u8 = 135;
    pub const V6_NEIGHBOR_ADVERTISEMENT: u8 = 136;
}

pub const ETH_HLEN: usize = 14;
pub const IPV4_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
pub const UDP_HLEN: usize = 8;
pub const TCP_HLEN: usize = 20;
pub const ICMP_HLEN: usize = 8;
pub const ARP_LEN: usize = 28;

// ---------------------------------------------------------------------------------------------
// Checksums
// ---------------------------------------------------------------------------------------------

/// RFC 1071 internet checksum over the concatenation of `parts` (each part may have odd length;
/// the concatenation is summed as one byte stream).
pub fn internet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut pending: Option<u8> = None;
    for part in parts {
        for &byte in *part {
            match pending.take() {
                Some(high) => sum += u32::from(u16::from_be_bytes([high, byte])),
                None => pending = Some(byte),
            }
        }
    }
    if let Some(high) = pending {
        sum += u32::from(u16::from_be_bytes([high, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The pseudo-header that UDP, TCP and ICMPv6 checksums cover (RFC 768/793 for IPv4, RFC 8200
/// §8.1 for IPv6).
pub fn pseudo_header(src: IpAddr, dst: IpAddr, protocol: u8, l4_len: usize) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut h = Vec::with_capacity(12);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            h.extend_from_slice(&[0, protocol]);
            h.extend_from_slice(&(l4_len as u16).to_be_bytes());
            h
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut h = Vec::with_capacity(40);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            h.extend_from_slice(&(l4_len as u32).to_be_bytes());
            h.extend_from_slice(&[0, 0, 0, protocol]);
            h
        }
        _ => panic!("pseudo header with mixed address families: {src} / {dst}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Builder
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
enum L3 {
    Ipv4 { src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, id: u16, tos: u8 },
    Ipv6 { src: Ipv6Addr, dst: Ipv6Addr, hop_limit: u8, traffic_class: u8, flow_label: u32 },
    Arp(Arp),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArpOp {
    Request = 1,
    Reply = 2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arp {
    pub op: ArpOp,
    pub sender_mac: Mac,
    pub sender_ip: Ipv4Addr,
    pub target_mac: Mac,
    pub target_ip: Ipv4Addr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum L4 {
    Udp {
        sport: u16,
        dport: u16,
    },
    Tcp {
        sport: u16,
        dport: u16,
        seq: u32,
        ack: u32,
        flags: u8,
        window: u16,
    },
    /// ICMP for IPv4, ICMPv6 for IPv6: type, code and the 4 bytes after the checksum.
    Icmp {
        ty: u8,
        code: u8,
        rest: [u8; 4],
    },
}

/// Builds an Ethernet frame; see the module documentation.
#[derive(Clone, Debug)]
pub struct FrameBuilder {
    src_mac: Mac,
    dst_mac: Mac,
    l3: Option<L3>,
    l4: Option<L4>,
    payload: Vec<u8>,
}

impl FrameBuilder {
    pub fn new(src_mac: Mac, dst_mac: Mac) -> Self {
        FrameBuilder { src_mac, dst_mac, l3: None, l4: None, payload: Vec::new() }
    }

    /// An ARP request from (`sender_mac`, `sender_ip`) for `target_ip`, broadcast.
    pub fn arp_request(sender_mac: Mac, sender_ip: Ipv4Addr, target_ip: Ipv4Addr) -> Self {
        let arp = Arp { op: ArpOp::Request, sender_mac, sender_ip, target_mac: [0; 6], target_ip };
        FrameBuilder { l3: Some(L3::Arp(arp)), ..FrameBuilder::new(sender_mac, BROADCAST_MAC) }
    }

    /// An ARP reply telling (`target_mac`, `target_ip`) that `sender_ip` is at `sender_mac`.
    pub fn arp_reply(sender_mac: Mac, sender_ip: Ipv4Addr, target_mac: Mac, target_ip: Ipv4Addr) -> Self {
        let arp = Arp { op: ArpOp::Reply, sender_mac, sender_ip, target_mac, target_ip };
        FrameBuilder { l3: Some(L3::Arp(arp)), ..FrameBuilder::new(sender_mac, target_mac) }
    }

    pub fn ipv4(mut self, src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        self.l3 = Some(L3::Ipv4 { src, dst, ttl: 64, id: 0, tos: 0 });
        self
    }

    pub fn ipv6(mut self, src: Ipv6Addr, dst: Ipv6Addr) -> Self {
        self.l3 = Some(L3::Ipv6 { src, dst, hop_limit: 64, traffic_class: 0, flow_label: 0 });
        self
    }

    /// IPv4 TTL or IPv6 hop limit.
    pub fn ttl(mut self, value: u8) -> Self {
        match &mut self.l3 {
            Some(L3::Ipv4 { ttl, .. }) => *ttl = value,
            Some(L3::Ipv6 { hop_limit, .. }) => *hop_limit = value,
            _ => panic!("ttl() needs an IP layer first"),
        }
        self
    }

    pub fn ipv4_id(mut self, value: u16) -> Self {
        match &mut self.l3 {
            Some(L3::Ipv4 { id, .. }) => *id = value,
            _ => panic!("ipv4_id() needs an IPv4 layer first"),
        }
        self
    }

    pub fn udp(mut self, sport: u16, dport: u16) -> Self {
        self.l4 = Some(L4::Udp { sport, dport });
        self
    }

    /// A TCP segment with sequence/ack 0 and a 64 KiB window; see [`Self::tcp_seq`].
    pub fn tcp(mut self, sport: u16, dport: u16, flags: u8) -> Self {
        self.l4 = Some(L4::Tcp { sport, dport, seq: 0, ack: 0, flags, window: 0xffff });
        self
    }

    pub fn tcp_seq(mut self, seq_no: u32, ack_no: u32) -> Self {
        match &mut self.l4 {
            Some(L4::Tcp { seq, ack, .. }) => {
                *seq = seq_no;
                *ack = ack_no;
            }
            _ => panic!("tcp_seq() needs a TCP layer first"),
        }
        self
    }

    /// An echo request: ICMP type 8 over IPv4, ICMPv6 type 128 over IPv6.
    pub fn icmp_echo_request(self, ident: u16, seq: u16) -> Self {
        let ty = if self.is_ipv6() { icmp_type::V6_ECHO_REQUEST } else { icmp_type::V4_ECHO_REQUEST };
        self.icmp(ty, 0, echo_rest(ident, seq))
    }

    /// An echo reply: ICMP type 0 over IPv4, ICMPv6 type 129 over IPv6.
    pub fn icmp_echo_reply(self, ident: u16, seq: u16) -> Self {
        let ty = if self.is_ipv6() { icmp_type::V6_ECHO_REPLY } else { icmp_type::V4_ECHO_REPLY };
        self.icmp(ty, 0, echo_rest(ident, seq))
    }

    /// Any ICMP (IPv4) or ICMPv6 (IPv6) message: type, code, and the 4 bytes after the checksum.
    pub fn icmp(mut self, ty: u8, code: u8, rest: [u8; 4]) -> Self {
        self.l4 = Some(L4::Icmp { ty, code, rest });
        self
    }

    pub fn payload(mut self, bytes: &[u8]) -> Self {
        self.payload = bytes.to_vec();
        self
    }

    fn is_ipv6(&self) -> bool {
        matches!(self.l3, Some(L3::Ipv6 { .. }))
    }

    /// The frame, with every length and checksum filled in.
    pub fn build(&self) -> Vec<u8> {
        let mut frame = Vec::with_capacity(128 + self.payload.len());
        frame.extend_from_slice(&self.dst_mac);
        frame.extend_from_slice(&self.src_mac);
        let Some(l3) = &self.l3 else {
            // A raw Ethernet frame: the payload carries its own ethertype-less body.
            frame.extend_from_slice(&0x88b5u16.to_be_bytes()); // IEEE local experimental
            frame.extend_from_slice(&self.payload);
            return frame;
        };
        match l3 {
            L3::Arp(arp) => {
                assert!(self.l4.is_none(), "ARP carries no L4");
                frame.extend_from_slice(&ethertype::ARP.to_be_bytes());
                frame.extend_from_slice(&build_arp(arp));
            }
            L3::Ipv4 { src, dst, ttl, id, tos } => {
                frame.extend_from_slice(&ethertype::IPV4.to_be_bytes());
                let (protocol, l4) = self.build_l4(IpAddr::V4(*src), IpAddr::V4(*dst));
                let total_len = u16::try_from(IPV4_HLEN + l4.len()).expect("IPv4 packet above 64 KiB");
                let mut header = [0u8; IPV4_HLEN];
                header[0] = 0x45;
                header[1] = *tos;
                header[2..4].copy_from_slice(&total_len.to_be_bytes());
                header[4..6].copy_from_slice(&id.to_be_bytes());
                header[6] = 0x40; // don't fragment
                header[8] = *ttl;
                header[9] = protocol;
                header[12..16].copy_from_slice(&src.octets());
                header[16..20].copy_from_slice(&dst.octets());
                let csum = internet_checksum(&[&header]);
                header[10..12].copy_from_slice(&csum.to_be_bytes());
                frame.extend_from_slice(&header);
                frame.extend_from_slice(&l4);
            }
            L3::Ipv6 { src, dst, hop_limit, traffic_class, flow_label } => {
                frame.extend_from_slice(&ethertype::IPV6.to_be_bytes());
                let (next_header, l4) = self.build_l4(IpAddr::V6(*src), IpAddr::V6(*dst));
                let payload_len = u16::try_from(l4.len()).expect("IPv6 payload above 64 KiB");
                let first = (6u32 << 28) | (u32::from(*traffic_class) << 20) | (flow_label & 0xf_ffff);
                frame.extend_from_slice(&first.to_be_bytes());
                frame.extend_from_slice(&payload_len.to_be_bytes());
                frame.push(next_header);
                frame.push(*hop_limit);
                frame.extend_from_slice(&src.octets());
                frame.extend_from_slice(&dst.octets());
                frame.extend_from_slice(&l4);
            }
        }
        frame
    }

    /// (IP protocol number, L4 bytes with checksum). Without an L4 layer the payload is raw IP
    /// payload with protocol 253 (RFC 3692 experimentation).
    fn build_l4(&self, src: IpAddr, dst: IpAddr) -> (u8, Vec<u8>) {
        let Some(l4) = &self.l4 else {
            return (253, self.payload.clone());
        };
        let (protocol, mut bytes, csum_offset) = match l4 {
            L4::Udp { sport, dport } => {
                let len = u16::try_from(UDP_HLEN + self.payload.len()).expect("UDP datagram above 64 KiB");
                let mut b = Vec::with_capacity(UDP_HLEN + self.payload.len());
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&len.to_be_bytes());
                b.extend_from_slice(&[0, 0]);
                (ipproto::UDP, b, 6)
            }
            L4::Tcp { sport, dport, seq, ack, flags, window } => {
                let mut b = Vec::with_capacity(TCP_HLEN + self.payload.len());
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&seq.to_be_bytes());
                b.extend_from_slice(&ack.to_be_bytes());
                b.push(((TCP_HLEN / 4) as u8) << 4);
                b.push(*flags);
                b.extend_from_slice(&window.to_be_bytes());
                b.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
                (ipproto::TCP, b, 16)
            }
            L4::Icmp { ty, code, rest } => {
                let mut b = vec![*ty, *code, 0, 0];
                b.extend_from_slice(rest);
                let protocol = if src.is_ipv6() { ipproto::ICMPV6 } else { ipproto::ICMP };
                (protocol, b, 2)
            }
        };
        bytes.extend_from_slice(&self.payload);
        // ICMPv4 has no pseudo header; UDP, TCP and ICMPv6 do.
        let csum = if protocol == ipproto::ICMP {
            internet_checksum(&[&bytes])
        } else {
            internet_checksum(&[&pseudo_header(src, dst, protocol, bytes.len()), &bytes])
        };
        // RFC 768: a computed UDP checksum of 0 is sent as all ones (0 means "no checksum").
        let csum = if protocol == ipproto::UDP && csum == 0 { 0xffff } else { csum };
        bytes[csum_offset..csum_offset + 2].copy_from_slice(&csum.to_be_bytes());
        (protocol, bytes)
    }
}

fn echo_rest(ident: u16, seq: u16) -> [u8; 4] {
    let [a, b] = ident.to_be_bytes();
    let [c, d] = seq.to_be_bytes();
    [a, b, c, d]
}

fn build_arp(arp: &Arp) -> [u8; ARP_LEN] {
    let mut b = [0u8; ARP_LEN];
    b[0..2].copy_from_slice(&1u16.to_be_bytes()); // hardware type: Ethernet
    b[2..4].copy_from_slice(&ethertype::IPV4.to_be_bytes());
    b[4] = 6;
    b[5] = 4;
    b[6..8].copy_from_slice(&(arp.op as u16).to_be_bytes());
    b[8..14].copy_from_slice(&arp.sender_mac);
    b[14..18].copy_from_slice(&arp.sender_ip.octets());
    b[18..24].copy_from_slice(&arp.target_mac);
    b[24..28].copy_from_slice(&arp.target_ip.octets());
    b
}

// ---------------------------------------------------------------------------------------------
// Parser and verifiers
// ---------------------------------------------------------------------------------------------

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("frame truncated: {layer} needs {needed} bytes at offset {offset}, frame has {len}")]
    Truncated { layer: &'static str, offset: usize, needed: usize, len: usize },
    #[error("{layer}: {reason}")]
    Malformed { layer: &'static str, reason: String },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChecksumError {
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("{layer} checksum is wrong: found {found:#06x}, expected {expected:#06x}")]
    Wrong { layer: &'static str, found: u16, expected: u16 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedFrame {
    pub dst_mac: Mac,
    pub src_mac: Mac,
    pub ethertype: u16,
    pub l3: ParsedL3,
    pub l4: Option<ParsedL4>,
    /// What follows the innermost parsed header.
    pub payload: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParsedL3 {
    Ipv4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        ttl: u8,
        protocol: u8,
        checksum: u16,
    },
    Ipv6 {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        hop_limit: u8,
        next_header: u8,
    },
    Arp(Arp),
    /// An ethertype this parser does not know.
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParsedL4 {
    Udp {
        sport: u16,
        dport: u16,
        checksum: u16,
    },
    Tcp {
        sport: u16,
        dport: u16,
        seq: u32,
        ack: u32,
        flags: u8,
        window: u16,
        checksum: u16,
    },
    /// ICMP (IPv4) or ICMPv6 (IPv6).
    Icmp {
        ty: u8,
        code: u8,
        rest: [u8; 4],
        checksum: u16,
    },
}

impl ParsedFrame {
    pub fn src_ip(&self) -> Option<IpAddr> {
        match &self.l3 {
            ParsedL3::Ipv4 { src, .. } => Some(IpAddr::V4(*src)),
            ParsedL3::Ipv6 { src, .. } => Some(IpAddr::V6(*src)),
            _ => None,
        }
    }

    pub fn dst_ip(&self) -> Option<IpAddr> {
        match &self.l3 {
            ParsedL3::Ipv4 { dst, .. } => Some(IpAddr::V4(*dst)),
            ParsedL3::Ipv6 { dst, .. } => Some(IpAddr::V6(*dst)),
            _ => None,
        }
    }

    /// (source, destination) ports for TCP and UDP.
    pub fn ports(&self) -> Option<(u16, u16)> {
        match self.l4 {
            Some(ParsedL4::Udp { sport, dport, .. }) | Some(ParsedL4::Tcp { sport, dport, .. }) => Some((sport, dport)),
            _ => None,
        }
    }
}

fn need(frame: &[u8], layer: &'static str, offset: usize, needed: usize) -> Result<(), ParseError> {
    if frame.len() < offset + needed {
        return Err(ParseError::Truncated { layer, offset, needed, len: frame.len() });
    }
    Ok(())
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn mac(b: &[u8], at: usize) -> Mac {
    b[at..at + 6].try_into().expect("six bytes")
}

/// Where each layer starts in a frame, plus the L3 addresses: what both the parser and the
/// checksum verifier need.
struct Layout {
    l3_offset: usize,
    l4_offset: usize,
    l4_end: usize,
    protocol: u8,
}

fn ip_layout(frame: &[u8], ethertype: u16) -> Result<Option<Layout>, ParseError> {
    let l3 = ETH_HLEN;
    match ethertype {
        ethertype::IPV4 => {
            need(frame, "IPv4", l3, IPV4_HLEN)?;
            if frame[l3] >> 4 != 4 {
                return Err(ParseError::Malformed { layer: "IPv4", reason: format!("version {}", frame[l3] >> 4) });
            }
            let ihl = usize::from(frame[l3] & 0x0f) * 4;
            if ihl < IPV4_HLEN {
                return Err(ParseError::Malformed { layer: "IPv4", reason: format!("IHL {ihl} below 20") });
            }
            need(frame, "IPv4 options", l3, ihl)?;
            let total = usize::from(be16(frame, l3 + 2));
            if total < ihl {
                return Err(ParseError::Malformed { layer: "IPv4", reason: format!("total length {total} < IHL") });
            }
            need(frame, "IPv4 payload", l3, total)?;
            Ok(Some(Layout { l3_offset: l3, l4_offset: l3 + ihl, l4_end: l3 + total, protocol: frame[l3 + 9] }))
        }
        ethertype::IPV6 => {
            need(frame, "IPv6", l3, IPV6_HLEN)?;
            if frame[l3] >> 4 != 6 {
                return Err(ParseError::Malformed { layer: "IPv6", reason: format!("version {}", frame[l3] >> 4) });
            }
            let payload_len = usize::from(be16(frame, l3 + 4));
            need(frame, "IPv6 payload", l3 + IPV6_HLEN, payload_len)?;
            Ok(Some(Layout {
                l3_offset: l3,
                l4_offset: l3 + IPV6_HLEN,
                l4_end: l3 + IPV6_HLEN + payload_len,
                protocol: frame[l3 + 6],
            }))
        }
        _ => Ok(None),
    }
}

/// Parses an Ethernet frame as far as this module knows the layers.
pub fn parse(frame: &[u8]) -> Result<ParsedFrame, ParseError> {
    need(frame, "Ethernet", 0, ETH_HLEN)?;
    let dst_mac = mac(frame, 0);
    let src_mac = mac(frame, 6);
    let ethertype = be16(frame, 12);
    let mut parsed = ParsedFrame { dst_mac, src_mac, ethertype, l3: ParsedL3::Other, l4: None, payload: Vec::new() };

    if ethertype == ethertype::ARP {
        let o = ETH_HLEN;
        need(frame, "ARP", o, ARP_LEN)?;
        let op = match be16(frame, o + 6) {
            1 => ArpOp::Request,
            2 => ArpOp::Reply,
            other => return Err(ParseError::Malformed { layer: "ARP", reason: format!("opcode {other}") }),
        };
        let ip = |at: usize| Ipv4Addr::new(frame[at], frame[at + 1], frame[at + 2], frame[at + 3]);
        parsed.l3 = ParsedL3::Arp(Arp {
            op,
            sender_mac: mac(frame, o + 8),
            sender_ip: ip(o + 14),
            target_mac: mac(frame, o + 18),
            target_ip: ip(o + 24),
        });
        parsed.payload = frame[o + ARP_LEN..].to_vec();
        return Ok(parsed);
    }

    let Some(layout) = ip_layout(frame, ethertype)? else {
        parsed.payload = frame[ETH_HLEN..].to_vec();
        return Ok(parsed);
    };
    let o = layout.l3_offset;
    parsed.l3 = if ethertype == ethertype::IPV4 {
        ParsedL3::Ipv4 {
            src: Ipv4Addr::from(be32(frame, o + 12)),
            dst: Ipv4Addr::from(be32(frame, o + 16)),
            ttl: frame[o + 8],
            protocol: layout.protocol,
            checksum: be16(frame, o + 10),
        }
    } else {
        let addr = |at: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&frame[at..at + 16]).expect("16 bytes"));
        ParsedL3::Ipv6 { src: addr(o + 8), dst: addr(o + 24), hop_limit: frame[o + 7], next_header: layout.protocol }
    };

    let (l4o, end) = (layout.l4_offset, layout.l4_end);
    let header_len = match layout.protocol {
        ipproto::UDP => {
            need(frame, "UDP", l4o, UDP_HLEN)?;
            parsed.l4 = Some(ParsedL4::Udp {
                sport: be16(frame, l4o),
                dport: be16(frame, l4o + 2),
                checksum: be16(frame, l4o + 6),
            });
            UDP_HLEN
        }
        ipproto::TCP => {
            need(frame, "TCP", l4o, TCP_HLEN)?;
            let data_offset = usize::from(frame[l4o + 12] >> 4) * 4;
            if data_offset < TCP_HLEN || l4o + data_offset > end {
                return Err(ParseError::Malformed { layer: "TCP", reason: format!("data offset {data_offset}") });
            }
            parsed.l4 = Some(ParsedL4::Tcp {
                sport: be16(frame, l4o),
                dport: be16(frame, l4o + 2),
                seq: be32(frame, l4o + 4),
                ack: be32(frame, l4o + 8),
                flags: frame[l4o + 13],
                window: be16(frame, l4o + 14),
                checksum: be16(frame, l4o + 16),
            });
            data_offset
        }
        ipproto::ICMP | ipproto::ICMPV6 => {
            need(frame, "ICMP", l4o, ICMP_HLEN)?;
            parsed.l4 = Some(ParsedL4::Icmp {
                ty: frame[l4o],
                code: frame[l4o + 1],
                rest: frame[l4o + 4..l4o + 8].try_into().expect("four bytes"),
                checksum: be16(frame, l4o + 2),
            });
            ICMP_HLEN
        }
        _ => 0,
    };
    if l4o + header_len > end {
        return Err(ParseError::Malformed { layer: "L4", reason: "header beyond the IP payload".into() });
    }
    parsed.payload = frame[l4o + header_len..end].to_vec();
    Ok(parsed)
}

/// Checks every checksum the frame carries: the IPv4 header checksum and the UDP/TCP/ICMP/ICMPv6
/// checksum (a UDP checksum of 0 over IPv4 means "none" and is accepted).
pub fn verify_checksums(frame: &[u8]) -> Result<(), ChecksumError> {
    need(frame, "Ethernet", 0, ETH_HLEN)?;
    let Some(layout) = ip_layout(frame, be16(frame, 12))? else {
        return Ok(());
    };
    let o = layout.l3_offset;
    let is_v4 = be16(frame, 12) == ethertype::IPV4;
    if is_v4 {
        // Summing a header that includes a correct checksum yields 0.
        let header = &frame[o..layout.l4_offset];
        if internet_checksum(&[header]) != 0 {
            let mut zeroed = header.to_vec();
            zeroed[10] = 0;
            zeroed[11] = 0;
            return Err(ChecksumError::Wrong {
                layer: "IPv4 header",
                found: be16(frame, o + 10),
                expected: internet_checksum(&[&zeroed]),
            });
        }
    }
    let (src, dst) = if is_v4 {
        (IpAddr::V4(Ipv4Addr::from(be32(frame, o + 12))), IpAddr::V4(Ipv4Addr::from(be32(frame, o + 16))))
    } else {
        let addr = |at: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&frame[at..at + 16]).expect("16 bytes"));
        (IpAddr::V6(addr(o + 8)), IpAddr::V6(addr(o + 24)))
    };
    let l4 = &frame[layout.l4_offset..layout.l4_end];
    let (layer, csum_offset, pseudo) = match layout.protocol {
        ipproto::UDP => ("UDP", 6, true),
        ipproto::TCP => ("TCP", 16, true),
        ipproto::ICMP if is_v4 => ("ICMP", 2, false),
        ipproto::ICMPV6 if !is_v4 => ("ICMPv6", 2, true),
        _ => return Ok(()),
    };
    need(frame, layer, layout.l4_offset, csum_offset + 2)?;
    let found = be16(l4, csum_offset);
    if layout.protocol == ipproto::UDP && is_v4 && found == 0 {
        return Ok(());
    }
    let mut zeroed = l4.to_vec();
    zeroed[csum_offset] = 0;
    zeroed[csum_offset + 1] = 0;
    let expected = if pseudo {
        internet_checksum(&[&pseudo_header(src, dst, layout.protocol, l4.len()), &zeroed])
    } else {
        internet_checksum(&[&zeroed])
    };
    let expected = if layout.protocol == ipproto::UDP && expected == 0 { 0xffff } else { expected };
    if found != expected {
        return Err(ChecksumError::Wrong { layer, found, expected });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Mac = [0x02, 0, 0, 0, 0, 0x0a];
    const B: Mac = [0x02, 0, 0, 0, 0, 0x0b];

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }
    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn checksum_matches_the_rfc1071_and_wikipedia_vectors() {
        // RFC 1071 §3 example: the one's complement sum of these words is 0xddf2.
        assert_eq!(internet_checksum(&[&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]]), !0xddf2);
        // The IPv4 header example from Wikipedia's "Internet checksum" article.
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8,
            0x00, 0xc7,
        ];
        assert_eq!(internet_checksum(&[&header]), 0xb861);
        // Splitting the input at an odd offset must not change the sum.
        assert_eq!(internet_checksum(&[&header[..3], &header[3..]]), 0xb861);
    }

    #[test]
    fn every_kind_of_frame_round_trips_with_valid_checksums() {
        let cases: Vec<(&str, FrameBuilder)> = vec![
            ("udp4", FrameBuilder::new(A, B).ipv4(v4("10.0.0.1"), v4("10.0.0.2")).udp(1000, 53).payload(b"q")),
            ("udp6", FrameBuilder::new(A, B).ipv6(v6("fd00::1"), v6("fd00::2")).udp(1000, 53).payload(b"query")),
            (
                "tcp4",
                FrameBuilder::new(A, B)
                    .ipv4(v4("10.0.0.1"), v4("10.0.0.2"))
                    .tcp(40000, 80, tcp_flags::SYN)
                    .tcp_seq(7, 0),
            ),
            (
                "tcp6",
                FrameBuilder::new(A, B)
                    .ipv6(v6("fd00::1"), v6("fd00::2"))
                    .tcp(40000, 443, tcp_flags::ACK | tcp_flags::PSH)
                    .payload(b"GET / HTTP/1.1\r\n\r\n"),
            ),
            (
                "icmp4",
                FrameBuilder::new(A, B).ipv4(v4("10.0.0.1"), v4("10.0.0.2")).icmp_echo_request(7, 1).payload(b"abc"),
            ),
            ("icmp6", FrameBuilder::new(A, B).ipv6(v6("fd00::1"), v6("fd00::2")).icmp_echo_reply(7, 1).payload(b"a")),
        ];
        for (name, builder) in cases {
            let frame = builder.build();
            verify_checksums(&frame).unwrap_or_else(|e| panic!("{name}: {e}"));
            let parsed = parse(&frame).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!((parsed.src_mac, parsed.dst_mac), (A, B), "{name}");
            assert_eq!(parsed.payload, builder.payload, "{name}");
            assert!(parsed.src_ip().is_some() && parsed.l4.is_some(), "{name}: {parsed:?}");
        }
    }

    #[test]
    fn parsed_fields_are_the_ones_built() {
        let frame = FrameBuilder::new(A, B)
            .ipv4(v4("192.0.2.1"), v4("198.51.100.7"))
            .ttl(3)
            .tcp(1234, 8080, tcp_flags::SYN | tcp_flags::ACK)
            .tcp_seq(100, 200)
            .build();
        let p = parse(&frame).unwrap();
        assert_eq!(frame.len(), ETH_HLEN + IPV4_HLEN + TCP_HLEN);
        assert_eq!(p.ethertype, ethertype::IPV4);
        assert!(
            matches!(p.l3, ParsedL3::Ipv4 { ttl: 3, protocol: ipproto::TCP, src, dst, .. } if src == v4("192.0.2.1") && dst == v4("198.51.100.7"))
        );
        assert!(matches!(
            p.l4,
            Some(ParsedL4::Tcp { sport: 1234, dport: 8080, seq: 100, ack: 200, flags: 0x12, window: 0xffff, .. })
        ));
        assert_eq!(p.ports(), Some((1234, 8080)));
    }

    #[test]
    fn arp_request_and_reply_parse_back() {
        let req = FrameBuilder::arp_request(A, v4("10.0.0.1"), v4("10.0.0.2")).build();
        assert_eq!(req.len(), ETH_HLEN + ARP_LEN);
        let p = parse(&req).unwrap();
        assert_eq!(p.dst_mac, BROADCAST_MAC);
        assert_eq!(
            p.l3,
            ParsedL3::Arp(Arp {
                op: ArpOp::Request,
                sender_mac: A,
                sender_ip: v4("10.0.0.1"),
                target_mac: [0; 6],
                target_ip: v4("10.0.0.2")
            })
        );
        let reply = FrameBuilder::arp_reply(B, v4("10.0.0.2"), A, v4("10.0.0.1")).build();
        assert!(matches!(parse(&reply).unwrap().l3, ParsedL3::Arp(Arp { op: ArpOp::Reply, sender_mac: B, .. })));
        verify_checksums(&reply).unwrap();
    }

    #[test]
    fn a_flipped_bit_anywhere_after_ethernet_is_caught() {
        let builders = [
            FrameBuilder::new(A, B).ipv4(v4("10.0.0.1"), v4("10.0.0.2")).udp(1, 2).payload(b"payload"),
            FrameBuilder::new(A, B).ipv6(v6("fd00::1"), v6("fd00::2")).tcp(1, 2, tcp_flags::ACK).payload(b"xy"),
            FrameBuilder::new(A, B).ipv4(v4("10.0.0.1"), v4("10.0.0.2")).icmp_echo_request(1, 1),
            FrameBuilder::new(A, B).ipv6(v6("fd00::1"), v6("fd00::2")).icmp_echo_request(1, 1).payload(b"z"),
        ];
        for builder in builders {
            let frame = builder.build();
            // IPv6's first 8 bytes (version, traffic class, flow label, lengths, next header, hop
            // limit) are not covered by any checksum by design; every other byte after Ethernet is.
            let is_v6 = be16(&frame, 12) == ethertype::IPV6;
            for at in ETH_HLEN..frame.len() {
                if is_v6 && at - ETH_HLEN < 8 {
                    continue;
                }
                let mut corrupt = frame.clone();
                corrupt[at] ^= 0x10;
                assert!(
                    verify_checksums(&corrupt).is_err() || parse(&corrupt).is_err(),
                    "corruption at byte {at} went unnoticed in {frame:02x?}"
                );
            }
        }
    }

    #[test]
    fn truncated_frames_are_reported_with_the_layer() {
        let frame = FrameBuilder::new(A, B).ipv4(v4("10.0.0.1"), v4("10.0.0.2")).udp(1, 2).payload(b"abcd").build();
        assert!(matches!(parse(&frame[..10]), Err(ParseError::Truncated { layer: "Ethernet", .. })));
        assert!(matches!(parse(&frame[..20]), Err(ParseError::Truncated { layer: "IPv4", .. })));
        assert!(matches!(parse(&frame[..frame.len() - 1]), Err(ParseError::Truncated { layer: "IPv4 payload", .. })));
    }

    #[test]
    fn udp_over_ipv4_without_checksum_is_accepted_but_a_wrong_one_is_not() {
        let mut frame = FrameBuilder::new(A, B).ipv4(v4("10.0.0.1"), v4("10.0.0.2")).udp(5, 6).build();
        let csum_at = ETH_HLEN + IPV4_HLEN + 6;
        frame[csum_at] = 0;
        frame[csum_at + 1] = 0;
        verify_checksums(&frame).unwrap();
        frame[csum_at + 1] = 1;
        assert!(matches!(verify_checksums(&frame), Err(ChecksumError::Wrong { layer: "UDP", .. })));
    }
}
