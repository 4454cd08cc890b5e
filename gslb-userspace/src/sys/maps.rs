//! Opening maps (from a loaded object or from pins), reading per-CPU
//! counters, and [`MapWrites`]: the writes that bring the data plane to a
//! plan (and the one read they need), as a trait so their order can be
//! tested without a kernel.

use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context, Result};
use aya::maps::{Map, MapData, MapError, PerCpuArray};
use aya::Ebpf;
use gslb_common::{ClientTable, VipValue};

use crate::config::Limits;
use crate::decide::plan::{EdgeSettings, VipMatch};

/// The writes a reconcile makes to `steer`'s maps, in the order it makes
/// them. `Steer` does them to the kernel; tests record them.
pub trait MapWrites {
    /// The sizes of the maps written to.
    fn limits(&self) -> Limits;
    /// Sets `EDGE_CONFIG`: the outer source addresses and second chance.
    fn set_edge_config(&mut self, edge: &EdgeSettings) -> Result<()>;
    /// Writes a backend with its `Backend::flags`: `BACKEND_DEAD` makes
    /// flows recorded on it re-select; `BACKEND_SECOND_CHANCE` says its
    /// `decap` understands hop lists.
    fn set_backend(&mut self, id: u32, address: IpAddr, flags: u32) -> Result<()>;
    /// Frees a backend id: flows still recorded on it re-select, as for a
    /// dead backend.
    fn clear_backend(&mut self, id: u32) -> Result<()>;
    /// Zeroes a backend's counters, so a reused id starts from nothing.
    fn reset_backend_stats(&mut self, id: u32) -> Result<()>;
    /// Zeroes a VIP's counters, so a reused slot starts from nothing.
    fn reset_vip_stats(&mut self, vip_id: u32) -> Result<()>;
    /// Writes every slot of one generation of a table. Only ever write the
    /// generation that is not live.
    fn write_table(&mut self, table_id: u32, generation: u32, table: &[u32]) -> Result<()>;
    /// Rewrites the slots of one generation of a table that differ from
    /// `table`, comparing with what that generation holds in the map; returns
    /// how many it rewrote. Only ever patch the idle generation.
    fn patch_table(&mut self, table_id: u32, generation: u32, table: &[u32]) -> Result<usize>;
    /// Before a table flips from its live generation to `table`: notes in
    /// `OWNER_HISTORY` that each slot whose owner changes lost it now;
    /// returns how many slots change owner.
    fn supersede(&mut self, table_id: u32, live_generation: u32, table: &[u32]) -> Result<usize>;
    /// Forgets a table id's slot histories, before it is used for a table
    /// that did not exist.
    fn clear_history(&mut self, table_id: u32) -> Result<()>;
    /// Whether one generation of a table holds exactly `table` (the one
    /// read a reconcile makes: the agent keeps no copy of the tables).
    fn table_holds(&mut self, table_id: u32, generation: u32, table: &[u32]) -> Result<bool>;
    /// Writes a VIP's entry: which table and generation it uses, its flags.
    fn set_vip_entry(&mut self, vip: VipMatch, value: VipValue) -> Result<()>;
    /// Stops steering a VIP: its packets go to the kernel from now on.
    fn remove_vip(&mut self, vip: VipMatch) -> Result<()>;
    /// Points clients of VIP `vip_id` within `prefix` at a table.
    fn set_client_prefix(&mut self, vip_id: u32, prefix: (IpAddr, u8), table: ClientTable) -> Result<()>;
    fn remove_client_prefix(&mut self, vip_id: u32, prefix: (IpAddr, u8)) -> Result<()>;
    /// Chooses which VIP's table fragments to `address`/`proto` use.
    fn set_fragment_vip(&mut self, address: IpAddr, proto: u8, port: u16) -> Result<()>;
    fn remove_fragment_vip(&mut self, address: IpAddr, proto: u8) -> Result<()>;
}

/// Where maps come from: a freshly loaded object, or pins on bpffs.
pub(super) enum MapSource<'a> {
    Loaded(&'a mut Ebpf),
    Pinned(&'a Path),
}

impl MapSource<'_> {
    pub(super) fn take<M: TryFrom<Map, Error = MapError>>(&mut self, name: &str) -> Result<M> {
        let map = match self {
            MapSource::Loaded(ebpf) => {
                ebpf.take_map(name).with_context(|| format!("map {name} missing from the object"))?
            }
            MapSource::Pinned(dir) => {
                let path = dir.join(name);
                let data =
                    MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))?;
                Map::from_map_data(data)
                    .with_context(|| format!("pinned map {} has an unknown type", path.display()))?
            }
        };
        M::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
    }
}

pub(super) fn take<M: TryFrom<Map, Error = MapError>>(ebpf: &mut Ebpf, name: &str) -> Result<M> {
    MapSource::Loaded(ebpf).take(name)
}

/// Adds up one entry of a per-CPU counter map over all CPUs.
pub(super) fn sum<T: aya::Pod + Default + std::ops::AddAssign>(map: &PerCpuArray<MapData, T>, index: u32) -> Result<T> {
    let mut total = T::default();
    for value in map.get(&index, 0)?.iter() {
        total += *value;
    }
    Ok(total)
}
