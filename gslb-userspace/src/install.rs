//! Bringing the data plane from what it holds to what a plan wants,
//! touching only what differs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::dataplane::{Steer, VipMatch};
use crate::plan::Plan;

/// What the data plane holds, as far as the agent manages it.
#[derive(Clone, Debug, Default)]
pub struct Installed {
    pub backend_ids: BTreeMap<IpAddr, u32>,
    pub vips: BTreeMap<VipMatch, InstalledVip>,
    pub fragment_vips: BTreeMap<(IpAddr, u8), u16>,
}

#[derive(Clone, Debug)]
pub struct InstalledVip {
    pub vip_id: u32,
    pub source_ip_affinity: bool,
    /// The live table.
    pub table: Vec<u32>,
}

/// What one apply changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    pub vips_added: Vec<String>,
    pub vips_changed: Vec<String>,
    pub vips_removed: Vec<String>,
    pub backends_added: Vec<IpAddr>,
    pub backends_removed: Vec<IpAddr>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }
}

impl Installed {
    /// Reads the state a previous agent left in pinned maps.
    pub fn read(steer: &Steer) -> Result<Installed> {
        let backend_ids = steer.installed_backends()?.into_iter().map(|(id, address, _)| (address, id)).collect();
        let mut vips = BTreeMap::new();
        for (matcher, vip) in steer.installed_vips()? {
            let table = steer.vip_table(matcher)?;
            vips.insert(
                matcher,
                InstalledVip { vip_id: vip.vip_id, source_ip_affinity: vip.source_ip_affinity, table },
            );
        }
        let fragment_vips = steer.fragment_vips()?.into_iter().map(|(a, proto, port)| ((a, proto), port)).collect();
        Ok(Installed { backend_ids, vips, fragment_vips })
    }

    /// Applies `plan`, in an order that never lets a packet see a table
    /// entry without its backend: new backends first, then tables, and
    /// removed backends last.
    pub fn apply(&mut self, steer: &mut Steer, plan: &Plan, names: &BTreeMap<VipMatch, String>) -> Result<Changes> {
        let mut changes = Changes::default();
        steer.set_tunnel_sources(plan.tunnel_source_v4, plan.tunnel_source_v6)?;

        for (&address, &id) in &plan.backend_ids {
            if self.backend_ids.get(&address) != Some(&id) {
                steer.reset_backend_stats(id)?;
                steer.set_backend(id, address, false)?;
                self.backend_ids.insert(address, id);
                changes.backends_added.push(address);
            }
        }

        let removed: Vec<VipMatch> = self.vips.keys().filter(|v| !plan.vips.contains_key(v)).copied().collect();
        for matcher in removed {
            steer.remove_vip(matcher)?;
            self.vips.remove(&matcher);
            changes.vips_removed.push(names.get(&matcher).cloned().unwrap_or_else(|| describe(&matcher)));
        }

        for (matcher, planned) in &plan.vips {
            let vip_id = match self.vips.get(matcher) {
                Some(current)
                    if current.table == planned.table && current.source_ip_affinity == planned.source_ip_affinity =>
                {
                    continue;
                }
                Some(current) => {
                    changes.vips_changed.push(planned.name.clone());
                    current.vip_id
                }
                None => {
                    let id = self.free_vip_id(steer.limits.max_vips).context("no free VIP slot")?;
                    steer.reset_vip_stats(id)?;
                    changes.vips_added.push(planned.name.clone());
                    id
                }
            };
            steer.set_vip(*matcher, vip_id, planned.source_ip_affinity, &planned.table)?;
            self.vips.insert(
                *matcher,
                InstalledVip { vip_id, source_ip_affinity: planned.source_ip_affinity, table: planned.table.clone() },
            );
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

        let gone: Vec<(IpAddr, u32)> =
            self.backend_ids.iter().filter(|(a, _)| !plan.backend_ids.contains_key(a)).map(|(a, i)| (*a, *i)).collect();
        for (address, id) in gone {
            steer.clear_backend(id)?;
            self.backend_ids.remove(&address);
            changes.backends_removed.push(address);
        }
        Ok(changes)
    }

    fn free_vip_id(&self, max_vips: u32) -> Option<u32> {
        let used: BTreeSet<u32> = self.vips.values().map(|v| v.vip_id).collect();
        (0..max_vips).find(|id| !used.contains(id))
    }
}

fn describe(vip: &VipMatch) -> String {
    format!("{}:{}/{}", vip.address, vip.port, vip.proto)
}
