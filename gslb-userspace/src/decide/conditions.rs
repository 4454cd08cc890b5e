//! What the planner knows of each backend beyond the config: health from
//! the checks, drains from the operator, probe latency.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::SystemTime;

use crate::config::Config;
use crate::decide::plan::{Condition, Conditions};
use crate::health::{Health, HealthTable};

/// An operator's drain of one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Drain {
    pub since: SystemTime,
    /// When recorded flows are cut too; `None`: they run until they end.
    pub until: Option<SystemTime>,
}

/// Drains in force, by backend.
pub type Drains = BTreeMap<IpAddr, Drain>;

/// The latency step of each backend last planned with.
pub type LatencySteps = BTreeMap<IpAddr, Vec<u32>>;

/// What the planner should know of each configured backend: health from
/// the checks, drains from the operator.
pub fn conditions_of(config: &Config, health: &HealthTable, drains: &Drains, now: SystemTime) -> Conditions {
    let mut conditions = Conditions::new();
    for backend in config.pools.iter().flat_map(|p| &p.backends) {
        let state = health.get(&backend.address);
        let drain = drains.get(&backend.address);
        conditions.insert(
            backend.address,
            Condition {
                down: state.is_some_and(|s| s.health() == Health::Down),
                failing: state.is_some_and(|s| s.health() != Health::Up),
                drained: drain.is_some(),
                drain_expired: drain.and_then(|d| d.until).is_some_and(|until| until <= now),
                rtt_avg_ms: state.and_then(|s| s.rtt_avg_ms()),
            },
        );
    }
    conditions
}
