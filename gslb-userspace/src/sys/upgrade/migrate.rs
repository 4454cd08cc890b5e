//! Migrating a pinned map into another layout, entry by entry: each entry
//! of the old map is read, converted and written into a new map that this
//! build's program uses. Works on bytes (raw bpf(2) calls), so one copier
//! serves every map type; per-CPU values are converted CPU by CPU.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use anyhow::{bail, Context, Result};
use aya::maps::MapData;

/// Converts one entry from the old layout (key and value bytes; for
/// per-CPU maps, one CPU's value) to the new one; None drops the entry.
pub type Convert = fn(key: &[u8], value: &[u8]) -> Option<(Vec<u8>, Vec<u8>)>;

/// How to bring one map from layout version `from` to `to`.
#[derive(Debug)]
pub struct Migration {
    pub map: &'static str,
    pub from: u32,
    pub to: u32,
    /// The old layout's sizes, checked against the pinned map's.
    pub from_key_size: u32,
    pub from_value_size: u32,
    pub convert: Convert,
}

/// The migrations this build knows. None yet: no map has changed layout
/// since layout versions were recorded. A change to a map's layout bumps
/// its version in `gslb_common::LAYOUTS` and, where the old entries still
/// mean something in the new layout, adds its migration here.
pub const MIGRATIONS: &[Migration] = &[];

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const PER_CPU_TYPES: [u32; 3] = [5, 6, 10]; // PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH

/// `union bpf_attr` for the element commands.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn elem_call(command: libc::c_long, map: BorrowedFd<'_>, key: *const u8, value: *mut u8) -> io::Result<()> {
    let attr = ElemAttr { map_fd: map.as_raw_fd() as u32, _pad: 0, key: key as u64, value: value as u64, flags: 0 };
    // SAFETY: `attr` points at buffers the caller sized for this map's key
    // and value; they outlive the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, command, &attr as *const ElemAttr, size_of::<ElemAttr>()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A map's key size, value size (per CPU, padded to 8 bytes for per-CPU
/// maps) and how many values one lookup returns.
struct Layout {
    key_size: usize,
    value_size: usize,
    slot: usize,
    values: usize,
}

impl Layout {
    fn of(map: &MapData) -> Result<Layout> {
        let info = map.info().context("reading a map's info")?;
        let per_cpu = info.map_type().is_ok_and(|t| PER_CPU_TYPES.contains(&(t as u32)));
        let value_size = info.value_size() as usize;
        let values = if per_cpu { aya::util::nr_cpus().map_err(|(_, e)| e)? } else { 1 };
        let slot = if per_cpu { value_size.div_ceil(8) * 8 } else { value_size };
        Ok(Layout { key_size: info.key_size() as usize, value_size, slot, values })
    }

    fn buffer(&self) -> Vec<u8> {
        vec![0; self.slot * self.values]
    }
}

/// Copies every entry of `from` into `to`, converted. Returns how many
/// entries were written.
pub fn copy_entries(from: &MapData, to: &MapData, convert: Convert) -> Result<usize> {
    let (old, new) = (Layout::of(from)?, Layout::of(to)?);
    if old.values != new.values {
        bail!("cannot migrate between a per-CPU map and one that is not");
    }
    let (from_fd, to_fd) = (from.fd().as_fd(), to.fd().as_fd());
    let mut key: Option<Vec<u8>> = None;
    let mut next = vec![0; old.key_size];
    let mut written = 0;
    loop {
        let current = key.as_ref().map_or(std::ptr::null(), |k| k.as_ptr());
        match elem_call(BPF_MAP_GET_NEXT_KEY, from_fd, current, next.as_mut_ptr()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(written),
            Err(e) => return Err(e).context("walking the old map's keys"),
        }
        let mut value = old.buffer();
        match elem_call(BPF_MAP_LOOKUP_ELEM, from_fd, next.as_ptr(), value.as_mut_ptr()) {
            Ok(()) => {}
            // Deleted since the key was returned: nothing to copy.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                key = Some(next.clone());
                continue;
            }
            Err(e) => return Err(e).context("reading an entry of the old map"),
        }
        if let Some((new_key, new_value)) = convert_entry(&next, &value, &old, &new, convert)? {
            elem_call(BPF_MAP_UPDATE_ELEM, to_fd, new_key.as_ptr(), new_value.as_ptr() as *mut u8)
                .context("writing an entry of the new map")?;
            written += 1;
        }
        key = Some(next.clone());
    }
}

/// One entry in the new layout: `convert` applied to each CPU's value.
fn convert_entry(
    key: &[u8],
    value: &[u8],
    old: &Layout,
    new: &Layout,
    convert: Convert,
) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut new_key = None;
    let mut new_value = new.buffer();
    for cpu in 0..old.values {
        let start = cpu * old.slot;
        let Some((k, v)) = convert(key, &value[start..start + old.value_size]) else { return Ok(None) };
        if k.len() != new.key_size || v.len() != new.value_size {
            bail!(
                "the migration made a {}-byte key and {}-byte value; the new map takes {} and {}",
                k.len(),
                v.len(),
                new.key_size,
                new.value_size
            );
        }
        new_value[cpu * new.slot..cpu * new.slot + v.len()].copy_from_slice(&v);
        new_key = Some(k);
    }
    Ok(new_key.map(|k| (k, new_value)))
}
