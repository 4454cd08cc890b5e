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
    // A TCP header's own length: at least 20 bytes, inside the packet.
    if proto == TCP {
        let tcp_len = (packet[ports_at + 12] >> 4) as usize * 4;
        if tcp_len < 20 || ports_at + tcp_len > packet.len() {
            return None;
        }
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

/// The IP packet in `frame` after the link layer, its version, and the
/// upper-layer protocol and where its header starts (IPv6 extension
/// headers walked); `None` unless complete and unfragmented.
fn whole_ip(frame: &[u8]) -> Option<(&[u8], u8, u8, usize)> {
    ip_packet(frame, false)
}

/// As `whole_ip`, fragments allowed if `fragments` (the walk stops at an
/// IPv6 fragment header).
fn ip_packet(frame: &[u8], fragments: bool) -> Option<(&[u8], u8, u8, usize)> {
    let (l3, ether_type) = l2(frame)?;
    let ip = frame.get(l3..)?;
    match ether_type {
        0x0800 => {
            let ihl = (*ip.first()? & 0x0f) as usize * 4;
            let total = be16(ip, 2)? as usize;
            let fragment = be16(ip, 6)? & 0x3fff != 0;
            if ip[0] >> 4 != 4 || ihl < 20 || total < ihl || total > ip.len() || (fragment && !fragments) {
                return None;
            }
            Some((&ip[..total], 4, ip[9], ihl))
        }
        0x86dd => {
            if ip.len() < 40 || ip[0] >> 4 != 6 {
                return None;
            }
            let total = 40 + be16(ip, 4)? as usize;
            if total > ip.len() {
                return None;
            }
            let (mut next, mut at) = (ip[6], 40);
            while matches!(next, 0 | 43 | 44 | 51 | 60) {
                let h = ip.get(at..at + 8)?;
                if next == 44 && be16(h, 2)? & 0xfff9 != 0 {
                    if !fragments {
                        return None;
                    }
                    next = h[0];
                    at += 8;
                    break;
                }
                at += match next {
                    44 => 8,
                    51 => (h[1] as usize + 2) * 4,
                    _ => (h[1] as usize + 1) * 8,
                };
                next = h[0];
            }
            (at <= total).then_some((&ip[..total], 6, next, at))
        }
        _ => None,
    }
}

fn addr_at(ip: &[u8], version: u8, src: bool) -> Option<IpAddr> {
    Some(if version == 4 {
        let at = if src { 12 } else { 16 };
        IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(ip.get(at..at + 4)?).ok()?))
    } else {
        let at = if src { 8 } else { 24 };
        IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(ip.get(at..at + 16)?).ok()?))
    })
}

/// If `frame` is an ICMP error sent to a VIP about a TCP/UDP packet that
/// VIP sent (RFC 792 / RFC 4443 error types), the ICMP packet: the data
/// plane must take it to the backend of the flow it quotes.
pub fn vip_icmp_error(frame: &[u8], vips: &[RefVip]) -> Option<Vec<u8>> {
    let (ip, version, proto, icmp_at) = whole_ip(frame)?;
    let errors: &[u8] = match (version, proto) {
        (4, 1) => &[3, 11, 12],
        (6, 58) => &[1, 2, 3, 4],
        _ => return None,
    };
    if !errors.contains(ip.get(icmp_at)?) {
        return None;
    }
    let quoted = ip.get(icmp_at + 8..)?;
    let (q_proto, ports_at) = if version == 4 {
        let ihl = (*quoted.first()? & 0x0f) as usize * 4;
        if quoted[0] >> 4 != 4 || ihl < 20 || be16(quoted, 6)? & 0x1fff != 0 {
            return None;
        }
        (*quoted.get(9)?, ihl)
    } else {
        if quoted.first()? >> 4 != 6 {
            return None;
        }
        (*quoted.get(6)?, 40)
    };
    if (q_proto != TCP && q_proto != UDP) || quoted.len() < ports_at + 4 {
        return None;
    }
    let sender = addr_at(quoted, version, true)?;
    if Some(sender) != addr_at(ip, version, false) {
        return None;
    }
    let port = be16(quoted, ports_at)?;
    vips.iter().any(|v| v.addr == sender && v.proto == q_proto && (v.port == 0 || v.port == port)).then(|| ip.to_vec())
}

/// Checks that `answer` is the ICMP "fragmentation needed" (IPv4) or
/// "packet too big" (IPv6) for `input` (a packet or fragment), from the VIP
/// to the client, advertising `mtu` and quoting the start of the refused
/// packet.
pub fn check_too_big(input: &[u8], answer: &[u8], mtu: u32) -> Result<(), String> {
    let (refused, version, _, _) = ip_packet(input, true).ok_or("the input is not an IP packet")?;
    let (ip, a_version, proto, icmp_at) = whole_ip(answer).ok_or("the answer is not a whole IP packet")?;
    if a_version != version {
        return Err(format!("answer is IPv{a_version} for an IPv{version} packet"));
    }
    if addr_at(ip, version, true) != addr_at(refused, version, false)
        || addr_at(ip, version, false) != addr_at(refused, version, true)
    {
        return Err("answer is not from the VIP to the client".into());
    }
    let icmp = &ip[icmp_at..];
    if icmp.len() < 8 + 28 {
        return Err(format!("answer quotes only {} bytes", icmp.len() - 8));
    }
    let quote = &icmp[8..];
    if quote != &refused[..quote.len()] {
        return Err("the quote is not the start of the refused packet".into());
    }
    if version == 4 {
        if proto != 1 || icmp[0..2] != [3, 4] {
            return Err(format!("protocol {proto}, type/code {:?}", &icmp[0..2]));
        }
        if internet_checksum(&ip[..icmp_at]) != 0 || internet_checksum(icmp) != 0 {
            return Err("IPv4 or ICMP checksum wrong".into());
        }
        let got = be16(icmp, 6).unwrap() as u32;
        if got != mtu {
            return Err(format!("advertised MTU {got}, want {mtu}"));
        }
    } else {
        if proto != 58 || icmp[0..2] != [2, 0] {
            return Err(format!("next header {proto}, type/code {:?}", &icmp[0..2]));
        }
        let (IpAddr::V6(s), IpAddr::V6(d)) = (addr_at(ip, 6, true).unwrap(), addr_at(ip, 6, false).unwrap()) else {
            unreachable!()
        };
        if crate::packet::icmp6_checksum(&s, &d, icmp) != 0 {
            return Err("ICMPv6 checksum wrong".into());
        }
        let got = u32::from_be_bytes(icmp[4..8].try_into().unwrap());
        if got != mtu {
            return Err(format!("advertised MTU {got}, want {mtu}"));
        }
    }
    Ok(())
}
