//! `decap`: strip the tunnel header from packets addressed to this backend
//! and hand the inner packet to the kernel. Plain tunnels (IP-in-IP,
//! IPv6-in-IPv6) are stripped; hop-list packets (GUE, second chance) are
//! `handoff`'s to decide.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_adjust_head, programs::XdpContext, EbpfContext};
use gslb_common::{proto, DecapStats};
use gslb_ebpf::parse::{parse_l2, parse_outer, ptr_at, Outer, ETH_P_IPV4, ETH_P_IPV6, L2, MAX_VLAN_TAGS, VLAN_TAG_LEN};
use network_types::eth::EthHdr;

use crate::{
    counters::entry,
    handoff::{self, Verdict},
    maps::{DECAP_ADDRS, DECAP_GUE_PORT, DECAP_STATS},
};

/// Ethernet plus at most two VLAN tags, as `parse_l2` accepts.
const MAX_L2_LEN: usize = EthHdr::LEN + MAX_VLAN_TAGS * VLAN_TAG_LEN;

pub fn run(ctx: &XdpContext) -> u32 {
    let Some(stats) = entry(&DECAP_STATS, 0) else {
        return xdp_action::XDP_PASS;
    };
    stats.received += 1;
    let Ok(l2) = parse_l2(ctx) else {
        return xdp_action::XDP_PASS;
    };
    let Some(outer) = parse_outer(ctx, &l2) else {
        return xdp_action::XDP_PASS;
    };
    match outer.proto {
        proto::IPIP | proto::IPV6 if for_us(&outer) => deliver(ctx, stats, &l2, outer.header_len, outer.proto),
        proto::UDP if to_gue_port(ctx, &l2, &outer) && for_us(&outer) => match handoff::run(ctx, stats, &outer) {
            Verdict::Deliver { strip, inner_proto } => deliver(ctx, stats, &l2, strip, inner_proto),
            Verdict::Act(action) => action,
        },
        _ => xdp_action::XDP_PASS,
    }
}

/// Addressed to one of this backend's tunnel addresses.
#[inline(always)]
fn for_us(outer: &Outer) -> bool {
    unsafe { DECAP_ADDRS.get(&outer.dst) }.is_some()
}

/// A UDP packet to the hop-list (GUE) port.
#[inline(always)]
fn to_gue_port(ctx: &XdpContext, l2: &L2, outer: &Outer) -> bool {
    let port = unsafe { core::ptr::read_volatile(&DECAP_GUE_PORT) };
    ptr_at::<[u8; 2]>(ctx, l2.len + outer.header_len + 2).is_some_and(|p| u16::from_be_bytes(unsafe { *p }) == port)
}

/// Strips the first `strip` bytes after the link layer (the tunnel's
/// headers) and hands the inner packet, of protocol `inner_proto` (IPIP or
/// IPv6), to the kernel; counted as decapsulated or, if the frame cannot
/// be changed, as an error (the packet then goes on as it came).
#[inline(always)]
fn deliver(ctx: &XdpContext, stats: &mut DecapStats, l2: &L2, strip: usize, inner_proto: u8) -> u32 {
    match strip_headers(ctx, l2, strip, inner_proto) {
        Some(()) => stats.decapsulated += 1,
        None => stats.errors += 1,
    }
    xdp_action::XDP_PASS
}

#[inline(always)]
fn strip_headers(ctx: &XdpContext, l2: &L2, strip: usize, inner_proto: u8) -> Option<()> {
    // The inner IP header must at least start inside the frame.
    ptr_at::<u8>(ctx, l2.len + strip)?;

    // Keep the link-layer header (with its VLAN tags), moved up over the
    // tunnel's headers; only its last ethertype changes. The frame holds at
    // least MAX_L2_LEN bytes (it has an outer IP header), so save that many.
    let saved = unsafe { *ptr_at::<[u8; MAX_L2_LEN]>(ctx, 0)? };
    let inner_type = if inner_proto == proto::IPIP { ETH_P_IPV4 } else { ETH_P_IPV6 }.to_be_bytes();

    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, strip as i32) } != 0 {
        return None;
    }
    unsafe {
        let eth = ptr_at::<[u8; EthHdr::LEN]>(ctx, 0)?;
        (*eth).copy_from_slice(&saved[..EthHdr::LEN]);
        for tag in 0..MAX_VLAN_TAGS {
            let at = EthHdr::LEN + tag * VLAN_TAG_LEN;
            if at < l2.len {
                let t = ptr_at::<[u8; VLAN_TAG_LEN]>(ctx, at)?;
                (*t).copy_from_slice(&saved[at..at + VLAN_TAG_LEN]);
            }
        }
        *ptr_at::<[u8; 2]>(ctx, l2.len - 2)? = inner_type;
    }
    Some(())
}
