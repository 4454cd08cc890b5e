//! Bench-only XDP programs for the live forwarding-rate benchmark
//! (`bench/src/live.rs`). Nothing in the agent loads them.
//!
//! - `live_gen`: run through BPF_PROG_TEST_RUN with live frames, it gives
//!   every frame its own flow (source address and UDP source port from a
//!   per-CPU sequence number) and redirects it into the generator's veth.
//! - `live_reflect`: swaps MACs and sends the frame back (`XDP_TX`): the
//!   ceiling of the path.
//! - `live_sink`: counts what arrives and drops it.
//! - `live_pass`: `XDP_PASS`, so a veth takes redirected frames into its
//!   stack (a veth peer needs an XDP program to receive them).

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_redirect,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};

/// Generator settings, written by the bench before it runs `live_gen`.
#[repr(C)]
#[derive(Clone, Copy)]
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
    pub header: [u8; HEADER_SPACE],
}

const HEADER_SPACE: usize = 44;

#[map]
static LIVE_GEN_CONFIG: Array<LiveGenConfig> = Array::with_max_entries(1, 0);
/// Frames generated, per CPU (slot 0).
#[map]
static LIVE_GEN_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
/// Sink counters: 0 = frames, 1 = IPv4-in-IPv4 frames, 2 = IPv4 frames to
/// 198.51.100.0/24 (the bench's backends).
#[map]
static LIVE_SINK: PerCpuArray<u64> = PerCpuArray::with_max_entries(4, 0);

const ETH_LEN: usize = 14;
const IPV4_LEN: usize = 20;
const UDP_LEN: usize = 8;

#[inline(always)]
fn bump(map: &PerCpuArray<u64>, index: u32) {
    if let Some(c) = map.get_ptr_mut(index) {
        unsafe { *c += 1 };
    }
}

#[xdp]
pub fn live_gen(ctx: XdpContext) -> u32 {
    let Some(config) = LIVE_GEN_CONFIG.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let Some(seq) = LIVE_GEN_SEQ.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let n = unsafe {
        let n = *seq;
        *seq = n + 1;
        n
    };
    let start = ctx.data();
    if start + ETH_LEN + IPV4_LEN + UDP_LEN > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    let header = unsafe { &mut *(start as *mut [u8; ETH_LEN + IPV4_LEN + UDP_LEN]) };
    header.copy_from_slice(&config.header[..ETH_LEN + IPV4_LEN + UDP_LEN]);
    let flows = if config.flows == 0 { 1 } else { config.flows };
    let flow = (n % flows as u64) as u32;
    let ip = unsafe { &mut *((start + ETH_LEN) as *mut [u8; IPV4_LEN]) };
    // Source address: the template's first two bytes, then the flow's high bits.
    let host = (flow >> 12) + 1;
    ip[14] = (host >> 8) as u8;
    ip[15] = host as u8;
    crate::checksum::set_ipv4(ip);
    // UDP source port; the UDP checksum stays 0 (none).
    let udp = unsafe { &mut *((start + ETH_LEN + IPV4_LEN) as *mut [u8; UDP_LEN]) };
    let port = (10_000 + (flow & 0xfff)) as u16;
    udp[0] = (port >> 8) as u8;
    udp[1] = port as u8;
    unsafe { bpf_redirect(config.ifindex, 0) as u32 }
}

#[xdp]
pub fn live_reflect(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + ETH_LEN > ctx.data_end() {
        return xdp_action::XDP_DROP;
    }
    let eth = unsafe { &mut *(start as *mut [u8; 12]) };
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&eth[6..]);
    swapped[6..].copy_from_slice(&eth[..6]);
    *eth = swapped;
    xdp_action::XDP_TX
}

#[xdp]
pub fn live_sink(ctx: XdpContext) -> u32 {
    bump(&LIVE_SINK, 0);
    let start = ctx.data();
    if start + ETH_LEN + IPV4_LEN <= ctx.data_end() {
        let eth = unsafe { &*(start as *const [u8; ETH_LEN]) };
        let ip = unsafe { &*((start + ETH_LEN) as *const [u8; IPV4_LEN]) };
        if eth[12] == 0x08 && eth[13] == 0x00 {
            if ip[9] == 4 {
                bump(&LIVE_SINK, 1);
            }
            if ip[16] == 198 && ip[17] == 51 && ip[18] == 100 {
                bump(&LIVE_SINK, 2);
            }
        }
    }
    xdp_action::XDP_DROP
}

#[xdp]
pub fn live_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}
