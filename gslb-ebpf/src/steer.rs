//! `steer`: parse, classify, select, encapsulate, forward.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, xdp_action, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS,
    },
    helpers::{bpf_fib_lookup, bpf_redirect, bpf_xdp_adjust_head, bpf_xdp_adjust_tail, bpf_xdp_get_buff_len},
    maps::lpm_trie::Key as LpmKey,
    programs::XdpContext,
    EbpfContext,
};
use gslb_common::{
    addr_as_v4, addr_from_v4, flow_hash, maglev_index, proto, Addr16, Backend, FlowKey, FlowValue, FragmentVipKey,
    GlobalStats, SteerPrefix, VipKey, VipValue, BACKEND_DEAD, NO_BACKEND, OUTER_TTL, STEER_VIP_BITS,
    VIP_CLIENT_STEERING, VIP_SOURCE_IP_AFFINITY,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    checksum, count, icmp,
    parse::{parse_flow, ptr_at, Flow, Skip, ETH_P_IPV4, ETH_P_IPV6, IPV4_DF},
    BACKENDS, BACKEND_STATS, EDGE_CONFIG, FIB_SCRATCH, FLOWS, FRAGMENT_VIPS, GLOBAL_STATS, MAGLEV, STEER_PREFIXES,
    TABLE_SIZE, VIPS, VIP_STATS,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

#[inline(always)]
pub(crate) fn global(f: impl FnOnce(&mut GlobalStats)) {
    count(&GLOBAL_STATS, 0, f);
}

#[inline(always)]
fn pass(f: impl FnOnce(&mut GlobalStats)) -> u32 {
    global(|s| {
        s.passed += 1;
        f(s)
    });
    xdp_action::XDP_PASS
}

#[inline(always)]
pub(crate) fn drop() -> u32 {
    global(|s| s.dropped += 1);
    xdp_action::XDP_DROP
}

pub fn run(ctx: &XdpContext) -> u32 {
    global(|s| s.received += 1);

    // Parse.
    let flow = match parse_flow(ctx) {
        Ok(flow) => flow,
        Err(Skip::NotOurs) => return pass(|_| {}),
        Err(Skip::Malformed) => return pass(|s| s.parse_failures += 1),
    };
    if flow.fragment {
        global(|s| s.fragments += 1);
    }

    // Classify.
    let Some(vip) = classify(&flow) else {
        return pass(|_| {});
    };

    // Select.
    let Some((backend_id, backend)) = select(&flow, &vip) else {
        return drop();
    };

    // Route: the tunnel's next hop, and whether the packet fits its MTU.
    let Some(mut tunnel) = tunnel_to(&flow, backend) else {
        return drop();
    };
    let Some(fib) = FIB_SCRATCH.get_ptr_mut(0) else {
        return drop();
    };
    let fib = unsafe { &mut *fib };
    *fib = unsafe { core::mem::zeroed() };
    let route = route(ctx, &tunnel, fib);
    match route {
        Route::Next | Route::Neighbour => {}
        Route::TooBig(mtu) => {
            let inner_mtu = mtu.saturating_sub(tunnel.overhead() as u16);
            return icmp::too_big(ctx, &flow, inner_mtu, &mut tunnel, fib);
        }
        Route::Unroutable => {
            global(|s| s.fib_failures += 1);
            return drop();
        }
    }

    // Encapsulate.
    if encapsulate(ctx, &flow, &tunnel).is_none() {
        return drop();
    }
    count(&VIP_STATS, vip.vip_id, |s| {
        s.packets += 1;
        s.bytes += flow.ip_len as u64;
    });
    count(&BACKEND_STATS, backend_id, |s| {
        s.packets += 1;
        s.bytes += flow.ip_len as u64;
    });
    global(|s| {
        s.forwarded += (route == Route::Next) as u64;
        s.neighbour_pending += (route == Route::Neighbour) as u64;
        s.passed += (route == Route::Neighbour) as u64;
        s.icmp_errors += flow.icmp_error as u64;
    });

    // Forward.
    forward(ctx, fib, route)
}

/// Finds the VIP a packet is addressed to: exact port first, then the
/// address's every-port VIP. Fragments use the VIP the agent chose for
/// their address and protocol.
#[inline(always)]
fn classify(flow: &Flow) -> Option<VipValue> {
    let mut key = VipKey { addr: flow.dst, port: flow.dst_port, proto: flow.proto, _pad: 0 };
    if flow.fragment {
        let fkey = FragmentVipKey { addr: flow.dst, proto: flow.proto, _pad: [0; 3] };
        key.port = *unsafe { FRAGMENT_VIPS.get(&fkey) }? as u16;
        return unsafe { VIPS.get(&key) }.copied();
    }
    if let Some(vip) = unsafe { VIPS.get(&key) } {
        return Some(*vip);
    }
    key.port = 0;
    unsafe { VIPS.get(&key) }.copied()
}

/// The table a new flow uses: the one for the client's longest matching
/// prefix if the VIP steers by client prefix, else the VIP's own.
#[inline(always)]
fn table_for(flow: &Flow, vip: &VipValue) -> (u32, u32) {
    if vip.flags & VIP_CLIENT_STEERING != 0 {
        let data = SteerPrefix { vip_id: vip.vip_id.to_be_bytes(), addr: flow.src };
        let key = LpmKey::new(STEER_VIP_BITS + 128, data);
        if let Some(table) = STEER_PREFIXES.get(&key) {
            return (table.table_id, table.generation);
        }
    }
    (vip.table_id, vip.generation)
}

/// Picks the backend: the flow table first, unless its backend is dead;
/// otherwise the VIP's live Maglev table, recording the choice.
#[inline(never)]
fn select(flow: &Flow, vip: &VipValue) -> Option<(u32, &'static Backend)> {
    let source_ip = vip.flags & VIP_SOURCE_IP_AFFINITY != 0;
    // Fragments and source-ip VIPs are keyed by addresses alone, so every
    // fragment of a datagram, and every flow of a client, lands together.
    let by_address = source_ip || flow.fragment;
    let key = FlowKey {
        src: flow.src,
        dst: flow.dst,
        src_port: if by_address { 0 } else { flow.src_port },
        dst_port: if by_address { 0 } else { flow.dst_port },
        proto: flow.proto,
        _pad: [0; 3],
    };

    if let Some(recorded) = unsafe { FLOWS.get(&key) } {
        let id = recorded.backend_id;
        if let Some(backend) = BACKENDS.get(id) {
            if backend.flags & BACKEND_DEAD == 0 {
                count(&VIP_STATS, vip.vip_id, |s| s.flow_hits += 1);
                return Some((id, backend));
            }
        }
    }
    count(&VIP_STATS, vip.vip_id, |s| s.flow_misses += 1);

    let table_size = unsafe { core::ptr::read_volatile(&TABLE_SIZE) };
    if table_size == 0 {
        return None;
    }
    let (table_id, generation) = table_for(flow, vip);
    let index = maglev_index(table_id, generation, table_size, flow_hash(&key, source_ip));
    let id = *MAGLEV.get(index)?;
    if id == NO_BACKEND {
        return None;
    }
    let backend = BACKENDS.get(id)?;
    let value = FlowValue { backend_id: id, _pad: 0 };
    // An ICMP error follows its flow but never creates one: spoofed errors
    // must not fill the flow table.
    if !flow.icmp_error && FLOWS.insert(&key, &value, 0).is_ok() {
        count(&VIP_STATS, vip.vip_id, |s| s.new_flows += 1);
    }
    Some((id, backend))
}

/// The outer header a packet to a backend gets.
pub(crate) struct Tunnel {
    pub v6: bool,
    pub src: Addr16,
    pub dst: Addr16,
    /// The whole tunnel packet, outer header included.
    pub len: usize,
}

impl Tunnel {
    #[inline(always)]
    pub fn overhead(&self) -> usize {
        if self.v6 {
            Ipv6Hdr::LEN
        } else {
            Ipv4Hdr::LEN
        }
    }
}

/// The tunnel to `backend`: IPv6 inner packets need an IPv6 tunnel; IPv4
/// may ride either.
#[inline(always)]
fn tunnel_to(flow: &Flow, backend: &Backend) -> Option<Tunnel> {
    let config = EDGE_CONFIG.get(0)?;
    let to_v4 = addr_as_v4(&backend.addr).is_some();
    if (to_v4 && flow.is_v6) || (!to_v4 && config.has_v6 == 0) {
        return None;
    }
    let (src, header_len) = if to_v4 {
        (addr_from_v4(config.tunnel_source_v4), Ipv4Hdr::LEN)
    } else {
        (config.tunnel_source_v6, Ipv6Hdr::LEN)
    };
    let len = flow.ip_len + header_len;
    if len > u16::MAX as usize {
        return None;
    }
    Some(Tunnel { v6: !to_v4, src, dst: backend.addr, len })
}

/// Puts a fresh Ethernet header and the outer IP header in front of the
/// inner IP packet, which stays byte-for-byte as it was. VLAN tags are
/// dropped: the route lookup picked the egress interface.
#[inline(never)]
fn encapsulate(ctx: &XdpContext, flow: &Flow, tunnel: &Tunnel) -> Option<()> {
    // Ethernet padding after the IP packet is not part of it: the tunnel
    // carries exactly the inner packet.
    let ether_type = if tunnel.v6 { ETH_P_IPV6 } else { ETH_P_IPV4 };
    reframe(ctx, flow, flow.ip_len, tunnel.overhead(), ether_type)?;
    if tunnel.v6 {
        let ip = ptr_at::<[u8; Ipv6Hdr::LEN]>(ctx, EthHdr::LEN)?;
        write_ipv6_header(unsafe { &mut *ip }, flow, &tunnel.src, &tunnel.dst);
    } else {
        let ip = ptr_at::<[u8; Ipv4Hdr::LEN]>(ctx, EthHdr::LEN)?;
        let (src, dst) = (addr_as_v4(&tunnel.src)?, addr_as_v4(&tunnel.dst)?);
        write_ipv4_header(unsafe { &mut *ip }, flow, src, dst, tunnel.len as u16);
    }
    Some(())
}

/// Rewrites the frame around the first `keep` bytes of `flow`'s IP packet:
/// whatever followed them is cut, the link layer (VLAN tags included) is
/// replaced by an untagged Ethernet header of `ether_type` followed by
/// `headers` bytes of room for new headers. The original MACs stay until
/// `forward` replaces them, so a packet handed to the kernel still carries
/// this host's MAC.
#[inline(always)]
pub(crate) fn reframe(ctx: &XdpContext, flow: &Flow, keep: usize, headers: usize, ether_type: u16) -> Option<()> {
    let macs = *unsafe { &*ptr_at::<[u8; 12]>(ctx, 0)? };
    let frame_len = unsafe { bpf_xdp_get_buff_len(ctx.as_ptr() as *mut _) } as usize;
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

/// IPv4 outer header: TTL 64, protocol IPIP, TOS, DF and identification
/// copied from the inner header, checksum filled in.
#[inline(always)]
fn write_ipv4_header(h: &mut [u8; Ipv4Hdr::LEN], flow: &Flow, src: [u8; 4], dst: [u8; 4], total: u16) {
    let len = total.to_be_bytes();
    let id = flow.ip_id.to_be_bytes();
    let frags = if flow.df { IPV4_DF } else { 0 }.to_be_bytes();
    *h = [
        0x45,
        flow.tos,
        len[0],
        len[1],
        id[0],
        id[1],
        frags[0],
        frags[1],
        OUTER_TTL,
        proto::IPIP,
        0,
        0,
        src[0],
        src[1],
        src[2],
        src[3],
        dst[0],
        dst[1],
        dst[2],
        dst[3],
    ];
    checksum::set_ipv4(h);
}

/// IPv6 outer header: hop limit 64, next header IPIP or IPv6, traffic class
/// copied, flow label from the flow's addresses so routers hash it stably.
#[inline(always)]
fn write_ipv6_header(h: &mut [u8; Ipv6Hdr::LEN], flow: &Flow, src: &[u8; 16], dst: &[u8; 16]) {
    let next = if flow.is_v6 { proto::IPV6 } else { proto::IPIP };
    let len = (flow.ip_len as u16).to_be_bytes();
    let label = flow_label(flow);
    h[0] = 0x60 | (flow.tos >> 4);
    h[1] = (flow.tos << 4) | ((label >> 16) as u8 & 0x0f);
    h[2] = (label >> 8) as u8;
    h[3] = label as u8;
    h[4] = len[0];
    h[5] = len[1];
    h[6] = next;
    h[7] = OUTER_TTL;
    h[8..24].copy_from_slice(src);
    h[24..40].copy_from_slice(dst);
}

#[inline(always)]
fn flow_label(flow: &Flow) -> u32 {
    let key = FlowKey { src: flow.src, dst: flow.dst, ..Default::default() };
    flow_hash(&key, false) & 0x000f_ffff
}

/// What the kernel's routing table says about a packet about to be sent.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// A next hop with a known MAC, in the lookup's result.
    Next,
    /// A next hop whose MAC the kernel still has to resolve.
    Neighbour,
    /// Larger than the egress MTU, which it carries.
    TooBig(u16),
    Unroutable,
}

/// Looks up the route for `tunnel` (from this interface), checking its
/// length against the egress MTU.
#[inline(never)]
pub(crate) fn route(ctx: &XdpContext, tunnel: &Tunnel, fib: &mut FibParams) -> Route {
    fib.ifindex = ctx.ingress_ifindex() as u32;
    fib.__bindgen_anon_1.tot_len = tunnel.len as u16;
    if tunnel.v6 {
        fib.family = AF_INET6;
        fib.__bindgen_anon_3.ipv6_src = words(&tunnel.src);
        fib.__bindgen_anon_4.ipv6_dst = words(&tunnel.dst);
    } else {
        fib.family = AF_INET;
        fib.__bindgen_anon_3.ipv4_src =
            u32::from_ne_bytes([tunnel.src[12], tunnel.src[13], tunnel.src[14], tunnel.src[15]]);
        fib.__bindgen_anon_4.ipv4_dst =
            u32::from_ne_bytes([tunnel.dst[12], tunnel.dst[13], tunnel.dst[14], tunnel.dst[15]]);
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
/// neighbour (it still carries this host's MAC).
#[inline(always)]
pub(crate) fn forward(ctx: &XdpContext, fib: &FibParams, route: Route) -> u32 {
    if route != Route::Next {
        return xdp_action::XDP_PASS;
    }
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return drop();
    };
    unsafe {
        (*eth).dst_addr = fib.dmac;
        (*eth).src_addr = fib.smac;
    }
    if fib.ifindex == ctx.ingress_ifindex() as u32 {
        return xdp_action::XDP_TX;
    }
    match unsafe { bpf_redirect(fib.ifindex, 0) } as u32 {
        xdp_action::XDP_REDIRECT => xdp_action::XDP_REDIRECT,
        _ => drop(),
    }
}

/// Address bytes as the u32 words `bpf_fib_lookup` wants (bytes unchanged).
#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    let mut w = [0u32; 4];
    for (i, word) in w.iter_mut().enumerate() {
        *word = u32::from_ne_bytes([a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]]);
    }
    w
}
