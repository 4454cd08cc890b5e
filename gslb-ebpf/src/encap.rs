//! Tunnelling a packet to its backend: which tunnel it takes (family,
//! addresses, length), making room in the frame for new headers, the outer
//! IPv4 or IPv6 header, and for a mid-flow packet the hop list after it
//! (UDP, GUE; see `gslb_common::second_chance`).

use aya_ebpf::{
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
    EbpfContext,
};
use gslb_common::{
    addr_as_v4, addr_from_v4, gue_first_byte, hash_flow, hop_list_encap_len, proto, Addr16, Backend, EdgeConfig,
    GUE_LEN, HOP_LIST_HEADER_LEN, HOP_LIST_TYPE, MAX_HOPS, OUTER_TTL, UDP_LEN,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    headers::{write_ipv4, write_ipv6, Ipv4Header, Ipv6Header},
    parse::{ptr_at, Flow, ETH_P_IPV4, ETH_P_IPV6},
    route::Outbound,
};

/// The previous owners a mid-flow packet carries to its backend, which
/// hands the packet on to them if it does not own the connection.
pub struct Hops {
    /// Valid entries of `addrs`: at least one.
    pub count: u8,
    /// The outer UDP ports: from the flow hash, and the configured GUE port.
    pub source_port: u16,
    pub dest_port: u16,
    /// Of the outer header's family (IPv4-mapped for IPv4).
    pub addrs: [Addr16; MAX_HOPS],
}

/// Bytes the tunnel adds in front of the inner packet: its outer header,
/// and with a hop list the UDP, GUE and hop-list headers.
#[inline(always)]
pub fn overhead(tunnel: &Outbound) -> usize {
    let ip = if tunnel.v6 { Ipv6Hdr::LEN } else { Ipv4Hdr::LEN };
    if tunnel.gue {
        ip + hop_list_encap_len(tunnel.v6)
    } else {
        ip
    }
}

/// The tunnel to `backend`, from the edge's tunnel source in `config`, with
/// a hop list (`gue`) or without: IPv6 inner packets need an IPv6 tunnel;
/// IPv4 may ride either.
#[inline(always)]
pub fn tunnel_to(flow: &Flow, backend: &Backend, config: &EdgeConfig, gue: bool) -> Option<Outbound> {
    let to_v4 = addr_as_v4(&backend.addr).is_some();
    if (to_v4 && flow.is_v6) || (!to_v4 && config.has_v6 == 0) {
        return None;
    }
    let (src, header_len) = if to_v4 {
        (addr_from_v4(config.tunnel_source_v4), Ipv4Hdr::LEN)
    } else {
        (config.tunnel_source_v6, Ipv6Hdr::LEN)
    };
    let extra = if gue { hop_list_encap_len(!to_v4) } else { 0 };
    let len = flow.ip_len + header_len + extra;
    if len > u16::MAX as usize {
        return None;
    }
    Some(Outbound { v6: !to_v4, src, dst: backend.addr, len, gue })
}

/// Puts a fresh Ethernet header and the outer IP header (with `hops`, the
/// hop list's headers too) in front of the inner IP packet, which stays
/// byte-for-byte as it was. VLAN tags are dropped: the route lookup picked
/// the egress interface.
#[inline(never)]
pub fn encapsulate(ctx: &XdpContext, flow: &Flow, tunnel: &Outbound, hops: Option<&Hops>) -> Option<()> {
    // Ethernet padding after the IP packet is not part of it: the tunnel
    // carries exactly the inner packet.
    let ether_type = if tunnel.v6 { ETH_P_IPV6 } else { ETH_P_IPV4 };
    reframe(ctx, flow, flow.ip_len, overhead(tunnel), ether_type)?;
    let inner_proto = if flow.is_v6 { proto::IPV6 } else { proto::IPIP };
    let outer_proto = if tunnel.gue { proto::UDP } else { inner_proto };
    if tunnel.v6 {
        // Hop limit 64, next header IPIP or IPv6, traffic class copied,
        // flow label from the flow's addresses so routers hash it stably.
        let ip = ptr_at::<[u8; Ipv6Hdr::LEN]>(ctx, EthHdr::LEN)?;
        let header = Ipv6Header {
            traffic_class: flow.tos,
            flow_label: flow_label(flow),
            payload_len: (tunnel.len - Ipv6Hdr::LEN) as u16,
            next_header: outer_proto,
            hop_limit: OUTER_TTL,
            src: &tunnel.src,
            dst: &tunnel.dst,
        };
        write_ipv6(unsafe { &mut *ip }, &header);
    } else {
        // TTL 64, protocol IPIP; TOS, DF and identification copied from the
        // inner header.
        let ip = ptr_at::<[u8; Ipv4Hdr::LEN]>(ctx, EthHdr::LEN)?;
        let header = Ipv4Header {
            tos: flow.tos,
            total_len: tunnel.len as u16,
            id: flow.ip_id,
            df: flow.df,
            ttl: OUTER_TTL,
            proto: outer_proto,
            src: addr_as_v4(&tunnel.src)?,
            dst: addr_as_v4(&tunnel.dst)?,
        };
        write_ipv4(unsafe { &mut *ip }, &header);
    }
    match hops {
        Some(hops) => write_hop_list(ctx, tunnel, inner_proto, hops),
        None => Some(()),
    }
}

/// Writes UDP, GUE and the hop list after the outer IP header. The UDP
/// checksum is zero, as tunnels may send it (RFC 6935 for IPv6): `decap`
/// checks the headers it reads itself.
#[inline(always)]
fn write_hop_list(ctx: &XdpContext, tunnel: &Outbound, inner_proto: u8, hops: &Hops) -> Option<()> {
    let ip_len = if tunnel.v6 { Ipv6Hdr::LEN } else { Ipv4Hdr::LEN };
    let sport = hops.source_port.to_be_bytes();
    let dport = hops.dest_port.to_be_bytes();
    let udp_len = ((tunnel.len - ip_len) as u16).to_be_bytes();
    let ty = HOP_LIST_TYPE.to_be_bytes();
    let fixed = [
        sport[0],
        sport[1],
        dport[0],
        dport[1],
        udp_len[0],
        udp_len[1],
        0,
        0,
        gue_first_byte(tunnel.v6),
        inner_proto,
        0,
        0,
        ty[0],
        ty[1],
        hops.count,
        0,
    ];
    const FIXED: usize = UDP_LEN + GUE_LEN + HOP_LIST_HEADER_LEN;
    let at = EthHdr::LEN + ip_len;
    *unsafe { &mut *ptr_at::<[u8; FIXED]>(ctx, at)? } = fixed;
    if tunnel.v6 {
        let list = unsafe { &mut *ptr_at::<[Addr16; MAX_HOPS]>(ctx, at + FIXED)? };
        *list = hops.addrs;
    } else {
        let list = unsafe { &mut *ptr_at::<[[u8; 4]; MAX_HOPS]>(ctx, at + FIXED)? };
        for (i, hop) in list.iter_mut().enumerate() {
            *hop = addr_as_v4(&hops.addrs[i]).unwrap_or_default();
        }
    }
    Some(())
}

/// Rewrites the frame around the first `keep` bytes of `flow`'s IP packet:
/// whatever followed them is cut, the link layer (VLAN tags included) is
/// replaced by an untagged Ethernet header of `ether_type` followed by
/// `headers` bytes of room for new headers. The original MACs stay until
/// `route::forward` replaces them, so a packet handed to the kernel still
/// carries this host's MAC.
#[inline(always)]
pub fn reframe(ctx: &XdpContext, flow: &Flow, keep: usize, headers: usize, ether_type: u16) -> Option<()> {
    let macs = *unsafe { &*ptr_at::<[u8; 12]>(ctx, 0)? };
    // The programs are not loaded for multi-buffer frames, so the frame is
    // all in one buffer (no helper call to measure it).
    let frame_len = ctx.data_end() - ctx.data();
    let cut = frame_len.checked_sub(flow.l2.len + keep)?;
    if cut > 0 && unsafe { bpf_xdp_adjust_tail(ctx.as_ptr() as *mut _, -(cut as i32)) } != 0 {
        return None;
    }
    let grow = (EthHdr::LEN + headers) as i32 - flow.l2.len as i32;
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, -grow) } != 0 {
        return None;
    }
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    unsafe {
        (*eth).dst_addr.copy_from_slice(&macs[..6]);
        (*eth).src_addr.copy_from_slice(&macs[6..]);
        (*eth).ether_type = ether_type.to_be();
    }
    Some(())
}

#[inline(always)]
fn flow_label(flow: &Flow) -> u32 {
    hash_flow(&flow.src, &flow.dst, 0, 0, 0) as u32 & 0x000f_ffff
}
