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
    steer::run(&ctx)
}

#[xdp]
pub fn decap(ctx: XdpContext) -> u32 {
    decap::run(&ctx)
}
