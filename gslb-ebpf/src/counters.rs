//! The per-CPU counters: found once per packet, bumped in place, and the
//! verdicts that count themselves (`pass`, `drop`).

use aya_ebpf::{bindings::xdp_action, maps::PerCpuArray};
use gslb_common::GlobalStats;

use crate::maps::GLOBAL_STATS;

/// This CPU's entry `index` of a counter map.
#[inline(always)]
pub fn entry<T>(map: &PerCpuArray<T>, index: u32) -> Option<&'static mut T> {
    map.get_ptr_mut(index).map(|stats| unsafe { &mut *stats })
}

/// `steer`'s global counters on this CPU.
#[inline(always)]
pub fn global() -> Option<&'static mut GlobalStats> {
    entry(&GLOBAL_STATS, 0)
}

/// Hands the packet to the kernel, counted as passed.
#[inline(always)]
pub fn pass(stats: &mut GlobalStats) -> u32 {
    stats.passed += 1;
    xdp_action::XDP_PASS
}

/// Drops the packet, counted.
#[inline(always)]
pub fn drop(stats: &mut GlobalStats) -> u32 {
    stats.dropped += 1;
    xdp_action::XDP_DROP
}
