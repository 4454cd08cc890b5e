//! `gslb status`: what the agent steers, and how much.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::agent::Agent;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub edge: String,
    pub config: String,
    /// Whether this agent adopted a data plane pinned by an earlier one.
    pub adopted: bool,
    pub started_unix: u64,
    pub interfaces: BTreeMap<String, String>,
    pub limits: Limits,
    pub counters: Counters,
    pub vips: Vec<VipStatus>,
    pub pools: Vec<PoolStatus>,
    pub reloads: u64,
    pub last_reload: Option<LastReload>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Limits {
    pub max_vips: u32,
    pub max_backends: u32,
    pub max_flows: u32,
    pub table_size: u32,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Counters {
    pub received: u64,
    pub passed: u64,
    pub parse_failures: u64,
    pub fragments: u64,
    pub fib_failures: u64,
    pub neighbour_pending: u64,
    pub forwarded: u64,
    pub dropped: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VipStatus {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: String,
    pub affinity: String,
    pub pools: Vec<String>,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub flow_hits: u64,
    pub flow_misses: u64,
    pub backends: Vec<VipBackend>,
}

/// A backend as one VIP uses it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VipBackend {
    pub address: IpAddr,
    /// Pool weight x backend weight, summed over the VIP's pools.
    pub effective_weight: u64,
    /// Slots of the VIP's lookup table, and their fraction of it.
    pub slots: u32,
    pub share: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PoolStatus {
    pub name: String,
    pub weight: u32,
    pub backends: Vec<BackendStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackendStatus {
    pub address: IpAddr,
    pub weight: u32,
    pub id: u32,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LastReload {
    pub at_unix: u64,
    pub ok: bool,
    pub error: Option<String>,
}

/// How the config file spells a value ("tcp", "source-ip", ...).
fn config_word(value: impl Serialize) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Status {
    pub fn of(agent: &Agent) -> Result<Status> {
        let steer = &agent.steer;
        let g = steer.global_stats()?;
        let counters = Counters {
            received: g.received,
            passed: g.passed,
            parse_failures: g.parse_failures,
            fragments: g.fragments,
            fib_failures: g.fib_failures,
            neighbour_pending: g.neighbour_pending,
            forwarded: g.forwarded,
            dropped: g.dropped,
        };
        let mut vips = Vec::new();
        for vip in &agent.config.vips {
            let Some((matcher, planned)) = agent.plan.vips.iter().find(|(_, p)| p.name == vip.name) else { continue };
            let Some(installed) = agent.installed.vips.get(matcher) else { continue };
            let stats = steer.vip_stats(installed.vip_id)?;
            let mut slots: BTreeMap<u32, u32> = BTreeMap::new();
            for &id in &installed.table {
                *slots.entry(id).or_default() += 1;
            }
            let backends = planned
                .weights
                .iter()
                .map(|(address, &effective_weight)| {
                    let id = agent.installed.backend_ids.get(address).copied().unwrap_or(0);
                    let slots = slots.get(&id).copied().unwrap_or(0);
                    VipBackend {
                        address: *address,
                        effective_weight,
                        slots,
                        share: slots as f64 / installed.table.len() as f64,
                    }
                })
                .collect();
            vips.push(VipStatus {
                name: vip.name.clone(),
                address: vip.address,
                port: vip.port,
                protocol: config_word(vip.protocol),
                affinity: config_word(vip.affinity),
                pools: vip.pools.clone(),
                packets: stats.packets,
                bytes: stats.bytes,
                new_flows: stats.new_flows,
                flow_hits: stats.flow_hits,
                flow_misses: stats.flow_misses,
                backends,
            });
        }
        let mut pools = Vec::new();
        for pool in &agent.config.pools {
            let mut backends = Vec::new();
            for backend in &pool.backends {
                let id = agent.installed.backend_ids.get(&backend.address).copied().unwrap_or(0);
                let stats = steer.backend_stats(id)?;
                backends.push(BackendStatus {
                    address: backend.address,
                    weight: backend.weight,
                    id,
                    packets: stats.packets,
                    bytes: stats.bytes,
                });
            }
            pools.push(PoolStatus { name: pool.name.clone(), weight: pool.weight, backends });
        }
        let limits = steer.limits;
        Ok(Status {
            edge: agent.config.edge.name.clone(),
            config: agent.config_path().display().to_string(),
            adopted: agent.adopted,
            started_unix: unix(agent.started),
            interfaces: agent.interfaces.iter().map(|(name, mode)| (name.clone(), config_word(mode))).collect(),
            limits: Limits {
                max_vips: limits.max_vips,
                max_backends: limits.max_backends,
                max_flows: limits.max_flows,
                table_size: limits.table_size,
            },
            counters,
            vips,
            pools,
            reloads: agent.reloads,
            last_reload: agent.last_reload.as_ref().map(|r| LastReload {
                at_unix: unix(r.at),
                ok: r.ok,
                error: r.error.clone(),
            }),
        })
    }

    /// The human-readable form of `gslb status`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let interfaces: Vec<String> = self.interfaces.iter().map(|(i, m)| format!("{i} ({m})")).collect();
        let _ = writeln!(out, "edge {}  config {}", self.edge, self.config);
        let _ = writeln!(
            out,
            "interfaces: {}{}",
            interfaces.join(", "),
            if self.adopted { "  [adopted pinned state]" } else { "" }
        );
        let c = &self.counters;
        let _ = writeln!(
            out,
            "packets: received {}  forwarded {}  passed {}  dropped {}  malformed {}  fib failures {}",
            c.received, c.forwarded, c.passed, c.dropped, c.parse_failures, c.fib_failures
        );
        if let Some(r) = &self.last_reload {
            let _ = writeln!(
                out,
                "last reload: {}{}",
                if r.ok { "applied" } else { "REFUSED" },
                r.error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
            );
        }
        for vip in &self.vips {
            let _ = writeln!(
                out,
                "\nvip {} {}:{}/{} affinity {} pools {}",
                vip.name,
                vip.address,
                vip.port,
                vip.protocol,
                vip.affinity,
                vip.pools.join(",")
            );
            let _ = writeln!(
                out,
                "  packets {}  bytes {}  new flows {}  flow hits {}  table lookups {}",
                vip.packets, vip.bytes, vip.new_flows, vip.flow_hits, vip.flow_misses
            );
            let _ = writeln!(out, "  {:<40} {:>10} {:>8} {:>7}", "backend", "weight", "slots", "share");
            for b in &vip.backends {
                let _ = writeln!(
                    out,
                    "  {:<40} {:>10} {:>8} {:>6.1}%",
                    b.address.to_string(),
                    b.effective_weight,
                    b.slots,
                    b.share * 100.0
                );
            }
        }
        for pool in &self.pools {
            let _ = writeln!(out, "\npool {} weight {}", pool.name, pool.weight);
            let _ = writeln!(out, "  {:<40} {:>6} {:>6} {:>12} {:>14}", "backend", "weight", "id", "packets", "bytes");
            for b in &pool.backends {
                let _ = writeln!(
                    out,
                    "  {:<40} {:>6} {:>6} {:>12} {:>14}",
                    b.address.to_string(),
                    b.weight,
                    b.id,
                    b.packets,
                    b.bytes
                );
            }
        }
        out
    }
}
