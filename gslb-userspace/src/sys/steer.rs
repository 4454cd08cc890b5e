//! The `steer` program and its maps: loading or adopting them, pinning
//! them, and every read and write the agent makes to them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use aya::{
    maps::{
        lpm_trie::{Key as LpmKey, LpmTrie},
        Array, HashMap, IterableMap, MapData, PerCpuArray, PerCpuValues,
    },
    programs::Xdp,
    util::nr_cpus,
    Ebpf, EbpfLoader,
};
use gslb_common::{
    addr_from_ip, addr_to_ip, names, Backend, BackendStats, ClientPrefixKey, ClientTable, EdgeConfig, FlowBucket,
    FlowKey, FragmentVipKey, GlobalStats, MetaKey, MetaValue, NextHop, SlotHistory, VipKey, VipStats, VipValue,
    BACKEND_DEAD, CLIENT_PREFIX_VIP_BITS, LAYOUTS, TABLE_GENERATIONS, VIP_SOURCE_IP_AFFINITY,
};
use gslb_common::{flow_bucket, flow_buckets, flow_capacity, flow_hash64, vip_filter_bit, FLOW_MID_FLOW, FLOW_WAYS};

use super::history::OwnerHistory;
use super::maps::{sum, MapSource, MapWrites};
use super::next_hops::NextHopMap;
use super::tables::Tables;
use super::upgrade::{self, migrate, PinnedMeta, Staging};
use super::OBJECT;
use crate::config::Limits;
use crate::decide::plan::{EdgeSettings, VipMatch};
use tracing::info;

/// The pinned program, under a pin directory.
const PROGRAM_PIN: &str = "steer";
/// The directory of pinned maps, under a pin directory.
const MAPS_DIR: &str = "maps";

/// The `steer` program: loaded from the object, or adopted from its pin.
enum SteerProgram {
    Loaded(Box<Ebpf>),
    Pinned(Box<Xdp>),
}

/// The `.rodata` values `steer` is loaded with.
struct Globals {
    table_size: u32,
    flow_buckets: u32,
}

impl Globals {
    fn of(limits: Limits) -> Globals {
        Globals { table_size: limits.table_size, flow_buckets: flow_buckets(limits.max_flows) }
    }
}

/// The `steer` program and its maps.
pub struct Steer {
    program: SteerProgram,
    pub limits: Limits,
    vips: HashMap<MapData, VipKey, VipValue>,
    vip_filter: Array<MapData, u64>,
    fragment_vips: HashMap<MapData, FragmentVipKey, u32>,
    client_prefixes: LpmTrie<MapData, ClientPrefixKey, ClientTable>,
    backends: Array<MapData, Backend>,
    next_hops: NextHopMap,
    maglev: Tables,
    history: OwnerHistory,
    flows: Array<MapData, FlowBucket>,
    edge_config: Array<MapData, EdgeConfig>,
    global_stats: PerCpuArray<MapData, GlobalStats>,
    vip_stats: PerCpuArray<MapData, VipStats>,
    backend_stats: PerCpuArray<MapData, BackendStats>,
    /// What the pinned state is (`sys::upgrade`).
    meta: HashMap<MapData, MetaKey, MetaValue>,
    /// The version this agent replaced in place, if it did.
    upgraded_from: Option<String>,
}

/// A client prefix as installed: VIP id, (network, length), its table.
pub type ClientPrefixEntry = (u32, (IpAddr, u8), ClientTable);

/// The LPM key of a client prefix of one VIP. IPv4 prefixes are stored
/// IPv4-mapped, so their length counts the 96 mapped bits too.
fn client_prefix_key(vip_id: u32, (address, len): (IpAddr, u8)) -> LpmKey<ClientPrefixKey> {
    let bits = if address.is_ipv4() { 96 + len as u32 } else { len as u32 };
    LpmKey::new(
        CLIENT_PREFIX_VIP_BITS + bits,
        ClientPrefixKey { vip_id: vip_id.to_be_bytes(), addr: addr_from_ip(address) },
    )
}

impl Steer {
    /// Loads the object with the given map sizes; the verifier checks
    /// `steer` here.
    pub fn load(limits: Limits) -> Result<Steer> {
        limits.validate()?;
        let limits = Limits { max_flows: flow_capacity(limits.max_flows), ..limits };
        let globals = Globals::of(limits);
        let ebpf = Self::loader(limits, &globals).load(OBJECT).context("loading the gslb eBPF object")?;
        Self::verified(ebpf, limits, false)
    }

    /// A loader for the object with the given map sizes and globals.
    fn loader(limits: Limits, globals: &Globals) -> EbpfLoader<'_> {
        let maglev_slots = limits.max_vips * TABLE_GENERATIONS * limits.table_size;
        let mut loader = EbpfLoader::new();
        loader
            .override_global(names::TABLE_SIZE, &globals.table_size, true)
            .override_global(names::FLOW_BUCKETS, &globals.flow_buckets, true)
            .map_max_entries(names::VIPS, limits.max_vips)
            .map_max_entries(names::FRAGMENT_VIPS, limits.max_vips)
            .map_max_entries(names::STEER_PREFIXES, limits.max_vips)
            .map_max_entries(names::BACKENDS, limits.max_backends)
            .map_max_entries(names::BACKEND_STATS, limits.max_backends)
            .map_max_entries(names::NEXT_HOPS, limits.max_backends)
            .map_max_entries(names::VIP_STATS, limits.max_vips)
            .map_max_entries(names::MAGLEV, maglev_slots)
            .map_max_entries(names::OWNER_HISTORY, limits.max_vips * limits.table_size)
            .map_max_entries(names::FLOWS, flow_buckets(limits.max_flows));
        loader
    }

    /// Runs the verifier over `steer` of a loaded object and takes its maps;
    /// `pinned_maps`: the object was loaded over pinned maps, which may hold
    /// backends already.
    fn verified(mut ebpf: Ebpf, limits: Limits, pinned_maps: bool) -> Result<Steer> {
        let program: &mut Xdp = ebpf.program_mut("steer").context("no steer program")?.try_into()?;
        program.load().map_err(|e| super::kernel::refused("steer", e))?;
        let mut source = MapSource::Loaded(&mut ebpf);
        let vip_filter = source.take(names::VIP_FILTER)?;
        let (vips, fragment_vips, client_prefixes, backends, maglev, flows) = (
            source.take(names::VIPS)?,
            source.take(names::FRAGMENT_VIPS)?,
            source.take(names::STEER_PREFIXES)?,
            source.take(names::BACKENDS)?,
            source.take(names::MAGLEV)?,
            source.take(names::FLOWS)?,
        );
        let maglev = Tables::new(maglev, limits.table_size)?;
        let history = OwnerHistory::new(source.take(names::OWNER_HISTORY)?, limits.table_size, limits.max_vips)?;
        let (next_hops, edge_config, global_stats, vip_stats, backend_stats, meta) = (
            NextHopMap::new(
                source.take(names::NEXT_HOPS)?,
                if pinned_maps { written_backends(&backends) } else { Default::default() },
            ),
            source.take(names::EDGE_CONFIG)?,
            source.take(names::GLOBAL_STATS)?,
            source.take(names::VIP_STATS)?,
            source.take(names::BACKEND_STATS)?,
            source.take(names::GSLB_META)?,
        );
        Ok(Steer {
            program: SteerProgram::Loaded(Box::new(ebpf)),
            limits,
            vips,
            vip_filter,
            fragment_vips,
            client_prefixes,
            backends,
            next_hops,
            maglev,
            history,
            flows,
            edge_config,
            global_stats,
            vip_stats,
            backend_stats,
            meta,
            upgraded_from: None,
        })
    }

    /// Whether the pinned state under `dir` was left by this very build.
    pub fn pinned_is_this_build(dir: &Path) -> Result<bool> {
        Ok(PinnedMeta::read(&dir.join(MAPS_DIR))?.version.as_deref() == Some(upgrade::this_version().as_str()))
    }

    /// Replaces the `steer` pinned under `dir` by this build's, keeping its
    /// maps: loads this program over the pinned maps (migrating those of an
    /// older layout into new ones), swaps it into every pinned XDP link
    /// atomically, then pins it. Refused, with nothing changed, when a map
    /// cannot be taken over (`sys::upgrade`).
    pub fn upgrade(dir: &Path) -> Result<Steer> {
        let maps_dir = dir.join(MAPS_DIR);
        let pinned = PinnedMeta::read(&maps_dir)?;
        let from = pinned.version.clone().unwrap_or_else(|| "a gslb from before versions were recorded".into());
        let to = upgrade::this_version();
        let plan = upgrade::plan_for(&maps_dir, &pinned)?;
        if !plan.refusals.is_empty() {
            bail!(
                "cannot replace the pinned steer ({from}) by this one ({to}) in place: {}; {}",
                plan.refusals.join("; "),
                upgrade::refusal_advice(dir)
            );
        }
        let staging = Staging::new(dir)?;
        let mut steer = match Self::load_over(&maps_dir, &plan, &staging) {
            Ok(steer) => steer,
            Err(error) => {
                staging.remove();
                return Err(error.context(upgrade::refusal_advice(dir)));
            }
        };
        let interfaces = upgrade::replace_links(steer.program(), dir)?;
        staging.install(&maps_dir)?;
        let path = dir.join(PROGRAM_PIN);
        std::fs::remove_file(&path).with_context(|| format!("removing the old program's pin {}", path.display()))?;
        steer.program().pin(&path).with_context(|| format!("pinning the program at {}", path.display()))?;
        upgrade::write_meta(&mut steer.meta)?;
        let migrated: Vec<&str> = plan.migrate.iter().map(|m| m.map).collect();
        info!(
            from,
            to,
            interfaces = interfaces.join(","),
            migrated = migrated.join(","),
            "replaced the pinned steer in place; every other map kept as it was"
        );
        steer.upgraded_from = Some(from);
        Ok(steer)
    }

    /// Loads this build's `steer` over the maps pinned in `maps_dir`, with
    /// new maps (pinned in `staging`) for those `plan` migrates, filled
    /// from the old ones. Nothing steers with it yet.
    fn load_over(maps_dir: &Path, plan: &upgrade::Plan, staging: &Staging) -> Result<Steer> {
        let limits = pinned_limits(maps_dir)?;
        let globals = Globals::of(limits);
        let mut loader = Self::loader(limits, &globals);
        let migrated = |name: &str| plan.migrate.iter().any(|m| m.map == name);
        // State pinned before versions were recorded has no GSLB_META: the
        // loader creates and pins one.
        let paths: Vec<(&str, PathBuf)> = LAYOUTS
            .iter()
            .map(|(name, _)| *name)
            .chain([names::GSLB_META])
            .map(|name| (name, if migrated(name) { staging.path(name) } else { maps_dir.join(name) }))
            .collect();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let ebpf = loader.load(OBJECT).context("loading this gslb's eBPF object over the pinned maps")?;
        let steer = Self::verified(ebpf, limits, true)?;
        for migration in &plan.migrate {
            let (old, new) = (maps_dir.join(migration.map), staging.path(migration.map));
            let open = |path: &Path| MapData::from_pin(path).with_context(|| format!("opening {}", path.display()));
            let entries = migrate::copy_entries(&open(&old)?, &open(&new)?, migration.convert).with_context(|| {
                format!("migrating {} from layout {} to {}", migration.map, migration.from, migration.to)
            })?;
            info!(map = migration.map, entries, from = migration.from, to = migration.to, "migrated a map");
        }
        Ok(steer)
    }

    /// Adopts the program and maps a previous agent pinned under `dir`:
    /// every recorded flow, table and counter carries on.
    pub fn open_pinned(dir: &Path) -> Result<Steer> {
        Self::adopt(dir).with_context(|| {
            format!(
                "cannot adopt the pinned state under {} (left by an agent whose maps differ from this one's?); \
                 to start afresh, dropping recorded flows, stop the agent and remove that directory (docs/operations.md, \
                 \"Starting afresh\")",
                dir.display()
            )
        })
    }

    fn adopt(dir: &Path) -> Result<Steer> {
        let path = dir.join(PROGRAM_PIN);
        let program = Xdp::from_pin(&path, aya_obj::programs::XdpAttachType::Interface)
            .with_context(|| format!("opening the pinned program {}", path.display()))?;
        let maps_dir = dir.join(MAPS_DIR);
        let mut source = MapSource::Pinned(&maps_dir);
        let (vips, maglev, flows, backends) = (
            source.take(names::VIPS)?,
            source.take(names::MAGLEV)?,
            source.take(names::FLOWS)?,
            source.take(names::BACKENDS)?,
        );
        let limits = limits_of(&vips, &maglev, &flows, &backends)?;
        // A MAGLEV pinned by an agent from before it was memory-mappable
        // still works, one system call per slot as then (see `Tables`).
        let maglev = Tables::new(maglev, limits.table_size)?;
        let history = OwnerHistory::new(source.take(names::OWNER_HISTORY)?, limits.table_size, limits.max_vips)?;
        let written = written_backends(&backends);
        Ok(Steer {
            program: SteerProgram::Pinned(Box::new(program)),
            limits,
            vips,
            vip_filter: source.take(names::VIP_FILTER)?,
            fragment_vips: source.take(names::FRAGMENT_VIPS)?,
            client_prefixes: source.take(names::STEER_PREFIXES)?,
            backends,
            next_hops: NextHopMap::new(source.take(names::NEXT_HOPS)?, written),
            maglev,
            history,
            flows,
            edge_config: source.take(names::EDGE_CONFIG)?,
            global_stats: source.take(names::GLOBAL_STATS)?,
            vip_stats: source.take(names::VIP_STATS)?,
            backend_stats: source.take(names::BACKEND_STATS)?,
            meta: source.take(names::GSLB_META)?,
            upgraded_from: None,
        })
    }

    /// Whether `dir` holds a pinned `steer` left by an earlier agent.
    pub fn is_pinned(dir: &Path) -> bool {
        dir.join(PROGRAM_PIN).exists()
    }

    /// Pins the program and every map under `dir` (on bpffs), so they
    /// outlive this process and a later agent can adopt them. The program
    /// is pinned last: its pin marks the state as complete.
    pub fn pin(&mut self, dir: &Path) -> Result<()> {
        let maps_dir = dir.join(MAPS_DIR);
        std::fs::create_dir_all(&maps_dir).with_context(|| format!("creating {}", maps_dir.display()))?;
        upgrade::write_meta(&mut self.meta)?;
        let maps: [(&str, &MapData); 13] = [
            (names::VIPS, self.vips.map()),
            (names::VIP_FILTER, self.vip_filter.map()),
            (names::FRAGMENT_VIPS, self.fragment_vips.map()),
            (names::STEER_PREFIXES, self.client_prefixes.map()),
            (names::BACKENDS, self.backends.map()),
            (names::MAGLEV, self.maglev.map()),
            (names::OWNER_HISTORY, self.history.map()),
            (names::FLOWS, self.flows.map()),
            (names::EDGE_CONFIG, self.edge_config.map()),
            (names::GLOBAL_STATS, self.global_stats.map()),
            (names::VIP_STATS, self.vip_stats.map()),
            (names::BACKEND_STATS, self.backend_stats.map()),
            (names::GSLB_META, self.meta.map()),
        ];
        for (name, map) in maps {
            let path = maps_dir.join(name);
            if path.exists() {
                std::fs::remove_file(&path).with_context(|| format!("removing a stale pin {}", path.display()))?;
            }
            map.pin(&path).with_context(|| format!("pinning map {}", path.display()))?;
        }
        let path = maps_dir.join(names::NEXT_HOPS);
        if path.exists() {
            std::fs::remove_file(&path).with_context(|| format!("removing a stale pin {}", path.display()))?;
        }
        self.next_hops.pin(&path)?;
        let path = dir.join(PROGRAM_PIN);
        self.program().pin(&path).with_context(|| format!("pinning the program at {}", path.display()))
    }

    pub fn program(&mut self) -> &mut Xdp {
        match &mut self.program {
            SteerProgram::Loaded(ebpf) => {
                ebpf.program_mut("steer").and_then(|p| p.try_into().ok()).expect("steer was loaded")
            }
            SteerProgram::Pinned(program) => program,
        }
    }

    /// Installs `table` as the VIP's live lookup table, in table slot
    /// `vip_id`: written into the idle generation first, then one map update
    /// flips the VIP to it, so the program never reads a half-written table.
    /// Slots that change owner remember the owner they lose, as a reconcile
    /// does; a new VIP's table starts with no history.
    pub fn set_vip(&mut self, vip: VipMatch, vip_id: u32, source_ip_affinity: bool, table: &[u32]) -> Result<()> {
        let generation = match self.vips.get(&vip.key(), 0) {
            Ok(current) => {
                self.supersede(current.table_id, current.generation, table)?;
                current.generation ^ 1
            }
            Err(_) => {
                self.clear_history(vip_id)?;
                0
            }
        };
        self.write_table(vip_id, generation, table)?;
        let flags = if source_ip_affinity { VIP_SOURCE_IP_AFFINITY } else { 0 };
        self.set_vip_entry(vip, VipValue { vip_id, flags, generation, table_id: vip_id })
    }

    /// Reads one generation of a table.
    pub fn read_table(&self, table_id: u32, generation: u32) -> Result<Vec<u32>> {
        self.maglev.read(table_id, generation)
    }

    /// What `OWNER_HISTORY` remembers of one table slot's previous owners.
    pub fn slot_history(&self, table_id: u32, slot: u32) -> Result<SlotHistory> {
        self.history.get(table_id, slot)
    }

    /// The version of the program steering (`sys::upgrade`), as recorded
    /// in `GSLB_META`.
    pub fn program_version(&self) -> Option<String> {
        upgrade::recorded_version(&self.meta)
    }

    /// When the kernel loaded the program steering.
    pub fn program_loaded_at(&mut self) -> Option<std::time::SystemTime> {
        self.program().info().ok()?.loaded_at()
    }

    /// The version this agent replaced in place at its start, if it did.
    pub fn upgraded_from(&self) -> Option<&str> {
        self.upgraded_from.as_deref()
    }

    /// Whether `MAGLEV` is written through a memory mapping; false for a
    /// map pinned by an agent from before that, written one system call
    /// per slot.
    pub fn tables_mapped(&self) -> bool {
        self.maglev.mapped()
    }

    /// Every client prefix installed: (VIP id, prefix, table).
    pub fn client_prefixes(&self) -> Result<Vec<ClientPrefixEntry>> {
        let mut entries = Vec::new();
        for entry in self.client_prefixes.iter() {
            let (key, table) = entry.context("reading STEER_PREFIXES")?;
            let data = key.data();
            let address = addr_to_ip(&data.addr);
            let bits = key.prefix_len() - CLIENT_PREFIX_VIP_BITS;
            let len = if address.is_ipv4() { bits.saturating_sub(96) } else { bits };
            entries.push((u32::from_be_bytes(data.vip_id), (address, len as u8), table));
        }
        Ok(entries)
    }

    /// The VIP entries installed now: each VIP's slot, table, generation
    /// and flags.
    pub fn vip_entries(&self) -> Result<Vec<(VipMatch, VipValue)>> {
        let mut vips = Vec::new();
        for entry in self.vips.iter() {
            let (key, value) = entry.context("reading VIPS")?;
            vips.push((VipMatch::from_key(&key), value));
        }
        Ok(vips)
    }

    /// Which port's VIP fragments to each (address, protocol) use.
    pub fn fragment_vips(&self) -> Result<Vec<(IpAddr, u8, u16)>> {
        let mut entries = Vec::new();
        for entry in self.fragment_vips.iter() {
            let (key, port) = entry.context("reading FRAGMENT_VIPS")?;
            entries.push((addr_to_ip(&key.addr), key.proto, port as u16));
        }
        Ok(entries)
    }

    /// Backends in use: id, address and `Backend::flags` (`BACKEND_DEAD`,
    /// `BACKEND_SECOND_CHANCE`). Unused ids hold the unspecified address.
    pub fn installed_backends(&self) -> Result<Vec<(u32, IpAddr, u32)>> {
        let mut backends = Vec::new();
        for id in 1..self.limits.max_backends {
            let backend = self.backends.get(&id, 0).with_context(|| format!("reading backend {id}"))?;
            if backend.addr != [0; 16] {
                backends.push((id, addr_to_ip(&backend.addr), backend.flags));
            }
        }
        Ok(backends)
    }

    /// What `EDGE_CONFIG` holds: the outer source addresses and second
    /// chance in force.
    pub fn edge_settings(&self) -> Result<EdgeSettings> {
        let config = self.edge_config.get(&0, 0).context("reading EDGE_CONFIG")?;
        let v6 = (config.has_v6 != 0).then(|| Ipv6Addr::from(config.tunnel_source_v6));
        Ok(EdgeSettings {
            tunnel_source_v4: Ipv4Addr::from(config.tunnel_source_v4),
            tunnel_source_v6: v6,
            stickiness_window_secs: config.stickiness_window,
            gue_port: config.gue_port,
        })
    }

    /// Reads back the live table of a VIP.
    pub fn vip_table(&self, vip: VipMatch) -> Result<Vec<u32>> {
        let Ok(value) = self.vips.get(&vip.key(), 0) else { bail!("no such VIP {vip:?}") };
        self.read_table(value.table_id, value.generation)
    }

    /// The backend recorded for a flow, if any (whether or not the edge
    /// first saw it mid-flow).
    pub fn flow(&self, key: &FlowKey) -> Option<u32> {
        let hash = flow_hash64(key);
        let bucket = self.flows.get(&flow_bucket(hash, self.flows.len()), 0).ok()?;
        bucket.find(hash).map(|(_, recorded)| recorded & !FLOW_MID_FLOW)
    }

    /// Where `steer` sends tunnel packets to backend `id` without a route
    /// lookup (`flags` without `NEXT_HOP_VALID`: it asks the kernel).
    pub fn next_hop(&self, id: u32) -> Result<NextHop> {
        self.next_hops.get(id)
    }

    /// Sets backend `id`'s next hop; `None` sends its packets through the
    /// kernel's routing table again.
    pub fn set_next_hop(&mut self, id: u32, hop: Option<NextHop>) -> Result<()> {
        ensure!(id != 0 && id < self.limits.max_backends, "backend id {id} out of range");
        self.next_hops.set(id, hop.unwrap_or_default())
    }

    /// `NEXT_HOPS` for the next-hop watcher (`sys::next_hops`), which
    /// keeps it resolved.
    pub fn next_hops(&self) -> NextHopMap {
        self.next_hops.clone()
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

/// The backends already written (none in a fresh object): they keep their
/// next hops until the watcher has checked them.
fn written_backends(backends: &Array<MapData, Backend>) -> std::collections::BTreeMap<u32, IpAddr> {
    (1..backends.len())
        .filter_map(|id| backends.get(&id, 0).ok().filter(|b| b.addr != [0; 16]).map(|b| (id, addr_to_ip(&b.addr))))
        .collect()
}

/// The map sizes of the state pinned under `maps_dir`.
fn pinned_limits(maps_dir: &Path) -> Result<Limits> {
    let mut source = MapSource::Pinned(maps_dir);
    limits_of(
        &source.take(names::VIPS)?,
        &source.take(names::MAGLEV)?,
        &source.take(names::FLOWS)?,
        &source.take(names::BACKENDS)?,
    )
}

/// The map sizes the maps that have them were made with.
fn limits_of(
    vips: &HashMap<MapData, VipKey, VipValue>,
    maglev: &Array<MapData, u32>,
    flows: &Array<MapData, FlowBucket>,
    backends: &Array<MapData, Backend>,
) -> Result<Limits> {
    let max_vips = vips.map().info()?.max_entries();
    let limits = Limits {
        max_vips,
        max_backends: backends.len(),
        max_flows: flow_capacity(flows.len() * FLOW_WAYS as u32),
        table_size: maglev.len() / (max_vips * TABLE_GENERATIONS),
    };
    limits.validate().context("the pinned maps have inconsistent sizes")?;
    Ok(limits)
}

impl MapWrites for Steer {
    fn limits(&self) -> Limits {
        self.limits
    }

    fn set_edge_config(&mut self, edge: &EdgeSettings) -> Result<()> {
        let (v4, v6) = (edge.tunnel_source_v4, edge.tunnel_source_v6);
        let config = EdgeConfig {
            tunnel_source_v4: v4.octets(),
            has_v6: v6.is_some() as u32,
            tunnel_source_v6: v6.map(|a| a.octets()).unwrap_or_default(),
            stickiness_window: edge.stickiness_window_secs,
            gue_port: edge.gue_port,
            _pad: 0,
        };
        self.next_hops.set_sources(Some(v4), v6);
        self.edge_config.set(0, config, 0).context("writing EDGE_CONFIG")
    }

    fn set_backend(&mut self, id: u32, address: IpAddr, flags: u32) -> Result<()> {
        ensure!(id != 0 && id < self.limits.max_backends, "backend id {id} out of range");
        // A reused id loses its old address's next hop first.
        self.next_hops.claim(id, address)?;
        let backend = Backend { addr: addr_from_ip(address), flags, _pad: 0 };
        self.backends.set(id, backend, 0).with_context(|| format!("writing backend {id}"))
    }

    fn clear_backend(&mut self, id: u32) -> Result<()> {
        ensure!(id != 0 && id < self.limits.max_backends, "backend id {id} out of range");
        // The next hop first: an id without a backend never keeps one.
        self.next_hops.release(id)?;
        let backend = Backend { addr: [0; 16], flags: BACKEND_DEAD, _pad: 0 };
        self.backends.set(id, backend, 0).with_context(|| format!("clearing backend {id}"))
    }

    fn reset_backend_stats(&mut self, id: u32) -> Result<()> {
        let zero = PerCpuValues::try_from(vec![BackendStats::default(); nr_cpus().map_err(|(_, e)| e)?])?;
        self.backend_stats.set(id, zero, 0).context("resetting BACKEND_STATS")
    }

    fn reset_vip_stats(&mut self, vip_id: u32) -> Result<()> {
        let zero = PerCpuValues::try_from(vec![VipStats::default(); nr_cpus().map_err(|(_, e)| e)?])?;
        self.vip_stats.set(vip_id, zero, 0).context("resetting VIP_STATS")
    }

    fn write_table(&mut self, table_id: u32, generation: u32, table: &[u32]) -> Result<()> {
        self.maglev.write(table_id, generation, table)
    }

    fn patch_table(&mut self, table_id: u32, generation: u32, table: &[u32]) -> Result<usize> {
        self.maglev.patch(table_id, generation, table)
    }

    fn table_holds(&mut self, table_id: u32, generation: u32, table: &[u32]) -> Result<bool> {
        self.maglev.holds(table_id, generation, table)
    }

    fn supersede(&mut self, table_id: u32, live_generation: u32, table: &[u32]) -> Result<usize> {
        let live = self.maglev.read(table_id, live_generation)?;
        self.history.supersede(table_id, &live, table)
    }

    fn clear_history(&mut self, table_id: u32) -> Result<()> {
        self.history.clear(table_id)
    }

    fn set_vip_entry(&mut self, vip: VipMatch, value: VipValue) -> Result<()> {
        ensure!(value.vip_id < self.limits.max_vips, "vip id {} out of range", value.vip_id);
        // The filter lets the address's packets in before the entry exists.
        let key = vip.key();
        let (word, bit) = vip_filter_bit(&key.addr);
        let current = self.vip_filter.get(&word, 0).context("reading VIP_FILTER")?;
        if current & bit == 0 {
            self.vip_filter.set(word, current | bit, 0).context("writing VIP_FILTER")?;
        }
        self.vips.insert(key, value, 0).context("writing VIPS")
    }

    fn remove_vip(&mut self, vip: VipMatch) -> Result<()> {
        let key = vip.key();
        self.vips.remove(&key).with_context(|| format!("removing VIP {vip:?}"))?;
        // Clear the address's bit once no VIP left needs it (another port
        // of the address, or another address with the same bit).
        let slot = vip_filter_bit(&key.addr);
        for entry in self.vips.keys() {
            if vip_filter_bit(&entry.context("reading VIPS")?.addr) == slot {
                return Ok(());
            }
        }
        let (word, bit) = slot;
        let current = self.vip_filter.get(&word, 0).context("reading VIP_FILTER")?;
        self.vip_filter.set(word, current & !bit, 0).context("writing VIP_FILTER")
    }

    fn set_client_prefix(&mut self, vip_id: u32, prefix: (IpAddr, u8), table: ClientTable) -> Result<()> {
        self.client_prefixes.insert(&client_prefix_key(vip_id, prefix), table, 0).context("writing STEER_PREFIXES")
    }

    fn remove_client_prefix(&mut self, vip_id: u32, prefix: (IpAddr, u8)) -> Result<()> {
        self.client_prefixes.remove(&client_prefix_key(vip_id, prefix)).context("removing from STEER_PREFIXES")
    }

    fn set_fragment_vip(&mut self, address: IpAddr, proto: u8, port: u16) -> Result<()> {
        let key = FragmentVipKey { addr: addr_from_ip(address), proto, _pad: [0; 3] };
        self.fragment_vips.insert(key, port as u32, 0).context("writing FRAGMENT_VIPS")
    }

    fn remove_fragment_vip(&mut self, address: IpAddr, proto: u8) -> Result<()> {
        let key = FragmentVipKey { addr: addr_from_ip(address), proto, _pad: [0; 3] };
        self.fragment_vips.remove(&key).context("removing from FRAGMENT_VIPS")
    }
}
