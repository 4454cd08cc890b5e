//! Layouts and map names of the test and bench XDP programs
//! (`gslb-ebpf-testing`), shared with the drivers that load them
//! (`gslb-tests`, `gslb-bench`). Nothing in the agent uses them.

/// Names of the test programs' maps, so both sides spell them once.
pub mod names {
    /// `bench`: the frame `bench_restore` puts back ([`BenchFrame`](super::BenchFrame)).
    pub const BENCH_FRAME: &str = "BENCH_FRAME";
    /// `bench`: repetitions that varied the flow key (`u64`, one slot).
    pub const BENCH_COUNTER: &str = "BENCH_COUNTER";
    /// `bench`: slot 0 holds the program `bench_restore` tail-calls.
    pub const BENCH_PROGS: &str = "BENCH_PROGS";
    /// `live`: the generator's settings ([`LiveGenConfig`](super::LiveGenConfig)).
    pub const LIVE_GEN_CONFIG: &str = "LIVE_GEN_CONFIG";
    /// `live`: frames generated, per CPU (`u64`, slot 0).
    pub const LIVE_GEN_SEQ: &str = "LIVE_GEN_SEQ";
    /// `live`: the sink's per-CPU counters (`u64`, slots `LIVE_SINK_*`).
    pub const LIVE_SINK: &str = "LIVE_SINK";
    /// `flood`: the generator's settings ([`FloodConfig`](super::FloodConfig)).
    pub const FLOOD_CONFIG: &str = "FLOOD_CONFIG";
    /// `flood`: frames written and redirected, per CPU (`u64`, slot 0).
    pub const FLOOD_SENT: &str = "FLOOD_SENT";
}

/// Longest frame `bench_restore` restores.
pub const BENCH_MAX_FRAME: usize = 128;
/// `BenchFrame::words` entries.
pub const BENCH_FRAME_WORDS: usize = BENCH_MAX_FRAME / 8;

/// The input frame of `bench_restore`, written by the bench.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BenchFrame {
    /// Frame length in bytes: 16 to `BENCH_MAX_FRAME`, a multiple of 8.
    pub len: u32,
    /// Offset of a 4-byte big-endian field set to `vary_base + counter`
    /// each repetition (a fresh flow key per packet); 0 = leave alone.
    pub vary_offset: u32,
    pub vary_base: u32,
    pub _pad: u32,
    /// The frame bytes, in memory order.
    pub words: [u64; BENCH_FRAME_WORDS],
}

/// Bytes of `LiveGenConfig::header`: Ethernet, IPv4 and UDP headers (42),
/// padded.
pub const LIVE_HEADER_SPACE: usize = 44;

/// Settings of `live_gen`, written by the bench before it runs it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LiveGenConfig {
    /// Where generated frames go.
    pub ifindex: u32,
    /// Distinct flows cycled through (at least 1): the low 12 bits pick the
    /// source port, the rest the source address.
    pub flows: u32,
    /// Ethernet, IPv4 and UDP headers of every frame. Live frames keep what
    /// the receivers wrote into them when their pages are recycled (`steer`
    /// encapsulates in place, the kernel decrements the TTL), so each frame
    /// gets its headers rewritten in full.
    pub header: [u8; LIVE_HEADER_SPACE],
}

/// `LIVE_SINK` slots: every frame.
pub const LIVE_SINK_ALL: u32 = 0;
/// `LIVE_SINK` slots: IPv4-in-IPv4 frames.
pub const LIVE_SINK_IPIP: u32 = 1;
/// `LIVE_SINK` slots: IPv4 frames to 198.51.100.0/24 (the bench's backends).
pub const LIVE_SINK_TO_BACKENDS: u32 = 2;
/// `LIVE_SINK` entries.
pub const LIVE_SINK_SLOTS: u32 = 4;

/// A whole SYN as `flood_syn` sends it: Ethernet, IPv4 and TCP headers, no
/// payload, no options.
pub const SYN_LEN: usize = 14 + 20 + 20;

/// Settings of `flood_syn`, written by the driver before a run.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FloodConfig {
    /// Where generated frames go.
    pub ifindex: u32,
    /// Source addresses come from this /10 (host order; low 22 bits ignored).
    pub src_net: u32,
    /// Consecutive frames per flow (at least 1): 2 sends every SYN twice,
    /// as a retransmitting client would.
    pub per_flow: u32,
    /// The SYN every frame starts from (`SYN_LEN` bytes, padded): MACs,
    /// destination address and port, TTL, flags. Source address and port,
    /// sequence number, IP id and both checksums are filled in per frame.
    pub header: [u8; 56],
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: `#[repr(C)]` plain integers and bytes, no padding.
    unsafe impl aya::Pod for BenchFrame {}
    unsafe impl aya::Pod for LiveGenConfig {}
    unsafe impl aya::Pod for FloodConfig {}
}
