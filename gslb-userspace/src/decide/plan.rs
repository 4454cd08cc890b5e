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
    /// Backends whose recorded flows must re-select: down (unless a table
    /// in panic could use them: its listed pools' and its VIP's fallback
    /// pool's backends) or drained past their drain time.
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
    /// Some table of the VIP ignores the health checks (panic) and keeps
    /// its listed pools in rotation regardless: the panic cap is tripped,
    /// or nothing the table could use is up. A table the fallback pool
    /// serves because the listed pools have nothing up is not in panic
    /// (see `Chooser::choose`).
    pub panic: bool,
    /// Backends of this VIP's listed pools and steer rules' pools (not of
    /// its fallback pool: the panic cap's measure) down, failing their
    /// checks (down or suspect), and in all.
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
    /// New flows go to the fallback pool: the listed pools have nothing up.
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
    // Backends a table in panic could use: its listed pools' and the
    // fallback pool's. The checks are in doubt, so none is dead: recorded
    // flows stay where they are, also those the fallback pool took before
    // its own checks failed.
    let mut in_panic: BTreeSet<IpAddr> = BTreeSet::new();
    for vip in &config.vips {
        let members = vip_backends(config, vip);
        let down = members.iter().filter(|a| condition(a).down).count();
        let failing = members.iter().filter(|a| condition(a).failing || condition(a).down).count();
        let capped = !members.is_empty() && failing as f64 / members.len() as f64 > vip.max_unhealthy_fraction;
        let chooser = Chooser { config, vip, conditions, capped, backend_ids: &backend_ids, table_size };
        let fallback_name = vip.fallback_pool.as_slice();
        let mut panic = false;
        let mut table = |pool_names: &[String]| -> Result<PlannedTable> {
            let (table, table_panic) = chooser.table(pool_names)?;
            if table_panic {
                panic = true;
                in_panic.extend(listed_backends(config, pool_names));
                in_panic.extend(listed_backends(config, fallback_name));
            }
            Ok(table)
        };
        let default = table(&vip.pools)?;
        let mut client_tables = BTreeMap::new();
        for rule in &vip.steer {
            client_tables.insert((rule.client_prefix.address, rule.client_prefix.len), table(&rule.pools)?);
        }
        let matcher = VipMatch { address: vip.address, port: vip.port, proto: vip.protocol.number() };
        let planned = PlannedVip {
            name: vip.name.clone(),
            source_ip_affinity: vip.affinity == Affinity::SourceIp,
            default,
            client_tables,
            panic,
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
    let names: Vec<String> = vip.pools.iter().chain(vip.steer.iter().flat_map(|r| r.pools.iter())).cloned().collect();
    listed_backends(config, &names).collect()
}

/// Every backend of the named pools.
fn listed_backends<'a>(config: &'a Config, pool_names: &'a [String]) -> impl Iterator<Item = IpAddr> + 'a {
    pool_names.iter().filter_map(|n| config.pool(n)).flat_map(|p| p.backends.iter().map(|b| b.address))
}

/// Which backends count as usable, by their health checks. Drained
/// backends never do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Health {
    /// Not down: up, or suspect (still in service until declared down).
    NotDown,
    /// Passing outright: neither down nor suspect.
    Passing,
    /// Whatever the checks say (panic).
    Ignored,
}

/// One table's backends, as `Chooser::choose` picks them.
struct Choice {
    weights: BTreeMap<IpAddr, u64>,
    /// The pools new flows go to.
    pools: Vec<String>,
    /// The fallback pool serves.
    fallback: bool,
    /// The health checks are ignored.
    panic: bool,
}

/// Builds the tables of one VIP.
struct Chooser<'a> {
    config: &'a Config,
    vip: &'a Vip,
    conditions: &'a Conditions,
    /// More than `max_unhealthy_fraction` of the VIP's listed backends fail
    /// their checks: the checks themselves are in doubt.
    capped: bool,
    backend_ids: &'a BTreeMap<IpAddr, u32>,
    table_size: u32,
}

impl Chooser<'_> {
    /// The table for clients using `pool_names`; also whether it is in
    /// panic (health ignored).
    fn table(&self, pool_names: &[String]) -> Result<(PlannedTable, bool)> {
        let pools: Vec<&Pool> = pool_names.iter().filter_map(|n| self.config.pool(n)).collect();
        let Choice { weights, pools: used, fallback, panic } = self.choose(&pools);
        let members: Vec<MaglevBackend> = weights
            .iter()
            .map(|(address, &weight)| MaglevBackend {
                id: self.backend_ids[address],
                addr: addr_from_ip(*address),
                weight: weight.min(u32::MAX as u64) as u32,
            })
            .collect();
        Ok((PlannedTable { weights, pools: used, fallback, members, table_size: self.table_size }, panic))
    }

    /// The backends of one table. In order:
    ///
    /// 1. The fallback pool, when the listed pools have nothing up
    ///    (weighted: no backend that is not down; failover: no pool with
    ///    `min_healthy` up) and the fallback pool can serve. It is the
    ///    operator's answer to "nothing listed can serve", so it comes
    ///    before the panic cap: it serves with its backends that are not
    ///    down, and the table is not in panic. It can serve when one of its
    ///    backends (effective weight above 0, not drained) is not down;
    ///    while the cap is tripped (the checks are in doubt), when one
    ///    passes its checks outright, suspect not enough. Checks that fail
    ///    everywhere at once make every backend suspect before the last
    ///    listed one is declared down, so a fallback failing with the rest
    ///    never takes over. One passing backend is enough, however many of
    ///    the fallback's others fail: it shows that checks still pass, so
    ///    the listed pools' failures are believed.
    /// 2. Panic, when the cap is tripped: the listed pools, by the policy,
    ///    regardless of health.
    /// 3. The listed pools' backends that are up, by the policy.
    /// 4. Panic, when nothing listed is up and no fallback pool can serve
    ///    (or, with the cap tripped, the policy finds nothing even
    ///    regardless of health): every backend of the listed pools,
    ///    regardless of health, rather than no backend.
    ///
    /// When the listed pools have no backend for new flows even regardless
    /// of health (all drained), the fallback pool, if any, is the last
    /// resort: its backends that are not down, else all of them (panic).
    fn choose(&self, pools: &[&Pool]) -> Choice {
        let fallback_pool = self.vip.fallback_pool.as_deref().and_then(|n| self.config.pool(n));
        let fallback_choice = |fallback: &Pool| {
            let up = self.weights(&[fallback], Health::NotDown);
            let panic = up.is_empty();
            let weights = if panic { self.weights(&[fallback], Health::Ignored) } else { up };
            Choice { weights, pools: vec![fallback.name.clone()], fallback: true, panic }
        };
        let up = self.listed(pools, Health::NotDown);
        if up.is_none() {
            if let Some(fallback) = fallback_pool {
                let proof = if self.capped { Health::Passing } else { Health::NotDown };
                if !self.weights(&[fallback], proof).is_empty() {
                    return fallback_choice(fallback);
                }
            }
        }
        if self.capped {
            if let Some((weights, used)) = self.listed(pools, Health::Ignored) {
                return Choice { weights, pools: used, fallback: false, panic: true };
            }
        } else if let Some((weights, used)) = up {
            return Choice { weights, pools: used, fallback: false, panic: false };
        }
        let weights = self.weights(pools, Health::Ignored);
        match fallback_pool {
            Some(fallback) if weights.is_empty() => fallback_choice(fallback),
            _ => {
                Choice { weights, pools: pools.iter().map(|p| p.name.clone()).collect(), fallback: false, panic: true }
            }
        }
    }

    /// What the policy picks from `pools` counting backends by `health`:
    /// weights and the pools used, or `None` when nothing qualifies.
    fn listed(&self, pools: &[&Pool], health: Health) -> Option<(BTreeMap<IpAddr, u64>, Vec<String>)> {
        match self.vip.policy {
            Policy::Weighted => {
                let weights = self.weights(pools, health);
                (!weights.is_empty()).then(|| (weights, pools.iter().map(|p| p.name.clone()).collect()))
            }
            Policy::Failover => pools.iter().find_map(|pool| {
                let weights = self.weights(&[pool], health);
                (weights.len() >= self.vip.min_healthy as usize).then(|| (weights, vec![pool.name.clone()]))
            }),
        }
    }

    fn usable(&self, address: &IpAddr, health: Health) -> bool {
        let c = self.conditions.get(address).copied().unwrap_or_default();
        !c.drained
            && match health {
                Health::NotDown => !c.down,
                Health::Passing => !c.down && !c.failing,
                Health::Ignored => true,
            }
    }

    /// Effective weights of the backends of `pools` usable by `health`
    /// (those of effective weight 0 are left out).
    fn weights(&self, pools: &[&Pool], health: Health) -> BTreeMap<IpAddr, u64> {
        let mut weights = BTreeMap::new();
        for pool in pools {
            for backend in &pool.backends {
                if !self.usable(&backend.address, health) {
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
