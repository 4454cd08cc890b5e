//! The announcer's part of a status snapshot.

use std::time::{Instant, SystemTime};

use super::{Announcer, Reason};
use crate::view::bgp::{BgpStatus, RouteStatus};
use crate::view::time::unix_ms;

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
        Reason::FleetUnreachable => "fleet-unreachable",
    }
}
