//! The `live` object: XDP programs for the live forwarding-rate benchmark
//! (bench/src/live.rs).
//!
//! - `live_gen`: run through BPF_PROG_TEST_RUN with live frames, it gives
//!   every frame its own flow (source address and UDP source port from a
//!   per-CPU sequence number) and redirects it into the generator's veth.
//! - `live_reflect`: swaps MACs and sends the frame back (`XDP_TX`): the
//!   ceiling of the path.
//! - `live_sink`: counts what arrives and drops it.
//! - `live_pass`: `XDP_PASS`, so a veth takes redirected frames into its
//!   stack (a veth peer needs an XDP program to receive them).

#![cfg_attr(target_arch = "bpf", no_std, no_main)]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_redirect,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use gslb_common::testing::{LiveGenConfig, LIVE_SINK_ALL, LIVE_SINK_IPIP, LIVE_SINK_SLOTS, LIVE_SINK_TO_BACKENDS};
use gslb_ebpf::headers::{read_ipv4, write_ipv4};
use gslb_ebpf_testing::{generator, reflect};

gslb_ebpf::xdp_object!();

#[map]
static LIVE_GEN_CONFIG: Array<LiveGenConfig> = Array::with_max_entries(1, 0);
/// Frames generated, per CPU (slot 0).
#[map]
static LIVE_GEN_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
/// Sink counters, slots `LIVE_SINK_*`.
#[map]
static LIVE_SINK: PerCpuArray<u64> = PerCpuArray::with_max_entries(LIVE_SINK_SLOTS, 0);

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
    let Some((config, seq)) = generator(&LIVE_GEN_CONFIG, &LIVE_GEN_SEQ) else {
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
    // The template's IPv4 header, but the source address: its first two
    // bytes, then the flow's high bits.
    let mut header = read_ipv4(ip);
    let host = (flow >> 12) + 1;
    header.src[2] = (host >> 8) as u8;
    header.src[3] = host as u8;
    write_ipv4(ip, &header);
    // UDP source port; the UDP checksum stays 0 (none).
    let udp = unsafe { &mut *((start + ETH_LEN + IPV4_LEN) as *mut [u8; UDP_LEN]) };
    let port = (10_000 + (flow & 0xfff)) as u16;
    udp[0] = (port >> 8) as u8;
    udp[1] = port as u8;
    unsafe { bpf_redirect(config.ifindex, 0) as u32 }
}

#[xdp]
pub fn live_reflect(ctx: XdpContext) -> u32 {
    reflect(&ctx)
}

#[xdp]
pub fn live_sink(ctx: XdpContext) -> u32 {
    bump(&LIVE_SINK, LIVE_SINK_ALL);
    let start = ctx.data();
    if start + ETH_LEN + IPV4_LEN <= ctx.data_end() {
        let eth = unsafe { &*(start as *const [u8; ETH_LEN]) };
        let ip = unsafe { &*((start + ETH_LEN) as *const [u8; IPV4_LEN]) };
        if eth[12] == 0x08 && eth[13] == 0x00 {
            if ip[9] == 4 {
                bump(&LIVE_SINK, LIVE_SINK_IPIP);
            }
            if ip[16] == 198 && ip[17] == 51 && ip[18] == 100 {
                bump(&LIVE_SINK, LIVE_SINK_TO_BACKENDS);
            }
        }
    }
    xdp_action::XDP_DROP
}

#[xdp]
pub fn live_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}
