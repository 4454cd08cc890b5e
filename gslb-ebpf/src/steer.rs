//! `steer`: parse, classify, select, encapsulate, forward.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, xdp_action, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS},
    helpers::{bpf_fib_lookup, bpf_redirect, bpf_xdp_adjust_head, bpf_xdp_adjust_tail, bpf_xdp_get_buff_len},
    maps::lpm_trie::Key as LpmKey,
    programs::XdpContext,
    EbpfContext,
};
use gslb_common::{
    addr_as_v4, flow_hash, maglev_index, proto, Backend, FlowKey, FlowValue, FragmentVipKey, GlobalStats, SteerPrefix,
    VipKey, VipValue, BACKEND_DEAD, NO_BACKEND, OUTER_TTL, STEER_VIP_BITS, VIP_CLIENT_STEERING, VIP_SOURCE_IP_AFFINITY,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    count,
    parse::{parse_flow, ptr_at, Flow, Skip, ETH_P_IPV4, ETH_P_IPV6, IPV4_DF},
    BACKENDS, BACKEND_STATS, EDGE_CONFIG, FLOWS, FRAGMENT_VIPS, GLOBAL_STATS, MAGLEV, STEER_PREFIXES, TABLE_SIZE, VIPS,
    VIP_STATS,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

#[inline(always)]
fn global(f: impl FnOnce(&mut GlobalStats)) {
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
fn drop() -> u32 {
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

    // Encapsulate.
    let Some(outer_v6) = encapsulate(ctx, &flow, backend) else {
        return drop();
    };
    count(&VIP_STATS, vip.vip_id, |s| {
        s.packets += 1;
        s.bytes += flow.ip_len as u64;
    });
    count(&BACKEND_STATS, backend_id, |s| {
        s.packets += 1;
        s.bytes += flow.ip_len as u64;
    });

    // Forward.
    forward(ctx, outer_v6)
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
    if FLOWS.insert(&key, &value, 0).is_ok() {
        count(&VIP_STATS, vip.vip_id, |s| s.new_flows += 1);
    }
    Some((id, backend))
}

/// Puts a fresh Ethernet header and an outer IP header in front of the
/// inner IP packet, which stays byte-for-byte as it was. VLAN tags are
/// dropped: the route lookup picks the egress interface. Returns whether
/// the outer header is IPv6.
#[inline(never)]
fn encapsulate(ctx: &XdpContext, flow: &Flow, backend: &Backend) -> Option<bool> {
    let config = EDGE_CONFIG.get(0)?;
    let outer_v4 = addr_as_v4(&backend.addr);
    // IPv6 inner packets need an IPv6 tunnel; IPv4 may ride either.
    if (outer_v4.is_some() && flow.is_v6) || (outer_v4.is_none() && config.has_v6 == 0) {
        return None;
    }
    let header_len = if outer_v4.is_some() { Ipv4Hdr::LEN } else { Ipv6Hdr::LEN };
    let total = flow.ip_len + header_len;
    if total > u16::MAX as usize {
        return None;
    }
    // The original MACs stay until the route lookup replaces them, so a
    // packet handed to the kernel still carries this host's MAC.
    let macs = *unsafe { &*ptr_at::<[u8; 12]>(ctx, 0)? };

    // Ethernet padding after the IP packet is not part of it: cut it, so
    // the tunnel carries exactly the inner packet.
    let frame_len = unsafe { bpf_xdp_get_buff_len(ctx.as_ptr() as *mut _) } as usize;
    let padding = frame_len.saturating_sub(flow.l2.len + flow.ip_len);
    if padding > 0 && unsafe { bpf_xdp_adjust_tail(ctx.as_ptr() as *mut _, -(padding as i32)) } != 0 {
        return None;
    }

    let grow = (EthHdr::LEN + header_len) as i32 - flow.l2.len as i32;
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, -grow) } != 0 {
        return None;
    }
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    unsafe {
        (*eth).dst_addr.copy_from_slice(&macs[..6]);
        (*eth).src_addr.copy_from_slice(&macs[6..]);
    }
    match outer_v4 {
        Some(dst) => {
            unsafe { (*eth).ether_type = ETH_P_IPV4.to_be() };
            let ip = ptr_at::<[u8; Ipv4Hdr::LEN]>(ctx, EthHdr::LEN)?;
            write_ipv4_header(unsafe { &mut *ip }, flow, config.tunnel_source_v4, dst, total as u16);
            Some(false)
        }
        None => {
            unsafe { (*eth).ether_type = ETH_P_IPV6.to_be() };
            let ip = ptr_at::<[u8; Ipv6Hdr::LEN]>(ctx, EthHdr::LEN)?;
            write_ipv6_header(unsafe { &mut *ip }, flow, &config.tunnel_source_v6, &backend.addr);
            Some(true)
        }
    }
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
    let check = ipv4_checksum(h).to_be_bytes();
    h[10] = check[0];
    h[11] = check[1];
}

#[inline(always)]
fn ipv4_checksum(h: &[u8; Ipv4Hdr::LEN]) -> u16 {
    let mut sum = 0u32;
    for i in 0..Ipv4Hdr::LEN / 2 {
        sum += u16::from_be_bytes([h[2 * i], h[2 * i + 1]]) as u32;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
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

/// Routes the tunnel packet: XDP_TX out of the ingress interface, redirect
/// to another one, or hand it to the kernel while the neighbour resolves.
#[inline(never)]
pub(crate) fn forward(ctx: &XdpContext, outer_v6: bool) -> u32 {
    let ingress = ctx.ingress_ifindex() as u32;
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    fib.ifindex = ingress;
    if outer_v6 {
        let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, EthHdr::LEN) else { return drop() };
        let ip = unsafe { &*ip };
        fib.family = AF_INET6;
        fib.l4_protocol = ip.next_hdr;
        fib.__bindgen_anon_1.tot_len = Ipv6Hdr::LEN as u16 + ip.payload_len();
        fib.__bindgen_anon_3.ipv6_src = words(&ip.src_addr);
        fib.__bindgen_anon_4.ipv6_dst = words(&ip.dst_addr);
    } else {
        let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN) else { return drop() };
        let ip = unsafe { &*ip };
        fib.family = AF_INET;
        fib.l4_protocol = proto::IPIP;
        fib.__bindgen_anon_1.tot_len = ip.tot_len();
        fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(ip.src_addr);
        fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(ip.dst_addr);
    }
    let rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), &mut fib, size_of::<FibParams>() as i32, 0) } as u32;
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS => {}
        // The kernel resolves the neighbour and forwards the tunnel packet.
        BPF_FIB_LKUP_RET_NO_NEIGH => return pass(|s| s.neighbour_pending += 1),
        _ => {
            global(|s| s.fib_failures += 1);
            return drop();
        }
    }
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return drop();
    };
    unsafe {
        (*eth).dst_addr = fib.dmac;
        (*eth).src_addr = fib.smac;
    }
    global(|s| s.forwarded += 1);
    if fib.ifindex == ingress {
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
