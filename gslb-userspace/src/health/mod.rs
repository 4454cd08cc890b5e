//! Health monitoring of backends.
//!
//! - [`probe`] checks one backend once (TCP connect, HTTP or HTTPS GET);
//! - [`Monitors`] runs one task per monitored backend that probes it every
//!   `interval_ms` and sends each result as a [`HealthEvent`];
//! - [`HealthTable`] turns those events into each backend's [`Health`]
//!   (`Up`, `Suspect`, `Down`) with the state machine of [`state`], and
//!   logs the transitions.
//!
//! The owner of the table (the agent) reads the events from the channel,
//! applies them, and acts on the transitions; this module changes nothing
//! in the data plane.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::debug;

use crate::config::{ExpectedCodes, Monitor, MonitorProtocol};

pub mod probe;
pub mod state;
mod table;
#[cfg(test)]
mod testing;

pub use probe::{probe, ProbeError, Prober};
pub use state::{BackendState, Health, Transition};
pub use table::HealthTable;

/// Jitter of the probe interval: each wait is the interval times a random
/// factor in `1 ± JITTER`, so that the checks of backends started together
/// (all of them, when the agent starts) spread out instead of firing at the
/// same instant for ever.
pub const JITTER: f64 = 0.1;

/// One probe's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthEvent {
    /// The backend probed.
    pub address: IpAddr,
    /// When the result was known (the probe's end).
    pub at: SystemTime,
    /// The RTT, or why the probe failed.
    pub result: Result<Duration, ProbeFailure>,
}

/// Why a probe failed, as plain strings: see [`ProbeError`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeFailure {
    /// [`ProbeError::kind`]: "timeout", "refused", "unreachable", "status",
    /// "tls" or "io".
    pub kind: String,
    /// [`ProbeError`]'s Display: "timeout after 500ms", "status 503", ...
    pub reason: String,
}

impl From<&ProbeError> for ProbeFailure {
    fn from(error: &ProbeError) -> ProbeFailure {
        ProbeFailure { kind: error.kind().to_string(), reason: error.to_string() }
    }
}

impl fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// The probing tasks: one per monitored backend.
///
/// Each task probes its backend every `interval_ms` (times a random factor
/// in `1 ± JITTER`), the first time after a random part of an interval, and
/// sends every result on the channel. A probe is bounded by `timeout_ms`,
/// capped at `interval_ms`, so that a backend that hangs delays its next
/// probe by at most one interval. Probe failures are logged at debug;
/// transitions are the business of whoever applies the events.
///
/// A task ends when it is stopped ([`Monitors::update`], or dropping the
/// `Monitors`) or when the channel's receiver is gone.
#[derive(Debug)]
pub struct Monitors {
    events: UnboundedSender<HealthEvent>,
    tasks: BTreeMap<IpAddr, Task>,
}

#[derive(Debug)]
struct Task {
    monitor: Monitor,
    handle: JoinHandle<()>,
}

impl Drop for Task {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

impl Monitors {
    /// No tasks yet: see [`Monitors::update`].
    pub fn new(events: UnboundedSender<HealthEvent>) -> Monitors {
        Monitors { events, tasks: BTreeMap::new() }
    }

    /// Probes exactly the backends of `wanted` whose protocol is not
    /// `None`: starts tasks for new ones, restarts those whose monitor
    /// changed, stops the others. Must be called within a tokio runtime.
    pub fn update(&mut self, wanted: &BTreeMap<IpAddr, Monitor>) {
        self.tasks.retain(|address, task| wanted.get(address) == Some(&task.monitor));
        for (address, monitor) in wanted {
            if monitor.is_enabled() && !self.tasks.contains_key(address) {
                let handle = tokio::spawn(run(*address, monitor.clone(), self.events.clone()));
                self.tasks.insert(*address, Task { monitor: monitor.clone(), handle });
            }
        }
    }

    /// The backends probed, with their monitors.
    pub fn iter(&self) -> impl Iterator<Item = (&IpAddr, &Monitor)> {
        self.tasks.iter().map(|(address, task)| (address, &task.monitor))
    }

    /// How many backends are probed.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}

/// `interval` times a random factor in `1 ± JITTER`.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(1.0 + JITTER * (2.0 * rand::random::<f64>() - 1.0))
}

/// One backend's probing loop.
async fn run(address: IpAddr, mut monitor: Monitor, events: UnboundedSender<HealthEvent>) {
    let interval = Duration::from_millis(u64::from(monitor.interval_ms.max(1)));
    monitor.timeout_ms = monitor.timeout_ms.clamp(1, monitor.interval_ms.max(1));
    let prober = Prober::new(&monitor, address);
    // A random offset within the first interval.
    let mut next = Instant::now() + interval.mul_f64(rand::random::<f64>());
    loop {
        tokio::time::sleep_until(next).await;
        let result = match &prober {
            Ok(prober) => prober.probe().await,
            Err(error) => Err(error.clone()),
        };
        let at = SystemTime::now();
        let result = result.map_err(|error| {
            debug!(
                backend = %address,
                protocol = %monitor.protocol,
                port = monitor.port,
                kind = error.kind(),
                reason = %error,
                "health probe failed"
            );
            ProbeFailure::from(&error)
        });
        if events.send(HealthEvent { address, at, result }).is_err() {
            return;
        }
        // Keep to the schedule; after a probe that took (nearly) the whole
        // interval, probe again at once rather than drift.
        next = (next + jittered(interval)).max(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

    use super::testing::{closed_port, monitor};
    use super::*;

    fn drain(rx: &mut UnboundedReceiver<HealthEvent>) -> Vec<HealthEvent> {
        let mut events = Vec::new();
        while let Ok(event) = rx.try_recv() {
            events.push(event);
        }
        events
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let interval = Duration::from_millis(1000);
        let waits: Vec<Duration> = (0..1000).map(|_| jittered(interval)).collect();
        assert!(waits.iter().all(|w| (900..=1100).contains(&w.as_millis())));
        // Not all the same.
        assert!(waits.iter().any(|w| *w != waits[0]));
    }

    /// Two backends on distinct loopback addresses, one up and one refusing;
    /// then one removed.
    #[tokio::test]
    async fn probes_at_the_interval_and_stops_removed_backends() {
        const INTERVAL_MS: u32 = 100;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up_port = listener.local_addr().unwrap().port();
        let up: IpAddr = IpAddr::from([127, 0, 0, 1]);
        // The failing backend: a second loopback address, nothing listening.
        let down_port = closed_port();
        let down: IpAddr = IpAddr::from([127, 0, 0, 2]);
        // Keep accepting so that the backlog never fills.
        let _accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                drop(stream);
            }
        });

        let mut wanted = BTreeMap::new();
        let mut m = monitor(MonitorProtocol::Tcp, up_port);
        m.interval_ms = INTERVAL_MS;
        m.timeout_ms = 50;
        wanted.insert(up, m.clone());
        m.port = down_port;
        wanted.insert(down, m);
        // Not probed.
        wanted.insert(IpAddr::from([127, 0, 0, 3]), monitor(MonitorProtocol::None, 0));

        let (tx, mut rx) = unbounded_channel();
        let mut monitors = Monitors::new(tx);
        monitors.update(&wanted);
        assert_eq!(monitors.len(), 2);

        let started = Instant::now();
        tokio::time::sleep(Duration::from_millis(1050)).await;
        let events = drain(&mut rx);
        let of = |address: IpAddr| events.iter().filter(|e| e.address == address).collect::<Vec<_>>();
        let (ups, downs) = (of(up), of(down));
        // About one per interval: 10 in 1050 ms, allowing for the random
        // offset, jitter and a slow machine.
        for (name, got) in [("up", ups.len()), ("down", downs.len())] {
            assert!((7..=12).contains(&got), "{name}: {got} events in {:?}", started.elapsed());
        }
        assert!(ups.iter().all(|e| e.result.is_ok()), "{ups:?}");
        assert!(downs.iter().all(|e| e.result.as_ref().unwrap_err().kind == "refused"), "{downs:?}");
        assert_eq!(events.len(), ups.len() + downs.len());
        // Consecutive probes of a backend are about an interval apart.
        for pair in ups.windows(2) {
            let gap = pair[1].at.duration_since(pair[0].at).unwrap();
            assert!(gap >= Duration::from_millis(70) && gap <= Duration::from_millis(200), "{gap:?}");
        }

        // Failures feed the state machine down.
        let mut table = HealthTable::new();
        table.update(&wanted);
        for event in events {
            table.apply(event);
        }
        assert_eq!(table.health(&up), Health::Up);
        assert_eq!(table.health(&down), Health::Down);

        // Remove the failing backend: its events stop.
        wanted.remove(&down);
        monitors.update(&wanted);
        assert_eq!(monitors.iter().map(|(a, _)| *a).collect::<Vec<_>>(), vec![up]);
        drain(&mut rx);
        tokio::time::sleep(Duration::from_millis(350)).await;
        let events = drain(&mut rx);
        assert!(events.iter().all(|e| e.address == up), "{events:?}");
        assert!(events.len() >= 2, "{events:?}");

        // A changed monitor restarts the task with the new settings.
        let mut changed = wanted[&up].clone();
        changed.port = closed_port();
        wanted.insert(up, changed);
        monitors.update(&wanted);
        tokio::time::sleep(Duration::from_millis(50)).await;
        drain(&mut rx);
        tokio::time::sleep(Duration::from_millis(250)).await;
        let events = drain(&mut rx);
        assert!(!events.is_empty());
        assert!(events.iter().all(|e| e.result.as_ref().is_err_and(|f| f.kind == "refused")), "{events:?}");

        // Dropping stops everything.
        drop(monitors);
        drain(&mut rx);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(drain(&mut rx).is_empty());
    }

    #[tokio::test]
    async fn hanging_probe_does_not_delay_beyond_an_interval() {
        // A listener that accepts but never answers, and a timeout longer
        // than the interval: probes are cut at the interval.
        let server = testing::HttpServer::start(testing::Reply::status(200).delay(Duration::from_secs(30))).await;
        let mut m = monitor(MonitorProtocol::Http, server.port());
        m.interval_ms = 100;
        m.timeout_ms = 5_000;
        let (tx, mut rx) = unbounded_channel();
        let mut monitors = Monitors::new(tx);
        monitors.update(&BTreeMap::from([(server.ip(), m)]));
        tokio::time::sleep(Duration::from_millis(650)).await;
        let events = drain(&mut rx);
        assert!(events.len() >= 4, "{events:?}");
        for event in &events {
            let failure = event.result.as_ref().unwrap_err();
            assert_eq!((failure.kind.as_str(), failure.reason.as_str()), ("timeout", "timeout after 100ms"));
        }
    }

    #[tokio::test]
    async fn stops_when_the_receiver_is_gone() {
        let mut m = monitor(MonitorProtocol::Tcp, closed_port());
        m.interval_ms = 20;
        let (tx, rx) = unbounded_channel();
        let mut monitors = Monitors::new(tx);
        monitors.update(&BTreeMap::from([(IpAddr::from([127, 0, 0, 1]), m)]));
        drop(rx);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(monitors.tasks.values().all(|t| t.handle.is_finished()));
    }
}
