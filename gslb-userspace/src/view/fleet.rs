//! The fleet in status: one edge's membership (`gslb status`, metrics) and
//! the whole fleet as etcd holds it (`gslb fleet status`).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::IpAddr;

use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::fleet::admin::FleetStatus;
use crate::fleet::keys::{ApplyError, Disagreement};
use crate::fleet::quorum::FleetVerdict;
use crate::fleet::rollout::Phase;

/// One edge's membership of its fleet.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FleetMemberStatus {
    pub group: String,
    pub endpoints: Vec<String>,
    /// A session with etcd runs.
    pub connected: bool,
    /// Why etcd is away, while it is.
    pub error: Option<String>,
    pub away_since_unix_ms: Option<u64>,
    /// "fleet", "fleet (etcd away: ...)" or "local (...)".
    pub health_source: String,
    pub applied_revision: Option<u64>,
    pub applied_at_unix_ms: Option<u64>,
    pub apply_error: Option<ApplyError>,
    pub tables_digest: String,
    pub disagreements: Vec<Disagreement>,
    pub withdrawn_unreachable: bool,
    /// The fleet's verdicts this edge plans with.
    pub verdicts: BTreeMap<IpAddr, FleetVerdict>,
}

impl FleetMemberStatus {
    pub fn render(&self, out: &mut String) {
        let revision = self.applied_revision.map_or("none".to_string(), |r| r.to_string());
        let connection = if self.connected {
            "connected".to_string()
        } else {
            format!("etcd away: {}", self.error.as_deref().unwrap_or("?"))
        };
        let _ = writeln!(
            out,
            "\nfleet: group {}, revision {revision}, {connection}, health by {}, tables {}",
            self.group, self.health_source, self.tables_digest
        );
        if let Some(error) = &self.apply_error {
            let _ = writeln!(out, "  refused revision {}: {}", error.revision, error.error);
        }
        for d in &self.disagreements {
            let _ = writeln!(
                out,
                "  disagreement: {} is {} by this edge's checks, {} by the fleet's",
                d.backend, d.local, d.fleet
            );
        }
        if self.withdrawn_unreachable {
            let _ = writeln!(out, "  routes withdrawn: this edge cannot reach backends the fleet sees up");
        }
    }

    pub fn metrics(&self, r: &mut Registry) {
        let gauge = |r: &mut Registry, name: &str, help: &str, value: i64| {
            let g = prometheus_client::metrics::gauge::Gauge::<i64, std::sync::atomic::AtomicI64>::default();
            g.set(value);
            r.register(name, help, g);
        };
        gauge(r, "gslb_fleet_connected", "1 while the agent has a session with etcd", self.connected as i64);
        gauge(
            r,
            "gslb_fleet_applied_revision",
            "The fleet revision this edge steers with (0: none yet)",
            self.applied_revision.unwrap_or(0) as i64,
        );
        gauge(
            r,
            "gslb_fleet_apply_failed",
            "1 while the last fleet revision offered to this edge was refused",
            self.apply_error.as_ref().is_some_and(|e| Some(e.revision) > self.applied_revision) as i64,
        );
        gauge(
            r,
            "gslb_fleet_health_local",
            "1 while this edge goes by its own health checks (etcd away past fleet.health_grace)",
            self.health_source.starts_with("local") as i64,
        );
        gauge(
            r,
            "gslb_fleet_health_disagreements",
            "Backends whose fleet verdict this edge's own checks contradict",
            self.disagreements.len() as i64,
        );
        gauge(
            r,
            "gslb_fleet_withdrawn_unreachable",
            "1 while this edge withdraws its routes because it cannot reach backends the fleet sees up",
            self.withdrawn_unreachable as i64,
        );
    }
}

/// `gslb fleet status` as text.
pub fn render_fleet(status: &FleetStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "fleet {} at {}", status.prefix, status.endpoints.join(", "));
    match &status.rollout {
        None => {
            let _ = writeln!(out, "rollout: nothing pushed yet");
        }
        Some(r) => {
            let phase = match &r.phase {
                Phase::Canary => format!("canary group {:?} applying", r.canary_group.as_deref().unwrap_or_default()),
                Phase::Baking { until_ms, .. } => {
                    format!("baking, the rest follow in {}s", until_ms.saturating_sub(status.read_at_ms).div_ceil(1000))
                }
                Phase::Complete => "complete".to_string(),
                Phase::Halted { reason, .. } => format!("HALTED: {reason}"),
            };
            let previous = r.previous.map_or(String::new(), |p| format!(" (others on {p})"));
            let back = r.rolled_back_from.map_or(String::new(), |f| format!(", rolled back from {f}"));
            let _ = writeln!(out, "rollout: revision {}{previous}: {phase}{back}", r.revision);
        }
    }
    let _ = writeln!(
        out,
        "revisions stored: {}",
        status.revisions.iter().map(u64::to_string).collect::<Vec<_>>().join(" ")
    );
    let identical = if status.tables_identical { "identical" } else { "DIFFERENT" };
    let _ = writeln!(out, "\nedges ({}, tables {identical}):", status.edges.len());
    for e in &status.edges {
        let revision = e.applied_revision.map_or("none".to_string(), |r| r.to_string());
        let applied = e
            .applied_at_ms
            .map_or(String::new(), |at| format!(" {}s ago", status.read_at_ms.saturating_sub(at) / 1000));
        let routes = match &e.announcements {
            None => "no bgp".to_string(),
            Some(a) if a.withdrawn.is_empty() => format!("{} announced", a.announced.len()),
            Some(a) => format!("{} announced, {} withdrawn", a.announced.len(), a.withdrawn.len()),
        };
        let _ = writeln!(
            out,
            "  {:<16} group {:<10} revision {revision}{applied}  tables {}  {routes}{}",
            e.edge,
            e.group,
            e.tables_digest,
            if e.panic_vips.is_empty() { String::new() } else { format!("  PANIC {}", e.panic_vips.join(",")) }
        );
        if let Some(error) = &e.apply_error {
            let _ = writeln!(out, "    refused revision {}: {}", error.revision, error.error);
        }
        if e.withdrawn_unreachable {
            let _ = writeln!(out, "    withdrawn: cannot reach backends the fleet sees up");
        }
    }
    if !status.backends.is_empty() {
        let _ = writeln!(out, "\nbackends (fleet verdict: down-votes/needed of voters; each edge's own):");
        for (backend, v) in &status.backends {
            let edges: Vec<String> = v.edges.iter().map(|(edge, h)| format!("{edge} {h}")).collect();
            let drained = if status.drains.contains_key(backend) { "  DRAINED" } else { "" };
            let _ = writeln!(
                out,
                "  {:<28} {:<8} {}/{} of {}  [{}]{drained}",
                backend.to_string(),
                v.fleet.health.to_string(),
                v.fleet.down,
                v.fleet.needed,
                v.fleet.voters,
                edges.join(", ")
            );
        }
    }
    out
}
