//! Failover-time records: one backend going down, from its first failed
//! probe to the new tables being live (the number the operations guide's
//! failover budget is checked against).

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

/// How many failover records the agent keeps.
const FAILOVER_HISTORY: usize = 50;

/// One backend going down, from first failed probe to the new tables
/// being live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailoverRecord {
    pub backend: IpAddr,
    pub first_failure: SystemTime,
    pub declared_down: SystemTime,
    pub table_live: SystemTime,
    pub worst_case: Duration,
}

impl FailoverRecord {
    /// First failed probe to the new table being live.
    pub fn total_ms(&self) -> u64 {
        ms(self.table_live, self.first_failure)
    }

    /// Declared down to the new table being live.
    pub fn apply_ms(&self) -> u64 {
        ms(self.table_live, self.declared_down)
    }
}

/// Failovers waiting for their tables to go live, and the last ones done.
#[derive(Clone, Debug, Default)]
pub struct Failovers {
    pending: Vec<(IpAddr, SystemTime, SystemTime)>,
    done: VecDeque<FailoverRecord>,
    /// Failovers since the agent started that took longer than their
    /// worst case (all of them, not only the ones remembered).
    over_budget: u64,
}

impl Failovers {
    /// A backend was declared down: its failover ends when tables without
    /// it go live.
    pub fn begin(&mut self, backend: IpAddr, first_failure: SystemTime, declared_down: SystemTime) {
        self.pending.push((backend, first_failure, declared_down));
    }

    /// New tables went live at `live`: every pending failover is complete.
    /// `worst_case` gives each backend's worst-case failover time.
    pub fn complete(&mut self, live: SystemTime, worst_case: impl Fn(IpAddr) -> Duration) -> Vec<FailoverRecord> {
        let completed: Vec<FailoverRecord> = self
            .pending
            .drain(..)
            .map(|(backend, first_failure, declared_down)| FailoverRecord {
                backend,
                first_failure,
                declared_down,
                table_live: live,
                worst_case: worst_case(backend),
            })
            .collect();
        self.over_budget += completed.iter().filter(|f| f.total_ms() > f.worst_case.as_millis() as u64).count() as u64;
        self.done.extend(completed.iter().copied());
        while self.done.len() > FAILOVER_HISTORY {
            self.done.pop_front();
        }
        completed
    }

    /// Failovers since the agent started slower than their worst case.
    pub fn over_budget(&self) -> u64 {
        self.over_budget
    }

    /// The last completed failovers, oldest first.
    pub fn done(&self) -> impl Iterator<Item = &FailoverRecord> {
        self.done.iter()
    }
}

fn ms(later: SystemTime, earlier: SystemTime) -> u64 {
    later.duration_since(earlier).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completes_pending_failovers_and_keeps_a_bounded_history() {
        let mut failovers = Failovers::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let backend: IpAddr = "10.0.0.1".parse().unwrap();
        failovers.begin(backend, t0, t0 + Duration::from_millis(900));
        let done = failovers.complete(t0 + Duration::from_millis(950), |_| Duration::from_secs(2));
        assert_eq!(done.len(), 1);
        assert_eq!((done[0].total_ms(), done[0].apply_ms()), (950, 50));
        assert!(failovers.complete(t0, |_| Duration::ZERO).is_empty(), "a failover completes once");
        for _ in 0..FAILOVER_HISTORY + 5 {
            failovers.begin(backend, t0, t0);
            failovers.complete(t0, |_| Duration::ZERO);
        }
        assert_eq!(failovers.done().count(), FAILOVER_HISTORY);
        assert_eq!(failovers.over_budget(), 0, "none took longer than its worst case");
    }

    #[test]
    fn counts_every_failover_slower_than_its_worst_case() {
        let mut failovers = Failovers::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        for _ in 0..FAILOVER_HISTORY + 3 {
            failovers.begin("10.0.0.1".parse().unwrap(), t0, t0);
            failovers.complete(t0 + Duration::from_millis(2001), |_| Duration::from_secs(2));
        }
        failovers.begin("10.0.0.2".parse().unwrap(), t0, t0);
        failovers.complete(t0 + Duration::from_secs(2), |_| Duration::from_secs(2));
        // Beyond the history it remembers, and not one exactly on time.
        assert_eq!(failovers.over_budget(), FAILOVER_HISTORY as u64 + 3);
    }
}
