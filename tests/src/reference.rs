//! A reference reading of frames, written from the RFCs independently of
//! the data plane's parser: what a complete VIP packet is, and whether a
//! tunnel frame is well formed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::packet::{internet_checksum, TCP, UDP};

/// A VIP as the reference sees it.
#[derive(Clone, Copy, Debug)]
pub struct RefVip {
    pub addr: IpAddr,
    /// 0 = every port.
    pub port: u16,
    pub proto: u8,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Link-layer length and ethertype (Ethernet plus up to two VLAN tags).
fn l2(frame: &[u8]) -> Option<(usize, u16)> {
    let mut at = 12;
    let mut ether_type = be16(frame, at)?;
    let mut tags = 0;
    while (ether_type == 0x8100 || ether_type == 0x88a8) && tags < 2 {
        at += 4;
        ether_type = be16(frame, at)?;
        tags += 1;
    }
    Some((at + 2, ether_type))
}

/// If `frame` is a complete TCP/UDP packet (or fragment) to one of `vips`,
/// the IP packet it carries.
pub fn complete_vip_packet(frame: &[u8], vips: &[RefVip]) -> Option<Vec<u8>> {
    let (l3, ether_type) = l2(frame)?;
    let ip = frame.get(l3..)?;
    let (packet, dst, proto, ports_at, fragment) = match ether_type {
        0x0800 => {
            let ihl = (*ip.first()? & 0x0f) as usize * 4;
            let total = be16(ip, 2)? as usize;
            if ip[0] >> 4 != 4 || ihl < 20 || total < ihl || total > ip.len() {
                return None;
            }
            let flags = be16(ip, 6)?;
            let dst = IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]));
            (&ip[..total], dst, ip[9], ihl, flags & 0x3fff != 0)
        }
        0x86dd => {
            if ip.len() < 40 || ip[0] >> 4 != 6 {
                return None;
            }
            let total = 40 + be16(ip, 4)? as usize;
            if total > ip.len() {
                return None;
            }
            let dst = IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).ok()?));
            let (mut next, mut at, mut fragment) = (ip[6], 40, false);
            while matches!(next, 0 | 43 | 44 | 51 | 60) && !fragment {
                let h = ip.get(at..at + 8)?;
                let len = match next {
                    44 => {
                        fragment = be16(h, 2)? & 0xfff9 != 0;
                        8
                    }
                    51 => (h[1] as usize + 2) * 4,
                    _ => (h[1] as usize + 1) * 8,
                };
                next = h[0];
                at += len;
            }
            if at > total {
                return None;
            }
            (&ip[..total], dst, next, at, fragment)
        }
        _ => return None,
    };
    if proto != TCP && proto != UDP {
        return None;
    }
    let serves = |port: Option<u16>| {
        vips.iter().any(|v| v.addr == dst && v.proto == proto && (fragment || v.port == 0 || Some(v.port) == port))
    };
    if fragment {
        return serves(None).then(|| packet.to_vec());
    }
    let l4_len = if proto == TCP { 20 } else { 8 };
    if ports_at + l4_len > packet.len() {
        return None;
    }
    serves(be16(packet, ports_at + 2)).then(|| packet.to_vec())
}

/// A tunnel frame taken apart, after its outer header was checked.
#[derive(Debug)]
pub struct Tunnel {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    pub outer_src: IpAddr,
    pub outer_dst: IpAddr,
    /// Outer TOS / traffic class.
    pub outer_tos: u8,
    /// Outer IPv4 DF bit (false for IPv6).
    pub outer_df: bool,
    pub outer_id: u16,
    pub inner: Vec<u8>,
}

/// Checks a steered frame: untagged Ethernet, an outer IPv4 (protocol 4,
/// correct checksum) or IPv6 (next header 4 or 41) header with TTL 64 and
/// lengths that match the frame, then the inner packet.
pub fn parse_tunnel(frame: &[u8]) -> Result<Tunnel, String> {
    let ether_type = be16(frame, 12).ok_or("short frame")?;
    let eth_dst = frame[0..6].try_into().unwrap();
    let eth_src = frame[6..12].try_into().unwrap();
    let ip = &frame[14..];
    match ether_type {
        0x0800 => {
            if ip.len() < 20 || ip[0] != 0x45 {
                return Err(format!("outer IPv4 version/IHL {:#x}", ip.first().unwrap_or(&0)));
            }
            if internet_checksum(&ip[..20]) != 0 {
                return Err("outer IPv4 checksum wrong".into());
            }
            if be16(ip, 2) != Some(ip.len() as u16) {
                return Err(format!("outer length {:?} but {} bytes follow", be16(ip, 2), ip.len()));
            }
            if ip[8] != 64 || ip[9] != 4 {
                return Err(format!("outer TTL {} protocol {}", ip[8], ip[9]));
            }
            let flags = be16(ip, 6).unwrap();
            if flags & !0x4000 != 0 {
                return Err(format!("outer flags {flags:#x}"));
            }
            Ok(Tunnel {
                eth_dst,
                eth_src,
                outer_src: IpAddr::V4(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15])),
                outer_dst: IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19])),
                outer_tos: ip[1],
                outer_df: flags & 0x4000 != 0,
                outer_id: be16(ip, 4).unwrap(),
                inner: ip[20..].to_vec(),
            })
        }
        0x86dd => {
            if ip.len() < 40 || ip[0] >> 4 != 6 {
                return Err("outer IPv6 version".into());
            }
            if be16(ip, 4) != Some((ip.len() - 40) as u16) {
                return Err("outer IPv6 payload length".into());
            }
            if ip[7] != 64 || !matches!(ip[6], 4 | 41) {
                return Err(format!("outer hop limit {} next header {}", ip[7], ip[6]));
            }
            let inner_version = ip.get(40).map(|b| b >> 4);
            if inner_version != Some(if ip[6] == 4 { 4 } else { 6 }) {
                return Err("outer next header does not match the inner packet".into());
            }
            Ok(Tunnel {
                eth_dst,
                eth_src,
                outer_src: IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).unwrap())),
                outer_dst: IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).unwrap())),
                outer_tos: (ip[0] << 4) | (ip[1] >> 4),
                outer_df: false,
                outer_id: 0,
                inner: ip[40..].to_vec(),
            })
        }
        t => Err(format!("outer ethertype {t:#x}")),
    }
}
