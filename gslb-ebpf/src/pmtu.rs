//! Path MTU: a VIP packet too big for the tunnel is answered, like a router
//! would, with ICMP "fragmentation needed" or ICMPv6 "packet too big", so
//! the client lowers its packet size by the tunnel's overhead.

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, xdp_action},
    programs::XdpContext,
};
use gslb_common::proto;
use gslb_ebpf::{
    checksum::{self, add_words},
    encap::reframe,
    headers::{write_ipv4, write_ipv6, Ipv4Header, Ipv6Header},
    parse::{ptr_at, Flow, ETH_P_IPV4, ETH_P_IPV6, ICMP_HEADER_LEN},
    route::{self, Outbound, Route},
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::counters::{drop, global};

/// Bytes of the refused packet quoted in the answer: its IP header and the
/// start of its transport header, more than the client needs to find the
/// connection (a fixed size keeps the checksum loop verifiable).
const QUOTE: usize = 128;
const ICMP_FRAG_NEEDED: [u8; 2] = [3, 4];
const ICMPV6_PACKET_TOO_BIG: [u8; 2] = [2, 0];
const REPLY_TTL: u8 = 64;

/// Answers `flow`'s packet, which does not fit a tunnel whose inner packets
/// may be at most `mtu` bytes, from the VIP it was sent to. IPv4 packets
/// without DF and ICMP errors get no answer (a router would fragment the
/// former, and nobody answers an error with an error): they are dropped.
/// `packet` and `fib` are the caller's, reused for the answer (the stack
/// is small).
#[inline(never)]
pub fn too_big(ctx: &XdpContext, flow: &Flow, mtu: u16, packet: &mut Outbound, fib: &mut FibParams) -> u32 {
    // A rare path: its own lookup of the counters (BPF calls take five
    // arguments at most).
    let Some(stats) = global() else {
        return xdp_action::XDP_DROP;
    };
    if flow.icmp_error || (!flow.is_v6 && !flow.df) || flow.ip_len < QUOTE {
        stats.too_big_dropped += 1;
        return drop(stats);
    }
    let Some(len) = build(ctx, flow, mtu) else {
        return drop(stats);
    };
    // Back to the client, by the routing table.
    packet.v6 = flow.is_v6;
    packet.src = flow.dst;
    packet.dst = flow.src;
    packet.len = len;
    packet.gue = false;
    *fib = unsafe { core::mem::zeroed() };
    match route::lookup(ctx, packet, fib) {
        r @ (Route::Next | Route::Neighbour) => {
            stats.too_big_answered += 1;
            route::forward(ctx, fib, r).unwrap_or_else(|| drop(stats))
        }
        _ => {
            stats.fib_failures += 1;
            drop(stats)
        }
    }
}

/// Rewrites the frame in place into the answer: Ethernet, IP, ICMP, then
/// the first `QUOTE` bytes of the refused packet. Returns the IP length.
#[inline(always)]
fn build(ctx: &XdpContext, flow: &Flow, mtu: u16) -> Option<usize> {
    let ip_header = if flow.is_v6 { Ipv6Hdr::LEN } else { Ipv4Hdr::LEN };
    let ip_len = ip_header + ICMP_HEADER_LEN + QUOTE;
    // Keep the quote, with room for the new headers in front of it (VLAN
    // tags go: the route lookup picks the egress).
    let ether_type = if flow.is_v6 { ETH_P_IPV6 } else { ETH_P_IPV4 };
    reframe(ctx, flow, QUOTE, ip_header + ICMP_HEADER_LEN, ether_type)?;
    let icmp = unsafe { &mut *ptr_at::<[u8; ICMP_HEADER_LEN + QUOTE]>(ctx, EthHdr::LEN + ip_header)? };
    let mut sum = 0u32;
    if flow.is_v6 {
        let ip = unsafe { &mut *ptr_at::<[u8; Ipv6Hdr::LEN]>(ctx, EthHdr::LEN)? };
        let header = Ipv6Header {
            traffic_class: 0,
            flow_label: 0,
            payload_len: (ICMP_HEADER_LEN + QUOTE) as u16,
            next_header: proto::ICMPV6,
            hop_limit: REPLY_TTL,
            src: &flow.dst,
            dst: &flow.src,
        };
        write_ipv6(ip, &header);
        // The pseudo-header: addresses, upper-layer length, next header.
        sum = add_words(sum, &ip[8..40]);
        sum += (ICMP_HEADER_LEN + QUOTE) as u32 + proto::ICMPV6 as u32;
        let m = (mtu as u32).to_be_bytes();
        icmp[..ICMP_HEADER_LEN].copy_from_slice(&[
            ICMPV6_PACKET_TOO_BIG[0],
            ICMPV6_PACKET_TOO_BIG[1],
            0,
            0,
            m[0],
            m[1],
            m[2],
            m[3],
        ]);
    } else {
        let ip = unsafe { &mut *ptr_at::<[u8; Ipv4Hdr::LEN]>(ctx, EthHdr::LEN)? };
        let header = Ipv4Header {
            tos: 0,
            total_len: ip_len as u16,
            id: 0,
            df: false,
            ttl: REPLY_TTL,
            proto: proto::ICMP,
            src: v4_of(&flow.dst),
            dst: v4_of(&flow.src),
        };
        write_ipv4(ip, &header);
        let m = mtu.to_be_bytes();
        icmp[..ICMP_HEADER_LEN].copy_from_slice(&[ICMP_FRAG_NEEDED[0], ICMP_FRAG_NEEDED[1], 0, 0, 0, 0, m[0], m[1]]);
    }
    let check = checksum::finish(add_words(sum, &icmp[..]));
    icmp[2] = check[0];
    icmp[3] = check[1];
    Some(ip_len)
}

/// The IPv4 address in an IPv4-mapped one (the flow is IPv4).
#[inline(always)]
fn v4_of(a: &[u8; 16]) -> [u8; 4] {
    [a[12], a[13], a[14], a[15]]
}
