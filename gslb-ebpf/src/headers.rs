//! The IPv4 and IPv6 header writers: every IP header a program builds (the
//! tunnel's outer header, an ICMP answer, a generated frame) is written
//! here, from named fields.

use gslb_common::Addr16;
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

use crate::{checksum, parse::IPV4_DF};

/// The fields of an IPv4 header without options.
#[derive(Clone, Copy)]
pub struct Ipv4Header {
    pub tos: u8,
    /// The whole IP packet, header included.
    pub total_len: u16,
    pub id: u16,
    /// Don't fragment; never a fragment itself (offset 0, no MF).
    pub df: bool,
    pub ttl: u8,
    pub proto: u8,
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

/// Writes `f` as a 20-byte IPv4 header, checksum filled in. The checksum is
/// summed from the fields, in registers, not read back from the packet.
#[inline(always)]
pub fn write_ipv4(h: &mut [u8; Ipv4Hdr::LEN], f: &Ipv4Header) {
    let len = f.total_len.to_be_bytes();
    let id = f.id.to_be_bytes();
    let frags = if f.df { IPV4_DF } else { 0 };
    let (s, d) = (f.src, f.dst);
    let word = |a: u8, b: u8| u16::from_be_bytes([a, b]) as u32;
    let sum = word(0x45, f.tos)
        + f.total_len as u32
        + f.id as u32
        + frags as u32
        + word(f.ttl, f.proto)
        + word(s[0], s[1])
        + word(s[2], s[3])
        + word(d[0], d[1])
        + word(d[2], d[3]);
    let check = checksum::finish(sum);
    let frags = frags.to_be_bytes();
    *h = [
        0x45, f.tos, len[0], len[1], id[0], id[1], frags[0], frags[1], f.ttl, f.proto, check[0], check[1], s[0], s[1],
        s[2], s[3], d[0], d[1], d[2], d[3],
    ];
}

/// The fields of a 20-byte IPv4 header, read back (a template's).
#[inline(always)]
pub fn read_ipv4(h: &[u8; Ipv4Hdr::LEN]) -> Ipv4Header {
    Ipv4Header {
        tos: h[1],
        total_len: u16::from_be_bytes([h[2], h[3]]),
        id: u16::from_be_bytes([h[4], h[5]]),
        df: u16::from_be_bytes([h[6], h[7]]) & IPV4_DF != 0,
        ttl: h[8],
        proto: h[9],
        src: [h[12], h[13], h[14], h[15]],
        dst: [h[16], h[17], h[18], h[19]],
    }
}

/// The fields of an IPv6 header.
pub struct Ipv6Header<'a> {
    pub traffic_class: u8,
    /// 20 bits.
    pub flow_label: u32,
    /// Everything after this header.
    pub payload_len: u16,
    pub next_header: u8,
    pub hop_limit: u8,
    pub src: &'a Addr16,
    pub dst: &'a Addr16,
}

/// Writes `f` as a 40-byte IPv6 header.
#[inline(always)]
pub fn write_ipv6(h: &mut [u8; Ipv6Hdr::LEN], f: &Ipv6Header) {
    let len = f.payload_len.to_be_bytes();
    let label = f.flow_label;
    h[0] = 0x60 | (f.traffic_class >> 4);
    h[1] = (f.traffic_class << 4) | ((label >> 16) as u8 & 0x0f);
    h[2] = (label >> 8) as u8;
    h[3] = label as u8;
    h[4] = len[0];
    h[5] = len[1];
    h[6] = f.next_header;
    h[7] = f.hop_limit;
    h[8..24].copy_from_slice(f.src);
    h[24..40].copy_from_slice(f.dst);
}
