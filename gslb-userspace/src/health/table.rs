//! The health of every monitored backend, fed with the scheduler's events.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::SystemTime;

use tracing::{info, warn};

use super::state::{BackendState, Health, Transition};
use super::{HealthEvent, Monitor};

/// The [`BackendState`] of each monitored backend, by address.
///
/// Unmonitored backends (monitor protocol `None`) are not in the table:
/// callers treat them as up ([`HealthTable::health`] does).
#[derive(Debug, Clone, Default)]
pub struct HealthTable {
    backends: BTreeMap<IpAddr, BackendState>,
}

impl HealthTable {
    pub fn new() -> HealthTable {
        HealthTable::default()
    }

    /// Follows a new set of monitors: backends with a new monitor start
    /// `Up`, those whose monitor changed keep their state under the new
    /// thresholds, and backends no longer monitored are dropped.
    pub fn update(&mut self, wanted: &BTreeMap<IpAddr, Monitor>) {
        self.backends.retain(|address, _| wanted.get(address).is_some_and(Monitor::is_enabled));
        for (address, monitor) in wanted.iter().filter(|(_, m)| m.is_enabled()) {
            self.backends
                .entry(*address)
                .and_modify(|state| state.set_thresholds(monitor.consecutive_up, monitor.consecutive_down))
                .or_insert_with(|| BackendState::new(monitor.consecutive_up, monitor.consecutive_down));
        }
    }

    /// Starts a monitored backend as down, for `reason` (a backend the
    /// previous agent had marked dead): it serves again only after
    /// `consecutive_up` good checks, as if this agent had seen it fail.
    pub fn assume_down(&mut self, address: IpAddr, at: SystemTime, reason: &str) {
        if let Some(state) = self.backends.get_mut(&address) {
            let (_, down) = state.thresholds();
            for _ in 0..down {
                state.record(at, Err(reason));
            }
        }
    }

    /// Keeps only the backends at `addresses`.
    pub fn retain(&mut self, addresses: impl IntoIterator<Item = IpAddr>) {
        let keep: BTreeSet<IpAddr> = addresses.into_iter().collect();
        self.backends.retain(|address, _| keep.contains(address));
    }

    /// Records a probe result and logs the transition it causes, if any:
    /// at warn when the backend goes down, at info otherwise. Events for a
    /// backend not in the table (one just removed, whose last probe was
    /// already queued) are ignored.
    pub fn apply(&mut self, event: HealthEvent) -> Option<Transition> {
        let state = self.backends.get_mut(&event.address)?;
        let result = event.result.as_ref().map(|rtt| *rtt).map_err(|failure| failure.reason.as_str());
        let transition = state.record(event.at, result)?;
        let addr = event.address;
        let (from, to, reason) = (transition.from, transition.to, &transition.reason);
        if to == Health::Down {
            warn!(backend = %addr, from = ?from, to = ?to, reason = %reason, "health transition");
        } else {
            info!(backend = %addr, from = ?from, to = ?to, reason = %reason, "health transition");
        }
        Some(transition)
    }

    /// The backend's state, if it is monitored.
    pub fn get(&self, address: &IpAddr) -> Option<&BackendState> {
        self.backends.get(address)
    }

    /// The backend's health; `Up` if it is not monitored.
    pub fn health(&self, address: &IpAddr) -> Health {
        self.backends.get(address).map_or(Health::Up, BackendState::health)
    }

    /// Monitored backends, by address.
    pub fn iter(&self) -> impl Iterator<Item = (&IpAddr, &BackendState)> {
        self.backends.iter()
    }

    /// How many backends are monitored.
    pub fn len(&self) -> usize {
        self.backends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::health::testing::monitor;
    use crate::health::{MonitorProtocol, ProbeFailure};

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    fn event(address: IpAddr, ok: bool) -> HealthEvent {
        HealthEvent {
            address,
            at: SystemTime::now(),
            result: if ok {
                Ok(Duration::from_millis(2))
            } else {
                Err(ProbeFailure { kind: "refused".into(), reason: "connection refused".into() })
            },
        }
    }

    #[test]
    fn tracks_monitored_backends_only() {
        let mut wanted = BTreeMap::new();
        let mut m = monitor(MonitorProtocol::Tcp, 80);
        m.consecutive_down = 2;
        wanted.insert(ip(1), m.clone());
        wanted.insert(ip(2), monitor(MonitorProtocol::None, 0));
        let mut table = HealthTable::new();
        table.update(&wanted);
        assert_eq!(table.len(), 1);
        assert!(table.get(&ip(2)).is_none());
        assert_eq!(table.health(&ip(2)), Health::Up);

        // Unknown backends' events are ignored.
        assert_eq!(table.apply(event(ip(2), false)), None);
        assert_eq!(table.apply(event(ip(3), false)), None);

        let t = table.apply(event(ip(1), false)).unwrap();
        assert_eq!((t.from, t.to, t.reason.as_str()), (Health::Up, Health::Suspect, "connection refused"));
        let t = table.apply(event(ip(1), false)).unwrap();
        assert_eq!(t.to, Health::Down);
        assert_eq!(table.health(&ip(1)), Health::Down);

        // New thresholds keep the state.
        m.consecutive_up = 1;
        wanted.insert(ip(1), m);
        table.update(&wanted);
        assert_eq!(table.health(&ip(1)), Health::Down);
        assert_eq!(table.apply(event(ip(1), true)).unwrap().to, Health::Up);

        // Dropped when no longer monitored.
        wanted.insert(ip(1), monitor(MonitorProtocol::None, 0));
        table.update(&wanted);
        assert!(table.is_empty());
    }

    #[test]
    fn retain_drops_removed_backends() {
        let wanted: BTreeMap<IpAddr, Monitor> = (1..=3).map(|i| (ip(i), monitor(MonitorProtocol::Tcp, 80))).collect();
        let mut table = HealthTable::new();
        table.update(&wanted);
        table.retain([ip(1), ip(3), ip(9)]);
        let kept: Vec<IpAddr> = table.iter().map(|(a, _)| *a).collect();
        assert_eq!(kept, vec![ip(1), ip(3)]);
    }
}
