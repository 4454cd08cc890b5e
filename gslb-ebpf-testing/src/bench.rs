//! The `bench` object: XDP programs for `gslb-bench`'s per-packet
//! benchmark (bench/src/packet.rs).
//!
//! BPF_PROG_TEST_RUN with `repeat` does not restore the packet between
//! repetitions, so a program that adds or strips headers would see its own
//! output from the second repetition on. `bench_restore` puts the original
//! frame back (length and bytes, from `BENCH_FRAME`), optionally gives it a
//! fresh flow key, and tail-calls the program under test in `BENCH_PROGS`
//! slot 0. `bench_drop` in that slot measures the wrapper's own cost. The
//! program under test may come from another object (`steer` and `decap`
//! from the agent's): a program array takes any XDP program.

#![cfg_attr(target_arch = "bpf", no_std, no_main)]

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, xdp_action},
    helpers::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::{Array, ProgramArray},
    programs::XdpContext,
    EbpfContext,
};
use gslb_common::{
    addr_from_v4,
    testing::{BenchFrame, BENCH_FRAME_WORDS as WORDS, BENCH_MAX_FRAME as MAX_FRAME},
};
use gslb_ebpf::{
    parse::ptr_at,
    route::{self, Outbound},
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

gslb_ebpf::xdp_object!();

#[map]
static BENCH_FRAME: Array<BenchFrame> = Array::with_max_entries(1, 0);
/// Repetitions that varied the flow key (shared by all CPUs: one test run
/// at a time, so a plain increment is enough).
#[map]
static BENCH_COUNTER: Array<u64> = Array::with_max_entries(1, 0);
/// Slot 0: the program under test.
#[map]
static BENCH_PROGS: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Restores the input frame, then runs the program in `BENCH_PROGS` slot 0.
#[xdp]
pub fn bench_restore(ctx: XdpContext) -> u32 {
    if restore(&ctx).is_none() {
        return xdp_action::XDP_ABORTED;
    }
    unsafe { BENCH_PROGS.tail_call(&ctx, 0) };
    // Empty slot.
    xdp_action::XDP_ABORTED
}

#[inline(always)]
fn restore(ctx: &XdpContext) -> Option<()> {
    let frame = BENCH_FRAME.get(0)?;
    let want = frame.len as usize;
    if !(14..=MAX_FRAME).contains(&want) || !want.is_multiple_of(8) {
        return None;
    }
    // Back to the original length, moving the start: the programs under
    // test add or strip headers at the front.
    let have = ctx.data_end() - ctx.data();
    let delta = have as i64 - want as i64;
    if delta != 0 && unsafe { bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, delta as i32) } != 0 {
        return None;
    }
    // Whole words only (userspace pads frames to a multiple of 8 bytes):
    // constant offsets the verifier can check.
    let words = want / 8;
    for i in 0..WORDS {
        if i >= words {
            break;
        }
        let p = ptr_at::<u64>(ctx, i * 8)?;
        // The start is back where the kernel put it, 8-byte aligned.
        unsafe { *p = frame.words[i] };
    }
    let vary = frame.vary_offset as usize;
    if vary != 0 {
        if vary + 4 > MAX_FRAME {
            return None;
        }
        let counter = BENCH_COUNTER.get_ptr_mut(0)?;
        let n = unsafe { *counter };
        unsafe { *counter = n + 1 };
        let p = ptr_at::<[u8; 4]>(ctx, vary)?;
        unsafe { *p = frame.vary_base.wrapping_add(n as u32).to_be_bytes() };
    }
    Some(())
}

/// The floor: the kernel's test loop and nothing else.
#[xdp]
pub fn bench_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Tail-call target that does nothing: the wrapper's own cost.
#[xdp]
pub fn bench_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// Swaps the Ethernet addresses and sends the frame back.
#[xdp]
pub fn bench_reflect(ctx: XdpContext) -> u32 {
    gslb_ebpf_testing::reflect(&ctx)
}

/// `steer`'s forward step alone (route lookup, MAC rewrite, XDP_TX) on an
/// IPv4 packet to a backend: how much of `steer`'s cost is the route
/// lookup it makes for every packet.
#[xdp]
pub fn bench_forward(ctx: XdpContext) -> u32 {
    let Some(ip) = ptr_at::<Ipv4Hdr>(&ctx, EthHdr::LEN) else {
        return xdp_action::XDP_ABORTED;
    };
    let ip = unsafe { &*ip };
    let packet = Outbound {
        v6: false,
        src: addr_from_v4(ip.src_addr),
        dst: addr_from_v4(ip.dst_addr),
        len: ip.tot_len() as usize,
        gue: false,
    };
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    let route = route::lookup(&ctx, &packet, &mut fib);
    route::forward(&ctx, &fib, route).unwrap_or(xdp_action::XDP_DROP)
}
