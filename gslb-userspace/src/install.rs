//! Bringing the data plane from what it holds to what a plan wants,
//! touching only what differs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use anyhow::{Context, Result};
use gslb_common::{SteerTable, VipValue, VIP_CLIENT_STEERING, VIP_SOURCE_IP_AFFINITY};
use serde::{Deserialize, Serialize};

use crate::dataplane::{Steer, VipMatch};
use crate::plan::{Plan, PlannedTable};

/// What the data plane holds, as far as the agent manages it.
#[derive(Clone, Debug, Default)]
pub struct Installed {
    pub backend_ids: BTreeMap<IpAddr, u32>,
    pub dead: BTreeSet<IpAddr>,
    pub vips: BTreeMap<VipMatch, InstalledVip>,
    pub fragment_vips: BTreeMap<(IpAddr, u8), u16>,
}

#[derive(Clone, Debug)]
pub struct InstalledVip {
    pub vip_id: u32,
    pub flags: u32,
    pub default: InstalledTable,
    pub steer: BTreeMap<(IpAddr, u8), InstalledTable>,
}

/// One table in `MAGLEV`: its id, the live generation, and the contents of
/// both generations.
#[derive(Clone, Debug)]
pub struct InstalledTable {
    pub table_id: u32,
    pub generation: u32,
    pub contents: Vec<u32>,
    /// What the idle generation holds, when known: a new table is written
    /// there slot by slot, only where it differs.
    pub idle: Option<Vec<u32>>,
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
        let mut dead = BTreeSet::new();
        for (id, address, is_dead) in steer.installed_backends()? {
            backend_ids.insert(address, id);
            if is_dead {
                dead.insert(address);
            }
        }
        let prefixes = steer.steer_prefixes()?;
        let mut vips = BTreeMap::new();
        for (matcher, vip) in steer.installed_vips()? {
            let value = vip.value;
            let default = InstalledTable {
                table_id: value.table_id,
                generation: value.generation,
                contents: steer.read_table(value.table_id, value.generation)?,
                idle: Some(steer.read_table(value.table_id, value.generation ^ 1)?),
            };
            let mut rules = BTreeMap::new();
            for (vip_id, prefix, table) in &prefixes {
                if *vip_id == value.vip_id {
                    let contents = steer.read_table(table.table_id, table.generation)?;
                    let idle = Some(steer.read_table(table.table_id, table.generation ^ 1)?);
                    let (table_id, generation) = (table.table_id, table.generation);
                    rules.insert(*prefix, InstalledTable { table_id, generation, contents, idle });
                }
            }
            vips.insert(matcher, InstalledVip { vip_id: value.vip_id, flags: value.flags, default, steer: rules });
        }
        let fragment_vips = steer.fragment_vips()?.into_iter().map(|(a, proto, port)| ((a, proto), port)).collect();
        Ok(Installed { backend_ids, dead, vips, fragment_vips })
    }

    /// Applies `plan`, in an order that never lets a packet find a table
    /// slot without its backend, or a dead backend in a live table: new and
    /// revived backends first, then tables, then dead marks, and removed
    /// backends last.
    pub fn apply(&mut self, steer: &mut Steer, plan: &Plan, names: &BTreeMap<VipMatch, String>) -> Result<Changes> {
        let mut changes = Changes::default();
        steer.set_tunnel_sources(plan.tunnel_source_v4, plan.tunnel_source_v6)?;

        for (&address, &id) in &plan.backend_ids {
            let is_new = self.backend_ids.get(&address) != Some(&id);
            if is_new {
                steer.reset_backend_stats(id)?;
                changes.backends_added.push(address);
            }
            let revived = !is_new && self.dead.contains(&address) && !plan.dead.contains(&address);
            if is_new || revived {
                steer.set_backend(id, address, false)?;
                self.backend_ids.insert(address, id);
                if self.dead.remove(&address) && revived {
                    changes.backends_revived.push(address);
                }
            }
        }

        let removed: Vec<VipMatch> = self.vips.keys().filter(|v| !plan.vips.contains_key(v)).copied().collect();
        for matcher in removed {
            steer.remove_vip(matcher)?;
            let vip = self.vips.remove(&matcher).expect("listed above");
            for prefix in vip.steer.keys() {
                steer.remove_steer_prefix(vip.vip_id, *prefix)?;
            }
            changes.vips_removed.push(names.get(&matcher).cloned().unwrap_or_else(|| describe(&matcher)));
        }

        for (matcher, planned) in &plan.vips {
            let mut tables = TableIds::of(self, steer.limits.max_vips);
            let (mut vip, is_new) = match self.vips.get(matcher) {
                Some(current) => (current.clone(), false),
                None => {
                    let vip_id = self.free_vip_id(steer.limits.max_vips).context("no free VIP slot")?;
                    steer.reset_vip_stats(vip_id)?;
                    let table_id = tables.allocate()?;
                    let default = InstalledTable { table_id, generation: 1, contents: Vec::new(), idle: None };
                    (InstalledVip { vip_id, flags: 0, default, steer: BTreeMap::new() }, true)
                }
            };
            let mut changed = false;

            // Client-prefix tables first, so the flag below never points the
            // program at a prefix that is not there yet.
            for (prefix, table) in &planned.steer {
                let slot = match vip.steer.get_mut(prefix) {
                    Some(slot) => slot,
                    None => vip.steer.entry(*prefix).or_insert(InstalledTable {
                        table_id: tables.allocate()?,
                        generation: 1,
                        contents: Vec::new(),
                        idle: None,
                    }),
                };
                if write_if_changed(steer, slot, table)? {
                    let live = SteerTable { table_id: slot.table_id, generation: slot.generation };
                    steer.set_steer_prefix(vip.vip_id, *prefix, live)?;
                    changed = true;
                }
            }
            changed |= write_if_changed(steer, &mut vip.default, &planned.default)?;

            let mut flags = if planned.source_ip_affinity { VIP_SOURCE_IP_AFFINITY } else { 0 };
            if !planned.steer.is_empty() {
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
                steer.set_vip_entry(*matcher, value)?;
                changed = true;
            }

            let gone: Vec<(IpAddr, u8)> =
                vip.steer.keys().filter(|p| !planned.steer.contains_key(p)).copied().collect();
            for prefix in gone {
                steer.remove_steer_prefix(vip.vip_id, prefix)?;
                vip.steer.remove(&prefix);
                changed = true;
            }

            if is_new {
                changes.vips_added.push(planned.name.clone());
            } else if changed {
                changes.vips_changed.push(planned.name.clone());
            }
            self.vips.insert(*matcher, vip);
        }

        for (&(address, proto), &port) in &plan.fragment_vips {
            if self.fragment_vips.get(&(address, proto)) != Some(&port) {
                steer.set_fragment_vip(address, proto, port)?;
                self.fragment_vips.insert((address, proto), port);
            }
        }
        let stale: Vec<(IpAddr, u8)> =
            self.fragment_vips.keys().filter(|k| !plan.fragment_vips.contains_key(k)).copied().collect();
        for (address, proto) in stale {
            steer.remove_fragment_vip(address, proto)?;
            self.fragment_vips.remove(&(address, proto));
        }

        for address in &plan.dead {
            if self.dead.insert(*address) {
                steer.set_backend(plan.backend_ids[address], *address, true)?;
                changes.backends_dead.push(*address);
            }
        }

        let gone: Vec<(IpAddr, u32)> =
            self.backend_ids.iter().filter(|(a, _)| !plan.backend_ids.contains_key(a)).map(|(a, i)| (*a, *i)).collect();
        for (address, id) in gone {
            steer.clear_backend(id)?;
            self.backend_ids.remove(&address);
            self.dead.remove(&address);
            changes.backends_removed.push(address);
        }
        Ok(changes)
    }

    fn free_vip_id(&self, max_vips: u32) -> Option<u32> {
        let used: BTreeSet<u32> = self.vips.values().map(|v| v.vip_id).collect();
        (0..max_vips).find(|id| !used.contains(id))
    }
}

/// Writes `planned` into the idle generation of `slot` if it differs from
/// the live contents, and makes that generation the live one (the caller
/// publishes it). Returns whether it wrote.
fn write_if_changed(steer: &mut Steer, slot: &mut InstalledTable, planned: &PlannedTable) -> Result<bool> {
    if slot.contents == planned.table {
        return Ok(false);
    }
    let idle = slot.generation ^ 1;
    if slot.contents.is_empty() && slot.idle.is_none() {
        // A new table: both generations get it, so later changes know what
        // the idle one holds and write only the slots that differ.
        steer.write_table(slot.table_id, idle, &planned.table)?;
        steer.write_table(slot.table_id, idle ^ 1, &planned.table)?;
        slot.generation = idle;
        slot.contents = planned.table.clone();
        slot.idle = Some(planned.table.clone());
        return Ok(true);
    }
    match &slot.idle {
        Some(old) if old.len() == planned.table.len() => steer.patch_table(slot.table_id, idle, old, &planned.table)?,
        _ => steer.write_table(slot.table_id, idle, &planned.table)?,
    }
    slot.generation = idle;
    slot.idle = Some(std::mem::replace(&mut slot.contents, planned.table.clone()));
    Ok(true)
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
            .flat_map(|v| std::iter::once(v.default.table_id).chain(v.steer.values().map(|t| t.table_id)))
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
