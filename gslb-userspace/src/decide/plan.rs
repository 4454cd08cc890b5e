//! What the data plane should hold, given the config and what the agent
//! knows of each backend (health, drains, probe latency): backend ids, which
//! backends are dead, and each VIP's tables.
//!
//! Planning is a pure function of its inputs, so two edges with the same
//! config and the same view of backend health build the same tables: the
//! edge name, interface names and the order of keys play no part.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{bail, Result};
use gslb_common::{
    addr_from_ip, addr_to_ip, backend_hashes,
    maglev::{build_table, MaglevBackend},
    VipKey, DEFAULT_GUE_PORT,
};

use crate::config::{Affinity, Config, Edge, Policy, Pool, Vip};

/// A VIP as the data plane matches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
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

    pub fn from_key(key: &VipKey) -> VipMatch {
        VipMatch { address: addr_to_ip(&key.addr), port: key.port, proto: key.proto }
    }
}

/// A backend's latency weight never drops below this fraction of its
/// configured weight: slow backends lose traffic gradually, never all of it.
pub const MIN_LATENCY_FACTOR: f64 = 0.1;

/// What the agent knows about a backend beyond the config. A backend with
/// no entry is up, not drained, with no latency measured.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Condition {
    /// Declared down by its health checks.
    pub down: bool,
    /// Failing its latest checks (suspect or down): counts towards the
    /// panic cap, so checks that all fail at once trip it before the first
    /// backend is taken out.
    pub failing: bool,
    /// Drained by the operator: no new flows.
    pub drained: bool,
    /// The drain's time is over: recorded flows are cut too.
    pub drain_expired: bool,
    /// Decaying average of probe round-trip time.
    pub rtt_avg_ms: Option<f64>,
}

pub type Conditions = BTreeMap<IpAddr, Condition>;

/// The data plane's contents for one config and one view of the backends.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub edge: EdgeSettings,
    /// Every backend of every pool, by address.
    pub backend_ids: BTreeMap<IpAddr, u32>,
    /// Backends whose recorded flows must re-select: down (unless a VIP
    /// using them is in panic) or drained past their drain time.
    pub dead: BTreeSet<IpAddr>,
    /// Backends whose `decap` understands hop lists (`second_chance`).
    pub second_chance: BTreeSet<IpAddr>,
    pub vips: BTreeMap<VipMatch, PlannedVip>,
    /// Which port's VIP fragments to an (address, protocol) use.
    pub fragment_vips: BTreeMap<(IpAddr, u8), u16>,
}

/// What `EDGE_CONFIG` holds: the outer source addresses and second chance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EdgeSettings {
    pub tunnel_source_v4: Ipv4Addr,
    pub tunnel_source_v6: Option<Ipv6Addr>,
    /// How long a table slot's previous owners get its mid-flow packets in
    /// a hop list, in seconds; 0 = no hop lists.
    pub stickiness_window_secs: u32,
    /// UDP destination port of hop-list (GUE) packets.
    pub gue_port: u16,
}

impl EdgeSettings {
    /// These tunnel sources, second chance off.
    pub fn new(tunnel_source_v4: Ipv4Addr, tunnel_source_v6: Option<Ipv6Addr>) -> EdgeSettings {
        EdgeSettings { tunnel_source_v4, tunnel_source_v6, stickiness_window_secs: 0, gue_port: DEFAULT_GUE_PORT }
    }

    /// What `[edge]` configures.
    pub fn of(edge: &Edge) -> EdgeSettings {
        EdgeSettings {
            stickiness_window_secs: edge.stickiness_window_secs,
            gue_port: edge.gue_port,
            ..EdgeSettings::new(edge.tunnel_source_v4, edge.tunnel_source_v6)
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct PlannedVip {
    pub name: String,
    pub source_ip_affinity: bool,
    /// The table of clients no steer rule matches.
    pub default: PlannedTable,
    /// Tables of client prefixes, by (network address, length).
    pub client_tables: BTreeMap<(IpAddr, u8), PlannedTable>,
    /// Health checks would have taken out more than the VIP's
    /// `max_unhealthy_fraction`: its backends stay in rotation regardless.
    pub panic: bool,
    /// Backends down in this VIP's pools, failing their checks (down or
    /// suspect), and in all.
    pub down: usize,
    pub failing: usize,
    pub total: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PlannedTable {
    /// Weight of each backend in the table (pool weight x backend weight x
    /// latency factor, summed over pools); backends out of rotation are
    /// absent.
    pub weights: BTreeMap<IpAddr, u64>,
    /// The pools new flows go to.
    pub pools: Vec<String>,
    /// No listed pool could serve: the fallback pool does.
    pub fallback: bool,
    /// What the Maglev table is built from: the backends in rotation with
    /// their ids and weights. The table itself (`build`) is built only when
    /// it is installed, one at a time: at 512 VIPs and M = 65,537 all tables
    /// take 128 MiB.
    pub members: Vec<MaglevBackend>,
    pub table_size: u32,
}

impl PlannedTable {
    /// The Maglev table: a pure function of `members` and `table_size`, so
    /// equal members build equal tables.
    pub fn build(&self) -> Vec<u32> {
        build_table(&self.members, self.table_size)
    }
}

/// Plans `config` for tables of `table_size` slots and ids below
/// `max_backends`, keeping the ids of backends already `installed`.
pub fn plan(
    config: &Config,
    installed: &BTreeMap<IpAddr, u32>,
    max_backends: u32,
    table_size: u32,
    conditions: &Conditions,
) -> Result<Plan> {
    let addresses: BTreeSet<IpAddr> = config.pools.iter().flat_map(|p| p.backends.iter().map(|b| b.address)).collect();
    let backend_ids = assign_backend_ids(&addresses, installed, max_backends)?;
    let condition = |address: &IpAddr| conditions.get(address).copied().unwrap_or_default();

    let mut vips = BTreeMap::new();
    let mut in_panic: BTreeSet<IpAddr> = BTreeSet::new();
    for vip in &config.vips {
        let members = vip_backends(config, vip);
        let down = members.iter().filter(|a| condition(a).down).count();
        let failing = members.iter().filter(|a| condition(a).failing || condition(a).down).count();
        let panic = !members.is_empty() && failing as f64 / members.len() as f64 > vip.max_unhealthy_fraction;
        if panic {
            in_panic.extend(members.iter().copied());
        }
        let chooser = Chooser { config, vip, conditions, panic, backend_ids: &backend_ids, table_size };
        let (default, default_panic) = chooser.table(&vip.pools)?;
        let mut client_tables = BTreeMap::new();
        let mut rules_panic = false;
        for rule in &vip.steer {
            let (table, rule_panic) = chooser.table(&rule.pools)?;
            rules_panic |= rule_panic;
            client_tables.insert((rule.client_prefix.address, rule.client_prefix.len), table);
        }
        let matcher = VipMatch { address: vip.address, port: vip.port, proto: vip.protocol.number() };
        let planned = PlannedVip {
            name: vip.name.clone(),
            source_ip_affinity: vip.affinity == Affinity::SourceIp,
            default,
            client_tables,
            panic: panic || default_panic || rules_panic,
            down,
            failing,
            total: members.len(),
        };
        vips.insert(matcher, planned);
    }

    let dead = addresses
        .iter()
        .filter(|a| {
            let c = condition(a);
            (c.down && !in_panic.contains(a)) || c.drain_expired
        })
        .copied()
        .collect();

    // Fragments carry no ports: they follow the address's every-port VIP,
    // or else its lowest-port VIP, so all fragments of a datagram agree.
    let mut fragment_vips = BTreeMap::new();
    for vip in vips.keys() {
        fragment_vips.entry((vip.address, vip.proto)).or_insert(vip.port);
    }

    Ok(Plan {
        edge: EdgeSettings::of(&config.edge),
        backend_ids,
        dead,
        second_chance: config.second_chance_backends(),
        vips,
        fragment_vips,
    })
}

/// Every backend of a VIP's listed pools and steer rules (not its
/// fallback pool): the set the panic cap is measured on.
fn vip_backends(config: &Config, vip: &Vip) -> BTreeSet<IpAddr> {
    let names = vip.pools.iter().chain(vip.steer.iter().flat_map(|r| r.pools.iter()));
    names.filter_map(|n| config.pool(n)).flat_map(|p| p.backends.iter().map(|b| b.address)).collect()
}

/// Builds the tables of one VIP.
struct Chooser<'a> {
    config: &'a Config,
    vip: &'a Vip,
    conditions: &'a Conditions,
    panic: bool,
    backend_ids: &'a BTreeMap<IpAddr, u32>,
    table_size: u32,
}

impl Chooser<'_> {
    /// The table for clients using `pool_names`; also whether it had to
    /// ignore health because nothing healthy was left.
    fn table(&self, pool_names: &[String]) -> Result<(PlannedTable, bool)> {
        let pools: Vec<&Pool> = pool_names.iter().filter_map(|n| self.config.pool(n)).collect();
        let (weights, used, fallback, ignored_health) = self.choose(&pools);
        let members: Vec<MaglevBackend> = weights
            .iter()
            .map(|(address, &weight)| MaglevBackend {
                id: self.backend_ids[address],
                addr: addr_from_ip(*address),
                weight: weight.min(u32::MAX as u64) as u32,
            })
            .collect();
        Ok((PlannedTable { weights, pools: used, fallback, members, table_size: self.table_size }, ignored_health))
    }

    /// Weights per backend, the pools used, whether the fallback pool is in
    /// use, and whether health had to be ignored.
    fn choose(&self, pools: &[&Pool]) -> (BTreeMap<IpAddr, u64>, Vec<String>, bool, bool) {
        let names = |ps: &[&Pool]| ps.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
        match self.vip.policy {
            Policy::Weighted => {
                let weights = self.weights(pools, false);
                if !weights.is_empty() {
                    return (weights, names(pools), false, false);
                }
            }
            Policy::Failover => {
                for pool in pools {
                    if self.up_count(pool) >= self.vip.min_healthy as usize {
                        return (self.weights(&[pool], false), vec![pool.name.clone()], false, false);
                    }
                }
            }
        }
        // Nothing healthy in the listed pools: the fallback pool, whatever
        // its health, else the listed pools regardless of health.
        if let Some(fallback) = self.vip.fallback_pool.as_deref().and_then(|n| self.config.pool(n)) {
            return (self.weights(&[fallback], true), vec![fallback.name.clone()], true, false);
        }
        (self.weights(pools, true), names(pools), false, true)
    }

    fn usable(&self, address: &IpAddr, ignore_health: bool) -> bool {
        let c = self.conditions.get(address).copied().unwrap_or_default();
        !c.drained && (ignore_health || self.panic || !c.down)
    }

    fn up_count(&self, pool: &Pool) -> usize {
        pool.backends.iter().filter(|b| b.weight > 0 && self.usable(&b.address, false)).count()
    }

    /// Effective weights of the usable backends of `pools`.
    fn weights(&self, pools: &[&Pool], ignore_health: bool) -> BTreeMap<IpAddr, u64> {
        let mut weights = BTreeMap::new();
        for pool in pools {
            for backend in &pool.backends {
                if !self.usable(&backend.address, ignore_health) {
                    continue;
                }
                let configured = pool.weight as u64 * backend.weight as u64;
                let rtt = self.conditions.get(&backend.address).and_then(|c| c.rtt_avg_ms);
                let weight = (configured as f64 * latency_factor(pool.max_latency_ms, rtt)).round() as u64;
                if weight > 0 {
                    *weights.entry(backend.address).or_default() += weight;
                }
            }
        }
        weights
    }
}

/// The share of its weight a backend keeps at this probe latency: all of it
/// up to `max_latency_ms`, then in proportion (twice the limit, half the
/// weight), never below `MIN_LATENCY_FACTOR`. Rounded down to steps of
/// `LATENCY_STEP`, so probe jitter does not rewrite tables on every probe.
pub fn latency_factor(max_latency_ms: Option<u32>, rtt_avg_ms: Option<f64>) -> f64 {
    match (max_latency_ms, rtt_avg_ms) {
        (Some(max), Some(rtt)) if rtt > max as f64 => {
            let steps = (max as f64 / rtt / LATENCY_STEP).floor();
            (steps * LATENCY_STEP).max(MIN_LATENCY_FACTOR)
        }
        _ => 1.0,
    }
}

/// Latency factors move in steps of this much.
pub const LATENCY_STEP: f64 = 0.05;

/// The id a backend takes when it is free: derived from its address alone,
/// so edges that start from different histories still tend to agree.
pub fn preferred_id(address: IpAddr, max_backends: u32) -> u32 {
    let (hash, _) = backend_hashes(&addr_from_ip(address));
    1 + (hash % (max_backends as u64 - 1)) as u32
}

/// Gives every address an id in `1..max_backends`. Installed backends keep
/// theirs (flows are recorded by id); a new backend takes its preferred id,
/// or the next free one after it, never one an installed backend holds.
/// New backends are placed in address order, so the result does not depend
/// on config order.
pub fn assign_backend_ids(
    addresses: &BTreeSet<IpAddr>,
    installed: &BTreeMap<IpAddr, u32>,
    max_backends: u32,
) -> Result<BTreeMap<IpAddr, u32>> {
    let slots = max_backends - 1;
    if addresses.len() as u64 > slots as u64 {
        bail!("{} backends do not fit {} backend ids", addresses.len(), slots);
    }
    let mut taken: BTreeSet<u32> = installed.values().copied().collect();
    let mut ids = BTreeMap::new();
    for address in addresses {
        if let Some(&id) = installed.get(address) {
            ids.insert(*address, id);
        }
    }
    for address in addresses.iter().filter(|a| !installed.contains_key(a)) {
        let start = preferred_id(*address, max_backends);
        let Some(id) = (0..slots).map(|step| 1 + (start - 1 + step) % slots).find(|id| !taken.contains(id)) else {
            bail!("no free backend id for {address}: ids still held by removed backends free up on the next reload");
        };
        taken.insert(id);
        ids.insert(*address, id);
    }
    Ok(ids)
}

#[cfg(test)]
mod tests;
