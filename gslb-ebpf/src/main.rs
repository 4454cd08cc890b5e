//! gslb XDP programs: `steer` (edge) and `decap` (backend).
#![no_std]
#![no_main]

mod bench;
mod bench_live;
mod checksum;
mod decap;
mod flood;
mod icmp;
mod parse;
mod steer;

use aya_ebpf::{
    bindings::bpf_fib_lookup as FibParams,
    macros::{map, xdp},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use gslb_common::{
    Addr16, Backend, BackendStats, DecapStats, EdgeConfig, FlowKey, FlowValue, FragmentVipKey, GlobalStats,
    SteerPrefix, SteerTable, VipKey, VipStats, VipValue, DEFAULT_TABLE_SIZE,
};

const BPF_F_NO_PREALLOC: u32 = 1;

// Sizes below are placeholders: the agent sets every size when it loads the
// object (see gslb-userspace's loader).

/// VIP lookup: (address, port, protocol) to the VIP's id, flags, generation.
#[map]
static VIPS: HashMap<VipKey, VipValue> = HashMap::with_max_entries(64, 0);
/// Fragments carry no port: (address, protocol) to the port of the VIP to use.
#[map]
static FRAGMENT_VIPS: HashMap<FragmentVipKey, u32> = HashMap::with_max_entries(64, 0);
/// Backends by id (id 0 is never used).
#[map]
static BACKENDS: Array<Backend> = Array::with_max_entries(1024, 0);
/// Client-prefix steering: (VIP, client prefix) to the table those clients
/// use; longest prefix wins. LPM tries must not be preallocated.
#[map]
static STEER_PREFIXES: LpmTrie<SteerPrefix, SteerTable> = LpmTrie::with_max_entries(64, BPF_F_NO_PREALLOC);
/// Maglev tables: per table id two generations of `TABLE_SIZE` backend ids.
#[map]
static MAGLEV: Array<u32> = Array::with_max_entries(1, 0);
/// The flow table: one LRU shared by all CPUs, so a flow stays put even if
/// its packets arrive on different queues.
#[map]
static FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(1024, 0);
/// Outer source addresses (one entry).
#[map]
static EDGE_CONFIG: Array<EdgeConfig> = Array::with_max_entries(1, 0);
/// Per-CPU scratch space for `steer`'s route lookup: the BPF stack (512
/// bytes for the whole call chain) is too small to hold it as well.
#[map]
static FIB_SCRATCH: PerCpuArray<FibParams> = PerCpuArray::with_max_entries(1, 0);
#[map]
static GLOBAL_STATS: PerCpuArray<GlobalStats> = PerCpuArray::with_max_entries(1, 0);
#[map]
static VIP_STATS: PerCpuArray<VipStats> = PerCpuArray::with_max_entries(64, 0);
#[map]
static BACKEND_STATS: PerCpuArray<BackendStats> = PerCpuArray::with_max_entries(1024, 0);

/// Tunnel addresses this backend decapsulates for.
#[map]
static DECAP_ADDRS: HashMap<Addr16, u32> = HashMap::with_max_entries(16, 0);
#[map]
static DECAP_STATS: PerCpuArray<DecapStats> = PerCpuArray::with_max_entries(1, 0);

/// Slots per Maglev table; a prime, set at load time.
#[unsafe(no_mangle)]
static TABLE_SIZE: u32 = DEFAULT_TABLE_SIZE;

#[xdp]
pub fn steer(ctx: XdpContext) -> u32 {
    steer::run(&ctx)
}

#[xdp]
pub fn decap(ctx: XdpContext) -> u32 {
    decap::run(&ctx)
}

/// Bumps per-CPU counters in place.
#[inline(always)]
fn count<T>(map: &PerCpuArray<T>, index: u32, f: impl FnOnce(&mut T)) {
    if let Some(stats) = map.get_ptr_mut(index) {
        f(unsafe { &mut *stats });
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
