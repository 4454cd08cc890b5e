//! The `decap` program on a backend: loading it and telling it the
//! backend's tunnel addresses.

use std::net::IpAddr;

use anyhow::{Context, Result};
use aya::maps::{HashMap, MapData, PerCpuArray};
use aya::programs::Xdp;
use aya::{Ebpf, EbpfLoader};
use gslb_common::{addr_from_ip, names, Addr16, DecapStats};

use super::maps::{sum, take};
use super::OBJECT;

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
            .map_max_entries(names::NEXT_HOPS, 1)
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
