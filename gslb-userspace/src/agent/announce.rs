//! The agent's side of BGP announcements: what the decision needs to know
//! of the agent, and the operator's edge drain.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Result};

use super::Agent;
use crate::announce::{has_serving_pool, Inputs, VipView};
use crate::fleet::keys::DrainRecord;
use crate::fleet::unix_ms;
use crate::health::Health;

impl Agent {
    /// What the decision needs to know now.
    fn announce_inputs(&self) -> Inputs {
        let steer_attached = self.interfaces.iter().any(|(_, i)| i.mode.is_some());
        let monitored: Vec<IpAddr> =
            self.config.monitored_backends().into_iter().filter(|(_, m)| m.is_enabled()).map(|(a, _)| a).collect();
        // A monitored backend counts once a probe has succeeded (it has an
        // RTT): a starting agent takes every backend as up, and must not
        // announce on that assumption alone.
        let serves = |a: &IpAddr| match self.health.get(a) {
            Some(state) if monitored.contains(a) => state.health() != Health::Down && state.rtt_avg_ms().is_some(),
            _ => true,
        };
        let all_failing = !monitored.is_empty()
            && monitored.iter().all(|a| self.health.get(a).is_some_and(|s| s.health() != Health::Up));
        let vips = self
            .config
            .vips
            .iter()
            .map(|vip| {
                let planned = self.plan.vips.values().find(|p| p.name == vip.name);
                let serving = planned.is_some_and(|p| has_serving_pool(&p.default, serves));
                VipView { name: vip.name.clone(), address: vip.address, serving }
            })
            .collect();
        Inputs { steer_attached, all_failing, fleet_unreachable: self.fleet_withdraws(), vips }
    }

    /// Steps the decision and hands changed routes to the daemon worker.
    pub fn step_announcements(&mut self) {
        let inputs = self.announce_inputs();
        let Some(announcer) = &mut self.announcer else { return };
        announcer.step(&inputs);
        // An edge drain given `--for` ends in the step: off the file.
        if !announcer.edge_drained() && self.state.live.edge_drain.take().is_some() {
            self.persist();
        }
    }

    /// Takes back the edge drain the state file holds (`start_announcing`),
    /// or drops it when this edge announces nothing.
    pub(super) fn restore_edge_drain(&mut self) {
        match &mut self.announcer {
            Some(announcer) => {
                if let Some((elapsed, remaining)) = self.state.restore_edge_drain(SystemTime::now()) {
                    announcer.restore_edge_drain(elapsed, remaining);
                }
            }
            None => self.state.drop_edge_drain("this edge announces nothing over BGP ([bgp] daemon is \"none\")"),
        }
        self.persist();
    }

    /// `gslb drain --edge`: announce less preferred, then withdraw.
    pub fn drain_edge(&mut self, duration: Option<Duration>) -> Result<()> {
        let Some(announcer) = &mut self.announcer else {
            bail!("this edge announces nothing over BGP ([bgp] daemon is \"none\"); an edge drain needs a daemon");
        };
        announcer.drain_edge(duration);
        let now = SystemTime::now();
        self.state.live.edge_drain =
            Some(DrainRecord { since_ms: unix_ms(now), until_ms: duration.map(|d| unix_ms(now + d)) });
        self.persist();
        self.step_announcements();
        Ok(())
    }

    pub fn undrain_edge(&mut self) -> Result<()> {
        let Some(announcer) = &mut self.announcer else {
            bail!("this edge announces nothing over BGP ([bgp] daemon is \"none\")");
        };
        announcer.undrain_edge();
        self.state.live.edge_drain = None;
        self.persist();
        self.step_announcements();
        Ok(())
    }
}
