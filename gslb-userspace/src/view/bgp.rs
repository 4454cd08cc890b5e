//! The BGP part of the status contract: the daemon, its sessions, and each
//! VIP address's announcement.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// One BGP session as the daemon reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// BIRD's protocol name, or GoBGP's neighbor address.
    pub name: String,
    /// The daemon's word for it ("Established", "Active", ...).
    pub state: String,
    pub established: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BgpStatus {
    /// "bird" or "gobgp".
    pub daemon: String,
    /// The daemon answered its last request.
    pub reachable: bool,
    /// The daemon holds the routes the agent wants.
    pub in_sync: bool,
    pub sessions: Vec<Session>,
    pub sessions_established: usize,
    /// When the announced set last reached the daemon.
    pub last_change_unix_ms: Option<u64>,
    pub last_error: Option<String>,
    pub last_error_unix_ms: Option<u64>,
    /// The guard holds announcements: every check fails at once.
    pub guard: bool,
    /// "draining" (less preferred), "drained" (withdrawn), or null.
    pub edge_drain: Option<String>,
    pub edge_drain_until_unix_ms: Option<u64>,
    pub routes: Vec<RouteStatus>,
}

/// One VIP address.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RouteStatus {
    pub address: IpAddr,
    /// The VIPs on this address.
    pub vips: Vec<String>,
    pub announced: bool,
    /// Announced with the drain attribute.
    pub drain: bool,
    /// serving, settling, withdrawing, no-serving-pool, steer-not-attached,
    /// edge-draining, edge-drained or guard.
    pub reason_code: String,
    /// The same in words.
    pub reason: String,
    /// Since `announced` last changed.
    pub since_unix_ms: u64,
}
