//! Loading the XDP object and writing its maps: the one place userspace
//! touches the data plane.

use std::net::IpAddr;

use anyhow::{bail, ensure, Context, Result};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::Xdp,
    Ebpf, EbpfLoader,
};
use gslb_common::{
    addr_from_ip, maglev::is_prime, names, Addr16, Backend, BackendStats, DecapStats, EdgeConfig, FlowKey, FlowValue,
    FragmentVipKey, GlobalStats, VipKey, VipStats, VipValue, BACKEND_DEAD, DEFAULT_TABLE_SIZE, TABLE_GENERATIONS,
    VIP_SOURCE_IP_AFFINITY,
};

/// The compiled XDP object (both programs), built by `build.rs`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gslb-ebpf"));

/// Map sizes, chosen when the programs are loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_vips: u32,
    /// Backend ids run from 1 to `max_backends - 1` (0 means none).
    pub max_backends: u32,
    pub max_flows: u32,
    /// Slots per Maglev table; must be prime.
    pub table_size: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_vips: 64, max_backends: 4096, max_flows: 1 << 20, table_size: DEFAULT_TABLE_SIZE }
    }
}

impl Limits {
    fn validate(&self) -> Result<()> {
        ensure!(
            self.max_vips > 0 && self.max_backends > 1 && self.max_flows > 0,
            "map sizes must be positive: {self:?}"
        );
        ensure!(is_prime(self.table_size), "table size {} is not prime", self.table_size);
        ensure!(
            self.table_size >= self.max_backends,
            "table size {} is smaller than max backends {}",
            self.table_size,
            self.max_backends
        );
        let slots = self.max_vips as u64 * TABLE_GENERATIONS as u64 * self.table_size as u64;
        ensure!(
            slots <= u32::MAX as u64,
            "{} VIPs x {} slots do not fit one table map",
            self.max_vips,
            self.table_size
        );
        Ok(())
    }
}

fn take<M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(ebpf: &mut Ebpf, name: &str) -> Result<M> {
    let map = ebpf.take_map(name).with_context(|| format!("map {name} missing from the object"))?;
    M::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

/// The `steer` program and its maps.
pub struct Steer {
    pub ebpf: Ebpf,
    pub limits: Limits,
    vips: HashMap<MapData, VipKey, VipValue>,
    fragment_vips: HashMap<MapData, FragmentVipKey, u32>,
    backends: Array<MapData, Backend>,
    maglev: Array<MapData, u32>,
    flows: HashMap<MapData, FlowKey, FlowValue>,
    edge_config: Array<MapData, EdgeConfig>,
    global_stats: PerCpuArray<MapData, GlobalStats>,
    vip_stats: PerCpuArray<MapData, VipStats>,
    backend_stats: PerCpuArray<MapData, BackendStats>,
}

/// A VIP as the data plane matches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VipMatch {
    pub address: IpAddr,
    /// 0 = every port.
    pub port: u16,
    /// IP protocol number (TCP or UDP).
    pub proto: u8,
}

impl VipMatch {
    pub fn key(&self) -> VipKey {
        VipKey { addr: addr_from_ip(self.address), port: self.port, proto: self.proto, _pad: 0 }
    }
}

impl Steer {
    /// Loads the object with the given map sizes; the verifier checks
    /// `steer` here.
    pub fn load(limits: Limits) -> Result<Steer> {
        limits.validate()?;
        let maglev_slots = limits.max_vips * TABLE_GENERATIONS * limits.table_size;
        let mut ebpf = EbpfLoader::new()
            .override_global(names::TABLE_SIZE, &limits.table_size, true)
            .map_max_entries(names::VIPS, limits.max_vips)
            .map_max_entries(names::FRAGMENT_VIPS, limits.max_vips)
            .map_max_entries(names::BACKENDS, limits.max_backends)
            .map_max_entries(names::BACKEND_STATS, limits.max_backends)
            .map_max_entries(names::VIP_STATS, limits.max_vips)
            .map_max_entries(names::MAGLEV, maglev_slots)
            .map_max_entries(names::FLOWS, limits.max_flows)
            .load(OBJECT)
            .context("loading the gslb eBPF object")?;
        let program: &mut Xdp = ebpf.program_mut("steer").context("no steer program")?.try_into()?;
        program.load().context("the verifier refused steer")?;
        Ok(Steer {
            vips: take(&mut ebpf, names::VIPS)?,
            fragment_vips: take(&mut ebpf, names::FRAGMENT_VIPS)?,
            backends: take(&mut ebpf, names::BACKENDS)?,
            maglev: take(&mut ebpf, names::MAGLEV)?,
            flows: take(&mut ebpf, names::FLOWS)?,
            edge_config: take(&mut ebpf, names::EDGE_CONFIG)?,
            global_stats: take(&mut ebpf, names::GLOBAL_STATS)?,
            vip_stats: take(&mut ebpf, names::VIP_STATS)?,
            backend_stats: take(&mut ebpf, names::BACKEND_STATS)?,
            ebpf,
            limits,
        })
    }

    pub fn program(&mut self) -> &mut Xdp {
        self.ebpf.program_mut("steer").and_then(|p| p.try_into().ok()).expect("steer was loaded")
    }

    /// Sets the outer source addresses.
    pub fn set_tunnel_sources(&mut self, v4: std::net::Ipv4Addr, v6: Option<std::net::Ipv6Addr>) -> Result<()> {
        let config = EdgeConfig {
            tunnel_source_v4: v4.octets(),
            has_v6: v6.is_some() as u32,
            tunnel_source_v6: v6.map(|a| a.octets()).unwrap_or_default(),
        };
        self.edge_config.set(0, config, 0).context("writing EDGE_CONFIG")
    }

    /// Writes a backend; `dead` makes flows recorded on it re-select.
    pub fn set_backend(&mut self, id: u32, address: IpAddr, dead: bool) -> Result<()> {
        ensure!(id != 0 && id < self.limits.max_backends, "backend id {id} out of range");
        let backend = Backend { addr: addr_from_ip(address), flags: if dead { BACKEND_DEAD } else { 0 }, _pad: 0 };
        self.backends.set(id, backend, 0).with_context(|| format!("writing backend {id}"))
    }

    /// Installs `table` as the VIP's live lookup table. The table is
    /// written into the VIP's inactive generation first, then one map
    /// update flips the VIP to it, so the program never reads a table that
    /// is half-written.
    pub fn set_vip(&mut self, vip: VipMatch, vip_id: u32, source_ip_affinity: bool, table: &[u32]) -> Result<()> {
        ensure!(vip_id < self.limits.max_vips, "vip id {vip_id} out of range");
        ensure!(
            table.len() == self.limits.table_size as usize,
            "table has {} slots, want {}",
            table.len(),
            self.limits.table_size
        );
        let key = vip.key();
        let generation = match self.vips.get(&key, 0) {
            Ok(current) => current.generation ^ 1,
            Err(_) => 0,
        };
        let base = (vip_id * TABLE_GENERATIONS + generation) * self.limits.table_size;
        for (slot, &backend) in table.iter().enumerate() {
            self.maglev.set(base + slot as u32, backend, 0).context("writing the Maglev table")?;
        }
        let flags = if source_ip_affinity { VIP_SOURCE_IP_AFFINITY } else { 0 };
        self.vips.insert(key, VipValue { vip_id, flags, generation, _pad: 0 }, 0).context("writing VIPS")
    }

    /// Chooses which VIP's table fragments to `address`/`proto` use.
    pub fn set_fragment_vip(&mut self, address: IpAddr, proto: u8, port: u16) -> Result<()> {
        let key = FragmentVipKey { addr: addr_from_ip(address), proto, _pad: [0; 3] };
        self.fragment_vips.insert(key, port as u32, 0).context("writing FRAGMENT_VIPS")
    }

    /// Reads back the live table of a VIP.
    pub fn vip_table(&self, vip: VipMatch) -> Result<Vec<u32>> {
        let Ok(value) = self.vips.get(&vip.key(), 0) else { bail!("no such VIP {vip:?}") };
        let base = (value.vip_id * TABLE_GENERATIONS + value.generation) * self.limits.table_size;
        (0..self.limits.table_size).map(|i| Ok(self.maglev.get(&(base + i), 0)?)).collect()
    }

    /// The backend recorded for a flow, if any.
    pub fn flow(&self, key: &FlowKey) -> Option<u32> {
        self.flows.get(key, 0).ok().map(|v| v.backend_id)
    }

    pub fn global_stats(&self) -> Result<GlobalStats> {
        sum(&self.global_stats, 0)
    }

    pub fn vip_stats(&self, vip_id: u32) -> Result<VipStats> {
        sum(&self.vip_stats, vip_id)
    }

    pub fn backend_stats(&self, id: u32) -> Result<BackendStats> {
        sum(&self.backend_stats, id)
    }
}

/// Adds up one entry of a per-CPU counter map over all CPUs.
fn sum<T: aya::Pod + Default + std::ops::AddAssign>(map: &PerCpuArray<MapData, T>, index: u32) -> Result<T> {
    let mut total = T::default();
    for value in map.get(&index, 0)?.iter() {
        total += *value;
    }
    Ok(total)
}

/// The `decap` program and its maps.
pub struct Decap {
    pub ebpf: Ebpf,
    addrs: HashMap<MapData, Addr16, u32>,
    stats: PerCpuArray<MapData, DecapStats>,
}

impl Decap {
    /// Loads the object with the steering maps shrunk to nothing: a backend
    /// needs only `decap`.
    pub fn load() -> Result<Decap> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::MAGLEV, 1)
            .map_max_entries(names::FLOWS, 1)
            .map_max_entries(names::BACKENDS, 1)
            .map_max_entries(names::BACKEND_STATS, 1)
            .load(OBJECT)
            .context("loading the gslb eBPF object")?;
        let program: &mut Xdp = ebpf.program_mut("decap").context("no decap program")?.try_into()?;
        program.load().context("the verifier refused decap")?;
        Ok(Decap { addrs: take(&mut ebpf, names::DECAP_ADDRS)?, stats: take(&mut ebpf, names::DECAP_STATS)?, ebpf })
    }

    pub fn program(&mut self) -> &mut Xdp {
        self.ebpf.program_mut("decap").and_then(|p| p.try_into().ok()).expect("decap was loaded")
    }

    /// Accepts tunnel packets addressed to `address`.
    pub fn add_address(&mut self, address: IpAddr) -> Result<()> {
        self.addrs.insert(addr_from_ip(address), 1, 0).context("writing DECAP_ADDRS")
    }

    pub fn stats(&self) -> Result<DecapStats> {
        sum(&self.stats, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked_before_loading() {
        assert!(Limits::default().validate().is_ok());
        let bad = [
            Limits { table_size: 65_536, ..Limits::default() },
            Limits { table_size: 13, max_backends: 14, ..Limits::default() },
            Limits { max_vips: 40_000, ..Limits::default() },
            Limits { max_flows: 0, ..Limits::default() },
        ];
        for limits in bad {
            assert!(limits.validate().is_err(), "accepted {limits:?}");
        }
    }
}
