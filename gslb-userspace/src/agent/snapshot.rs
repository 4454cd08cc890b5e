//! The agent's state as a status snapshot: the one place that reads the
//! agent's fields for `gslb status`, the admin socket and the metrics.

use std::collections::BTreeMap;
use std::net::IpAddr;

use anyhow::Result;
use gslb_common::NEXT_HOP_VALID;
use serde::Serialize;

use super::Agent;
use crate::config::MonitorProtocol;
use crate::decide::capacity::capacity;
use crate::decide::plan::latency_factor;
use crate::reconcile::{Installed, InstalledTable};
use crate::sys::interfaces::Interface;
use crate::sys::next_hops;
use crate::sys::steer::Steer;
use crate::view::status::{
    BackendStatus, CapacityStatus, ClientRuleStatus, FailoverStatus, InterfaceEvent, InterfaceStatus, LastReload,
    Limits, NextHopStatus, PoolStatus, SecondChanceStatus, Status, TransitionStatus, VipBackend, VipStatus,
};
use crate::view::time::{unix_ms, unix_secs};

impl Agent {
    /// A snapshot of the agent's state, as the status contract carries it.
    pub fn status(&self) -> Result<Status> {
        let agent = self;
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
                    let table = planned.client_tables.get(&key)?;
                    let live = installed.client_tables.get(&key)?;
                    Some(ClientRuleStatus {
                        client_prefix: rule.client_prefix.to_string(),
                        pools: rule.pools.clone(),
                        active_pools: table.pools.clone(),
                        fallback: table.fallback,
                        backends: table_backends(&agent.installed, &table.weights, live),
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
                backends: table_backends(&agent.installed, &planned.default.weights, &installed.default),
                steer: steer_rules,
                capacity: capacity(&agent.config, &planned.default.weights)
                    .map(|v| CapacityStatus { ok: v.ok, message: v.message }),
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
                    drain_until_unix: drain.and_then(|d| d.until).map(unix_secs),
                    dead: agent.installed.dead.contains(&backend.address),
                    second_chance: agent.installed.second_chance.contains(&backend.address),
                    hop_list_packets: stats.hop_list_packets,
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
                    next_hop: next_hop_status(steer, id),
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
            .done()
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
        let edge = steer.edge_settings()?;
        Ok(Status {
            edge: agent.config.edge.name.clone(),
            config: agent.config_path.display().to_string(),
            adopted: agent.adopted,
            started_unix: unix_secs(agent.started),
            program: agent.program.clone(),
            interfaces: agent
                .interfaces
                .iter()
                .map(|(name, i)| (name.clone(), i.mode.map_or("detached", |m| m.word()).to_string()))
                .collect(),
            links: agent.interfaces.iter().map(|(name, i)| interface_status(name, i)).collect(),
            limits: Limits {
                max_vips: limits.max_vips,
                max_backends: limits.max_backends,
                max_flows: limits.max_flows,
                table_size: limits.table_size,
            },
            second_chance: SecondChanceStatus {
                stickiness_window_secs: edge.stickiness_window_secs,
                gue_port: edge.gue_port,
            },
            counters,
            vips,
            pools,
            reloads: agent.reloads,
            reloads_failed: agent.reloads_failed,
            failovers,
            failovers_over_budget: agent.failovers.over_budget(),
            bgp: agent.announcer.as_ref().map(|a| a.status()),
            fleet: agent.fleet_status(),
            state_file: Some(agent.state.status()),
            last_reload: agent.last_reload.as_ref().map(|r| LastReload {
                at_unix: unix_secs(r.at),
                ok: r.ok,
                error: r.error.clone(),
            }),
        })
    }
}

/// The backends of one table: weight, slots, share.
fn table_backends(installed: &Installed, weights: &BTreeMap<IpAddr, u64>, live: &InstalledTable) -> Vec<VipBackend> {
    let size = live.size();
    weights
        .iter()
        .map(|(address, &effective_weight)| {
            let id = installed.backend_ids.get(address).copied().unwrap_or(0);
            let slots = live.slots.get(&id).copied().unwrap_or(0);
            VipBackend { address: *address, effective_weight, slots, share: slots as f64 / size.max(1) as f64 }
        })
        .collect()
}

/// Backend `id`'s next hop, when `steer` has a valid one.
fn next_hop_status(steer: &Steer, id: u32) -> Option<NextHopStatus> {
    let hop = steer.next_hop(id).ok().filter(|h| id != 0 && h.flags & NEXT_HOP_VALID != 0)?;
    Some(NextHopStatus {
        interface: next_hops::interface_name(hop.ifindex).unwrap_or_default(),
        ifindex: hop.ifindex,
        mac: next_hops::format_mac(hop.dst_mac),
        mtu: hop.mtu,
    })
}

/// One configured interface, as status reports it.
fn interface_status(name: &str, interface: &Interface) -> InterfaceStatus {
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

/// How the config file spells a value ("tcp", "source-ip", ...).
fn config_word(value: impl Serialize) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}
