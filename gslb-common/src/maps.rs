//! Map names, keys and values shared by `steer`, `decap` and the agent.
//!
//! All types are `#[repr(C)]` with explicit padding so that the kernel and
//! userspace see the same bytes.

use crate::Addr16;

/// Names of the maps in the eBPF object, so both sides spell them once.
pub mod names {
    pub const VIPS: &str = "VIPS";
    pub const VIP_FILTER: &str = "VIP_FILTER";
    pub const FRAGMENT_VIPS: &str = "FRAGMENT_VIPS";
    pub const BACKENDS: &str = "BACKENDS";
    pub const NEXT_HOPS: &str = "NEXT_HOPS";
    pub const MAGLEV: &str = "MAGLEV";
    pub const FLOWS: &str = "FLOWS";
    pub const EDGE_CONFIG: &str = "EDGE_CONFIG";
    pub const GLOBAL_STATS: &str = "GLOBAL_STATS";
    pub const VIP_STATS: &str = "VIP_STATS";
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    pub const STEER_PREFIXES: &str = "STEER_PREFIXES";
    pub const DECAP_ADDRS: &str = "DECAP_ADDRS";
    pub const DECAP_STATS: &str = "DECAP_STATS";
    pub const OWNER_HISTORY: &str = "OWNER_HISTORY";
    pub const DECAP_EDGES: &str = "DECAP_EDGES";
    pub const DECAP_PEERS: &str = "DECAP_PEERS";
    /// What the pinned state is: the program's version and each map's
    /// layout version ([`MetaKey`], [`MetaValue`]). Its own layout never
    /// changes, so any later gslb can read it.
    pub const GSLB_META: &str = "GSLB_META";
    /// Global (`.rodata`): the UDP port `decap` takes hop-list packets on.
    pub const DECAP_GUE_PORT: &str = "DECAP_GUE_PORT";
    /// Global (`.rodata`) holding the Maglev table size, set at load time.
    pub const TABLE_SIZE: &str = "TABLE_SIZE";
    /// Global (`.rodata`) holding the number of `FLOWS` buckets.
    pub const FLOW_BUCKETS: &str = "FLOW_BUCKETS";
    /// Global (`.rodata`): the stage after which `steer` stops (benchmarks
    /// only, see `stage`).
    pub const STOP_AFTER: &str = "STOP_AFTER";
}

/// Layout versions of `steer`'s pinned maps. A map's version goes up when
/// its key or value layout, or the meaning of its bytes, changes; an agent
/// meeting another version migrates the map entry by entry (if the agent
/// knows how, `gslb-userspace`'s `sys::upgrade`) or refuses to upgrade.
/// Pinned state from before versions were recorded is version 1.
pub const LAYOUTS: [(&str, u32); 13] = [
    (names::VIPS, 1),
    (names::VIP_FILTER, 1),
    (names::FRAGMENT_VIPS, 1),
    (names::STEER_PREFIXES, 1),
    (names::BACKENDS, 1),
    (names::NEXT_HOPS, 1),
    (names::MAGLEV, 1),
    (names::OWNER_HISTORY, 1),
    (names::FLOWS, 1),
    (names::EDGE_CONFIG, 1),
    (names::GLOBAL_STATS, 1),
    (names::VIP_STATS, 1),
    (names::BACKEND_STATS, 1),
];

/// A `GSLB_META` key: `program` or `layout:<MAP>`, zero-padded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetaKey {
    pub name: [u8; 32],
}

/// A `GSLB_META` value: text (a version), zero-padded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetaValue {
    pub text: [u8; 64],
}

/// Entries `GSLB_META` has room for: the program and every map, with room
/// to grow.
pub const META_ENTRIES: u32 = 64;

/// `steer`'s stages, for the benchmark's cost breakdown: loaded with
/// `STOP_AFTER` set to one of these, `steer` drops every packet that gets
/// past that stage. The agent leaves it 0 (run everything); the verifier
/// then knows the value (`.rodata` is frozen) and removes the checks.
pub mod stage {
    /// Link, IP and TCP/UDP headers, and the VIP address filter.
    pub const PARSE: u32 = 1;
    /// The VIP lookup.
    pub const CLASSIFY: u32 = 2;
    /// The flow table lookup (a hit ends selection).
    pub const FLOW_LOOKUP: u32 = 3;
    /// On a miss: the Maglev table slot and its backend.
    pub const TABLE_LOOKUP: u32 = 4;
    /// On a miss: recording the flow.
    pub const RECORD: u32 = 5;
    /// The tunnel, the next hop, the outer headers written.
    pub const ENCAPSULATE: u32 = 6;
    /// Stages in order, with their names.
    pub const ALL: [(u32, &str); 6] = [
        (PARSE, "parse"),
        (CLASSIFY, "classify"),
        (FLOW_LOOKUP, "flow lookup"),
        (TABLE_LOOKUP, "table lookup"),
        (RECORD, "record flow"),
        (ENCAPSULATE, "encapsulate"),
    ];
}

/// IP protocol numbers the data plane cares about.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const IPIP: u8 = 4;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const IPV6: u8 = 41;
    pub const ICMPV6: u8 = 58;
}

/// The default Maglev table size: a prime, as Maglev requires.
pub const DEFAULT_TABLE_SIZE: u32 = 65_537;
/// Each VIP has two table generations; the agent fills the inactive one and
/// then flips `VipValue::generation`, so a table is never seen half-written.
pub const TABLE_GENERATIONS: u32 = 2;
/// `MAGLEV` is created with this flag (`BPF_F_MMAPABLE`): the agent writes
/// and reads tables through a shared memory mapping of the map instead of
/// one system call per slot.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;
/// Backend id 0 is never assigned: a table slot holding it means "no backend".
pub const NO_BACKEND: u32 = 0;
/// Outer TTL / hop limit of encapsulated packets.
pub const OUTER_TTL: u8 = 64;

/// Key of `VIPS`: destination address, port (host order; 0 = every port)
/// and IP protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    pub addr: Addr16,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// `VIP_FILTER`: one bit per hash of a VIP address, set for every address
/// that has a VIP, so `steer` hands other traffic to the kernel after one
/// array read instead of hash lookups (see `vip_filter_bit`).
pub const VIP_FILTER_BITS_LOG2: u32 = 16;
/// Words (u64) in `VIP_FILTER`.
pub const VIP_FILTER_WORDS: u32 = (1 << VIP_FILTER_BITS_LOG2) / 64;

/// `VipValue::flags`: hash on the source address alone.
pub const VIP_SOURCE_IP_AFFINITY: u32 = 1;

/// `VipValue::flags`: some clients of this VIP are steered by their prefix
/// (look the source address up in `STEER_PREFIXES` first).
pub const VIP_CLIENT_STEERING: u32 = 2;

/// Value of `VIPS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipValue {
    /// Index of this VIP's counters, and its key in `STEER_PREFIXES`.
    pub vip_id: u32,
    pub flags: u32,
    /// Which of the two generations of `table_id` is live (0 or 1).
    pub generation: u32,
    /// The VIP's default table in `MAGLEV`.
    pub table_id: u32,
}

/// Data of a `STEER_PREFIXES` key (an LPM trie; the map is named after the
/// config's `[[vip.steer]]` rules, and the name is pinned): the VIP id, big-endian,
/// then the client address, so a prefix length of
/// `CLIENT_PREFIX_VIP_BITS + n` matches one VIP's clients in a prefix of `n` bits
/// of the 16-byte address (IPv4 prefixes count the 96 mapped bits).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientPrefixKey {
    pub vip_id: [u8; 4],
    pub addr: Addr16,
}

/// Bits of `ClientPrefixKey` taken by the VIP id.
pub const CLIENT_PREFIX_VIP_BITS: u32 = 32;

/// Value of `STEER_PREFIXES`: the table for these clients, and which of its
/// generations is live.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientTable {
    pub table_id: u32,
    pub generation: u32,
}

/// Key of `FRAGMENT_VIPS`: fragments carry no ports, so they are matched by
/// address and protocol; the value is the port of the `VIPS` entry whose
/// table they use (chosen by the agent, deterministically).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragmentVipKey {
    pub addr: Addr16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// `Backend::flags`: the backend is gone; flows recorded on it re-select.
pub const BACKEND_DEAD: u32 = 1;

/// Value of `BACKENDS`, indexed by backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// Tunnel destination; IPv4-mapped for an IPv4 backend.
    pub addr: Addr16,
    pub flags: u32,
    pub _pad: u32,
}

/// `NextHop::flags`: the entry is resolved and current; without it `steer`
/// asks the kernel's routing table (`bpf_fib_lookup`) instead.
pub const NEXT_HOP_VALID: u16 = 1;

/// Value of `NEXT_HOPS`, indexed by backend id: where `steer` sends a tunnel
/// packet to that backend without a route lookup per packet. The agent
/// resolves it from the kernel's routes and neighbours and rewrites it when
/// they change.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    /// The egress interface.
    pub ifindex: u32,
    /// The largest IP packet (tunnel header included) the route takes.
    pub mtu: u16,
    pub flags: u16,
    /// The next hop's MAC (the backend's, or its gateway's).
    pub dst_mac: [u8; 6],
    /// The egress interface's MAC.
    pub src_mac: [u8; 6],
}

/// Input of the flow hash, which keys `FLOWS` (see `flows`). For fragments
/// and for VIPs with source-ip affinity the ports are zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: Addr16,
    pub dst: Addr16,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Value of `EDGE_CONFIG` (one entry): outer source addresses and second
/// chance.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EdgeConfig {
    pub tunnel_source_v4: [u8; 4],
    /// Non-zero when `tunnel_source_v6` is set.
    pub has_v6: u32,
    pub tunnel_source_v6: Addr16,
    /// Seconds a table slot's previous owner still gets mid-flow packets
    /// in a hop list (`second_chance`); 0 turns hop lists off.
    pub stickiness_window: u32,
    /// UDP destination port of hop-list (GUE) packets.
    pub gue_port: u16,
    pub _pad: u16,
}

/// Per-CPU global counters of `steer` (`GLOBAL_STATS`, one entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
// Counters a status document lacks (an older agent's) read as zero.
#[cfg_attr(feature = "user", serde(default))]
pub struct GlobalStats {
    pub received: u64,
    /// Every packet handed to the kernel (non-VIP, unparseable, no neighbour).
    pub passed: u64,
    /// Malformed or truncated headers.
    pub parse_failures: u64,
    /// TCP/UDP fragments seen (steered by addresses alone when to a VIP).
    pub fragments: u64,
    /// Route lookups for the tunnel destination that failed.
    pub fib_failures: u64,
    /// Encapsulated packets handed to the kernel to resolve the neighbour.
    pub neighbour_pending: u64,
    /// Sent to a backend with `XDP_TX` or `bpf_redirect`.
    pub forwarded: u64,
    /// VIP packets dropped: empty table slot, no tunnel source, no headroom,
    /// too big for the tunnel (see `too_big_dropped`).
    pub dropped: u64,
    /// ICMP errors about a VIP flow (sent to the VIP by a router on the way
    /// to the client) steered to that flow's backend.
    pub icmp_errors: u64,
    /// VIP packets too big for the tunnel, answered with ICMP "fragmentation
    /// needed" or ICMPv6 "packet too big".
    pub too_big_answered: u64,
    /// VIP packets too big for the tunnel that may not be answered: IPv4
    /// without DF, ICMP errors. Also counted in `dropped`.
    pub too_big_dropped: u64,
    /// Packets sent with a hop list (mid-flow packets whose table slot had
    /// recent previous owners; see `second_chance`).
    pub hop_list_packets: u64,
}

/// Per-CPU counters of one VIP (`VIP_STATS`, indexed by vip id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipStats {
    pub packets: u64,
    /// Inner IP bytes.
    pub bytes: u64,
    /// Flows recorded in the flow table.
    pub new_flows: u64,
    pub flow_hits: u64,
    /// Lookups that went to the Maglev table (new flows and re-selections).
    pub flow_misses: u64,
}

/// Per-CPU counters of one backend (`BACKEND_STATS`, indexed by backend id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    pub packets: u64,
    /// Inner IP bytes.
    pub bytes: u64,
    /// Of `packets`, sent with a hop list.
    pub hop_list_packets: u64,
}

/// Per-CPU counters of `decap` (`DECAP_STATS`, one entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecapStats {
    pub received: u64,
    pub decapsulated: u64,
    /// Tunnel packets for this host that could not be stripped.
    pub errors: u64,
    /// Hop-list packets delivered here: a SYN, a connection this host owns,
    /// a valid SYN cookie.
    pub hop_list_delivered: u64,
    /// Hop-list packets sent on to the next hop in their list.
    pub hop_list_forwarded: u64,
    /// Hop-list packets delivered here because no hop was left to try (or
    /// the next one could not be routed: see `hop_list_unroutable`).
    pub hop_list_last_resort: u64,
    /// Of `hop_list_last_resort`, those whose next hop had no route or
    /// neighbour.
    pub hop_list_unroutable: u64,
    /// Hop-list packets from a source that is not a configured edge: passed
    /// to the kernel untouched.
    pub hop_list_refused: u64,
    /// Hop-list packets with a malformed list, or naming a hop that is not
    /// a configured backend: dropped.
    pub hop_list_malformed: u64,
}

macro_rules! sum_fields {
    ($ty:ident { $($f:ident),* }) => {
        impl core::ops::AddAssign for $ty {
            fn add_assign(&mut self, o: Self) {
                $(self.$f += o.$f;)*
            }
        }
    };
}
sum_fields!(GlobalStats {
    received,
    passed,
    parse_failures,
    fragments,
    fib_failures,
    neighbour_pending,
    forwarded,
    dropped,
    icmp_errors,
    too_big_answered,
    too_big_dropped,
    hop_list_packets
});
sum_fields!(VipStats { packets, bytes, new_flows, flow_hits, flow_misses });
sum_fields!(BackendStats { packets, bytes, hop_list_packets });
sum_fields!(DecapStats {
    received,
    decapsulated,
    errors,
    hop_list_delivered,
    hop_list_forwarded,
    hop_list_last_resort,
    hop_list_unroutable,
    hop_list_refused,
    hop_list_malformed
});

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are `#[repr(C)]` plain data with explicit padding.
    unsafe impl aya::Pod for VipKey {}
    unsafe impl aya::Pod for VipValue {}
    unsafe impl aya::Pod for ClientPrefixKey {}
    unsafe impl aya::Pod for ClientTable {}
    unsafe impl aya::Pod for FragmentVipKey {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for NextHop {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for crate::FlowBucket {}
    unsafe impl aya::Pod for EdgeConfig {}
    unsafe impl aya::Pod for GlobalStats {}
    unsafe impl aya::Pod for VipStats {}
    unsafe impl aya::Pod for BackendStats {}
    unsafe impl aya::Pod for DecapStats {}
    unsafe impl aya::Pod for crate::SlotHistory {}
    unsafe impl aya::Pod for MetaKey {}
    unsafe impl aya::Pod for MetaValue {}
}
