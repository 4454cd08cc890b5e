//! Every map of the agent's object, and the `TABLE_SIZE` global. Their
//! names are `gslb_common::names`: the agent pins them on bpffs and a
//! restarted agent adopts them by name.
//!
//! Sizes below are placeholders: the agent sets every size when it loads
//! the object (see gslb-userspace's loader).

use aya_ebpf::{
    bindings::bpf_fib_lookup as FibParams,
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray},
};
use gslb_common::{
    Addr16, Backend, BackendStats, ClientPrefixKey, ClientTable, DecapStats, EdgeConfig, FlowBucket, FragmentVipKey,
    GlobalStats, MetaKey, MetaValue, NextHop, SlotHistory, VipKey, VipStats, VipValue, DEFAULT_GUE_PORT,
    DEFAULT_TABLE_SIZE, META_ENTRIES, VIP_FILTER_WORDS,
};
use gslb_ebpf::encap::Hops;

const BPF_F_NO_PREALLOC: u32 = 1;

/// VIP lookup: (address, port, protocol) to the VIP's id, flags, generation.
#[map]
pub static VIPS: HashMap<VipKey, VipValue> = HashMap::with_max_entries(64, 0);
/// A bit per hash of every VIP address (`gslb_common::vip_filter_bit`).
#[map]
pub static VIP_FILTER: Array<u64> = Array::with_max_entries(VIP_FILTER_WORDS, 0);
/// Fragments carry no port: (address, protocol) to the port of the VIP to use.
#[map]
pub static FRAGMENT_VIPS: HashMap<FragmentVipKey, u32> = HashMap::with_max_entries(64, 0);
/// Backends by id (id 0 is never used).
#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(1024, 0);
/// Next hops by backend id, resolved by the agent (see `NextHop`); in
/// `decap`, by peer index (see `DECAP_PEERS`).
#[map]
pub static NEXT_HOPS: Array<NextHop> = Array::with_max_entries(1024, 0);
/// Client-prefix steering: (VIP, client prefix) to the table those clients
/// use; longest prefix wins. LPM tries must not be preallocated.
#[map]
pub static STEER_PREFIXES: LpmTrie<ClientPrefixKey, ClientTable> = LpmTrie::with_max_entries(64, BPF_F_NO_PREALLOC);
/// Maglev tables: per table id two generations of `TABLE_SIZE` backend ids.
/// Memory-mappable, so the agent writes whole tables without a system call
/// per slot.
#[map]
pub static MAGLEV: Array<u32> = Array::with_max_entries(1, gslb_common::BPF_F_MMAPABLE);
/// Each table slot's recent previous owners (`gslb_common::second_chance`),
/// indexed like one generation of a table: `table_id * TABLE_SIZE + slot`.
/// Memory-mappable: the agent updates it as it writes tables.
#[map]
pub static OWNER_HISTORY: Array<SlotHistory> = Array::with_max_entries(1, gslb_common::BPF_F_MMAPABLE);
/// The flow table: buckets of flows by flow hash, shared by all CPUs so a
/// flow stays put even if its packets arrive on different queues (see
/// `gslb_common::flows`).
#[map]
pub static FLOWS: Array<FlowBucket> = Array::with_max_entries(1, 0);
/// Outer source addresses (one entry).
#[map]
pub static EDGE_CONFIG: Array<EdgeConfig> = Array::with_max_entries(1, 0);
/// Per-CPU scratch space for `steer`'s route lookup: the BPF stack (512
/// bytes for the whole call chain) is too small to hold it as well.
#[map]
pub static FIB_SCRATCH: PerCpuArray<FibParams> = PerCpuArray::with_max_entries(1, 0);
/// Per-CPU scratch space for a mid-flow packet's hop list, for the same
/// reason (the verifier of 6.1 counts the chain's frames more coarsely).
#[map]
pub static HOPS_SCRATCH: PerCpuArray<Hops> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub static GLOBAL_STATS: PerCpuArray<GlobalStats> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub static VIP_STATS: PerCpuArray<VipStats> = PerCpuArray::with_max_entries(64, 0);
#[map]
pub static BACKEND_STATS: PerCpuArray<BackendStats> = PerCpuArray::with_max_entries(1024, 0);

/// Tunnel addresses this backend decapsulates for.
#[map]
pub static DECAP_ADDRS: HashMap<Addr16, u32> = HashMap::with_max_entries(16, 0);
/// Edge tunnel sources `decap` takes hop-list packets from.
#[map]
pub static DECAP_EDGES: HashMap<Addr16, u32> = HashMap::with_max_entries(64, 0);
/// Backends `decap` may send a hop-list packet on to, with their index in
/// `NEXT_HOPS` (which `gslb decap` keeps resolved for them).
#[map]
pub static DECAP_PEERS: HashMap<Addr16, u32> = HashMap::with_max_entries(1024, 0);
/// What the pinned state is (`gslb_common::names::GSLB_META`): written and
/// read by the agent only.
#[map]
pub static GSLB_META: HashMap<MetaKey, MetaValue> = HashMap::with_max_entries(META_ENTRIES, 0);
#[map]
pub static DECAP_STATS: PerCpuArray<DecapStats> = PerCpuArray::with_max_entries(1, 0);

/// Slots per Maglev table; a prime, set at load time.
#[unsafe(no_mangle)]
pub static TABLE_SIZE: u32 = DEFAULT_TABLE_SIZE;
/// Benchmarks only: the stage after which `steer` stops
/// (`gslb_common::stage`); 0 in the agent.
#[unsafe(no_mangle)]
pub static STOP_AFTER: u32 = 0;
/// The UDP port `decap` takes hop-list packets on, set at load time.
#[unsafe(no_mangle)]
pub static DECAP_GUE_PORT: u16 = DEFAULT_GUE_PORT;
/// Buckets in `FLOWS`, set at load time.
#[unsafe(no_mangle)]
pub static FLOW_BUCKETS: u32 = 1;
