//! `MAGLEV`, the Maglev tables: per table id two generations of
//! `table_size` backend ids (`gslb_common::maglev_index`).
//!
//! The map is created `BPF_F_MMAPABLE`, and the agent reads and writes a
//! table through a shared memory mapping of its pages: a whole table costs
//! two system calls (map, unmap) instead of one per slot. A map pinned by an
//! agent from before that flag cannot be mapped; it is written one system
//! call per slot, as that agent did, and the tables read from it are kept
//! in memory so that comparing and patching them does not read them again.
//!
//! Either way a table is never seen half-written: only the generation no
//! VIP points at is written, and packets move to it when the agent flips
//! `VipValue::generation` (or a client prefix's) with a map update, a
//! system call that comes after every write to the table.

use std::collections::{btree_map::Entry, BTreeMap};
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::{fence, Ordering};

use anyhow::{ensure, Context, Result};
use aya::maps::{Array, IterableMap, MapData};
use gslb_common::{BPF_F_MMAPABLE, TABLE_GENERATIONS};

/// One slot as the kernel lays out an array map's values: each value at a
/// stride of its size rounded up to 8 bytes, so a `u32` backend id and 4
/// bytes of padding.
type Slot = [u32; 2];

/// How the agent reaches the map's slots.
enum Access {
    /// Through a memory mapping of the table's pages.
    Mapped,
    /// One system call per slot (a pin from before `BPF_F_MMAPABLE`), with
    /// the generations read or written so far, by their first slot.
    PerSlot { known: BTreeMap<u32, Vec<u32>> },
}

/// The `MAGLEV` map and how to reach its slots.
pub(super) struct Tables {
    map: Array<MapData, u32>,
    table_size: u32,
    max_tables: u32,
    access: Access,
}

impl Tables {
    /// Wraps the map of tables of `table_size` slots; whether it can be
    /// mapped is read from the map's own flags.
    pub(super) fn new(map: Array<MapData, u32>, table_size: u32) -> Result<Tables> {
        ensure!(table_size > 0, "tables of zero slots");
        let flags = map.map().info().context("reading MAGLEV's flags")?.map_flags();
        let access =
            if flags & BPF_F_MMAPABLE != 0 { Access::Mapped } else { Access::PerSlot { known: BTreeMap::new() } };
        let max_tables = map.len() / (table_size * TABLE_GENERATIONS);
        Ok(Tables { map, table_size, max_tables, access })
    }

    pub(super) fn map(&self) -> &MapData {
        self.map.map()
    }

    /// Whether tables are read and written through a memory mapping (not
    /// one system call per slot).
    pub(super) fn mapped(&self) -> bool {
        matches!(self.access, Access::Mapped)
    }

    /// The first slot of a generation of a table.
    fn base(&self, table_id: u32, generation: u32) -> Result<u32> {
        ensure!(table_id < self.max_tables, "table id {table_id} out of range");
        Ok((table_id * TABLE_GENERATIONS + (generation & 1)) * self.table_size)
    }

    fn check_len(&self, table: &[u32]) -> Result<()> {
        ensure!(table.len() == self.table_size as usize, "table has {} slots, want {}", table.len(), self.table_size);
        Ok(())
    }

    fn mapping(&self, base: u32, writable: bool) -> Result<Mapping<Slot>> {
        Mapping::new(self.map.map().fd().as_fd(), base, self.table_size, writable, "the Maglev table")
    }

    /// Reads one generation of a table.
    pub(super) fn read(&self, table_id: u32, generation: u32) -> Result<Vec<u32>> {
        let base = self.base(table_id, generation)?;
        match &self.access {
            Access::Mapped => Ok(self.mapping(base, false)?.values().iter().map(|slot| slot[0]).collect()),
            Access::PerSlot { known } => match known.get(&base) {
                Some(table) => Ok(table.clone()),
                None => read_per_slot(&self.map, base, self.table_size),
            },
        }
    }

    /// Whether one generation of a table holds exactly `table`.
    pub(super) fn holds(&mut self, table_id: u32, generation: u32, table: &[u32]) -> Result<bool> {
        self.check_len(table)?;
        let base = self.base(table_id, generation)?;
        let Access::PerSlot { known } = &mut self.access else {
            let mapping = self.mapping(base, false)?;
            return Ok(mapping.values().iter().zip(table).all(|(slot, &id)| slot[0] == id));
        };
        let held = match known.entry(base) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => entry.insert(read_per_slot(&self.map, base, self.table_size)?),
        };
        Ok(held.as_slice() == table)
    }

    /// Writes every slot of one generation of a table. Only ever the
    /// generation no packet reads.
    pub(super) fn write(&mut self, table_id: u32, generation: u32, table: &[u32]) -> Result<()> {
        self.check_len(table)?;
        let base = self.base(table_id, generation)?;
        let Access::PerSlot { known } = &mut self.access else {
            let mut mapping = self.mapping(base, true)?;
            for (slot, &id) in mapping.values_mut().iter_mut().zip(table) {
                slot[0] = id;
            }
            return Ok(());
        };
        // Until every slot is written, what the generation holds is not
        // known (an error leaves it part written).
        known.remove(&base);
        for (i, &id) in table.iter().enumerate() {
            self.map.set(base + i as u32, id, 0).context("writing the Maglev table")?;
        }
        known.insert(base, table.to_vec());
        Ok(())
    }

    /// Rewrites the slots of one generation of a table that differ from
    /// `table`, comparing with what the map holds; returns how many. Only
    /// ever the generation no packet reads.
    pub(super) fn patch(&mut self, table_id: u32, generation: u32, table: &[u32]) -> Result<usize> {
        self.check_len(table)?;
        let base = self.base(table_id, generation)?;
        let mut written = 0;
        let Access::PerSlot { known } = &mut self.access else {
            let mut mapping = self.mapping(base, true)?;
            for (slot, &id) in mapping.values_mut().iter_mut().zip(table) {
                if slot[0] != id {
                    slot[0] = id;
                    written += 1;
                }
            }
            return Ok(written);
        };
        let held = match known.remove(&base) {
            Some(held) => held,
            None => read_per_slot(&self.map, base, self.table_size)?,
        };
        for (i, (&before, &after)) in held.iter().zip(table).enumerate() {
            if before != after {
                self.map.set(base + i as u32, after, 0).context("writing the Maglev table")?;
                written += 1;
            }
        }
        known.insert(base, table.to_vec());
        Ok(written)
    }
}

/// Reads one generation one system call per slot.
fn read_per_slot(map: &Array<MapData, u32>, base: u32, table_size: u32) -> Result<Vec<u32>> {
    (base..base + table_size).map(|i| map.get(&i, 0).context("reading the Maglev table")).collect()
}

/// The pages of a run of an array map's values (one generation of a
/// table, or one table's slot histories), mapped into this process while
/// they are read or written. Mapping the whole map once would be simpler,
/// but the kernel maps every page of it at once, and they would all count
/// as the agent's resident memory (512 MiB at 512 VIPs); a table's pages
/// are mapped in tens of microseconds.
///
/// `T` is one value as the kernel lays it out: its size a multiple of 8
/// (the kernel's stride for array values).
pub(super) struct Mapping<T> {
    address: *mut libc::c_void,
    len: usize,
    /// Where the first value is, from `address`, in values.
    first: usize,
    count: usize,
    _values: PhantomData<T>,
}

impl<T> Mapping<T> {
    /// Maps values `first..first + count` of the map `fd` (which must be
    /// `BPF_F_MMAPABLE`); `what` names them in errors.
    pub(super) fn new(fd: BorrowedFd<'_>, first: u32, count: u32, writable: bool, what: &str) -> Result<Mapping<T>> {
        let stride = std::mem::size_of::<T>();
        ensure!(stride.is_multiple_of(8), "{what}: values of {stride} bytes are not laid out back to back");
        let page = page_size();
        let start = first as usize * stride;
        let offset = start / page * page;
        let end = start + count as usize * stride;
        let len = end.div_ceil(page) * page - offset;
        let protection = if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
        // SAFETY: a fresh shared mapping of the map's pages, which the
        // kernel checks against the map's size; nothing else refers to it.
        let address = unsafe {
            libc::mmap(std::ptr::null_mut(), len, protection, libc::MAP_SHARED, fd.as_raw_fd(), offset as libc::off_t)
        };
        if address == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("mapping {what} into memory"));
        }
        Ok(Mapping { address, len, first: (start - offset) / stride, count: count as usize, _values: PhantomData })
    }

    pub(super) fn values(&self) -> &[T] {
        // SAFETY: the mapping covers these values (see `new`), aligned (a
        // page is, and the stride is a multiple of 8); the programs only
        // read them.
        unsafe { std::slice::from_raw_parts((self.address as *const T).add(self.first), self.count) }
    }

    pub(super) fn values_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `values`; only mappings made writable are written
        // (`write`, `patch` and the histories' writes ask for one).
        unsafe { std::slice::from_raw_parts_mut((self.address as *mut T).add(self.first), self.count) }
    }
}

impl<T> Drop for Mapping<T> {
    fn drop(&mut self) {
        // Whatever was written reaches memory before any later system call
        // (the VIPS update that flips to this generation) can be ordered
        // before it.
        fence(Ordering::SeqCst);
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.address, self.len) };
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as usize
    } else {
        4096
    }
}
