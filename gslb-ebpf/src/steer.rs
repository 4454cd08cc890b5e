//! `steer`: parse, classify, select, route, encapsulate, forward.

use aya_ebpf::{maps::lpm_trie::Key as LpmKey, programs::XdpContext};
use gslb_common::{
    flow_hash, maglev_index, Backend, ClientPrefixKey, FlowKey, FlowValue, FragmentVipKey, VipKey, VipValue,
    BACKEND_DEAD, CLIENT_PREFIX_VIP_BITS, NEXT_HOP_VALID, NO_BACKEND, VIP_CLIENT_STEERING, VIP_SOURCE_IP_AFFINITY,
};
use gslb_ebpf::{
    encap,
    parse::{parse_flow, Flow, Skip},
    route::{self, Route},
};

use crate::{
    counters::{count, drop, global, pass},
    maps::{
        BACKENDS, BACKEND_STATS, EDGE_CONFIG, FIB_SCRATCH, FLOWS, FRAGMENT_VIPS, MAGLEV, NEXT_HOPS, STEER_PREFIXES,
        TABLE_SIZE, VIPS, VIP_STATS,
    },
    pmtu,
};

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

    let Some(mut tunnel) = EDGE_CONFIG.get(0).and_then(|config| encap::tunnel_to(&flow, backend, config)) else {
        return drop();
    };

    // Route: the backend's next hop as the agent resolved it, when it has
    // one and the packet fits it.
    if let Some(hop) = NEXT_HOPS.get(backend_id) {
        if hop.flags & NEXT_HOP_VALID != 0 && tunnel.len <= hop.mtu as usize {
            // Encapsulate, forward.
            if encap::encapsulate(ctx, &flow, &tunnel).is_none() {
                return drop();
            }
            let Some(action) = route::send(ctx, hop) else {
                return drop();
            };
            forwarded(&flow, vip.vip_id, backend_id, Route::Next);
            return action;
        }
    }

    // Otherwise the kernel's routing table: the tunnel's next hop, and
    // whether the packet fits its MTU.
    let Some(fib) = FIB_SCRATCH.get_ptr_mut(0) else {
        return drop();
    };
    let fib = unsafe { &mut *fib };
    *fib = unsafe { core::mem::zeroed() };
    let next_hop = route::lookup(ctx, &tunnel, fib);
    match next_hop {
        Route::Next | Route::Neighbour => {}
        Route::TooBig(mtu) => {
            let inner_mtu = mtu.saturating_sub(encap::overhead(&tunnel) as u16);
            return pmtu::too_big(ctx, &flow, inner_mtu, &mut tunnel, fib);
        }
        Route::Unroutable => {
            global(|s| s.fib_failures += 1);
            return drop();
        }
    }

    // Encapsulate.
    if encap::encapsulate(ctx, &flow, &tunnel).is_none() {
        return drop();
    }
    forwarded(&flow, vip.vip_id, backend_id, next_hop);

    // Forward.
    route::forward(ctx, fib, next_hop).unwrap_or_else(drop)
}

/// Counts a packet tunnelled to a backend: sent (`Route::Next`) or handed
/// to the kernel to resolve the neighbour.
#[inline(always)]
fn forwarded(flow: &Flow, vip_id: u32, backend_id: u32, next_hop: Route) {
    count(&VIP_STATS, vip_id, |s| {
        s.packets += 1;
        s.bytes += flow.ip_len as u64;
    });
    count(&BACKEND_STATS, backend_id, |s| {
        s.packets += 1;
        s.bytes += flow.ip_len as u64;
    });
    global(|s| {
        s.forwarded += (next_hop == Route::Next) as u64;
        s.neighbour_pending += (next_hop == Route::Neighbour) as u64;
        s.passed += (next_hop == Route::Neighbour) as u64;
        s.icmp_errors += flow.icmp_error as u64;
    });
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
        let data = ClientPrefixKey { vip_id: vip.vip_id.to_be_bytes(), addr: flow.src };
        let key = LpmKey::new(CLIENT_PREFIX_VIP_BITS + 128, data);
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
