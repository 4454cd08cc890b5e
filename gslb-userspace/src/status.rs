//! `gslb status`: what the agent steers, and how much.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::agent::Agent;
use crate::config::{Config, MonitorProtocol, Pool};
use crate::plan::latency_factor;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub edge: String,
    pub config: String,
    /// Whether this agent adopted a data plane pinned by an earlier one.
    pub adopted: bool,
    pub started_unix: u64,
    /// Interface -> how `steer` is attached: "native", "generic",
    /// "adopted", or "detached" (the interface is gone or attaching failed).
    pub interfaces: BTreeMap<String, String>,
    /// Each configured interface in detail (`links`).
    #[serde(default)]
    pub links: Vec<InterfaceStatus>,
    pub limits: Limits,
    pub counters: Counters,
    pub vips: Vec<VipStatus>,
    pub pools: Vec<PoolStatus>,
    pub reloads: u64,
    pub reloads_failed: u64,
    pub last_reload: Option<LastReload>,
    /// Backends that went down: how long detection and the data plane took.
    pub failovers: Vec<FailoverStatus>,
    /// BGP announcements; absent without `[bgp]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<crate::announce::status::BgpStatus>,
}

/// One configured interface: its state and `steer`'s attachment.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InterfaceStatus {
    pub name: String,
    /// "up", "down" (admin down or no carrier) or "missing" (no interface
    /// of this name).
    pub state: String,
    pub ifindex: Option<u32>,
    pub attached: bool,
    /// "native", "generic" or "adopted" while attached.
    pub mode: Option<String>,
    /// Times the agent attached `steer` again after the interface was
    /// recreated (or its pinned link was lost).
    pub reattaches: u64,
    pub last_event: Option<InterfaceEvent>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InterfaceEvent {
    pub at_unix_ms: u64,
    /// "down", "up", "vanished", "reattached" or "reattach-failed".
    pub kind: String,
    pub detail: String,
}

impl InterfaceStatus {
    fn of(name: &str, interface: &crate::links::Interface) -> InterfaceStatus {
        let state = match (interface.ifindex, interface.up) {
            (None, _) => "missing",
            (Some(_), true) => "up",
            (Some(_), false) => "down",
        };
        InterfaceStatus {
            name: name.to_string(),
            state: state.to_string(),
            ifindex: interface.ifindex,
            attached: interface.mode.is_some(),
            mode: interface.mode.map(|m| m.word().to_string()),
            reattaches: interface.reattaches,
            last_event: interface.last_event.as_ref().map(|e| InterfaceEvent {
                at_unix_ms: unix_ms(e.at),
                kind: config_word(e.kind),
                detail: e.detail.clone(),
            }),
        }
    }

    /// One line of `gslb status`.
    fn render(&self) -> String {
        let mut line = format!("  {}: {}", self.name, self.state);
        match &self.mode {
            Some(mode) => line += &format!(", steer attached ({mode})"),
            None => line += ", steer NOT attached",
        }
        if let Some(index) = self.ifindex {
            line += &format!(", ifindex {index}");
        }
        if self.reattaches > 0 {
            let plural = if self.reattaches == 1 { "" } else { "s" };
            line += &format!(", re-attached {} time{plural}", self.reattaches);
        }
        if let Some(event) = &self.last_event {
            let ago = unix_ms(SystemTime::now()).saturating_sub(event.at_unix_ms) / 1000;
            line += &format!("; last event {ago}s ago: {}", event.kind);
            if !event.detail.is_empty() {
                line += &format!(" ({})", event.detail);
            }
        }
        line
    }
}

/// One backend going down, measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FailoverStatus {
    pub backend: IpAddr,
    pub first_failure_unix_ms: u64,
    pub declared_down_unix_ms: u64,
    pub table_live_unix_ms: u64,
    /// First failed probe to the new table being live.
    pub total_ms: u64,
    /// Declared down to the new table being live.
    pub apply_ms: u64,
    /// `(consecutive_down + 1) x interval + timeout` of its monitor.
    pub worst_case_ms: u64,
}

/// Whether the other pools can absorb the loss of the busiest one.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CapacityStatus {
    pub ok: bool,
    pub message: String,
}

/// A client-prefix rule of a VIP, as it stands.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SteerStatus {
    pub client_prefix: String,
    pub pools: Vec<String>,
    pub active_pools: Vec<String>,
    pub fallback: bool,
    pub backends: Vec<VipBackend>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Limits {
    pub max_vips: u32,
    pub max_backends: u32,
    pub max_flows: u32,
    pub table_size: u32,
}

/// The data plane's global counters, as `steer` keeps them.
pub type Counters = gslb_common::GlobalStats;

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
    pub policy: String,
    /// Health checks would take out too many backends: all stay in rotation.
    pub panic: bool,
    /// New flows go to the fallback pool.
    pub fallback: bool,
    pub active_pools: Vec<String>,
    pub backends_down: usize,
    pub backends_total: usize,
    pub backends: Vec<VipBackend>,
    pub steer: Vec<SteerStatus>,
    pub capacity: Option<CapacityStatus>,
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
    /// `(consecutive_down + 1) x interval + timeout` of the pool's monitor.
    pub worst_case_failover_ms: Option<u64>,
    pub capacity: Option<f64>,
    pub max_utilization: f64,
    pub backends: Vec<BackendStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackendStatus {
    pub address: IpAddr,
    pub weight: u32,
    pub id: u32,
    pub packets: u64,
    pub bytes: u64,
    /// "up", "suspect", "down", or "unmonitored".
    pub health: String,
    /// Why it is in that state (the last failure), if anything failed.
    pub reason: Option<String>,
    pub rtt_avg_ms: Option<f64>,
    pub rtt_p99_ms: Option<f64>,
    /// Fraction of its weight kept at its probe latency (1 = all).
    pub latency_factor: f64,
    pub drained: bool,
    pub drain_until_unix: Option<u64>,
    /// Marked dead in the data plane: its recorded flows re-select.
    pub dead: bool,
    pub transitions: Vec<TransitionStatus>,
    /// ICMP errors about tunnel packets to it, by kind
    /// (`crate::tunnel_errors::Kind`): reported, never acted on.
    #[serde(default)]
    pub tunnel_errors: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TransitionStatus {
    pub at_unix_ms: u64,
    pub from: String,
    pub to: String,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LastReload {
    pub at_unix: u64,
    pub ok: bool,
    pub error: Option<String>,
}

fn render_table(out: &mut String, indent: &str, backends: &[VipBackend]) {
    let _ = writeln!(out, "{indent}{:<40} {:>10} {:>8} {:>7}", "backend", "weight", "slots", "share");
    for b in backends {
        let _ = writeln!(
            out,
            "{indent}{:<40} {:>10} {:>8} {:>6.1}%",
            b.address.to_string(),
            b.effective_weight,
            b.slots,
            b.share * 100.0
        );
    }
}

/// The backends of one table: weight, slots, share.
fn table_backends(agent: &Agent, weights: &BTreeMap<IpAddr, u64>, contents: &[u32]) -> Vec<VipBackend> {
    let mut slots: BTreeMap<u32, u32> = BTreeMap::new();
    for &id in contents {
        *slots.entry(id).or_default() += 1;
    }
    weights
        .iter()
        .map(|(address, &effective_weight)| {
            let id = agent.installed.backend_ids.get(address).copied().unwrap_or(0);
            let slots = slots.get(&id).copied().unwrap_or(0);
            VipBackend {
                address: *address,
                effective_weight,
                slots,
                share: slots as f64 / contents.len().max(1) as f64,
            }
        })
        .collect()
}

/// The N+1 rule for a VIP at its current shares: run at the highest load
/// that keeps every pool within its `max_utilization`, lose the busiest
/// pool, and see whether the others can carry its share within their
/// capacity. Needs every pool in use to declare `capacity`.
pub(crate) fn capacity(config: &Config, weights: &BTreeMap<IpAddr, u64>) -> Option<CapacityStatus> {
    let total: u64 = weights.values().sum();
    if total == 0 {
        return None;
    }
    // Each pool's share of new flows; an address in several pools counts
    // for the first.
    let mut shares: Vec<(&Pool, f64)> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for pool in &config.pools {
        let weight: u64 =
            pool.backends.iter().filter(|b| seen.insert(b.address)).filter_map(|b| weights.get(&b.address)).sum();
        if weight > 0 {
            shares.push((pool, weight as f64 / total as f64));
        }
    }
    if shares.len() < 2 || shares.iter().any(|(p, _)| p.capacity.is_none()) {
        return None;
    }
    let peak = shares
        .iter()
        .map(|(p, share)| p.capacity.unwrap_or(0.0) * p.max_utilization / share)
        .fold(f64::INFINITY, f64::min);
    let (busiest, lost) = shares.iter().copied().fold((shares[0].0, 0.0), |m, (p, s)| if s > m.1 { (p, s) } else { m });
    let mut worst: Option<(String, f64)> = None;
    for (pool, share) in &shares {
        if pool.name == busiest.name {
            continue;
        }
        let load = peak * share / (1.0 - lost) / pool.capacity.unwrap_or(1.0);
        if worst.as_ref().is_none_or(|(_, w)| load > *w) {
            worst = Some((pool.name.clone(), load));
        }
    }
    let (pool, load) = worst?;
    let ok = load <= 1.0;
    let message = if ok {
        format!("N+1 holds: losing {} puts {} at {:.0}% of capacity at peak", busiest.name, pool, load * 100.0)
    } else {
        format!(
            "N+1 FAILS: losing {} would put {} at {:.0}% of capacity at peak; add capacity or lower max_utilization",
            busiest.name,
            pool,
            load * 100.0
        )
    };
    Some(CapacityStatus { ok, message })
}

/// How the config file spells a value ("tcp", "source-ip", ...).
fn config_word(value: impl Serialize) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Status {
    pub fn of(agent: &Agent) -> Result<Status> {
        let steer = &agent.steer;
        let counters = steer.global_stats()?;
        let mut vips = Vec::new();
        for vip in &agent.config.vips {
            let Some((matcher, planned)) = agent.plan.vips.iter().find(|(_, p)| p.name == vip.name) else { continue };
            let Some(installed) = agent.installed.vips.get(matcher) else { continue };
            let stats = steer.vip_stats(installed.vip_id)?;
            let steer_rules = vip
                .steer
                .iter()
                .filter_map(|rule| {
                    let key = (rule.client_prefix.address, rule.client_prefix.len);
                    let table = planned.steer.get(&key)?;
                    let contents = &installed.steer.get(&key)?.contents;
                    Some(SteerStatus {
                        client_prefix: rule.client_prefix.to_string(),
                        pools: rule.pools.clone(),
                        active_pools: table.pools.clone(),
                        fallback: table.fallback,
                        backends: table_backends(agent, &table.weights, contents),
                    })
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
                policy: config_word(vip.policy),
                panic: planned.panic,
                fallback: planned.default.fallback,
                active_pools: planned.default.pools.clone(),
                backends_down: planned.down,
                backends_total: planned.total,
                backends: table_backends(agent, &planned.default.weights, &installed.default.contents),
                steer: steer_rules,
                capacity: capacity(&agent.config, &planned.default.weights),
            });
        }
        let mut pools = Vec::new();
        for pool in &agent.config.pools {
            let mut backends = Vec::new();
            for backend in &pool.backends {
                let id = agent.installed.backend_ids.get(&backend.address).copied().unwrap_or(0);
                let stats = steer.backend_stats(id)?;
                let state = agent.health.get(&backend.address);
                let rtt_avg_ms = state.and_then(|s| s.rtt_avg_ms());
                let drain = agent.drains.get(&backend.address);
                backends.push(BackendStatus {
                    address: backend.address,
                    weight: backend.weight,
                    id,
                    packets: stats.packets,
                    bytes: stats.bytes,
                    health: state.map_or("unmonitored".to_string(), |s| s.health().to_string()),
                    reason: state.and_then(|s| s.last_failure().map(str::to_string)),
                    rtt_avg_ms,
                    rtt_p99_ms: state.and_then(|s| s.rtt_p99_ms()),
                    latency_factor: latency_factor(pool.max_latency_ms, rtt_avg_ms),
                    drained: drain.is_some(),
                    drain_until_unix: drain.and_then(|d| d.until).map(unix),
                    dead: agent.installed.dead.contains(&backend.address),
                    transitions: state
                        .map(|s| {
                            s.transitions()
                                .map(|t| TransitionStatus {
                                    at_unix_ms: unix_ms(t.at),
                                    from: t.from.to_string(),
                                    to: t.to.to_string(),
                                    reason: t.reason.clone(),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    tunnel_errors: agent.tunnel_errors.counts(backend.address),
                });
            }
            pools.push(PoolStatus {
                name: pool.name.clone(),
                weight: pool.weight,
                worst_case_failover_ms: pool
                    .backends
                    .first()
                    .filter(|b| b.monitor.protocol != MonitorProtocol::None)
                    .map(|b| b.monitor.worst_case_failover_ms()),
                capacity: pool.capacity,
                max_utilization: pool.max_utilization,
                backends,
            });
        }
        let failovers = agent
            .failovers
            .done
            .iter()
            .map(|f| FailoverStatus {
                backend: f.backend,
                first_failure_unix_ms: unix_ms(f.first_failure),
                declared_down_unix_ms: unix_ms(f.declared_down),
                table_live_unix_ms: unix_ms(f.table_live),
                total_ms: unix_ms(f.table_live).saturating_sub(unix_ms(f.first_failure)),
                apply_ms: unix_ms(f.table_live).saturating_sub(unix_ms(f.declared_down)),
                worst_case_ms: f.worst_case.as_millis() as u64,
            })
            .collect();
        let limits = steer.limits;
        Ok(Status {
            edge: agent.config.edge.name.clone(),
            config: agent.config_path().display().to_string(),
            adopted: agent.adopted,
            started_unix: unix(agent.started),
            interfaces: agent
                .links
                .iter()
                .map(|(name, i)| (name.clone(), i.mode.map_or("detached", |m| m.word()).to_string()))
                .collect(),
            links: agent.links.iter().map(|(name, i)| InterfaceStatus::of(name, i)).collect(),
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
            reloads_failed: agent.reloads_failed,
            failovers,
            bgp: agent.announce.as_ref().map(|a| a.status()),
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
        for link in &self.links {
            let _ = writeln!(out, "{}", link.render());
        }
        let c = &self.counters;
        let _ = writeln!(
            out,
            "packets: received {}  forwarded {}  passed {}  dropped {}  malformed {}  fib failures {}",
            c.received, c.forwarded, c.passed, c.dropped, c.parse_failures, c.fib_failures
        );
        let _ = writeln!(
            out,
            "path MTU: too big answered {}  too big dropped {}  ICMP errors steered to their flow {}",
            c.too_big_answered, c.too_big_dropped, c.icmp_errors
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
            let mut flags = Vec::new();
            if vip.panic {
                flags.push("PANIC: health checks ignored, every backend in rotation".to_string());
            }
            if vip.fallback {
                flags.push("FALLBACK pool in use".to_string());
            }
            let _ = writeln!(
                out,
                "\nvip {} {}:{}/{} affinity {} policy {} pools {} (new flows to {}){}",
                vip.name,
                vip.address,
                vip.port,
                vip.protocol,
                vip.affinity,
                vip.policy,
                vip.pools.join(","),
                vip.active_pools.join(","),
                if flags.is_empty() { String::new() } else { format!("  [{}]", flags.join("; ")) }
            );
            let _ = writeln!(
                out,
                "  packets {}  bytes {}  new flows {}  flow hits {}  table lookups {}  backends down {}/{}",
                vip.packets,
                vip.bytes,
                vip.new_flows,
                vip.flow_hits,
                vip.flow_misses,
                vip.backends_down,
                vip.backends_total
            );
            render_table(&mut out, "  ", &vip.backends);
            for rule in &vip.steer {
                let _ = writeln!(
                    out,
                    "  clients in {}: pools {} (new flows to {}){}",
                    rule.client_prefix,
                    rule.pools.join(","),
                    rule.active_pools.join(","),
                    if rule.fallback { "  [FALLBACK]" } else { "" }
                );
                render_table(&mut out, "    ", &rule.backends);
            }
            if let Some(capacity) = &vip.capacity {
                let _ = writeln!(out, "  {}", capacity.message);
            }
        }
        for pool in &self.pools {
            let worst =
                pool.worst_case_failover_ms.map(|ms| format!("  worst-case failover {ms} ms")).unwrap_or_default();
            let _ = writeln!(out, "\npool {} weight {}{}", pool.name, pool.weight, worst);
            let _ = writeln!(
                out,
                "  {:<28} {:>6} {:>5} {:>11} {:>9} {:>9} {:>7} {:>12} {:>8}  last change",
                "backend", "weight", "id", "health", "rtt ms", "p99 ms", "factor", "packets", "tun errs"
            );
            for b in &pool.backends {
                let mut health = b.health.clone();
                if b.drained {
                    health.push_str("+drain");
                }
                if b.dead {
                    health.push_str("+dead");
                }
                let ms = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into());
                let last = b.transitions.last().map(|t| {
                    let ago = unix_ms(std::time::SystemTime::now()).saturating_sub(t.at_unix_ms) / 1000;
                    format!("{} -> {} {ago}s ago: {}", t.from, t.to, t.reason)
                });
                let _ = writeln!(
                    out,
                    "  {:<28} {:>6} {:>5} {:>11} {:>9} {:>9} {:>7.2} {:>12} {:>8}  {}",
                    b.address.to_string(),
                    b.weight,
                    b.id,
                    health,
                    ms(b.rtt_avg_ms),
                    ms(b.rtt_p99_ms),
                    b.latency_factor,
                    b.packets,
                    b.tunnel_errors.values().sum::<u64>(),
                    last.or(b.reason.clone()).unwrap_or_default()
                );
                if !b.tunnel_errors.is_empty() {
                    let kinds: Vec<String> = b.tunnel_errors.iter().map(|(k, n)| format!("{k} {n}")).collect();
                    let _ = writeln!(out, "    tunnel errors (ICMP about tunnel packets): {}", kinds.join(", "));
                }
            }
        }
        if let Some(bgp) = &self.bgp {
            out.push_str(&bgp.render());
        }
        if !self.failovers.is_empty() {
            let _ = writeln!(out, "\nfailovers (first failed probe -> new tables live):");
            for f in self.failovers.iter().rev().take(10) {
                let _ = writeln!(
                    out,
                    "  {:<28} total {:>6} ms (applying {:>4} ms)  worst case {} ms",
                    f.backend.to_string(),
                    f.total_ms,
                    f.apply_ms,
                    f.worst_case_ms
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    fn config_with(capacities: &str) -> Config {
        let text = format!(
            "[edge]\nname = \"e\"\ninterfaces = [\"eth0\"]\ntunnel_source_v4 = \"192.0.2.1\"\n\n[[vip]]\nname = \"web\"\naddress = \"203.0.113.1\"\nport = 80\nprotocol = \"tcp\"\npools = [\"a\", \"b\", \"c\"]\n{capacities}"
        );
        config::parse(&text, std::path::Path::new("t.toml")).unwrap()
    }

    fn weights(config: &Config) -> BTreeMap<IpAddr, u64> {
        config.effective_weights(&config.vips[0])
    }

    #[test]
    fn n_plus_one_holds_with_headroom_and_fails_without() {
        let pools = |utilization: f64| {
            ["a", "b", "c"]
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    format!(
                        "[[pool]]\nname = \"{name}\"\ncapacity = 100\nmax_utilization = {utilization}\nbackends = [ {{ address = \"10.0.0.{}\" }} ]\n",
                        i + 1
                    )
                })
                .collect::<String>()
        };
        // Three equal pools at 75%: peak 225, and losing one puts 112.5 on
        // each survivor of capacity 100.
        let tight = config_with(&pools(0.75));
        let verdict = capacity(&tight, &weights(&tight)).unwrap();
        assert!(!verdict.ok && verdict.message.contains("112%"), "{}", verdict.message);
        // At 60%: peak 180, 90 on each survivor.
        let roomy = config_with(&pools(0.6));
        let verdict = capacity(&roomy, &weights(&roomy)).unwrap();
        assert!(verdict.ok && verdict.message.contains("90%"), "{}", verdict.message);
    }

    #[test]
    fn no_verdict_without_capacities() {
        let text = "[[pool]]\nname = \"a\"\nbackends = [ { address = \"10.0.0.1\" } ]\n[[pool]]\nname = \"b\"\nbackends = [ { address = \"10.0.0.2\" } ]\n[[pool]]\nname = \"c\"\nbackends = [ { address = \"10.0.0.3\" } ]\n";
        let config = config_with(text);
        assert!(capacity(&config, &weights(&config)).is_none());
    }
}
