//! Bounds-checked packet parsing: the link layer, IPv4/IPv6, the TCP/UDP
//! ports, the flow an ICMP error is about, and a tunnel packet's outer
//! header.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use gslb_common::{addr_from_v4, proto, Addr16};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
pub const VLAN_TAG_LEN: usize = 4;
pub const MAX_VLAN_TAGS: usize = 2;
/// Extension headers walked before giving up on an IPv6 packet.
const MAX_IPV6_EXT_HEADERS: usize = 6;
/// Headers deeper than this are not parsed (keeps offsets verifiable).
const MAX_HEADER_OFFSET: usize = 1024;

const IPV4_MF: u16 = 0x2000;
pub const IPV4_DF: u16 = 0x4000;
const IPV4_OFFSET_MASK: u16 = 0x1fff;

/// Why a packet is not steered.
pub enum Skip {
    /// Not IPv4/IPv6, or not TCP/UDP: simply not ours.
    NotOurs,
    /// Truncated or inconsistent headers.
    Malformed,
}

/// A pointer to a `T` at `offset` bytes into the packet, if it fits.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    if offset > MAX_HEADER_OFFSET || start + offset + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Whether the frame holds `len` bytes. Compared as lengths, never as a
/// packet pointer plus `len`: the verifiers of 6.1 and 6.12 do not bound a
/// byte-swapped value (the IP length fields), and refuse that sum.
#[inline(always)]
fn frame_holds(ctx: &XdpContext, len: usize) -> bool {
    len <= ctx.data_end() - ctx.data()
}

/// The link layer: where the IP header starts and what it is.
#[derive(Clone, Copy)]
pub struct L2 {
    /// Bytes before the IP header (Ethernet plus VLAN tags).
    pub len: usize,
    /// Ethertype of the IP header (host order).
    pub ether_type: u16,
}

#[inline(always)]
pub fn parse_l2(ctx: &XdpContext) -> Result<L2, Skip> {
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(Skip::Malformed)?;
    let mut ether_type = unsafe { u16::from_be((*eth).ether_type) };
    let mut len = EthHdr::LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        // The tag's own ethertype follows its 2-byte TCI.
        let inner = ptr_at::<[u8; VLAN_TAG_LEN]>(ctx, len).ok_or(Skip::Malformed)?;
        ether_type = unsafe { u16::from_be_bytes([(*inner)[2], (*inner)[3]]) };
        len += VLAN_TAG_LEN;
    }
    if ether_type != ETH_P_IPV4 && ether_type != ETH_P_IPV6 {
        return Err(Skip::NotOurs);
    }
    Ok(L2 { len, ether_type })
}

/// A complete TCP or UDP packet (or fragment of one), as `steer` sees it;
/// or an ICMP error about such a packet, seen as the flow it is about.
#[derive(Clone, Copy)]
pub struct Flow {
    pub l2: L2,
    pub is_v6: bool,
    /// Length of the IP packet (header and payload) by its own header.
    pub ip_len: usize,
    /// Where the TCP/UDP header starts (unused for fragments).
    pub l4_offset: usize,
    pub src: Addr16,
    pub dst: Addr16,
    pub proto: u8,
    /// Zero for fragments.
    pub src_port: u16,
    pub dst_port: u16,
    pub fragment: bool,
    /// An ICMP error about a packet a backend sent from a VIP: addresses and
    /// ports are the embedded header's, reversed, so the error follows the
    /// flow it is about. `ip_len` and the rest describe the ICMP packet.
    pub icmp_error: bool,
    /// IPv4 TOS or IPv6 traffic class, copied to the outer header.
    pub tos: u8,
    /// IPv4 only: the inner DF bit and identification, copied outward.
    pub df: bool,
    pub ip_id: u16,
    /// TCP only: the header's flags byte (0 for UDP, fragments and ICMP
    /// errors).
    pub tcp_flags: u8,
}

/// TCP flags (`Flow::tcp_flags`).
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

impl Flow {
    /// A TCP packet that opens a connection: SYN without ACK.
    #[inline(always)]
    pub fn is_syn(&self) -> bool {
        self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }

    /// A packet of a TCP connection past its SYN (or an ICMP error about
    /// one): a host that never saw the connection cannot know its backend.
    #[inline(always)]
    pub fn is_mid_flow(&self) -> bool {
        self.proto == proto::TCP && !self.fragment && !self.is_syn()
    }
}

/// The IP destination address, read before anything else is checked (so
/// traffic that is not for a VIP costs little); `None` if the header is not
/// in the frame.
#[inline(always)]
pub fn destination(ctx: &XdpContext, l2: &L2) -> Option<Addr16> {
    if l2.ether_type == ETH_P_IPV4 {
        let dst = ptr_at::<[u8; 4]>(ctx, l2.len + 16)?;
        Some(addr_from_v4(unsafe { *dst }))
    } else {
        let dst = ptr_at::<Addr16>(ctx, l2.len + 24)?;
        Some(unsafe { *dst })
    }
}

/// Parses the IP header after the link layer `l2`. The ports are zero until
/// `parse_l4`.
#[inline(always)]
pub fn parse_ip(ctx: &XdpContext, l2: L2) -> Result<Flow, Skip> {
    if l2.ether_type == ETH_P_IPV4 {
        parse_ipv4(ctx, l2)
    } else {
        parse_ipv6(ctx, l2)
    }
}

/// Completes a flow from `parse_ip`: the TCP/UDP ports, or for an ICMP
/// error the flow it is about.
#[inline(always)]
pub fn parse_l4(ctx: &XdpContext, flow: &mut Flow) -> Result<(), Skip> {
    match flow.proto {
        _ if flow.fragment => Ok(()),
        proto::TCP | proto::UDP => parse_ports(ctx, flow),
        _ => parse_icmp_error(ctx, flow),
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, l2: L2) -> Result<Flow, Skip> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, l2.len).ok_or(Skip::Malformed)?;
    let ip = unsafe { &*ip };
    let header_len = ip.ihl() as usize; // in bytes
    let ip_len = ip.tot_len() as usize;
    if ip.version() != 4 || header_len < Ipv4Hdr::LEN || ip_len < header_len {
        return Err(Skip::Malformed);
    }
    // The whole packet, options included, must be in the frame.
    if !frame_holds(ctx, l2.len + ip_len) {
        return Err(Skip::Malformed);
    }
    let frags = u16::from_be_bytes(ip.frags);
    let fragment = frags & (IPV4_MF | IPV4_OFFSET_MASK) != 0;
    // ICMP fragments are left to the kernel: only a whole error is steered.
    if ip.proto != proto::TCP && ip.proto != proto::UDP && (ip.proto != proto::ICMP || fragment) {
        return Err(Skip::NotOurs);
    }
    Ok(Flow {
        l2,
        is_v6: false,
        ip_len,
        l4_offset: l2.len + header_len,
        src: addr_from_v4(ip.src_addr),
        dst: addr_from_v4(ip.dst_addr),
        proto: ip.proto,
        src_port: 0,
        dst_port: 0,
        fragment,
        icmp_error: false,
        tos: ip.tos,
        df: frags & IPV4_DF != 0,
        ip_id: ip.id(),
        tcp_flags: 0,
    })
}

const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AUTH: u8 = 51;
const IPV6_DEST_OPTS: u8 = 60;

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, l2: L2) -> Result<Flow, Skip> {
    let ip = ptr_at::<Ipv6Hdr>(ctx, l2.len).ok_or(Skip::Malformed)?;
    let ip = unsafe { &*ip };
    let ip_len = Ipv6Hdr::LEN + ip.payload_len() as usize;
    if ip.version() != 6 || !frame_holds(ctx, l2.len + ip_len) {
        return Err(Skip::Malformed);
    }
    let end = l2.len + ip_len;
    let mut next = ip.next_hdr;
    let mut offset = l2.len + Ipv6Hdr::LEN;
    let mut fragment = false;
    // A bounded walk over extension headers to the upper-layer protocol.
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        let len = match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS | IPV6_AUTH | IPV6_FRAGMENT => {
                let ext = ptr_at::<[u8; 8]>(ctx, offset).ok_or(Skip::Malformed)?;
                let ext = unsafe { *ext };
                let len = match next {
                    IPV6_FRAGMENT => {
                        let offset_and_more = u16::from_be_bytes([ext[2], ext[3]]);
                        // Offset non-zero or more-fragments set: a real fragment.
                        fragment = offset_and_more & 0xfff9 != 0;
                        8
                    }
                    IPV6_AUTH => (ext[1] as usize + 2) * 4,
                    _ => (ext[1] as usize + 1) * 8,
                };
                next = ext[0];
                len
            }
            _ => break,
        };
        offset += len;
        if offset > end {
            return Err(Skip::Malformed);
        }
        if fragment {
            break;
        }
    }
    if next != proto::TCP && next != proto::UDP && (next != proto::ICMPV6 || fragment) {
        // Too many extension headers counts as malformed; anything else is
        // simply another protocol.
        return match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS | IPV6_AUTH | IPV6_FRAGMENT if !fragment => {
                Err(Skip::Malformed)
            }
            _ => Err(Skip::NotOurs),
        };
    }
    let vcf = ip.vcf;
    Ok(Flow {
        l2,
        is_v6: true,
        ip_len,
        l4_offset: offset,
        src: ip.src_addr,
        dst: ip.dst_addr,
        proto: next,
        src_port: 0,
        dst_port: 0,
        fragment,
        icmp_error: false,
        tos: (vcf[0] << 4) | (vcf[1] >> 4),
        df: false,
        ip_id: 0,
        tcp_flags: 0,
    })
}

/// ICMP error types that quote the packet they are about.
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
const ICMPV6_TIME_EXCEEDED: u8 = 3;
const ICMPV6_PARAMETER_PROBLEM: u8 = 4;
pub const ICMP_HEADER_LEN: usize = 8;

/// An ICMP error is steered only if it quotes a TCP or UDP packet sent
/// *from* the address it is sent to: a reply from a VIP, which `classify`
/// then checks. The flow is that packet's, reversed. Anything else (echo,
/// errors about other hosts' packets, quoted IPv6 extension headers) is the
/// kernel's.
#[inline(always)]
fn parse_icmp_error(ctx: &XdpContext, flow: &mut Flow) -> Result<(), Skip> {
    let end = flow.l2.len + flow.ip_len;
    let icmp = ptr_at::<[u8; ICMP_HEADER_LEN]>(ctx, flow.l4_offset).ok_or(Skip::NotOurs)?;
    let kind = unsafe { (*icmp)[0] };
    let is_error = if flow.is_v6 {
        matches!(kind, ICMPV6_DEST_UNREACH | ICMPV6_PACKET_TOO_BIG | ICMPV6_TIME_EXCEEDED | ICMPV6_PARAMETER_PROBLEM)
    } else {
        matches!(kind, ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM)
    };
    if !is_error {
        return Err(Skip::NotOurs);
    }
    let quoted = flow.l4_offset + ICMP_HEADER_LEN;
    let (src, dst, proto, ports_at) = if flow.is_v6 {
        let ip = unsafe { &*ptr_at::<Ipv6Hdr>(ctx, quoted).ok_or(Skip::NotOurs)? };
        if ip.version() != 6 {
            return Err(Skip::NotOurs);
        }
        (ip.src_addr, ip.dst_addr, ip.next_hdr, quoted + Ipv6Hdr::LEN)
    } else {
        let ip = unsafe { &*ptr_at::<Ipv4Hdr>(ctx, quoted).ok_or(Skip::NotOurs)? };
        let header_len = ip.ihl() as usize;
        // A quoted fragment other than the first carries no ports.
        let offset = u16::from_be_bytes(ip.frags) & IPV4_OFFSET_MASK;
        if ip.version() != 4 || header_len < Ipv4Hdr::LEN || offset != 0 {
            return Err(Skip::NotOurs);
        }
        (addr_from_v4(ip.src_addr), addr_from_v4(ip.dst_addr), ip.proto, quoted + header_len)
    };
    if (proto != proto::TCP && proto != proto::UDP) || src != flow.dst || ports_at + 4 > end {
        return Err(Skip::NotOurs);
    }
    let ports = unsafe { *ptr_at::<[u8; 4]>(ctx, ports_at).ok_or(Skip::NotOurs)? };
    flow.src = dst;
    flow.proto = proto;
    flow.src_port = u16::from_be_bytes([ports[2], ports[3]]);
    flow.dst_port = u16::from_be_bytes([ports[0], ports[1]]);
    flow.icmp_error = true;
    Ok(())
}

/// Reads the ports; the whole fixed TCP or UDP header must be inside the IP
/// packet, and a TCP header's own length (data offset) must be at least
/// its fixed 20 bytes and end inside the IP packet too.
#[inline(always)]
fn parse_ports(ctx: &XdpContext, flow: &mut Flow) -> Result<(), Skip> {
    let end = flow.l2.len + flow.ip_len;
    let header_len = if flow.proto == proto::TCP { TcpHdr::LEN } else { UdpHdr::LEN };
    if flow.l4_offset + header_len > end {
        return Err(Skip::Malformed);
    }
    if flow.proto == proto::TCP {
        // The data offset: the high nibble of byte 12, in 32-bit words;
        // the flags follow.
        let bytes = unsafe { *ptr_at::<[u8; 2]>(ctx, flow.l4_offset + 12).ok_or(Skip::Malformed)? };
        let data_offset = (bytes[0] >> 4) as usize * 4;
        if data_offset < TcpHdr::LEN || flow.l4_offset + data_offset > end {
            return Err(Skip::Malformed);
        }
        flow.tcp_flags = bytes[1];
    }
    let header = ptr_at::<[u8; 4]>(ctx, flow.l4_offset).ok_or(Skip::Malformed)?;
    let header = unsafe { &*header };
    flow.src_port = u16::from_be_bytes([header[0], header[1]]);
    flow.dst_port = u16::from_be_bytes([header[2], header[3]]);
    Ok(())
}

/// The outer IP header of a tunnel packet, as `decap` sees it.
/// Only what every tunnel packet needs: a hop-list packet reads its
/// source and length with `outer_source`.
pub struct Outer {
    pub v6: bool,
    /// Where the IP header starts (after the link layer).
    pub ip_at: usize,
    /// Bytes of the IP header.
    pub header_len: usize,
    pub proto: u8,
    pub dst: Addr16,
}

/// The outer IP header of a possible tunnel packet; `None` for anything
/// `decap` never strips (truncated, a fragment: a tunnel packet cannot be
/// stripped piecewise).
#[inline(always)]
pub fn parse_outer(ctx: &XdpContext, l2: &L2) -> Option<Outer> {
    if l2.ether_type == ETH_P_IPV4 {
        let ip = unsafe { &*ptr_at::<Ipv4Hdr>(ctx, l2.len)? };
        let fragment = u16::from_be_bytes(ip.frags) & 0x3fff != 0;
        if ip.version() != 4 || (ip.ihl() as usize) < Ipv4Hdr::LEN || fragment {
            return None;
        }
        Some(Outer {
            v6: false,
            ip_at: l2.len,
            header_len: ip.ihl() as usize,
            proto: ip.proto,
            dst: addr_from_v4(ip.dst_addr),
        })
    } else {
        let ip = unsafe { &*ptr_at::<Ipv6Hdr>(ctx, l2.len)? };
        Some(Outer { v6: true, ip_at: l2.len, header_len: Ipv6Hdr::LEN, proto: ip.next_hdr, dst: ip.dst_addr })
    }
}

/// The source address of the outer header `parse_outer` read, and the
/// whole outer packet's length by that header.
#[inline(always)]
pub fn outer_source(ctx: &XdpContext, outer: &Outer) -> Option<(Addr16, usize)> {
    if outer.v6 {
        let ip = unsafe { &*ptr_at::<Ipv6Hdr>(ctx, outer.ip_at)? };
        Some((ip.src_addr, Ipv6Hdr::LEN + ip.payload_len() as usize))
    } else {
        let ip = unsafe { &*ptr_at::<Ipv4Hdr>(ctx, outer.ip_at)? };
        Some((addr_from_v4(ip.src_addr), ip.tot_len() as usize))
    }
}
