//! `decap`: strip the tunnel header from packets addressed to this backend
//! and hand the inner packet to the kernel.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_adjust_head, programs::XdpContext, EbpfContext};
use gslb_common::{addr_from_v4, proto};
use gslb_ebpf::parse::{parse_l2, ptr_at, ETH_P_IPV4, ETH_P_IPV6, MAX_VLAN_TAGS, VLAN_TAG_LEN};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{counters::decap as stats, maps::DECAP_ADDRS};

/// Ethernet plus at most two VLAN tags, as `parse_l2` accepts.
const MAX_L2_LEN: usize = EthHdr::LEN + MAX_VLAN_TAGS * VLAN_TAG_LEN;

pub fn run(ctx: &XdpContext) -> u32 {
    stats(|s| s.received += 1);
    match strip(ctx) {
        Some(true) => stats(|s| s.decapsulated += 1),
        Some(false) => {}
        None => stats(|s| s.errors += 1),
    }
    xdp_action::XDP_PASS
}

/// `Some(true)` if a tunnel header was removed, `Some(false)` if the packet
/// is not a tunnel packet for us, `None` if it is one but could not be
/// stripped (it then goes to the kernel as it came).
#[inline(always)]
fn strip(ctx: &XdpContext) -> Option<bool> {
    let Ok(l2) = parse_l2(ctx) else {
        return Some(false);
    };
    let (outer_len, inner_proto, dst) = if l2.ether_type == ETH_P_IPV4 {
        let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, l2.len) else { return Some(false) };
        let ip = unsafe { &*ip };
        // A fragmented tunnel packet cannot be stripped piecewise.
        let fragment = u16::from_be_bytes(ip.frags) & 0x3fff != 0;
        if ip.version() != 4 || (ip.ihl() as usize) < Ipv4Hdr::LEN || fragment {
            return Some(false);
        }
        (ip.ihl() as usize, ip.proto, addr_from_v4(ip.dst_addr))
    } else {
        let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, l2.len) else { return Some(false) };
        let ip = unsafe { &*ip };
        (Ipv6Hdr::LEN, ip.next_hdr, ip.dst_addr)
    };
    if inner_proto != proto::IPIP && inner_proto != proto::IPV6 {
        return Some(false);
    }
    if unsafe { DECAP_ADDRS.get(&dst) }.is_none() {
        return Some(false);
    }
    // The inner IP header must at least start inside the frame.
    ptr_at::<u8>(ctx, l2.len + outer_len)?;

    // Keep the link-layer header (with its VLAN tags), moved up over the
    // outer IP header; only its last ethertype changes. The frame holds at
    // least MAX_L2_LEN bytes (it has an outer IP header), so save that many.
    let saved = unsafe { *ptr_at::<[u8; MAX_L2_LEN]>(ctx, 0)? };
    let inner_type = if inner_proto == proto::IPIP { ETH_P_IPV4 } else { ETH_P_IPV6 }.to_be_bytes();

    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, outer_len as i32) } != 0 {
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
    Some(true)
}
