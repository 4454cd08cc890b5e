//! The agent's reactions: health events, drains, and the failover-time
//! records they produce. Each ends in `Agent::refresh`, which re-plans with
//! what the agent now knows and writes only what changed.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Result};
use tracing::{info, warn};

use super::Agent;
use crate::decide::conditions::{conditions_of, Drain};
use crate::decide::plan::{latency_factor, Conditions};
use crate::fleet::sync::DrainOp;
use crate::health::{Health, HealthEvent};
use crate::reconcile::Changes;

impl Agent {
    /// What the planner should know of each backend now.
    pub(super) fn conditions(&self, now: SystemTime) -> Conditions {
        let mut conditions = conditions_of(&self.config, &self.health, &self.drains, now);
        self.overlay_fleet_verdicts(&mut conditions);
        conditions
    }

    /// Re-plans with the current conditions and applies the difference;
    /// failovers waiting on it are stamped with the time it went live.
    pub fn refresh(&mut self) -> Result<Changes> {
        let conditions = self.conditions(SystemTime::now());
        let changes = self.replan(&conditions)?;
        let monitored = self.config.monitored_backends();
        let worst_case = |backend: IpAddr| {
            Duration::from_millis(monitored.get(&backend).map(|m| m.worst_case_failover_ms()).unwrap_or(0))
        };
        for record in self.failovers.complete(SystemTime::now(), worst_case) {
            info!(
                backend = %record.backend,
                total_ms = record.total_ms(),
                apply_ms = record.apply_ms(),
                worst_case_ms = record.worst_case.as_millis() as u64,
                "failover complete: new tables live"
            );
        }
        if !changes.is_empty() {
            info!(?changes, "tables updated");
        }
        Ok(changes)
    }

    /// Takes one probe result. Re-plans when the backend's health changed,
    /// or when its latency moved it to another weight step.
    pub fn on_health(&mut self, event: HealthEvent) -> Result<()> {
        let address = event.address;
        let Some(transition) = self.health.apply(event) else {
            if self.latency_step_changed(address) {
                self.refresh()?;
            }
            return Ok(());
        };
        self.note_disagreements();
        if transition.to == Health::Down {
            let state = self.health.get(&address);
            let first_failure = state.and_then(|s| s.first_failure_at()).unwrap_or(transition.at);
            let declared_down = state.and_then(|s| s.down_at()).unwrap_or(transition.at);
            self.failovers.begin(address, first_failure, declared_down);
        }
        if transition.from == Health::Down || transition.to == Health::Down {
            self.refresh()?;
        }
        Ok(())
    }

    /// Whether a backend's latency factor changed step since last asked.
    fn latency_step_changed(&mut self, address: IpAddr) -> bool {
        let rtt = self.health.get(&address).and_then(|s| s.rtt_avg_ms());
        let steps: Vec<u32> = self
            .config
            .pools
            .iter()
            .filter(|p| p.backends.iter().any(|b| b.address == address))
            .map(|p| (latency_factor(p.max_latency_ms, rtt) * 100.0).round() as u32)
            .collect();
        self.latency_steps.insert(address, steps.clone()) != Some(steps)
    }

    /// Drains a backend (by address) or every backend of a pool (by name).
    pub fn drain(&mut self, target: &str, duration: Option<Duration>) -> Result<Vec<IpAddr>> {
        let backends = self.resolve(target)?;
        let now = SystemTime::now();
        for backend in &backends {
            let drain = Drain { since: now, until: duration.map(|d| now + d) };
            self.drains.insert(*backend, drain);
            self.share_drain(DrainOp::Drain(*backend, super::state::drain_record(&drain)));
            info!(backend = %backend, ?duration, "drained: no new flows");
        }
        self.persist();
        self.refresh()?;
        Ok(backends)
    }

    pub fn undrain(&mut self, target: &str) -> Result<Vec<IpAddr>> {
        let backends = self.resolve(target)?;
        for backend in &backends {
            if self.drains.remove(backend).is_some() {
                info!(backend = %backend, "undrained");
            }
            self.share_drain(DrainOp::Undrain(*backend));
        }
        self.persist();
        self.refresh()?;
        Ok(backends)
    }

    /// Cuts the recorded flows of drains whose time is over.
    pub fn expire_drains(&mut self) -> Result<()> {
        let now = SystemTime::now();
        let expired: Vec<IpAddr> = self
            .drains
            .iter()
            .filter(|(a, d)| d.until.is_some_and(|u| u <= now) && !self.installed.dead.contains(a))
            .map(|(a, _)| *a)
            .collect();
        if !expired.is_empty() {
            warn!(?expired, "drain time over: cutting the remaining flows");
            self.refresh()?;
        }
        Ok(())
    }

    /// A backend address, or a pool's backends.
    fn resolve(&self, target: &str) -> Result<Vec<IpAddr>> {
        if let Ok(address) = target.parse::<IpAddr>() {
            if self.config.pools.iter().any(|p| p.backends.iter().any(|b| b.address == address)) {
                return Ok(vec![address]);
            }
            bail!("no backend {address} in the config");
        }
        match self.config.pool(target) {
            Some(pool) => Ok(pool.backends.iter().map(|b| b.address).collect()),
            None => bail!("{target:?} is neither a backend address nor a pool name"),
        }
    }

    /// Drops drains and latency steps of backends no longer configured,
    /// and saves the drains left.
    pub(super) fn forget_removed(&mut self) {
        let known: Vec<IpAddr> = self.config.pools.iter().flat_map(|p| p.backends.iter().map(|b| b.address)).collect();
        self.drains.retain(|a, _| {
            let keep = known.contains(a);
            if !keep {
                info!(backend = %a, "drain dropped: the backend is no longer in the config");
            }
            keep
        });
        self.latency_steps.retain(|a, _| known.contains(a));
        self.persist();
    }
}
