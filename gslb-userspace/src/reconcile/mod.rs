//! Bringing the data plane from what it holds to what the config and the
//! backends' conditions want: [`reconcile`] plans, then [`Installed::apply`]
//! writes only what differs, through [`MapWrites`] (the kernel's maps in
//! the agent, a recording fake in the tests), in an order that is safe for
//! packets in flight.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result};
use gslb_common::{
    maglev::MaglevBackend, ClientTable, VipValue, BACKEND_DEAD, BACKEND_SECOND_CHANCE, VIP_CLIENT_STEERING,
    VIP_SOURCE_IP_AFFINITY,
};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::decide::plan::{plan, Conditions, Plan, PlannedTable, PlannedVip, VipMatch};
use crate::sys::maps::MapWrites;
use crate::sys::steer::Steer;

#[cfg(test)]
mod recording;
#[cfg(test)]
mod tests;

/// Plans `config` under `conditions`, keeping the backend ids `installed`
/// holds, and applies the plan. Returns the plan and what changed. Nothing
/// is written if planning fails.
pub fn reconcile(
    config: &Config,
    conditions: &Conditions,
    installed: &mut Installed,
    maps: &mut impl MapWrites,
) -> Result<(Plan, Changes)> {
    let limits = maps.limits();
    let plan = plan(config, &installed.backend_ids, limits.max_backends, limits.table_size, conditions)?;
    let changes = installed.apply(maps, &plan)?;
    Ok((plan, changes))
}

/// What the data plane holds, as far as the agent manages it.
#[derive(Clone, Debug, Default)]
pub struct Installed {
    pub backend_ids: BTreeMap<IpAddr, u32>,
    pub dead: BTreeSet<IpAddr>,
    /// Backends written with `BACKEND_SECOND_CHANCE`.
    pub second_chance: BTreeSet<IpAddr>,
    pub vips: BTreeMap<VipMatch, InstalledVip>,
    pub fragment_vips: BTreeMap<(IpAddr, u8), u16>,
}

#[derive(Clone, Debug)]
pub struct InstalledVip {
    /// The VIP's name in the config it was installed from (an adopted VIP
    /// is named by its address until a plan names it).
    pub name: String,
    pub vip_id: u32,
    pub flags: u32,
    pub default: InstalledTable,
    /// Tables of client prefixes, by (network address, length).
    pub client_tables: BTreeMap<(IpAddr, u8), InstalledTable>,
}

/// One table in `MAGLEV`: its id and live generation, and what the agent
/// keeps to know it without reading it back. The contents live only in the
/// map: a change is compared with the map and written into its idle
/// generation, only the slots that differ.
#[derive(Clone, Debug)]
pub struct InstalledTable {
    pub table_id: u32,
    pub generation: u32,
    /// Both generations are written (a new table has neither, and gets
    /// both whole).
    pub written: bool,
    /// What the live generation was built from, when this agent built it:
    /// the same members build the same table, so a plan with them changes
    /// nothing and is neither built nor compared. `None` for a table read
    /// back from pinned maps.
    pub members: Option<Vec<MaglevBackend>>,
    /// Slots per backend id in the live generation (id 0: empty slots).
    pub slots: BTreeMap<u32, u32>,
}

impl InstalledTable {
    /// A table id not written yet.
    fn new(table_id: u32) -> InstalledTable {
        InstalledTable { table_id, generation: 1, written: false, members: None, slots: BTreeMap::new() }
    }

    /// A table found in pinned maps, live in `generation`.
    fn read(steer: &Steer, table_id: u32, generation: u32) -> Result<InstalledTable> {
        let live = steer.read_table(table_id, generation)?;
        Ok(InstalledTable { table_id, generation, written: true, members: None, slots: slot_counts(&live) })
    }

    /// The live generation's slots: how many, in all.
    pub fn size(&self) -> u32 {
        self.slots.values().sum()
    }
}

/// Slots per backend id (counted in an array: ids are small, and a map
/// entry per slot costs as much as building the table).
fn slot_counts(table: &[u32]) -> BTreeMap<u32, u32> {
    let top = table.iter().copied().max().unwrap_or(0) as usize;
    let mut counts = vec![0u32; top + 1];
    for &id in table {
        counts[id as usize] += 1;
    }
    counts.into_iter().enumerate().filter(|&(_, n)| n > 0).map(|(id, n)| (id as u32, n)).collect()
}

/// What one apply changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    pub vips_added: Vec<String>,
    pub vips_changed: Vec<String>,
    pub vips_removed: Vec<String>,
    pub backends_added: Vec<IpAddr>,
    pub backends_removed: Vec<IpAddr>,
    /// Backends newly marked dead (their recorded flows re-select), and
    /// back from dead.
    #[serde(default)]
    pub backends_dead: Vec<IpAddr>,
    #[serde(default)]
    pub backends_revived: Vec<IpAddr>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }
}

impl Installed {
    /// Reads the state a previous agent left in pinned maps.
    pub fn read(steer: &Steer) -> Result<Installed> {
        let mut backend_ids = BTreeMap::new();
        let (mut dead, mut second_chance) = (BTreeSet::new(), BTreeSet::new());
        for (id, address, flags) in steer.installed_backends()? {
            backend_ids.insert(address, id);
            if flags & BACKEND_DEAD != 0 {
                dead.insert(address);
            }
            if flags & BACKEND_SECOND_CHANCE != 0 {
                second_chance.insert(address);
            }
        }
        let prefixes = steer.client_prefixes()?;
        let mut vips = BTreeMap::new();
        for (matcher, value) in steer.vip_entries()? {
            let default = InstalledTable::read(steer, value.table_id, value.generation)?;
            let mut rules = BTreeMap::new();
            for (vip_id, prefix, table) in &prefixes {
                if *vip_id == value.vip_id {
                    rules.insert(*prefix, InstalledTable::read(steer, table.table_id, table.generation)?);
                }
            }
            let vip = InstalledVip {
                name: describe(&matcher),
                vip_id: value.vip_id,
                flags: value.flags,
                default,
                client_tables: rules,
            };
            vips.insert(matcher, vip);
        }
        let fragment_vips = steer.fragment_vips()?.into_iter().map(|(a, proto, port)| ((a, proto), port)).collect();
        Ok(Installed { backend_ids, dead, second_chance, vips, fragment_vips })
    }

    /// Applies `plan`, in an order that never lets a packet find a table
    /// slot without its backend, or a dead backend in a live table: new and
    /// revived backends first, then tables, then dead marks, and removed
    /// backends last. A backend whose `second_chance` alone changed is
    /// rewritten with the new backends, keeping its dead mark.
    pub fn apply(&mut self, maps: &mut impl MapWrites, plan: &Plan) -> Result<Changes> {
        let mut changes = Changes::default();
        maps.set_edge_config(&plan.edge)?;

        for (&address, &id) in &plan.backend_ids {
            let is_new = self.backend_ids.get(&address) != Some(&id);
            if is_new {
                maps.reset_backend_stats(id)?;
                changes.backends_added.push(address);
            }
            let revived = !is_new && self.dead.contains(&address) && !plan.dead.contains(&address);
            let second_chance = plan.second_chance.contains(&address);
            let reflagged = !is_new && self.second_chance.contains(&address) != second_chance;
            if is_new || revived || reflagged {
                let dead = !(is_new || revived) && self.dead.contains(&address);
                maps.set_backend(id, address, backend_flags(dead, second_chance))?;
                self.backend_ids.insert(address, id);
                if second_chance {
                    self.second_chance.insert(address);
                } else {
                    self.second_chance.remove(&address);
                }
                // Written alive: a new id's or a revived backend's dead mark
                // goes (a backend only reflagged keeps its own).
                let was_dead = (is_new || revived) && self.dead.remove(&address);
                if was_dead && revived {
                    changes.backends_revived.push(address);
                }
            }
        }

        let removed: Vec<VipMatch> = self.vips.keys().filter(|v| !plan.vips.contains_key(v)).copied().collect();
        for matcher in removed {
            maps.remove_vip(matcher)?;
            let vip = self.vips.remove(&matcher).expect("listed above");
            for prefix in vip.client_tables.keys() {
                maps.remove_client_prefix(vip.vip_id, *prefix)?;
            }
            changes.vips_removed.push(vip.name);
        }

        let planned_vips: Vec<(&VipMatch, &PlannedVip)> = plan.vips.iter().collect();
        let mut progress = Progress::new(planned_vips.len(), self.vips.is_empty());
        let mut recent = Recent::default();
        for (done, chunk) in planned_vips.chunks(BUILD_AHEAD).enumerate() {
            let mut built = self.build_changed(chunk, &mut recent);
            for &(matcher, planned) in chunk {
                self.apply_vip(maps, matcher, planned, &mut built, &mut changes)?;
            }
            progress.step((done * BUILD_AHEAD + chunk.len()).min(planned_vips.len()));
        }
        progress.finish();

        // Stale entries first: the map holds only max_vips, and a config
        // that replaces most VIPs needs their room.
        let stale: Vec<(IpAddr, u8)> =
            self.fragment_vips.keys().filter(|k| !plan.fragment_vips.contains_key(k)).copied().collect();
        for (address, proto) in stale {
            maps.remove_fragment_vip(address, proto)?;
            self.fragment_vips.remove(&(address, proto));
        }
        for (&(address, proto), &port) in &plan.fragment_vips {
            if self.fragment_vips.get(&(address, proto)) != Some(&port) {
                maps.set_fragment_vip(address, proto, port)?;
                self.fragment_vips.insert((address, proto), port);
            }
        }

        for address in &plan.dead {
            if self.dead.insert(*address) {
                let flags = backend_flags(true, self.second_chance.contains(address));
                maps.set_backend(plan.backend_ids[address], *address, flags)?;
                changes.backends_dead.push(*address);
            }
        }

        let gone: Vec<(IpAddr, u32)> =
            self.backend_ids.iter().filter(|(a, _)| !plan.backend_ids.contains_key(a)).map(|(a, i)| (*a, *i)).collect();
        for (address, id) in gone {
            maps.clear_backend(id)?;
            self.backend_ids.remove(&address);
            self.dead.remove(&address);
            self.second_chance.remove(&address);
            changes.backends_removed.push(address);
        }
        Ok(changes)
    }

    /// Brings one VIP to its plan: its client-prefix tables, its table and
    /// entry, then prefixes no longer planned.
    fn apply_vip(
        &mut self,
        maps: &mut impl MapWrites,
        matcher: &VipMatch,
        planned: &PlannedVip,
        built: &mut Built,
        changes: &mut Changes,
    ) -> Result<()> {
        let max_vips = maps.limits().max_vips;
        let mut tables = TableIds::of(self, max_vips);
        let (mut vip, is_new) = match self.vips.get(matcher) {
            Some(current) => (current.clone(), false),
            None => {
                let vip_id = self.free_vip_id(max_vips).context("no free VIP slot")?;
                maps.reset_vip_stats(vip_id)?;
                let table_id = tables.allocate()?;
                let default = InstalledTable::new(table_id);
                let name = planned.name.clone();
                (InstalledVip { name, vip_id, flags: 0, default, client_tables: BTreeMap::new() }, true)
            }
        };
        let mut changed = false;
        vip.name.clone_from(&planned.name);

        // Client-prefix tables first, so the flag below never points the
        // program at a prefix that is not there yet.
        for (prefix, table) in &planned.client_tables {
            let slot = match vip.client_tables.get_mut(prefix) {
                Some(slot) => slot,
                None => vip.client_tables.entry(*prefix).or_insert(InstalledTable::new(tables.allocate()?)),
            };
            if write_if_changed(maps, slot, table, built)? {
                let live = ClientTable { table_id: slot.table_id, generation: slot.generation };
                maps.set_client_prefix(vip.vip_id, *prefix, live)?;
                changed = true;
            }
        }
        changed |= write_if_changed(maps, &mut vip.default, &planned.default, built)?;

        let mut flags = if planned.source_ip_affinity { VIP_SOURCE_IP_AFFINITY } else { 0 };
        if !planned.client_tables.is_empty() {
            flags |= VIP_CLIENT_STEERING;
        }
        if changed || flags != vip.flags || is_new {
            vip.flags = flags;
            let value = VipValue {
                vip_id: vip.vip_id,
                flags,
                generation: vip.default.generation,
                table_id: vip.default.table_id,
            };
            maps.set_vip_entry(*matcher, value)?;
            changed = true;
        }

        let gone: Vec<(IpAddr, u8)> =
            vip.client_tables.keys().filter(|p| !planned.client_tables.contains_key(p)).copied().collect();
        for prefix in gone {
            maps.remove_client_prefix(vip.vip_id, prefix)?;
            vip.client_tables.remove(&prefix);
            changed = true;
        }

        if is_new {
            changes.vips_added.push(planned.name.clone());
        } else if changed {
            changes.vips_changed.push(planned.name.clone());
        }
        self.vips.insert(*matcher, vip);
        Ok(())
    }

    /// Builds the tables of `vips` that may differ from what is live: those
    /// whose members differ from the live table's, or are not known. On
    /// every core: building dominates a large apply (about 1.5 ms a table
    /// at M = 65,537), and a batch of `BUILD_AHEAD` VIPs keeps only a few
    /// tables in memory at once.
    fn build_changed<'p>(&self, vips: &[(&VipMatch, &'p PlannedVip)], recent: &mut Recent<'p>) -> Built<'p> {
        let mut wanted: Vec<&'p PlannedTable> = Vec::new();
        for &(matcher, planned) in vips {
            let installed = self.vips.get(matcher);
            for (prefix, table) in &planned.client_tables {
                if live_members(installed.and_then(|v| v.client_tables.get(prefix))) != Some(&table.members) {
                    wanted.push(table);
                }
            }
            if live_members(installed.map(|v| &v.default)) != Some(&planned.default.members) {
                wanted.push(&planned.default);
            }
        }
        // Each distinct table once: VIPs over the same pools share it.
        let mut unique: Vec<&PlannedTable> = Vec::new();
        for table in &wanted {
            if recent.get(table).is_none() && !unique.iter().any(|u| same_input(u, table)) {
                unique.push(table);
            }
        }
        for (table, slots) in unique.iter().zip(build_all(&unique)) {
            recent.keep(table, slots);
        }
        Built(wanted.into_iter().filter_map(|t| Some((t, recent.get(t)?.clone()))).collect())
    }

    fn free_vip_id(&self, max_vips: u32) -> Option<u32> {
        let used: BTreeSet<u32> = self.vips.values().map(|v| v.vip_id).collect();
        (0..max_vips).find(|id| !used.contains(id))
    }
}

/// Writes `planned` into the idle generation of `slot` if it differs from
/// the live one, and makes that generation the live one (the caller
/// publishes it with a map update, which packets see only after every slot
/// written here). The slots that change owner remember the owner they
/// lose, before the flip; a new table starts with no history. Returns
/// whether it wrote.
fn write_if_changed(
    maps: &mut impl MapWrites,
    slot: &mut InstalledTable,
    planned: &PlannedTable,
    built: &mut Built,
) -> Result<bool> {
    if slot.members.as_ref() == Some(&planned.members) {
        // Built from the same members: the live table is this one.
        return Ok(false);
    }
    let table = built.take(planned);
    if slot.written && maps.table_holds(slot.table_id, slot.generation, &table)? {
        slot.members = Some(planned.members.clone());
        return Ok(false);
    }
    let idle = slot.generation ^ 1;
    if slot.written {
        maps.supersede(slot.table_id, slot.generation, &table)?;
        // The idle generation holds the table before the live one: only
        // the slots that differ from it are rewritten.
        maps.patch_table(slot.table_id, idle, &table)?;
    } else {
        // The id may have served a removed table: its history is not this
        // table's.
        maps.clear_history(slot.table_id)?;
        // A new table: both generations get it, so later changes find a
        // whole table in the idle one and rewrite only the slots that
        // differ.
        maps.write_table(slot.table_id, idle, &table)?;
        maps.write_table(slot.table_id, idle ^ 1, &table)?;
        slot.written = true;
    }
    slot.generation = idle;
    slot.members = Some(planned.members.clone());
    slot.slots = slot_counts(&table);
    Ok(true)
}

/// `Backend::flags` of a backend.
fn backend_flags(dead: bool, second_chance: bool) -> u32 {
    let dead = if dead { BACKEND_DEAD } else { 0 };
    dead | if second_chance { BACKEND_SECOND_CHANCE } else { 0 }
}

/// What a table live in the maps was built from, if known.
fn live_members(table: Option<&InstalledTable>) -> Option<&Vec<MaglevBackend>> {
    table.and_then(|t| t.members.as_ref())
}

/// VIPs whose tables are built together, ahead of being applied.
const BUILD_AHEAD: usize = 32;

/// A cold start (nothing installed) with more VIPs than this says so
/// before writing their tables.
const PROGRESS_VIPS: usize = 100;
/// How often a long apply says how far it is.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Progress lines of a long apply: a cold start with many VIPs, or an
/// apply past `PROGRESS_EVERY` (reading back and comparing the tables of an
/// adopted data plane, a large reload). At most one line a second, none for
/// a quick apply.
struct Progress {
    total: usize,
    started: std::time::Instant,
    /// When the last line was logged, if any was.
    last: Option<std::time::Instant>,
}

impl Progress {
    fn new(total: usize, cold: bool) -> Progress {
        let started = std::time::Instant::now();
        let mut progress = Progress { total, started, last: None };
        if cold && total > PROGRESS_VIPS {
            tracing::info!("writing tables: 0/{total} VIPs");
            progress.last = Some(started);
        }
        progress
    }

    fn step(&mut self, done: usize) {
        let now = std::time::Instant::now();
        if now.duration_since(self.last.unwrap_or(self.started)) >= PROGRESS_EVERY && done < self.total {
            tracing::info!("writing tables: {done}/{} VIPs", self.total);
            self.last = Some(now);
        }
    }

    fn finish(&self) {
        if self.last.is_some() {
            let secs = self.started.elapsed().as_secs_f64();
            tracing::info!(seconds = secs, "wrote tables: {} VIPs in {secs:.1} s", self.total);
        }
    }
}

/// Tables built during one apply, by what they were built from, so VIPs
/// over the same pools (a service on several ports, or on IPv4 and IPv6)
/// share one build. Bounded: at M = 65,537 a table takes 256 KiB.
#[derive(Default)]
struct Recent<'p>(std::collections::VecDeque<(&'p PlannedTable, Vec<u32>)>);

/// Tables kept in `Recent`.
const RECENT_TABLES: usize = 64;

impl<'p> Recent<'p> {
    fn get(&self, planned: &PlannedTable) -> Option<&Vec<u32>> {
        self.0.iter().find(|(built, _)| same_input(built, planned)).map(|(_, table)| table)
    }

    fn keep(&mut self, planned: &'p PlannedTable, table: Vec<u32>) {
        if self.0.len() == RECENT_TABLES {
            self.0.pop_front();
        }
        self.0.push_back((planned, table));
    }
}

/// Whether two planned tables are built from the same input (and so are
/// the same table).
fn same_input(a: &PlannedTable, b: &PlannedTable) -> bool {
    a.members == b.members && a.table_size == b.table_size
}

/// Tables built ahead of their apply, each with the plan's entry it was
/// built from.
struct Built<'p>(Vec<(&'p PlannedTable, Vec<u32>)>);

impl Built<'_> {
    /// The table built for `planned` (built now if it was not).
    fn take(&mut self, planned: &PlannedTable) -> Vec<u32> {
        match self.0.iter().position(|(p, _)| std::ptr::eq(*p, planned)) {
            Some(i) => self.0.swap_remove(i).1,
            None => planned.build(),
        }
    }
}

/// Builds `tables`, spread over the machine's cores.
fn build_all(tables: &[&PlannedTable]) -> Vec<Vec<u32>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(tables.len());
    if threads <= 1 {
        return tables.iter().map(|t| t.build()).collect();
    }
    let next = AtomicUsize::new(0);
    let mut built: Vec<Vec<u32>> = vec![Vec::new(); tables.len()];
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(table) = tables.get(i) else { return done };
                        done.push((i, table.build()));
                    }
                })
            })
            .collect();
        for worker in workers {
            for (i, table) in worker.join().expect("a table builder panicked") {
                built[i] = table;
            }
        }
    });
    built
}

/// Table ids not used by any installed table.
struct TableIds {
    free: Vec<u32>,
}

impl TableIds {
    fn of(installed: &Installed, max_tables: u32) -> TableIds {
        let used: BTreeSet<u32> = installed
            .vips
            .values()
            .flat_map(|v| std::iter::once(v.default.table_id).chain(v.client_tables.values().map(|t| t.table_id)))
            .collect();
        TableIds { free: (0..max_tables).rev().filter(|id| !used.contains(id)).collect() }
    }

    fn allocate(&mut self) -> Result<u32> {
        self.free.pop().context("no free lookup table: VIPs and client-prefix rules together exceed max_vips")
    }
}

fn describe(vip: &VipMatch) -> String {
    format!("{}:{}/{}", vip.address, vip.port, vip.proto)
}
