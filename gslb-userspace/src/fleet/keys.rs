//! Where the fleet keeps what in etcd, and the records stored there (JSON,
//! except documents, which are the pushed TOML text as written).
//!
//! ```text
//! {prefix}/revisions/{N}          fleet document N (TOML)          kept
//! {prefix}/state/rollout          the current rollout (Rollout)    kept
//! {prefix}/state/edges/{edge}     an edge's report (EdgeReport)    under the edge's lease
//! {prefix}/state/health/{edge}    an edge's verdicts (Verdicts)    under the edge's lease
//! {prefix}/state/drains/{backend} a fleet-wide drain (DrainRecord) kept until undrained
//! ```
//!
//! Agents watch `{prefix}/state/`; documents are read only when an edge
//! moves to another revision, so the watch stays small.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::health::Health;

/// The key layout under one `fleet.prefix`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys { prefix: prefix.trim_end_matches('/').to_string() }
    }

    pub fn revision(&self, revision: u64) -> String {
        format!("{}/revisions/{revision}", self.prefix)
    }

    pub fn revisions(&self) -> String {
        format!("{}/revisions/", self.prefix)
    }

    /// Everything agents watch.
    pub fn state(&self) -> String {
        format!("{}/state/", self.prefix)
    }

    pub fn rollout(&self) -> String {
        format!("{}/state/rollout", self.prefix)
    }

    pub fn edge(&self, edge: &str) -> String {
        format!("{}/state/edges/{edge}", self.prefix)
    }

    pub fn health(&self, edge: &str) -> String {
        format!("{}/state/health/{edge}", self.prefix)
    }

    pub fn drain(&self, backend: IpAddr) -> String {
        format!("{}/state/drains/{backend}", self.prefix)
    }

    /// What a key under `state()` is.
    pub fn classify<'k>(&self, key: &'k str) -> Option<StateKey<'k>> {
        let rest = key.strip_prefix(self.prefix.as_str())?.strip_prefix("/state/")?;
        if rest == "rollout" {
            return Some(StateKey::Rollout);
        }
        if let Some(edge) = rest.strip_prefix("edges/") {
            return Some(StateKey::Edge(edge));
        }
        if let Some(edge) = rest.strip_prefix("health/") {
            return Some(StateKey::Health(edge));
        }
        rest.strip_prefix("drains/").and_then(|b| b.parse().ok()).map(StateKey::Drain)
    }

    /// The revision number of a key under `revisions()`.
    pub fn revision_number(&self, key: &str) -> Option<u64> {
        key.strip_prefix(self.revisions().as_str())?.parse().ok()
    }
}

/// A key under `Keys::state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateKey<'k> {
    Rollout,
    Edge(&'k str),
    Health(&'k str),
    Drain(IpAddr),
}

/// What an edge tells the fleet about itself (`gslb fleet status`, and the
/// rollout's checks on canaries).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EdgeReport {
    pub edge: String,
    pub group: String,
    /// The fleet revision this edge steers with; `None` before its first.
    pub applied_revision: Option<u64>,
    /// When it applied it (Unix ms).
    pub applied_at_ms: Option<u64>,
    /// The last revision this edge refused, and why.
    pub apply_error: Option<ApplyError>,
    /// A digest of every table this edge has planned: equal digests, equal
    /// tables.
    pub tables_digest: String,
    /// VIPs in panic.
    pub panic_vips: Vec<String>,
    /// Announcements: `None` without a BGP daemon.
    pub announcements: Option<Announcements>,
    /// Backends whose fleet verdict this edge's own checks contradict.
    pub disagreements: Vec<Disagreement>,
    /// This edge withdraws its routes because it cannot reach backends the
    /// fleet sees up (`fleet.withdraw_unreachable_share`).
    pub withdrawn_unreachable: bool,
    /// When this report was written (Unix ms).
    pub reported_at_ms: u64,
    /// The gslb version the edge runs.
    pub version: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyError {
    pub revision: u64,
    pub error: String,
    pub at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcements {
    pub announced: Vec<IpAddr>,
    /// Addresses withdrawn for a reason other than settling after a start.
    pub withdrawn: Vec<IpAddr>,
}

/// A backend whose health the edge and the fleet see differently.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disagreement {
    pub backend: IpAddr,
    /// This edge's own checks.
    pub local: Health,
    /// The fleet's verdict.
    pub fleet: Health,
}

/// One edge's verdicts: its own checks, per monitored backend.
pub type Verdicts = BTreeMap<IpAddr, Health>;

/// A fleet-wide drain of one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainRecord {
    pub since_ms: u64,
    /// When recorded flows are cut too; `None`: they run until they end.
    pub until_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let keys = Keys::new("/gslb/");
        assert_eq!(keys.rollout(), "/gslb/state/rollout");
        assert_eq!(keys.classify(&keys.rollout()), Some(StateKey::Rollout));
        assert_eq!(keys.classify(&keys.edge("edge-a")), Some(StateKey::Edge("edge-a")));
        assert_eq!(keys.classify(&keys.health("edge-a")), Some(StateKey::Health("edge-a")));
        let backend: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(keys.classify(&keys.drain(backend)), Some(StateKey::Drain(backend)));
        assert_eq!(keys.classify("/other/state/rollout"), None);
        assert_eq!(keys.revision_number(&keys.revision(42)), Some(42));
    }
}
