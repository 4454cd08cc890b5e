//! The fleet: edges that share one config, one set of health verdicts and
//! one set of drains through etcd (`[fleet]`), so that every edge builds the
//! same tables.
//!
//! - `keys` is the layout in etcd and the records stored there (the
//!   contract between agents and `gslb fleet`, documented in
//!   docs/operations.md).
//! - `rollout` decides which revision each edge runs and when a staged
//!   rollout moves on or halts; `quorum` turns every edge's verdicts into
//!   the fleet's. Both are pure and tested here.
//! - `etcd` connects (endpoints, TLS, credentials, deadlines).
//! - `sync` is the agent's side: it mirrors the fleet's state, publishes
//!   this edge's report and verdicts under a lease, and steps rollouts.
//! - `admin` is the operator's side: push, rollback, status.

pub mod admin;
pub mod etcd;
pub mod keys;
pub mod quorum;
pub mod rollout;
pub mod sync;

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch: how times are stored in etcd.
pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The inverse of `unix_ms`.
pub fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + std::time::Duration::from_millis(ms)
}

/// Now, in `unix_ms`.
pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}
