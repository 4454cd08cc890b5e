//! What more than one test object does the same way.
#![no_std]

use aya_ebpf::{
    bindings::xdp_action,
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use gslb_ebpf::parse::ptr_at;

/// Swaps the Ethernet addresses and sends the frame back (`XDP_TX`); drops
/// a frame too short for them.
#[inline(always)]
pub fn reflect(ctx: &XdpContext) -> u32 {
    let Some(eth) = ptr_at::<[u8; 12]>(ctx, 0) else {
        return xdp_action::XDP_DROP;
    };
    let eth = unsafe { &mut *eth };
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&eth[6..]);
    macs[6..].copy_from_slice(&eth[..6]);
    *eth = macs;
    xdp_action::XDP_TX
}

/// A generator's state: its settings (slot 0 of `config`, written by the
/// driver) and its per-CPU frame count (slot 0 of `count`).
#[inline(always)]
pub fn generator<C>(config: &'static Array<C>, count: &'static PerCpuArray<u64>) -> Option<(&'static C, *mut u64)> {
    Some((config.get(0)?, count.get_ptr_mut(0)?))
}
