//! The BGP part of `gslb status`.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::{Announcer, Reason, Session};
use crate::status::unix_ms;

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

impl Announcer {
    pub fn status(&self) -> BgpStatus {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let (now, wall) = (Instant::now(), SystemTime::now());
        let wall_of = |at: Instant| unix_ms(wall - now.saturating_duration_since(at));
        let decision = &self.decision;
        let edge_drain = decision.drain.map(|_| if decision.drained(now) { "drained" } else { "draining" }.to_string());
        BgpStatus {
            daemon: serde_json::to_value(self.daemon_kind)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            reachable: state.reachable,
            in_sync: state.in_sync,
            sessions_established: state.sessions.iter().filter(|s| s.established).count(),
            sessions: state.sessions,
            last_change_unix_ms: state.last_change.map(unix_ms),
            last_error_unix_ms: state.last_error.as_ref().map(|(at, _)| unix_ms(*at)),
            last_error: state.last_error.map(|(_, e)| e),
            guard: decision.guard_active,
            edge_drain,
            edge_drain_until_unix_ms: decision.drain.and_then(|d| d.until).map(wall_of),
            routes: decision
                .addresses
                .iter()
                .map(|(address, a)| RouteStatus {
                    address: *address,
                    vips: a.vips.clone(),
                    announced: a.announced,
                    drain: self.wanted.get(address).is_some_and(|r| r.drain),
                    reason_code: code(&a.reason).to_string(),
                    reason: a.reason.describe(),
                    since_unix_ms: wall_of(a.since),
                })
                .collect(),
        }
    }
}

fn code(reason: &Reason) -> &'static str {
    match reason {
        Reason::Serving => "serving",
        Reason::Settling => "settling",
        Reason::Withdrawing => "withdrawing",
        Reason::NoServingPool(_) => "no-serving-pool",
        Reason::SteerNotAttached => "steer-not-attached",
        Reason::EdgeDraining => "edge-draining",
        Reason::EdgeDrained => "edge-drained",
        Reason::Guard => "guard",
    }
}

impl BgpStatus {
    /// The lines of `gslb status`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let now = unix_ms(SystemTime::now());
        let daemon = if self.reachable { "reachable" } else { "UNREACHABLE" };
        let sessions: Vec<String> = self.sessions.iter().map(|s| format!("{} {}", s.name, s.state)).collect();
        let _ = writeln!(
            out,
            "\nbgp: {} {daemon}, sessions established {}/{} [{}]{}",
            self.daemon,
            self.sessions_established,
            self.sessions.len(),
            sessions.join(", "),
            self.last_change_unix_ms
                .map(|t| format!(", last change {}s ago", now.saturating_sub(t) / 1000))
                .unwrap_or_default()
        );
        if let Some(error) = &self.last_error {
            let _ = writeln!(out, "  last error: {error}");
        }
        if self.guard {
            let _ = writeln!(
                out,
                "  GUARD: every health check fails at once; announcements held (check this edge's network)"
            );
        }
        if let Some(drain) = &self.edge_drain {
            let until =
                self.edge_drain_until_unix_ms.map(|u| format!(", undrain in {}s", u.saturating_sub(now) / 1000));
            let _ = writeln!(out, "  EDGE {}{}", drain.to_uppercase(), until.unwrap_or_default());
        }
        for route in &self.routes {
            let _ = writeln!(
                out,
                "  {:<28} {:<10} {} for {}s  (vips {})",
                route.address.to_string(),
                if route.announced { "announced" } else { "withdrawn" },
                route.reason,
                now.saturating_sub(route.since_unix_ms) / 1000,
                route.vips.join(",")
            );
        }
        out
    }
}
