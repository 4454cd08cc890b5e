//! `steer`: parse, classify, select, route, encapsulate, forward.

use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_ktime_get_boot_ns, maps::lpm_trie::Key as LpmKey, programs::XdpContext,
};
use gslb_common::{
    addr_as_v4, flow_bucket, gue_source_port, hash_address, hash_flow, history_index, maglev_index, stage,
    vip_filter_bit, Addr16, Backend, ClientPrefixKey, EdgeConfig, FragmentVipKey, GlobalStats, VipKey, VipStats,
    VipValue, BACKEND_DEAD, BACKEND_SECOND_CHANCE, CLIENT_PREFIX_VIP_BITS, FLOW_MID_FLOW, MAX_HOPS, NEXT_HOP_VALID,
    NO_BACKEND, VIP_CLIENT_STEERING, VIP_SOURCE_IP_AFFINITY,
};
use gslb_ebpf::{
    encap::{self, Hops},
    parse::{destination, parse_ip, parse_l2, parse_l4, Flow, Skip},
    route::{self, Route},
};

use crate::{
    counters::{drop, entry, global, pass},
    maps::{
        BACKENDS, BACKEND_STATS, EDGE_CONFIG, FIB_SCRATCH, FLOWS, FLOW_BUCKETS, FRAGMENT_VIPS, HOPS_SCRATCH, MAGLEV,
        NEXT_HOPS, OWNER_HISTORY, STEER_PREFIXES, STOP_AFTER, TABLE_SIZE, VIPS, VIP_FILTER, VIP_STATS,
    },
    pmtu,
};

pub fn run(ctx: &XdpContext) -> u32 {
    // One lookup of this CPU's counters serves the whole packet.
    let Some(stats) = global() else {
        return xdp_action::XDP_PASS;
    };
    stats.received += 1;

    // Parse. Traffic to addresses without a VIP goes to the kernel as soon
    // as its destination is known.
    let l2 = match parse_l2(ctx) {
        Ok(l2) => l2,
        Err(skip) => return skipped(stats, skip),
    };
    if destination(ctx, &l2).is_some_and(|dst| !may_have_vip(&dst)) {
        return pass(stats);
    }
    let mut flow = match parse_ip(ctx, l2) {
        Ok(flow) => flow,
        Err(skip) => return skipped(stats, skip),
    };
    if let Err(skip) = parse_l4(ctx, &mut flow) {
        return skipped(stats, skip);
    }
    if flow.fragment {
        stats.fragments += 1;
    }
    if stops_after(stage::PARSE) {
        return drop(stats);
    }

    // Classify.
    let Some(vip) = classify(&flow) else {
        return pass(stats);
    };
    let Some(vip_stats) = entry(&VIP_STATS, vip.vip_id) else {
        return drop(stats);
    };
    if stops_after(stage::CLASSIFY) {
        return drop(stats);
    }

    // Select. A flow first seen mid-connection goes with a hop list of its
    // table slot's recent previous owners, when there are any.
    let mut selected = 0;
    let Some(backend) = select(&flow, &vip, vip_stats, &mut selected) else {
        return drop(stats);
    };
    let (backend_id, mid_flow) = (selected & !FLOW_MID_FLOW, selected & FLOW_MID_FLOW != 0);
    let Some(config) = EDGE_CONFIG.get(0) else {
        return drop(stats);
    };
    let mut hops = None;
    if mid_flow && backend.flags & BACKEND_SECOND_CHANCE != 0 && config.stickiness_window != 0 {
        // The hop list lives in per-CPU scratch space: on the stack it
        // makes the deepest call chain too big for the verifier of 6.1.
        let Some(scratch) = HOPS_SCRATCH.get_ptr_mut(0) else {
            return drop(stats);
        };
        let scratch = unsafe { &mut *scratch };
        if previous_owners(&flow, &vip, backend_id, config, scratch) {
            hops = Some(&*scratch);
        }
    }
    let gue = hops.is_some();
    let Some(mut tunnel) = encap::tunnel_to(&flow, backend, config, gue) else {
        return drop(stats);
    };

    // Route: the backend's next hop as the agent resolved it, when it has
    // one and the packet fits it; otherwise the kernel's routing table,
    // which also says whether the packet fits the route's MTU.
    let hop = NEXT_HOPS.get(backend_id).filter(|h| h.flags & NEXT_HOP_VALID != 0 && tunnel.len <= h.mtu as usize);
    let mut fib = None;
    let next_hop = match hop {
        Some(_) => Route::Next,
        None => {
            // The lookup's parameters live in per-CPU scratch space: the
            // BPF stack is too small for them.
            let Some(scratch) = FIB_SCRATCH.get_ptr_mut(0) else {
                return drop(stats);
            };
            let scratch = unsafe { &mut *scratch };
            *scratch = unsafe { core::mem::zeroed() };
            let next_hop = route::lookup(ctx, &tunnel, scratch);
            if let Route::TooBig(mtu) = next_hop {
                let inner_mtu = mtu.saturating_sub(encap::overhead(&tunnel) as u16);
                return pmtu::too_big(ctx, &flow, inner_mtu, &mut tunnel, scratch);
            }
            fib = Some(scratch);
            next_hop
        }
    };
    if next_hop == Route::Unroutable {
        stats.fib_failures += 1;
        return drop(stats);
    }

    // Encapsulate.
    if encap::encapsulate(ctx, &flow, &tunnel, hops).is_none() || stops_after(stage::ENCAPSULATE) {
        return drop(stats);
    }
    forwarded(&flow, vip_stats, backend_id, stats, next_hop, gue);

    // Forward.
    let sent = match hop {
        Some(hop) => route::send(ctx, hop),
        None => fib.and_then(|fib| route::forward(ctx, fib, next_hop)),
    };
    sent.unwrap_or_else(|| drop(stats))
}

/// Whether a benchmark asked `steer` to stop after `stage`.
#[inline(always)]
fn stops_after(stage: u32) -> bool {
    unsafe { core::ptr::read_volatile(&STOP_AFTER) == stage }
}

/// A packet `steer` does not parse: to the kernel, counted.
#[inline(always)]
fn skipped(stats: &mut GlobalStats, skip: Skip) -> u32 {
    if let Skip::Malformed = skip {
        stats.parse_failures += 1;
    }
    pass(stats)
}

/// Whether some VIP may have address `dst`: its bit in `VIP_FILTER` (a
/// clear bit is certain, a set one may be another address's).
#[inline(always)]
fn may_have_vip(dst: &Addr16) -> bool {
    let (word, bit) = vip_filter_bit(dst);
    VIP_FILTER.get(word).is_some_and(|w| w & bit != 0)
}

/// Counts a packet tunnelled to a backend: sent (`Route::Next`) or handed
/// to the kernel to resolve the neighbour.
#[inline(always)]
fn forwarded(flow: &Flow, vip: &mut VipStats, backend_id: u32, stats: &mut GlobalStats, next_hop: Route, gue: bool) {
    vip.packets += 1;
    vip.bytes += flow.ip_len as u64;
    if let Some(backend) = entry(&BACKEND_STATS, backend_id) {
        backend.packets += 1;
        backend.bytes += flow.ip_len as u64;
        backend.hop_list_packets += gue as u64;
    }
    if gue {
        stats.hop_list_packets += 1;
    }
    if next_hop == Route::Next {
        stats.forwarded += 1;
    } else {
        stats.neighbour_pending += 1;
        stats.passed += 1;
    }
    stats.icmp_errors += flow.icmp_error as u64;
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
/// prefix if the VIP steers by client prefix, else the VIP's own. Not
/// inlined: its key stays off `select`'s stack.
#[inline(never)]
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

/// The flow's 64-bit hash, its key in `FLOWS`. Fragments and source-ip
/// VIPs are keyed by addresses alone, so every fragment of a datagram, and
/// every flow of a client, lands together.
#[inline(always)]
fn flow_hash(flow: &Flow, vip: &VipValue) -> u64 {
    let by_address = vip.flags & VIP_SOURCE_IP_AFFINITY != 0 || flow.fragment;
    let (src_port, dst_port) = if by_address { (0, 0) } else { (flow.src_port, flow.dst_port) };
    hash_flow(&flow.src, &flow.dst, src_port, dst_port, flow.proto)
}

/// The hash that picks the flow's table slot: the flow hash's low half, or
/// for source-ip VIPs the source address's own hash.
#[inline(always)]
fn slot_hash(flow: &Flow, vip: &VipValue, hash: u64) -> u32 {
    if vip.flags & VIP_SOURCE_IP_AFFINITY != 0 {
        hash_address(&flow.src)
    } else {
        hash as u32
    }
}

/// Picks the backend: the flow table first, unless its backend is dead;
/// otherwise the VIP's live Maglev table, recording the choice. Its id goes
/// to `selected`, with `FLOW_MID_FLOW` set if the flow was first seen
/// mid-connection (recorded so, or a mid-flow packet now): this edge cannot
/// know its backend. (The backend is the return value, in a register: a
/// pointer returned through the stack loses its type for the verifier.)
#[inline(never)]
fn select(flow: &Flow, vip: &VipValue, stats: &mut VipStats, selected: &mut u32) -> Option<&'static Backend> {
    let hash = flow_hash(flow, vip);
    let buckets = unsafe { core::ptr::read_volatile(&FLOW_BUCKETS) };
    let bucket = unsafe { &mut *FLOWS.get_ptr_mut(flow_bucket(hash, buckets))? };
    if let Some((way, recorded)) = bucket.find(hash) {
        let id = recorded & !FLOW_MID_FLOW;
        if let Some(backend) = BACKENDS.get(id) {
            if backend.flags & BACKEND_DEAD == 0 {
                bucket.touch(way);
                stats.flow_hits += 1;
                if stops_after(stage::FLOW_LOOKUP) {
                    return None;
                }
                *selected = recorded;
                return Some(backend);
            }
        }
    }
    stats.flow_misses += 1;
    if stops_after(stage::FLOW_LOOKUP) {
        return None;
    }

    let table_size = unsafe { core::ptr::read_volatile(&TABLE_SIZE) };
    if table_size == 0 {
        return None;
    }
    let (table_id, generation) = table_for(flow, vip);
    let index = maglev_index(table_id, generation, table_size, slot_hash(flow, vip, hash));
    let id = *MAGLEV.get(index)?;
    if id == NO_BACKEND {
        return None;
    }
    let backend = BACKENDS.get(id)?;
    if stops_after(stage::TABLE_LOOKUP) {
        return None;
    }
    // An ICMP error follows its flow but never creates one: spoofed errors
    // must not fill the flow table.
    *selected = if flow.is_mid_flow() { id | FLOW_MID_FLOW } else { id };
    if !flow.icmp_error {
        bucket.record(hash, *selected);
        stats.new_flows += 1;
    }
    if stops_after(stage::RECORD) {
        return None;
    }
    Some(backend)
}

/// Fills `hops` with the flow's table slot's previous owners that may hold
/// the connection now sent to `owner`: lost the slot within the stickiness
/// window, alive, understand hop lists, reachable in the same tunnel family.
/// False if there is none (the packet then goes without a hop list).
#[inline(never)]
fn previous_owners(flow: &Flow, vip: &VipValue, owner: u32, config: &EdgeConfig, hops: &mut Hops) -> bool {
    let hash = flow_hash(flow, vip);
    let table_size = unsafe { core::ptr::read_volatile(&TABLE_SIZE) };
    if table_size == 0 {
        return false;
    }
    let (table_id, _) = table_for(flow, vip);
    let Some(history) = OWNER_HISTORY.get(history_index(table_id, table_size, slot_hash(flow, vip, hash))) else {
        return false;
    };
    let Some(current) = BACKENDS.get(owner) else {
        return false;
    };
    let v4 = addr_as_v4(&current.addr).is_some();
    let now = (unsafe { bpf_ktime_get_boot_ns() } / 1_000_000_000) as u32;
    let candidates = history.candidates(owner, now, config.stickiness_window);
    *hops =
        Hops { count: 0, source_port: gue_source_port(hash), dest_port: config.gue_port, addrs: [[0; 16]; MAX_HOPS] };
    let out = hops;
    for id in candidates {
        let Some(backend) = BACKENDS.get(id) else { continue };
        let usable = backend.flags & (BACKEND_SECOND_CHANCE | BACKEND_DEAD) == BACKEND_SECOND_CHANCE;
        if id != 0 && usable && addr_as_v4(&backend.addr).is_some() == v4 && (out.count as usize) < MAX_HOPS {
            out.addrs[out.count as usize] = backend.addr;
            out.count += 1;
        }
    }
    out.count > 0
}
