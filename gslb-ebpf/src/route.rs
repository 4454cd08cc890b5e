//! The kernel's routing table: the FIB lookup for a packet about to leave
//! (next hop, egress MTU) and sending the packet along the route found.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, xdp_action, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS,
    },
    helpers::{bpf_fib_lookup, bpf_redirect},
    programs::XdpContext,
    EbpfContext,
};
use gslb_common::{Addr16, NextHop};
use network_types::eth::EthHdr;

use crate::parse::ptr_at;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// An IP packet about to leave, as the route lookup sees it: a tunnel
/// packet to a backend, or an answer to a client.
pub struct Outbound {
    pub v6: bool,
    pub src: Addr16,
    pub dst: Addr16,
    /// The whole IP packet (outer header included).
    pub len: usize,
    /// A tunnel packet with a hop list (GUE) rather than plain IP-in-IP.
    pub gue: bool,
}

/// What the kernel's routing table says about a packet about to be sent.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A next hop with a known MAC, in the lookup's result.
    Next,
    /// A next hop whose MAC the kernel still has to resolve.
    Neighbour,
    /// Larger than the egress MTU, which it carries.
    TooBig(u16),
    Unroutable,
}

/// Looks up the route for `packet` (from this interface), checking its
/// length against the egress MTU.
#[inline(never)]
pub fn lookup(ctx: &XdpContext, packet: &Outbound, fib: &mut FibParams) -> Route {
    fib.ifindex = ctx.ingress_ifindex() as u32;
    fib.__bindgen_anon_1.tot_len = packet.len as u16;
    if packet.v6 {
        fib.family = AF_INET6;
        fib.__bindgen_anon_3.ipv6_src = words(&packet.src);
        fib.__bindgen_anon_4.ipv6_dst = words(&packet.dst);
    } else {
        fib.family = AF_INET;
        fib.__bindgen_anon_3.ipv4_src =
            u32::from_ne_bytes([packet.src[12], packet.src[13], packet.src[14], packet.src[15]]);
        fib.__bindgen_anon_4.ipv4_dst =
            u32::from_ne_bytes([packet.dst[12], packet.dst[13], packet.dst[14], packet.dst[15]]);
    }
    let rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), fib, size_of::<FibParams>() as i32, 0) } as u32;
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS => Route::Next,
        BPF_FIB_LKUP_RET_NO_NEIGH => Route::Neighbour,
        // The lookup puts the MTU where the length was.
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Route::TooBig(unsafe { fib.__bindgen_anon_1.mtu_result }),
        _ => Route::Unroutable,
    }
}

/// Sends the packet along `route`: XDP_TX out of the ingress interface,
/// redirect to another one, or hand it to the kernel to resolve the
/// neighbour (it still carries this host's MAC). `None`: it cannot be sent
/// (no Ethernet header, the redirect failed), the caller drops it.
#[inline(always)]
pub fn forward(ctx: &XdpContext, fib: &FibParams, route: Route) -> Option<u32> {
    if route != Route::Next {
        return Some(xdp_action::XDP_PASS);
    }
    out(ctx, fib.ifindex, fib.dmac, fib.smac)
}

/// Sends the packet to a next hop the agent resolved (no route lookup).
/// `None`: it cannot be sent, the caller drops it.
#[inline(always)]
pub fn send(ctx: &XdpContext, hop: &NextHop) -> Option<u32> {
    out(ctx, hop.ifindex, hop.dst_mac, hop.src_mac)
}

/// Rewrites the MACs, then `XDP_TX` out of the ingress interface or a
/// redirect to another one.
#[inline(always)]
fn out(ctx: &XdpContext, ifindex: u32, dst_mac: [u8; 6], src_mac: [u8; 6]) -> Option<u32> {
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    unsafe {
        (*eth).dst_addr = dst_mac;
        (*eth).src_addr = src_mac;
    }
    if ifindex == ctx.ingress_ifindex() as u32 {
        return Some(xdp_action::XDP_TX);
    }
    match unsafe { bpf_redirect(ifindex, 0) } as u32 {
        xdp_action::XDP_REDIRECT => Some(xdp_action::XDP_REDIRECT),
        _ => None,
    }
}

/// Address bytes as the u32 words `bpf_fib_lookup` and the socket lookup
/// want (bytes unchanged).
#[inline(always)]
pub fn words(a: &[u8; 16]) -> [u32; 4] {
    let mut w = [0u32; 4];
    for (i, word) in w.iter_mut().enumerate() {
        *word = u32::from_ne_bytes([a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]]);
    }
    w
}
