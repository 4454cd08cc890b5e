//! Building test frames byte by byte.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A MAC the client-side router would use.
pub const CLIENT_ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;

/// RFC 1071 checksum, written here independently of the data plane.
pub fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes.chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A TCP or UDP segment with a small payload (checksum left zero: the
/// data plane never reads it).
pub fn l4(proto: u8, src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend(src_port.to_be_bytes());
    h.extend(dst_port.to_be_bytes());
    if proto == TCP {
        h.extend([0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        h.extend(((8 + payload.len()) as u16).to_be_bytes());
        h.extend([0, 0]);
    }
    h.extend(payload);
    h
}

/// IPv4 fields a test may want to vary.
#[derive(Clone)]
pub struct V4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub tos: u8,
    pub id: u16,
    pub df: bool,
    pub more_fragments: bool,
    /// In 8-byte units.
    pub fragment_offset: u16,
    /// Options, a multiple of 4 bytes.
    pub options: Vec<u8>,
}

impl V4 {
    pub fn new(src: &str, dst: &str, proto: u8) -> V4 {
        V4 {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto,
            tos: 0x28,
            id: 0x1234,
            df: true,
            more_fragments: false,
            fragment_offset: 0,
            options: vec![],
        }
    }

    pub fn packet(&self, payload: &[u8]) -> Vec<u8> {
        let header_len = 20 + self.options.len();
        let mut h = vec![0x40 | (header_len / 4) as u8, self.tos];
        h.extend(((header_len + payload.len()) as u16).to_be_bytes());
        h.extend(self.id.to_be_bytes());
        let flags = (self.df as u16) << 14 | (self.more_fragments as u16) << 13 | self.fragment_offset;
        h.extend(flags.to_be_bytes());
        h.extend([61, self.proto, 0, 0]);
        h.extend(self.src.octets());
        h.extend(self.dst.octets());
        h.extend(&self.options);
        let check = internet_checksum(&h);
        h[10..12].copy_from_slice(&check.to_be_bytes());
        h.extend(payload);
        h
    }
}

/// An IPv6 packet; `ext` is a chain of (next header, header bytes): each
/// header's first byte is overwritten with the next one's type.
pub fn ipv6(src: &str, dst: &str, proto: u8, ext: &[(u8, Vec<u8>)], payload: &[u8], traffic_class: u8) -> Vec<u8> {
    let src: Ipv6Addr = src.parse().unwrap();
    let dst: Ipv6Addr = dst.parse().unwrap();
    let mut chain = Vec::new();
    for (i, (_, bytes)) in ext.iter().enumerate() {
        let mut b = bytes.clone();
        b[0] = ext.get(i + 1).map(|e| e.0).unwrap_or(proto);
        chain.extend(b);
    }
    let first = ext.first().map(|e| e.0).unwrap_or(proto);
    let mut h = vec![0x60 | (traffic_class >> 4), traffic_class << 4, 0x12, 0x34];
    h.extend(((chain.len() + payload.len()) as u16).to_be_bytes());
    h.extend([first, 59]);
    h.extend(src.octets());
    h.extend(dst.octets());
    h.extend(chain);
    h.extend(payload);
    h
}

/// An 8-byte IPv6 extension header of type `kind` (hop-by-hop, destination
/// options: padding only).
pub fn ipv6_options_header() -> Vec<u8> {
    vec![0, 0, 1, 4, 0, 0, 0, 0]
}

/// An IPv6 fragment header.
pub fn ipv6_fragment_header(offset: u16, more: bool, id: u32) -> Vec<u8> {
    let mut h = vec![0, 0];
    h.extend((offset << 3 | more as u16).to_be_bytes());
    h.extend(id.to_be_bytes());
    h
}

/// Ethernet framing with optional VLAN tags (802.1ad outer, 802.1Q inner).
pub fn ethernet(vlans: &[u16], ip: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend(crate::netns::EDGE_MAC);
    f.extend(CLIENT_ROUTER_MAC);
    for (i, vlan) in vlans.iter().enumerate() {
        let tpid: u16 = if i == 0 && vlans.len() == 2 { 0x88a8 } else { 0x8100 };
        f.extend(tpid.to_be_bytes());
        f.extend(vlan.to_be_bytes());
    }
    let ether_type: u16 = if ip.first().map(|b| b >> 4) == Some(6) { 0x86dd } else { 0x0800 };
    f.extend(ether_type.to_be_bytes());
    f.extend(ip);
    f
}

/// A plain TCP/UDP frame between two addresses of the same family.
pub fn flow_frame(src: IpAddr, dst: IpAddr, proto: u8, src_port: u16, dst_port: u16) -> Vec<u8> {
    let seg = l4(proto, src_port, dst_port, b"hello");
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => ethernet(&[], &V4::new(&s.to_string(), &d.to_string(), proto).packet(&seg)),
        (IpAddr::V6(s), IpAddr::V6(d)) => ethernet(&[], &ipv6(&s.to_string(), &d.to_string(), proto, &[], &seg, 0)),
        _ => panic!("mixed address families"),
    }
}

pub const ICMPV6: u8 = 58;

/// An ICMP error (IPv4) from `from` to `to` quoting `quoted` (an IP packet,
/// cut to what routers quote); `rest` is the second header word (the MTU
/// for "fragmentation needed").
pub fn icmp4_error(from: &str, to: &str, kind: u8, code: u8, rest: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    let mut icmp = vec![kind, code, 0, 0];
    icmp.extend(rest);
    icmp.extend(quoted);
    let check = internet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&check.to_be_bytes());
    V4::new(from, to, ICMP).packet(&icmp)
}

/// An ICMPv6 error from `from` to `to` quoting `quoted`, with the
/// pseudo-header checksum.
pub fn icmp6_error(from: &str, to: &str, kind: u8, code: u8, rest: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    let mut icmp = vec![kind, code, 0, 0];
    icmp.extend(rest);
    icmp.extend(quoted);
    let (s, d): (Ipv6Addr, Ipv6Addr) = (from.parse().unwrap(), to.parse().unwrap());
    let check = icmp6_checksum(&s, &d, &icmp);
    icmp[2..4].copy_from_slice(&check.to_be_bytes());
    ipv6(from, to, ICMPV6, &[], &icmp, 0)
}

/// The ICMPv6 checksum of `icmp` (its checksum field zero or filled: a
/// filled one gives 0 when correct).
pub fn icmp6_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, icmp: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    pseudo.extend(src.octets());
    pseudo.extend(dst.octets());
    pseudo.extend((icmp.len() as u32).to_be_bytes());
    pseudo.extend([0, 0, 0, ICMPV6]);
    pseudo.extend(icmp);
    internet_checksum(&pseudo)
}

/// A TCP/UDP packet of exactly `len` IP bytes between two addresses of one
/// family (IPv4 with DF as given).
pub fn sized_packet(src: &str, dst: &str, proto: u8, ports: (u16, u16), len: usize, df: bool) -> Vec<u8> {
    let v6 = src.contains(':');
    let header = if v6 { 40 } else { 20 };
    let l4_header = if proto == TCP { 20 } else { 8 };
    let payload = vec![0x5a; len - header - l4_header];
    let seg = l4(proto, ports.0, ports.1, &payload);
    if v6 {
        ipv6(src, dst, proto, &[], &seg, 0)
    } else {
        let mut h = V4::new(src, dst, proto);
        h.df = df;
        h.packet(&seg)
    }
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// A TCP segment with the given flags, sequence and acknowledgement numbers
/// (checksum left zero).
pub fn tcp_segment(src_port: u16, dst_port: u16, flags: u8, seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend(src_port.to_be_bytes());
    h.extend(dst_port.to_be_bytes());
    h.extend(seq.to_be_bytes());
    h.extend(ack.to_be_bytes());
    h.extend([0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    h.extend(payload);
    h
}

/// The UDP port edges send hop lists to by default.
pub const GUE_PORT: u16 = 6080;

/// A hop-list tunnel packet (the IP packet) as an edge sends it, written
/// byte by byte from the documented format: outer IP (protocol UDP), UDP
/// from port `source_port` to `port` with checksum zero, the GUE header
/// (version 0, private data length in words, the inner protocol), then the
/// hop list: type 0x4753, count, next, two addresses of the outer family
/// (unused ones zero).
pub fn hop_list_packet(
    outer_src: IpAddr,
    outer_dst: IpAddr,
    inner: &[u8],
    hops: &[IpAddr],
    next: u8,
    port: u16,
) -> Vec<u8> {
    let v6 = outer_src.is_ipv6();
    let inner_proto: u8 = if inner[0] >> 4 == 6 { 41 } else { 4 };
    let addr_len = if v6 { 16 } else { 4 };
    let mut list = vec![0x47, 0x53, hops.len() as u8, next];
    for i in 0..2 {
        match hops.get(i) {
            Some(IpAddr::V4(a)) if !v6 => list.extend(a.octets()),
            Some(IpAddr::V6(a)) if v6 => list.extend(a.octets()),
            None => list.extend(vec![0; addr_len]),
            Some(other) => panic!("hop {other} is not of the outer family"),
        }
    }
    let mut gue = vec![(list.len() / 4) as u8, inner_proto, 0, 0];
    gue.extend(list);
    gue.extend(inner);
    let mut udp = Vec::new();
    udp.extend(0xc123u16.to_be_bytes());
    udp.extend(port.to_be_bytes());
    udp.extend(((8 + gue.len()) as u16).to_be_bytes());
    udp.extend([0, 0]);
    udp.extend(gue);
    match (outer_src, outer_dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut outer = V4::new(&s.to_string(), &d.to_string(), UDP);
            outer.tos = 0;
            outer.packet(&udp)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => ipv6(&s.to_string(), &d.to_string(), UDP, &[], &udp, 0),
        _ => panic!("mixed outer families"),
    }
}
