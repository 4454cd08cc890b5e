//! A recording stand-in for `steer`'s maps: it logs every write in order
//! and keeps a model of what the data plane would hold, checking after each
//! write what a packet arriving at that moment could find.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use anyhow::Result;
use gslb_common::{ClientTable, SlotHistory, VipValue, BACKEND_DEAD, BACKEND_SECOND_CHANCE, NO_BACKEND};

use crate::config::Limits;
use crate::decide::plan::{EdgeSettings, VipMatch};
use crate::sys::history::supersede;
use crate::sys::maps::MapWrites;

/// One write, as `steer`'s maps would see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    EdgeConfig(EdgeSettings),
    Backend {
        id: u32,
        address: IpAddr,
        dead: bool,
        second_chance: bool,
    },
    ClearBackend(u32),
    BackendStats(u32),
    VipStats(u32),
    /// Slot histories noted before a table left its live `generation`:
    /// `changed` slots changed owner.
    History {
        table_id: u32,
        generation: u32,
        changed: usize,
    },
    ClearHistory(u32),
    /// A whole generation of a table written, or only its changed slots.
    Table {
        table_id: u32,
        generation: u32,
        patch: bool,
    },
    VipEntry {
        vip: VipMatch,
        value: VipValue,
    },
    RemoveVip(VipMatch),
    ClientPrefix {
        vip_id: u32,
        prefix: (IpAddr, u8),
        table: ClientTable,
    },
    RemoveClientPrefix {
        vip_id: u32,
        prefix: (IpAddr, u8),
    },
    FragmentVip {
        address: IpAddr,
        proto: u8,
        port: u16,
    },
    RemoveFragmentVip {
        address: IpAddr,
        proto: u8,
    },
}

/// The maps, recorded.
pub struct RecordingMaps {
    limits: Limits,
    /// Every write so far, in order.
    pub log: Vec<Write>,
    /// What went wrong, each with the write that caused it.
    pub violations: Vec<String>,
    backends: BTreeMap<u32, (IpAddr, bool)>,
    tables: BTreeMap<(u32, u32), Vec<u32>>,
    vips: BTreeMap<VipMatch, VipValue>,
    prefixes: BTreeMap<(u32, (IpAddr, u8)), ClientTable>,
    /// `OWNER_HISTORY`, by table id (absent: never cleared).
    history: BTreeMap<u32, Vec<SlotHistory>>,
    /// The clock history is noted with.
    pub now: u32,
    /// Backends the plan being applied itself keeps in a table while
    /// marking them dead (every backend of a VIP down: the table keeps
    /// them all, regardless of health).
    dead_by_plan: BTreeSet<u32>,
}

impl RecordingMaps {
    pub fn new(limits: Limits) -> RecordingMaps {
        RecordingMaps {
            limits,
            log: Vec::new(),
            violations: Vec::new(),
            backends: BTreeMap::new(),
            tables: BTreeMap::new(),
            vips: BTreeMap::new(),
            prefixes: BTreeMap::new(),
            history: BTreeMap::new(),
            now: 1_000,
            dead_by_plan: BTreeSet::new(),
        }
    }

    /// Says which backends the next plan keeps in a table although it
    /// marks them dead: finding those is the plan's choice, not the order's.
    pub fn expect_dead_in_tables(&mut self, ids: BTreeSet<u32>) {
        self.dead_by_plan = ids;
    }

    /// Forgets the writes logged so far (the model stays).
    pub fn take_log(&mut self) -> Vec<Write> {
        std::mem::take(&mut self.log)
    }

    /// The table a VIP's packets use now.
    pub fn live_table(&self, vip: &VipMatch) -> Option<&Vec<u32>> {
        let value = self.vips.get(vip)?;
        self.tables.get(&(value.table_id, value.generation & 1))
    }

    /// One table's slot histories.
    pub fn history(&self, table_id: u32) -> &[SlotHistory] {
        self.history.get(&table_id).map_or(&[], |h| h.as_slice())
    }

    /// Whether a backend is written and marked dead.
    pub fn is_dead(&self, id: u32) -> bool {
        self.backends.get(&id).is_some_and(|(_, dead)| *dead)
    }

    /// The (table, generation) pairs some packet can read now.
    fn live(&self) -> Vec<(u32, u32)> {
        let vips = self.vips.values().map(|v| (v.table_id, v.generation & 1));
        vips.chain(self.prefixes.values().map(|t| (t.table_id, t.generation & 1))).collect()
    }

    fn record(&mut self, write: Write) {
        self.log.push(write);
    }

    /// After a write: every slot a packet can read names a backend that is
    /// written and not dead.
    fn check(&mut self) {
        for (table_id, generation) in self.live() {
            let Some(slots) = self.tables.get(&(table_id, generation)) else {
                let last = self.log.last().cloned();
                self.violations
                    .push(format!("after {last:?}: table {table_id}/{generation} is live but was never written"));
                continue;
            };
            for &id in slots.iter().filter(|&&id| id != NO_BACKEND) {
                let problem = match self.backends.get(&id) {
                    None => "is not written",
                    Some((_, true)) if !self.dead_by_plan.contains(&id) => "is marked dead",
                    Some(_) => continue,
                };
                let last = self.log.last().cloned();
                self.violations.push(format!(
                    "after {last:?}: live table {table_id}/{generation} holds backend {id}, which {problem}"
                ));
                break;
            }
        }
    }

    fn writable(&mut self, table_id: u32, generation: u32) {
        if self.live().contains(&(table_id, generation & 1)) {
            self.violations.push(format!("wrote table {table_id}/{generation} while packets read it"));
        }
        if table_id >= self.limits.max_vips {
            self.violations.push(format!("table id {table_id} out of range"));
        }
    }
}

impl MapWrites for RecordingMaps {
    fn limits(&self) -> Limits {
        self.limits
    }

    fn set_edge_config(&mut self, edge: &EdgeSettings) -> Result<()> {
        self.record(Write::EdgeConfig(*edge));
        Ok(())
    }

    fn set_backend(&mut self, id: u32, address: IpAddr, flags: u32) -> Result<()> {
        let (dead, second_chance) = (flags & BACKEND_DEAD != 0, flags & BACKEND_SECOND_CHANCE != 0);
        self.backends.insert(id, (address, dead));
        self.record(Write::Backend { id, address, dead, second_chance });
        self.check();
        Ok(())
    }

    fn clear_backend(&mut self, id: u32) -> Result<()> {
        self.backends.remove(&id);
        self.record(Write::ClearBackend(id));
        self.check();
        Ok(())
    }

    fn reset_backend_stats(&mut self, id: u32) -> Result<()> {
        self.record(Write::BackendStats(id));
        Ok(())
    }

    fn reset_vip_stats(&mut self, vip_id: u32) -> Result<()> {
        self.record(Write::VipStats(vip_id));
        Ok(())
    }

    fn write_table(&mut self, table_id: u32, generation: u32, table: &[u32]) -> Result<()> {
        self.writable(table_id, generation);
        self.tables.insert((table_id, generation & 1), table.to_vec());
        self.record(Write::Table { table_id, generation, patch: false });
        Ok(())
    }

    fn patch_table(&mut self, table_id: u32, generation: u32, table: &[u32]) -> Result<usize> {
        self.writable(table_id, generation);
        let Some(held) = self.tables.get_mut(&(table_id, generation & 1)) else {
            self.violations.push(format!("patched table {table_id}/{generation}, which was never written whole"));
            self.tables.insert((table_id, generation & 1), table.to_vec());
            self.record(Write::Table { table_id, generation, patch: true });
            return Ok(table.len());
        };
        let written = held.iter().zip(table).filter(|(a, b)| a != b).count();
        held.copy_from_slice(table);
        self.record(Write::Table { table_id, generation, patch: true });
        Ok(written)
    }

    fn supersede(&mut self, table_id: u32, live_generation: u32, table: &[u32]) -> Result<usize> {
        let generation = live_generation & 1;
        if !self.live().contains(&(table_id, generation)) {
            self.violations.push(format!("noted history of table {table_id}/{generation}, which packets do not read"));
        }
        let (Some(live), Some(history)) = (self.tables.get(&(table_id, generation)), self.history.get_mut(&table_id))
        else {
            self.violations.push(format!("noted history of table {table_id}, never written or never cleared"));
            return Ok(0);
        };
        let changed = supersede(history, live, table, self.now);
        self.record(Write::History { table_id, generation: live_generation, changed });
        Ok(changed)
    }

    fn clear_history(&mut self, table_id: u32) -> Result<()> {
        self.history.insert(table_id, vec![SlotHistory::default(); self.limits.table_size as usize]);
        self.record(Write::ClearHistory(table_id));
        Ok(())
    }

    fn table_holds(&mut self, table_id: u32, generation: u32, table: &[u32]) -> Result<bool> {
        Ok(self.tables.get(&(table_id, generation & 1)).is_some_and(|held| held.as_slice() == table))
    }

    fn set_vip_entry(&mut self, vip: VipMatch, value: VipValue) -> Result<()> {
        self.vips.insert(vip, value);
        self.record(Write::VipEntry { vip, value });
        self.check();
        Ok(())
    }

    fn remove_vip(&mut self, vip: VipMatch) -> Result<()> {
        self.vips.remove(&vip);
        self.record(Write::RemoveVip(vip));
        Ok(())
    }

    fn set_client_prefix(&mut self, vip_id: u32, prefix: (IpAddr, u8), table: ClientTable) -> Result<()> {
        self.prefixes.insert((vip_id, prefix), table);
        self.record(Write::ClientPrefix { vip_id, prefix, table });
        self.check();
        Ok(())
    }

    fn remove_client_prefix(&mut self, vip_id: u32, prefix: (IpAddr, u8)) -> Result<()> {
        self.prefixes.remove(&(vip_id, prefix));
        self.record(Write::RemoveClientPrefix { vip_id, prefix });
        Ok(())
    }

    fn set_fragment_vip(&mut self, address: IpAddr, proto: u8, port: u16) -> Result<()> {
        self.record(Write::FragmentVip { address, proto, port });
        Ok(())
    }

    fn remove_fragment_vip(&mut self, address: IpAddr, proto: u8) -> Result<()> {
        self.record(Write::RemoveFragmentVip { address, proto });
        Ok(())
    }
}
