//! Second chance on a backend: a hop-list packet (GUE, see
//! `gslb_common::second_chance`) is delivered here if this host may own
//! its connection (a SYN, a socket in any state but listening, a valid SYN
//! cookie); otherwise it goes on to the next hop in its list; with none
//! left it is delivered here as the last resort.
//!
//! Never a relay: hop-list packets are taken only from configured edges
//! (`DECAP_EDGES`; others pass to the kernel untouched) and sent on only to
//! configured backends (`DECAP_PEERS`); a malformed list is dropped.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, bpf_sock_tuple, xdp_action, BPF_F_CURRENT_NETNS},
    helpers::{bpf_sk_release, bpf_skc_lookup_tcp, bpf_tcp_check_syncookie},
    programs::XdpContext,
    EbpfContext,
};
use gslb_common::{
    addr_as_v4, addr_from_v4, gue_first_byte, hop_list_encap_len, proto, Addr16, DecapStats, GUE_LEN, HOP_LIST_COUNT,
    HOP_LIST_HEADER_LEN, HOP_LIST_NEXT, HOP_LIST_TYPE, MAX_HOPS, NEXT_HOP_VALID, UDP_LEN,
};
use gslb_ebpf::{
    checksum,
    parse::{
        outer_source, parse_ip, parse_l4, ptr_at, Flow, Outer, ETH_P_IPV4, ETH_P_IPV6, L2, TCP_ACK, TCP_RST, TCP_SYN,
    },
    route::{self, words, Outbound, Route},
};
use network_types::{
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
};

use crate::maps::{DECAP_EDGES, DECAP_PEERS, NEXT_HOPS};

/// What becomes of a hop-list packet.
pub enum Verdict {
    /// Strip `strip` bytes after the link layer and deliver the inner
    /// packet (of `inner_proto`) here.
    Deliver { strip: usize, inner_proto: u8 },
    /// This XDP action, the packet as it is now (passed untouched, dropped,
    /// or rewritten and sent on).
    Act(u32),
}

/// `bpf_sock::state` of a listening socket (the kernel's TCP_LISTEN).
const TCP_LISTEN: u32 = 10;

/// The hop list's header fields, checked.
struct List {
    count: u8,
    next: u8,
    /// The inner packet's protocol: IPIP or IPv6.
    inner_proto: u8,
}

/// Decides, and counts, what becomes of a hop-list packet addressed to this
/// backend; a packet sent on is rewritten here.
pub fn run(ctx: &XdpContext, stats: &mut DecapStats, outer: &Outer) -> Verdict {
    let from_edge = outer_source(ctx, outer).is_some_and(|(src, _)| unsafe { DECAP_EDGES.get(&src) }.is_some());
    if !from_edge {
        stats.hop_list_refused += 1;
        return Verdict::Act(xdp_action::XDP_PASS);
    }
    let gue_at = outer.ip_at + outer.header_len + UDP_LEN;
    let Some(list) = read_list(ctx, outer, gue_at) else {
        stats.hop_list_malformed += 1;
        return Verdict::Act(xdp_action::XDP_DROP);
    };
    let strip = outer.header_len + hop_list_encap_len(outer.v6);
    let deliver = Verdict::Deliver { strip, inner_proto: list.inner_proto };
    if owns(ctx, outer.ip_at + strip, list.inner_proto) {
        stats.hop_list_delivered += 1;
        return deliver;
    }
    if list.next >= list.count {
        stats.hop_list_last_resort += 1;
        return deliver;
    }
    let Some(hop) = next_hop(ctx, outer, gue_at, list.next) else {
        stats.hop_list_malformed += 1;
        return Verdict::Act(xdp_action::XDP_DROP);
    };
    let Some(&peer) = (unsafe { DECAP_PEERS.get(&hop) }) else {
        stats.hop_list_malformed += 1;
        return Verdict::Act(xdp_action::XDP_DROP);
    };
    match forward(ctx, outer, &hop, peer) {
        NOT_SENT => {
            stats.hop_list_unroutable += 1;
            stats.hop_list_last_resort += 1;
            deliver
        }
        action => {
            stats.hop_list_forwarded += 1;
            Verdict::Act(action)
        }
    }
}

/// The GUE and hop-list headers, if they are exactly what an edge sends:
/// GUE version 0, a data message without flags, private data the size of a
/// hop list of this family, our type, at most `MAX_HOPS` hops, the next
/// one within them. An IPv4 outer header must have no options (it is
/// rewritten when the packet goes on).
#[inline(always)]
fn read_list(ctx: &XdpContext, outer: &Outer, gue_at: usize) -> Option<List> {
    let h = unsafe { *ptr_at::<[u8; GUE_LEN + HOP_LIST_HEADER_LEN]>(ctx, gue_at)? };
    let ty = HOP_LIST_TYPE.to_be_bytes();
    let well_formed = h[0] == gue_first_byte(outer.v6)
        && (h[1] == proto::IPIP || h[1] == proto::IPV6)
        && h[2] == 0
        && h[3] == 0
        && h[4] == ty[0]
        && h[5] == ty[1]
        && h[GUE_LEN + HOP_LIST_COUNT] as usize <= MAX_HOPS
        && h[GUE_LEN + HOP_LIST_NEXT] <= h[GUE_LEN + HOP_LIST_COUNT]
        && (outer.v6 || outer.header_len == Ipv4Hdr::LEN);
    well_formed.then_some(List {
        count: h[GUE_LEN + HOP_LIST_COUNT],
        next: h[GUE_LEN + HOP_LIST_NEXT],
        inner_proto: h[1],
    })
}

/// Hop `index` of the list (IPv4-mapped for an IPv4 outer header).
#[inline(always)]
fn next_hop(ctx: &XdpContext, outer: &Outer, gue_at: usize, index: u8) -> Option<Addr16> {
    let at = gue_at + GUE_LEN + HOP_LIST_HEADER_LEN;
    let index = (index as usize).min(MAX_HOPS - 1);
    if outer.v6 {
        Some(unsafe { *ptr_at::<Addr16>(ctx, at + 16 * index)? })
    } else {
        Some(addr_from_v4(unsafe { *ptr_at::<[u8; 4]>(ctx, at + 4 * index)? }))
    }
}

/// Whether this host may own the connection of the inner packet at
/// `inner_at`: anything but a TCP packet past its SYN is delivered (the
/// edge sends hop lists only for those); so is a packet of a socket this
/// host has in any state but listening (established, half-open,
/// TIME_WAIT), and an ACK that completes a SYN cookie handshake. ICMP
/// errors are judged by the connection they quote.
#[inline(never)]
fn owns(ctx: &XdpContext, inner_at: usize, inner_proto: u8) -> bool {
    let ether_type = if inner_proto == proto::IPIP { ETH_P_IPV4 } else { ETH_P_IPV6 };
    let Ok(mut flow) = parse_ip(ctx, L2 { len: inner_at, ether_type }) else {
        return true;
    };
    if parse_l4(ctx, &mut flow).is_err() || !flow.is_mid_flow() {
        return true;
    }
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let size = if flow.is_v6 {
        let t = unsafe { &mut tuple.__bindgen_anon_1.ipv6 };
        t.saddr = words(&flow.src);
        t.daddr = words(&flow.dst);
        t.sport = flow.src_port.to_be();
        t.dport = flow.dst_port.to_be();
        size_of_val(t)
    } else {
        let t = unsafe { &mut tuple.__bindgen_anon_1.ipv4 };
        t.saddr = u32::from_ne_bytes(addr_as_v4(&flow.src).unwrap_or_default());
        t.daddr = u32::from_ne_bytes(addr_as_v4(&flow.dst).unwrap_or_default());
        t.sport = flow.src_port.to_be();
        t.dport = flow.dst_port.to_be();
        size_of_val(t)
    };
    let netns = BPF_F_CURRENT_NETNS as u32 as u64;
    let sk = unsafe { bpf_skc_lookup_tcp(ctx.as_ptr(), &mut tuple, size as u32, netns, 0) };
    if sk.is_null() {
        return false;
    }
    let owned = unsafe { (*sk).state } != TCP_LISTEN || valid_cookie(ctx, &flow, inner_at, sk as *mut _);
    unsafe { bpf_sk_release(sk as *mut _) };
    owned
}

/// An ACK (no SYN, no RST) whose acknowledgement is a SYN cookie the
/// listener `sk` sent: the handshake completes here.
#[inline(always)]
fn valid_cookie(ctx: &XdpContext, flow: &Flow, inner_at: usize, sk: *mut core::ffi::c_void) -> bool {
    if flow.icmp_error || flow.tcp_flags & (TCP_SYN | TCP_RST | TCP_ACK) != TCP_ACK {
        return false;
    }
    let Some(th) = ptr_at::<TcpHdr>(ctx, flow.l4_offset) else {
        return false;
    };
    let th_len = size_of::<TcpHdr>() as u32;
    let rc = if flow.is_v6 {
        let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, inner_at) else { return false };
        unsafe { bpf_tcp_check_syncookie(sk, ip as *mut _, Ipv6Hdr::LEN as u32, th as *mut _, th_len) }
    } else {
        let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, inner_at) else { return false };
        unsafe { bpf_tcp_check_syncookie(sk, ip as *mut _, Ipv4Hdr::LEN as u32, th as *mut _, th_len) }
    };
    rc == 0
}

/// Sends the packet on to `hop`, backend `peer` of `DECAP_PEERS`: the
/// outer destination becomes `hop` and the list's next index moves past
/// it. The next hop is the one `gslb decap` resolved for the peer
/// (`NEXT_HOPS`), else the kernel's routing table's (which needs
/// forwarding enabled on the interface). `NOT_SENT`: neither has one, or
/// the packet is too big for it (the packet is unchanged). (An action, not
/// an `Option`: returned in a register.)
#[inline(never)]
fn forward(ctx: &XdpContext, outer: &Outer, hop: &Addr16, peer: u32) -> u32 {
    send_on(ctx, outer, hop, peer).unwrap_or(NOT_SENT)
}

/// What `forward` returns when it could not send the packet on.
const NOT_SENT: u32 = u32::MAX;

#[inline(always)]
fn send_on(ctx: &XdpContext, outer: &Outer, hop: &Addr16, peer: u32) -> Option<u32> {
    let gue_at = outer.ip_at + outer.header_len + UDP_LEN;
    let (src, len) = outer_source(ctx, outer)?;
    let resolved = NEXT_HOPS.get(peer).filter(|h| h.flags & NEXT_HOP_VALID != 0 && len <= h.mtu as usize);
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    if resolved.is_none() {
        let packet = Outbound { v6: outer.v6, src, dst: *hop, len, gue: true };
        if route::lookup(ctx, &packet, &mut fib) != Route::Next {
            return None;
        }
    }
    if outer.v6 {
        let ip = unsafe { &mut *ptr_at::<[u8; Ipv6Hdr::LEN]>(ctx, outer.ip_at)? };
        ip[24..40].copy_from_slice(hop);
    } else {
        let ip = unsafe { &mut *ptr_at::<[u8; Ipv4Hdr::LEN]>(ctx, outer.ip_at)? };
        ip[16..20].copy_from_slice(&hop[12..16]);
        ip[10] = 0;
        ip[11] = 0;
        let check = checksum::finish(checksum::add_words(0, &ip[..]));
        ip[10] = check[0];
        ip[11] = check[1];
    }
    // The UDP checksum covered the old destination: zero, as edges send it.
    *unsafe { &mut *ptr_at::<[u8; 2]>(ctx, gue_at - 2)? } = [0, 0];
    let next = unsafe { &mut *ptr_at::<u8>(ctx, gue_at + GUE_LEN + HOP_LIST_NEXT)? };
    *next += 1;
    match resolved {
        Some(next_hop) => route::send(ctx, next_hop),
        None => route::forward(ctx, &fib, Route::Next),
    }
}
