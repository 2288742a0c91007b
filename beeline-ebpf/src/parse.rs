//! Header parsing with explicit bounds: every read goes through `bpf_skb_load_bytes`, which fails
//! (instead of reading past the packet) when the header is truncated, and works on non-linear
//! skbs too. Header structs are byte arrays, so no field has an alignment the packet cannot give.

use aya_ebpf::programs::TcContext;

pub const ETH_HLEN: usize = 14;
pub const IPV4_HLEN: usize = 20;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;

/// Offset of the IPv4 checksum, TTL and protocol fields from the start of the frame.
pub const IPV4_TTL_OFF: usize = ETH_HLEN + 8;
pub const IPV4_CSUM_OFF: usize = ETH_HLEN + 10;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto: [u8; 2],
}

impl EthHdr {
    pub fn proto(&self) -> u16 {
        u16::from_be_bytes(self.proto)
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ArpHdr {
    pub htype: [u8; 2],
    pub ptype: [u8; 2],
    pub hlen: u8,
    pub plen: u8,
    pub op: [u8; 2],
    pub sha: [u8; 6],
    pub spa: [u8; 4],
    pub tha: [u8; 6],
    pub tpa: [u8; 4],
}

pub const ARPOP_REQUEST: u16 = 1;
pub const ARPOP_REPLY: u16 = 2;

impl ArpHdr {
    /// An Ethernet/IPv4 ARP request (anything else goes to the stack untouched).
    pub fn is_ipv4_request(&self) -> bool {
        u16::from_be_bytes(self.htype) == 1
            && u16::from_be_bytes(self.ptype) == ETH_P_IP
            && self.hlen == 6
            && self.plen == 4
            && u16::from_be_bytes(self.op) == ARPOP_REQUEST
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub protocol: u8,
    pub check: [u8; 2],
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
}

impl Ipv4Hdr {
    /// Source address as a u32 whose memory is network byte order (what map keys hold).
    pub fn saddr_be(&self) -> u32 {
        u32::from_ne_bytes(self.saddr)
    }

    pub fn daddr_be(&self) -> u32 {
        u32::from_ne_bytes(self.daddr)
    }

    /// Header length in bytes (validated by [`ipv4`]): where the L4 header starts after
    /// [`ETH_HLEN`].
    pub fn header_len(&self) -> usize {
        usize::from(self.version_ihl & 0x0f) * 4
    }

    /// Fragment offset in 8-byte units; non-zero for every fragment but the first.
    pub fn fragment_offset(&self) -> u16 {
        u16::from_be_bytes(self.frag_off) & 0x1fff
    }
}

/// Offsets of the IPv4 addresses from the start of the frame.
pub const IPV4_SADDR_OFF: usize = ETH_HLEN + 12;
pub const IPV4_DADDR_OFF: usize = ETH_HLEN + 16;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Why a frame could not be parsed; each maps to a drop reason.
pub enum Malformed {
    Truncated,
    BadHeader,
}

pub fn eth(ctx: &TcContext) -> Result<EthHdr, Malformed> {
    ctx.load::<EthHdr>(0).map_err(|_| Malformed::Truncated)
}

pub fn arp(ctx: &TcContext) -> Result<ArpHdr, Malformed> {
    ctx.load::<ArpHdr>(ETH_HLEN).map_err(|_| Malformed::Truncated)
}

/// The IPv4 header after validating version, header length and total length against the skb.
pub fn ipv4(ctx: &TcContext) -> Result<Ipv4Hdr, Malformed> {
    let ip = ctx.load::<Ipv4Hdr>(ETH_HLEN).map_err(|_| Malformed::Truncated)?;
    let ihl = usize::from(ip.version_ihl & 0x0f) * 4;
    if ip.version_ihl >> 4 != 4 || ihl < IPV4_HLEN {
        return Err(Malformed::BadHeader);
    }
    let total = usize::from(u16::from_be_bytes(ip.tot_len));
    // The skb may carry Ethernet padding after the IP packet, never less than the IP packet.
    if total < ihl || ETH_HLEN + total > ctx.len() as usize {
        return Err(Malformed::BadHeader);
    }
    Ok(ip)
}

pub const ETH_P_IPV6: u16 = 0x86dd;
pub const IPV6_HLEN: usize = 40;
pub const IPPROTO_ICMPV6: u8 = 58;

/// Offsets of the IPv6 next header, hop limit and addresses from the start of the frame.
pub const IPV6_NEXT_HEADER_OFF: usize = ETH_HLEN + 6;
pub const IPV6_HOP_LIMIT_OFF: usize = ETH_HLEN + 7;
pub const IPV6_SADDR_OFF: usize = ETH_HLEN + 8;
pub const IPV6_DADDR_OFF: usize = ETH_HLEN + 24;

/// The fixed IPv6 header (RFC 8200). Extension headers are not walked: `next_header` is what
/// follows the fixed header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6Hdr {
    /// Version (4 bits), traffic class (8), flow label (20).
    pub vtc_flow: [u8; 4],
    pub payload_len: [u8; 2],
    pub next_header: u8,
    pub hop_limit: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

impl Ipv6Hdr {
    pub fn payload_len(&self) -> usize {
        usize::from(u16::from_be_bytes(self.payload_len))
    }

    /// Link-local source or destination, or a multicast destination: traffic of the link itself
    /// (neighbour discovery, router solicitations, MLD), which is the stack's, never forwarded.
    pub fn is_link_scope(&self) -> bool {
        is_link_local(&self.saddr) || is_link_local(&self.daddr) || is_multicast(&self.daddr)
    }
}

/// fe80::/10.
pub fn is_link_local(addr: &[u8; 16]) -> bool {
    addr[0] == 0xfe && addr[1] & 0xc0 == 0x80
}

/// ff00::/8.
pub fn is_multicast(addr: &[u8; 16]) -> bool {
    addr[0] == 0xff
}

/// `::`, the source of duplicate address detection probes.
pub fn is_unspecified(addr: &[u8; 16]) -> bool {
    *addr == [0; 16]
}

/// ICMPv6 message types (RFC 4443, RFC 4861).
pub const ICMP6_NEIGHBOR_SOLICIT: u8 = 135;
pub const ICMP6_NEIGHBOR_ADVERT: u8 = 136;

/// MLD (130–132, 143) and neighbour discovery other than solicitations (133 RS, 134 RA, 136 NA,
/// 137 redirect): control messages of the link, never forwarded.
pub fn is_link_control_icmp6(ty: u8) -> bool {
    matches!(ty, 130..=134 | 136 | 137 | 143)
}

/// Where the L4 header starts for an IPv6 packet without extension headers.
pub const IPV6_L4_OFF: usize = ETH_HLEN + IPV6_HLEN;

/// The fixed IPv6 header after validating the version and the payload length against the skb.
pub fn ipv6(ctx: &TcContext) -> Result<Ipv6Hdr, Malformed> {
    let ip = ctx.load::<Ipv6Hdr>(ETH_HLEN).map_err(|_| Malformed::Truncated)?;
    if ip.vtc_flow[0] >> 4 != 6 {
        return Err(Malformed::BadHeader);
    }
    // As for IPv4: trailing Ethernet padding is fine, a payload longer than the frame is not.
    if ETH_HLEN + IPV6_HLEN + ip.payload_len() > ctx.len() as usize {
        return Err(Malformed::BadHeader);
    }
    Ok(ip)
}
