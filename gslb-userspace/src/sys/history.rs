//! `OWNER_HISTORY`: each table slot's recent previous owners, for second
//! chance (`gslb_common::second_chance`). Indexed like one generation of a
//! table, `table_id * table_size + slot`.
//!
//! The agent writes it as it changes tables: before flipping a table to
//! its new generation, every slot whose owner changes notes the owner it
//! loses, with the time ([`boot_seconds`]); a table id taken afresh starts
//! with no history. The map is `BPF_F_MMAPABLE` and written through a
//! mapping of one table's entries at a time, like `MAGLEV` (`tables`). An
//! entry is two pairs of words, not written atomically: a packet racing the
//! write may see a half-updated entry, at worst a stale candidate, which
//! the backends' `decap` hands on or delivers like any other.

use std::os::fd::AsFd;

use anyhow::{ensure, Context, Result};
use aya::maps::{Array, IterableMap, MapData};
use gslb_common::{SlotHistory, BPF_F_MMAPABLE};

use super::tables::Mapping;

/// Seconds since boot, counting time suspended (`CLOCK_BOOTTIME`): the
/// clock `steer` reads (`bpf_ktime_get_boot_ns`) to know how long ago a
/// slot changed owner. Pinned maps do not survive a reboot, so every time
/// in `OWNER_HISTORY` is on this boot's clock.
pub fn boot_seconds() -> u32 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given; BOOTTIME
    // exists on every kernel that runs XDP.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) };
    now.tv_sec as u32
}

/// Notes in one table's `history` that each slot whose owner in `live`
/// differs from `table` passed from the one to the other at `now`; returns
/// how many slots changed owner. Slots that keep theirs are not touched.
pub fn supersede(history: &mut [SlotHistory], live: &[u32], table: &[u32], now: u32) -> usize {
    let mut changed = 0;
    for ((entry, &old), &new) in history.iter_mut().zip(live).zip(table) {
        if old != new {
            entry.superseded(old, new, now);
            changed += 1;
        }
    }
    changed
}

/// The `OWNER_HISTORY` map.
pub(super) struct OwnerHistory {
    map: Array<MapData, SlotHistory>,
    table_size: u32,
    max_tables: u32,
}

impl OwnerHistory {
    /// Wraps the map of `max_tables` tables of `table_size` slots.
    pub(super) fn new(map: Array<MapData, SlotHistory>, table_size: u32, max_tables: u32) -> Result<OwnerHistory> {
        let flags = map.map().info().context("reading OWNER_HISTORY's flags")?.map_flags();
        ensure!(flags & BPF_F_MMAPABLE != 0, "OWNER_HISTORY is not memory-mappable");
        let want = max_tables as u64 * table_size as u64;
        ensure!(map.len() as u64 == want, "OWNER_HISTORY has {} entries, want {want}", map.len());
        Ok(OwnerHistory { map, table_size, max_tables })
    }

    pub(super) fn map(&self) -> &MapData {
        self.map.map()
    }

    /// One table's entries, mapped.
    fn mapping(&self, table_id: u32, writable: bool) -> Result<Mapping<SlotHistory>> {
        ensure!(table_id < self.max_tables, "table id {table_id} out of range");
        let fd = self.map.map().fd().as_fd();
        Mapping::new(fd, table_id * self.table_size, self.table_size, writable, "OWNER_HISTORY")
    }

    /// One slot's history.
    pub(super) fn get(&self, table_id: u32, slot: u32) -> Result<SlotHistory> {
        ensure!(slot < self.table_size, "slot {slot} out of range");
        Ok(self.mapping(table_id, false)?.values()[slot as usize])
    }

    /// Forgets a table's history: its id now names a table that is new.
    pub(super) fn clear(&mut self, table_id: u32) -> Result<()> {
        self.mapping(table_id, true)?.values_mut().fill(SlotHistory::default());
        Ok(())
    }

    /// [`supersede`] on one table's entries, now.
    pub(super) fn supersede(&mut self, table_id: u32, live: &[u32], table: &[u32]) -> Result<usize> {
        ensure!(live.len() == table.len(), "tables of {} and {} slots", live.len(), table.len());
        Ok(supersede(self.mapping(table_id, true)?.values_mut(), live, table, boot_seconds()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_slots_that_change_owner_gain_history() {
        let mut history = vec![SlotHistory::default(); 4];
        assert_eq!(supersede(&mut history, &[1, 1, 2, 2], &[1, 3, 2, 0], 50), 2);
        assert_eq!(history[0], SlotHistory::default());
        assert_eq!(history[1], SlotHistory { owners: [1, 0], superseded: [50, 0] });
        assert_eq!(history[2], SlotHistory::default());
        assert_eq!(history[3], SlotHistory { owners: [2, 0], superseded: [50, 0] });
        let before = history.clone();
        assert_eq!(supersede(&mut history, &[1, 3, 2, 0], &[1, 3, 2, 0], 60), 0);
        assert_eq!(history, before, "the same table again changes nothing");
    }

    #[test]
    fn the_boot_clock_moves_forward() {
        let a = boot_seconds();
        assert!(a > 0 && boot_seconds() >= a);
    }
}
