//! The health of one backend, as a pure state machine fed with probe
//! results.
//!
//! ```text
//!            failure (streak < consecutive_down)
//!   ┌────┐ ───────────────────────────────────▶ ┌─────────┐
//!   │ Up │ ◀─────────────────────────────────── │ Suspect │
//!   └────┘              success                 └─────────┘
//!    ▲  │ failure, consecutive_down = 1              │ failure streak
//!    │  └──────────────────────┐                     │ reaches consecutive_down
//!    │ consecutive_up          ▼                     │
//!    │ successes in a row   ┌──────┐                 │
//!    └───────────────────── │ Down │ ◀───────────────┘
//!                           └──────┘
//! ```
//!
//! A backend starts [`Health::Up`]: when the agent starts or a backend is
//! added, the fleet is trusted until checks prove otherwise. Starting
//! `Down` would take every backend out of service on each agent restart for
//! `consecutive_up` intervals (a full outage of the VIP if all its backends
//! are new), and starting in an "unknown" state would make every caller
//! decide what unknown means. A backend that really is dead is taken out
//! after `consecutive_down` failed probes, just as if it had died while
//! being watched.
//!
//! Nothing here reads a clock or does I/O: the caller passes each probe's
//! time and result, so every rule is tested with plain values.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// Weight of the newest sample in the RTT average: `avg += 0.2 * (rtt -
/// avg)`. 0.2 follows a change in a backend's latency within about ten
/// probes while one slow probe moves the average by only a fifth of the
/// difference.
pub const RTT_EWMA_ALPHA: f64 = 0.2;
/// How many of the latest successful probes the RTT p99 is taken over.
pub const RTT_WINDOW: usize = 100;
/// How many of the latest transitions a backend keeps.
pub const TRANSITION_HISTORY: usize = 10;

/// A monitored backend's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// In service.
    #[default]
    Up,
    /// Failing, but not yet for `consecutive_down` probes in a row: still in
    /// service.
    Suspect,
    /// Out of service until `consecutive_up` probes in a row succeed.
    Down,
}

impl Health {
    /// The name used in logs, status and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Suspect => "suspect",
            Health::Down => "down",
        }
    }

    /// Whether traffic may be sent to the backend (`Up` or `Suspect`).
    pub fn is_serving(self) -> bool {
        self != Health::Down
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change of a backend's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// The time of the probe result that caused it.
    pub at: SystemTime,
    pub from: Health,
    pub to: Health,
    /// Why: the failing probe's reason ("timeout after 500ms", "status
    /// 503", ...), "probe succeeded", or "2 consecutive successes".
    pub reason: String,
}

/// One backend's health state, its RTT statistics and recent transitions.
#[derive(Debug, Clone)]
pub struct BackendState {
    consecutive_up: u32,
    consecutive_down: u32,
    health: Health,
    /// Failed probes in a row (0 after a success).
    failures: u32,
    /// Successful probes in a row (0 after a failure).
    successes: u32,
    first_failure_at: Option<SystemTime>,
    down_at: Option<SystemTime>,
    last_probe_at: Option<SystemTime>,
    last_failure: Option<String>,
    rtt_ewma_ms: Option<f64>,
    /// The RTTs of the latest successful probes, oldest first.
    rtts: VecDeque<Duration>,
    transitions: VecDeque<Transition>,
}

impl BackendState {
    /// A backend that is `Up` (see the module docs for why), taken down by
    /// `consecutive_down` failures in a row and brought back by
    /// `consecutive_up` successes in a row. Thresholds of 0 count as 1.
    pub fn new(consecutive_up: u32, consecutive_down: u32) -> BackendState {
        BackendState {
            consecutive_up: consecutive_up.max(1),
            consecutive_down: consecutive_down.max(1),
            health: Health::Up,
            failures: 0,
            successes: 0,
            first_failure_at: None,
            down_at: None,
            last_probe_at: None,
            last_failure: None,
            rtt_ewma_ms: None,
            rtts: VecDeque::with_capacity(RTT_WINDOW),
            transitions: VecDeque::with_capacity(TRANSITION_HISTORY),
        }
    }

    /// Changes the thresholds (the monitor was edited), keeping the health,
    /// streaks and statistics. The new thresholds apply from the next probe.
    pub fn set_thresholds(&mut self, consecutive_up: u32, consecutive_down: u32) {
        self.consecutive_up = consecutive_up.max(1);
        self.consecutive_down = consecutive_down.max(1);
    }

    /// Feeds one probe result: its RTT, or why it failed. Returns the
    /// transition it caused, if any (also kept in [`transitions`]).
    ///
    /// [`transitions`]: BackendState::transitions
    pub fn record(&mut self, at: SystemTime, result: Result<Duration, &str>) -> Option<Transition> {
        self.last_probe_at = Some(at);
        let (to, reason) = match result {
            Ok(rtt) => {
                self.record_rtt(rtt);
                self.failures = 0;
                self.successes = self.successes.saturating_add(1);
                match self.health {
                    Health::Up => None,
                    Health::Suspect => Some((Health::Up, "probe succeeded".to_string())),
                    Health::Down if self.successes >= self.consecutive_up => {
                        let n = self.successes;
                        let s = if n == 1 { "" } else { "es" };
                        Some((Health::Up, format!("{n} consecutive success{s}")))
                    }
                    Health::Down => None,
                }
            }
            Err(reason) => {
                self.last_failure = Some(reason.to_string());
                self.successes = 0;
                self.failures = self.failures.saturating_add(1);
                if self.first_failure_at.is_none() {
                    self.first_failure_at = Some(at);
                }
                match self.health {
                    Health::Up | Health::Suspect if self.failures >= self.consecutive_down => {
                        Some((Health::Down, reason.to_string()))
                    }
                    Health::Up => Some((Health::Suspect, reason.to_string())),
                    Health::Suspect | Health::Down => None,
                }
            }
        }?;
        let from = self.health;
        self.health = to;
        match to {
            Health::Down => self.down_at = Some(at),
            Health::Up => {
                self.first_failure_at = None;
                self.down_at = None;
            }
            Health::Suspect => {}
        }
        let transition = Transition { at, from, to, reason };
        if self.transitions.len() == TRANSITION_HISTORY {
            self.transitions.pop_front();
        }
        self.transitions.push_back(transition.clone());
        Some(transition)
    }

    fn record_rtt(&mut self, rtt: Duration) {
        let ms = rtt.as_secs_f64() * 1000.0;
        self.rtt_ewma_ms = Some(match self.rtt_ewma_ms {
            None => ms,
            Some(avg) => avg + RTT_EWMA_ALPHA * (ms - avg),
        });
        if self.rtts.len() == RTT_WINDOW {
            self.rtts.pop_front();
        }
        self.rtts.push_back(rtt);
    }

    pub fn health(&self) -> Health {
        self.health
    }

    /// `(consecutive_up, consecutive_down)`, each at least 1.
    pub fn thresholds(&self) -> (u32, u32) {
        (self.consecutive_up, self.consecutive_down)
    }

    /// Failed probes in a row; 0 once a probe succeeds.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    /// Successful probes in a row; 0 once a probe fails.
    pub fn consecutive_successes(&self) -> u32 {
        self.successes
    }

    /// The first failed probe of the current trouble: set by the failure
    /// that leaves `Up`, kept while `Suspect` or `Down` (successes while
    /// `Down` do not clear it: the outage is not over), cleared on the way
    /// back `Up`. With [`down_at`] it gives the detection part of a
    /// failover: `down_at - first_failure_at`.
    ///
    /// [`down_at`]: BackendState::down_at
    pub fn first_failure_at(&self) -> Option<SystemTime> {
        self.first_failure_at
    }

    /// When the backend went `Down`; `None` unless it is `Down`.
    pub fn down_at(&self) -> Option<SystemTime> {
        self.down_at
    }

    /// When the latest probe result was recorded.
    pub fn last_probe_at(&self) -> Option<SystemTime> {
        self.last_probe_at
    }

    /// The reason of the latest failed probe, however long ago.
    pub fn last_failure(&self) -> Option<&str> {
        self.last_failure.as_deref()
    }

    /// Decaying average of successful probes' RTT (see [`RTT_EWMA_ALPHA`]);
    /// `None` before the first success.
    pub fn rtt_avg_ms(&self) -> Option<f64> {
        self.rtt_ewma_ms
    }

    /// 99th percentile (nearest rank) of the last [`RTT_WINDOW`] successful
    /// probes' RTT; `None` before the first success.
    pub fn rtt_p99_ms(&self) -> Option<f64> {
        if self.rtts.is_empty() {
            return None;
        }
        let mut sorted: Vec<Duration> = self.rtts.iter().copied().collect();
        sorted.sort_unstable();
        // Nearest rank: the smallest sample with at least 99% of the samples
        // at or below it.
        let rank = (sorted.len() * 99).div_ceil(100);
        Some(sorted[rank - 1].as_secs_f64() * 1000.0)
    }

    /// The latest transitions (at most [`TRANSITION_HISTORY`]), oldest
    /// first.
    pub fn transitions(&self) -> impl DoubleEndedIterator<Item = &Transition> + ExactSizeIterator {
        self.transitions.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAIL: Result<Duration, &str> = Err("status 503");

    fn ok() -> Result<Duration, &'static str> {
        Ok(Duration::from_millis(1))
    }

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000 + s)
    }

    /// Feeds `results` at t(1), t(2), ...; returns the transitions' targets.
    fn feed(state: &mut BackendState, results: &str) -> Vec<Health> {
        let start = state.last_probe_at.map_or(0, |at| at.duration_since(t(0)).unwrap().as_secs());
        let mut out = Vec::new();
        for (i, c) in results.chars().enumerate() {
            let result = match c {
                '+' => ok(),
                '-' => FAIL,
                _ => panic!("bad result {c:?}"),
            };
            if let Some(tr) = state.record(t(start + 1 + i as u64), result) {
                out.push(tr.to);
            }
        }
        out
    }

    #[test]
    fn starts_up_and_stays_up_on_success() {
        let mut s = BackendState::new(2, 3);
        assert_eq!(s.health(), Health::Up);
        assert!(s.first_failure_at().is_none() && s.down_at().is_none());
        assert_eq!(feed(&mut s, "+++"), vec![]);
        assert_eq!(s.health(), Health::Up);
        assert_eq!(s.consecutive_successes(), 3);
    }

    #[test]
    fn first_failure_makes_suspect_with_reason() {
        let mut s = BackendState::new(2, 3);
        let tr = s.record(t(5), Err("timeout after 500ms")).unwrap();
        assert_eq!(
            tr,
            Transition { at: t(5), from: Health::Up, to: Health::Suspect, reason: "timeout after 500ms".into() }
        );
        assert_eq!(s.health(), Health::Suspect);
        assert!(s.health().is_serving());
        assert_eq!(s.first_failure_at(), Some(t(5)));
        assert_eq!(s.down_at(), None);
        assert_eq!(s.last_failure(), Some("timeout after 500ms"));
    }

    #[test]
    fn suspect_goes_down_when_streak_reaches_consecutive_down() {
        let mut s = BackendState::new(2, 3);
        // The first failure counts: the third failure in a row takes it down.
        assert_eq!(feed(&mut s, "--"), vec![Health::Suspect]);
        let tr = s.record(t(3), FAIL).unwrap();
        assert_eq!((tr.from, tr.to, tr.reason.as_str()), (Health::Suspect, Health::Down, "status 503"));
        assert_eq!(s.first_failure_at(), Some(t(1)));
        assert_eq!(s.down_at(), Some(t(3)));
        assert!(!s.health().is_serving());
        // More failures: no more transitions, times kept.
        assert_eq!(feed(&mut s, "---"), vec![]);
        assert_eq!(s.first_failure_at(), Some(t(1)));
        assert_eq!(s.down_at(), Some(t(3)));
    }

    #[test]
    fn suspect_recovers_on_one_success() {
        let mut s = BackendState::new(5, 3);
        assert_eq!(feed(&mut s, "--+"), vec![Health::Suspect, Health::Up]);
        let last = s.transitions().last().unwrap();
        assert_eq!((last.from, last.reason.as_str()), (Health::Suspect, "probe succeeded"));
        assert_eq!(s.first_failure_at(), None);
        // The streak restarted: it takes three new failures to go down.
        assert_eq!(feed(&mut s, "--"), vec![Health::Suspect]);
        assert_eq!(s.first_failure_at(), Some(t(4)));
        assert_eq!(feed(&mut s, "-"), vec![Health::Down]);
    }

    #[test]
    fn consecutive_down_one_goes_straight_down() {
        let mut s = BackendState::new(1, 1);
        let tr = s.record(t(1), FAIL).unwrap();
        assert_eq!((tr.from, tr.to), (Health::Up, Health::Down));
        assert_eq!(s.first_failure_at(), Some(t(1)));
        assert_eq!(s.down_at(), Some(t(1)));
        // consecutive_up = 1: one success brings it back.
        let tr = s.record(t(2), ok()).unwrap();
        assert_eq!((tr.from, tr.to, tr.reason.as_str()), (Health::Down, Health::Up, "1 consecutive success"));
        assert_eq!(s.down_at(), None);
        assert_eq!(s.first_failure_at(), None);
    }

    #[test]
    fn zero_thresholds_count_as_one() {
        let mut s = BackendState::new(0, 0);
        assert_eq!(s.thresholds(), (1, 1));
        assert_eq!(feed(&mut s, "-+"), vec![Health::Down, Health::Up]);
    }

    #[test]
    fn down_needs_consecutive_up_successes() {
        let mut s = BackendState::new(2, 2);
        assert_eq!(feed(&mut s, "--"), vec![Health::Suspect, Health::Down]);
        assert_eq!(feed(&mut s, "+"), vec![]);
        assert_eq!(s.health(), Health::Down);
        // A success while down does not end the outage.
        assert_eq!(s.first_failure_at(), Some(t(1)));
        let tr = s.record(t(4), ok()).unwrap();
        assert_eq!((tr.from, tr.to, tr.reason.as_str()), (Health::Down, Health::Up, "2 consecutive successes"));
        assert_eq!(tr.at, t(4));
        assert_eq!(s.first_failure_at(), None);
        assert_eq!(s.down_at(), None);
    }

    #[test]
    fn flapping_while_down_stays_down() {
        let mut s = BackendState::new(3, 2);
        assert_eq!(feed(&mut s, "--"), vec![Health::Suspect, Health::Down]);
        // Success streaks shorter than 3 are reset by each failure.
        assert_eq!(feed(&mut s, "++-++-+-++-"), vec![]);
        assert_eq!(s.health(), Health::Down);
        assert_eq!(s.down_at(), Some(t(2)));
        assert_eq!(feed(&mut s, "+++"), vec![Health::Up]);
    }

    #[test]
    fn flapping_while_up_never_goes_down() {
        let mut s = BackendState::new(2, 3);
        // Never three failures in a row: up/suspect only.
        let got = feed(&mut s, "-+--+-+--+");
        assert!(got.iter().all(|h| *h != Health::Down), "{got:?}");
        assert_eq!(
            got,
            vec![
                Health::Suspect,
                Health::Up,
                Health::Suspect,
                Health::Up,
                Health::Suspect,
                Health::Up,
                Health::Suspect,
                Health::Up
            ]
        );
        assert_eq!(s.health(), Health::Up);
        assert_eq!(feed(&mut s, "---"), vec![Health::Suspect, Health::Down]);
    }

    #[test]
    fn keeps_last_ten_transitions() {
        let mut s = BackendState::new(1, 1);
        // Each result flips the health: 14 transitions.
        assert_eq!(feed(&mut s, "-+-+-+-+-+-+-+").len(), 14);
        let kept: Vec<&Transition> = s.transitions().collect();
        assert_eq!(kept.len(), TRANSITION_HISTORY);
        // The oldest kept is the 5th (at t(5)), the newest the 14th.
        assert_eq!(kept[0].at, t(5));
        assert_eq!(kept[9].at, t(14));
        assert_eq!((kept[9].from, kept[9].to), (Health::Down, Health::Up));
    }

    #[test]
    fn threshold_change_keeps_state() {
        let mut s = BackendState::new(2, 5);
        assert_eq!(feed(&mut s, "--"), vec![Health::Suspect]);
        s.set_thresholds(2, 3);
        assert_eq!(feed(&mut s, "-"), vec![Health::Down]);
    }

    #[test]
    fn rtt_ewma() {
        let mut s = BackendState::new(1, 1);
        assert_eq!(s.rtt_avg_ms(), None);
        s.record(t(1), Ok(Duration::from_millis(10)));
        assert!((s.rtt_avg_ms().unwrap() - 10.0).abs() < 1e-9);
        s.record(t(2), Ok(Duration::from_millis(20)));
        // 10 + 0.2 * (20 - 10)
        assert!((s.rtt_avg_ms().unwrap() - 12.0).abs() < 1e-9);
        // Failures do not move it.
        s.record(t(3), FAIL);
        assert!((s.rtt_avg_ms().unwrap() - 12.0).abs() < 1e-9);
        s.record(t(4), Ok(Duration::from_micros(2_000)));
        // 12 + 0.2 * (2 - 12)
        assert!((s.rtt_avg_ms().unwrap() - 10.0).abs() < 1e-9);
        // Converges on a steady value.
        for i in 0..100 {
            s.record(t(5 + i), Ok(Duration::from_millis(50)));
        }
        assert!((s.rtt_avg_ms().unwrap() - 50.0).abs() < 1e-6);
    }

    #[test]
    fn rtt_p99_over_last_hundred() {
        let mut s = BackendState::new(1, 1);
        assert_eq!(s.rtt_p99_ms(), None);
        s.record(t(0), Ok(Duration::from_millis(7)));
        assert_eq!(s.rtt_p99_ms(), Some(7.0));
        // 1..=100 ms: nearest-rank p99 of 100 samples is the 99th, 99 ms
        // (the 7 ms sample has left the window).
        for ms in 1..=100u64 {
            s.record(t(ms), Ok(Duration::from_millis(ms)));
        }
        assert_eq!(s.rtt_p99_ms(), Some(99.0));
        // One huge outlier among 100 does not make the p99...
        s.record(t(200), Ok(Duration::from_millis(5_000)));
        assert_eq!(s.rtt_p99_ms(), Some(100.0));
        // ...two do.
        s.record(t(201), Ok(Duration::from_millis(6_000)));
        assert_eq!(s.rtt_p99_ms(), Some(5_000.0));
        // 100 newer samples push them out.
        for i in 0..100 {
            s.record(t(300 + i), Ok(Duration::from_millis(3)));
        }
        assert_eq!(s.rtt_p99_ms(), Some(3.0));
        // Fewer than 100 samples: the maximum.
        let mut s = BackendState::new(1, 1);
        for ms in [5u64, 1, 9, 3] {
            s.record(t(ms), Ok(Duration::from_millis(ms)));
        }
        assert_eq!(s.rtt_p99_ms(), Some(9.0));
    }

    #[test]
    fn health_serializes_lowercase() {
        assert_eq!(serde_json::to_string(&Health::Suspect).unwrap(), "\"suspect\"");
        assert_eq!(serde_json::from_str::<Health>("\"down\"").unwrap(), Health::Down);
        assert_eq!(Health::Up.to_string(), "up");
    }
}
