//! The per-CPU counters: bumping them, and the verdicts that count
//! themselves (`pass`, `drop`).

use aya_ebpf::{bindings::xdp_action, maps::PerCpuArray};
use gslb_common::{DecapStats, GlobalStats};

use crate::maps::{DECAP_STATS, GLOBAL_STATS};

/// Bumps per-CPU counters in place.
#[inline(always)]
pub fn count<T>(map: &PerCpuArray<T>, index: u32, f: impl FnOnce(&mut T)) {
    if let Some(stats) = map.get_ptr_mut(index) {
        f(unsafe { &mut *stats });
    }
}

/// `steer`'s global counters.
#[inline(always)]
pub fn global(f: impl FnOnce(&mut GlobalStats)) {
    count(&GLOBAL_STATS, 0, f);
}

/// `decap`'s counters.
#[inline(always)]
pub fn decap(f: impl FnOnce(&mut DecapStats)) {
    count(&DECAP_STATS, 0, f);
}

/// Hands the packet to the kernel, counted as passed (and by `f`).
#[inline(always)]
pub fn pass(f: impl FnOnce(&mut GlobalStats)) -> u32 {
    global(|s| {
        s.passed += 1;
        f(s)
    });
    xdp_action::XDP_PASS
}

/// Drops the packet, counted.
#[inline(always)]
pub fn drop() -> u32 {
    global(|s| s.dropped += 1);
    xdp_action::XDP_DROP
}
