//! The agent's XDP object: `steer` (edge) and `decap` (backend), their maps,
//! and nothing else. The packet operations they share with the test
//! programs are in the library (`gslb_ebpf`, lib.rs).
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
// Map keys stay where they were built and are passed by reference, as the
// helpers take them: no copy for clippy's sake in the packet path.
#![allow(clippy::needless_borrows_for_generic_args)]

mod counters;
mod decap;
mod handoff;
mod maps;
mod pmtu;
mod steer;

use aya_ebpf::{macros::xdp, programs::XdpContext};

gslb_ebpf::xdp_object!();

#[xdp]
pub fn steer(ctx: XdpContext) -> u32 {
    // The `variant` build (upgrade tests only) is another program that
    // steers the same: it also reads one word it does not use.
    #[cfg(feature = "variant")]
    // SAFETY: a read of a static.
    unsafe {
        core::ptr::read_volatile(&VARIANT)
    };
    steer::run(&ctx)
}

#[cfg(feature = "variant")]
static VARIANT: u32 = 1;

#[xdp]
pub fn decap(ctx: XdpContext) -> u32 {
    decap::run(&ctx)
}
