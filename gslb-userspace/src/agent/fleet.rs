//! The agent as a member of a fleet (`[fleet]`): it runs the revision the
//! rollout gives its group, plans with the fleet's health verdicts instead
//! of its own, takes drains from etcd, and reports what it runs.
//!
//! With etcd away it keeps the last applied revision (also on disk, for a
//! restart) and the last fleet verdicts for `fleet.health_grace`, then goes
//! by its own checks until etcd returns.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::Result;
use tracing::{error, info, warn};

use super::state::{drains_of, SavedState};
use super::Agent;
use crate::announce::Reason;
use crate::config::{self, Config, Fleet};
use crate::decide::plan::{Conditions, Plan};
use crate::fleet::keys::{Announcements, ApplyError, Disagreement, EdgeReport, Verdicts};
use crate::fleet::quorum::{fleet_verdicts, FleetVerdict};
use crate::fleet::sync::{DrainOp, FleetEvent, Outgoing};
use crate::fleet::{from_unix_ms, now_ms, unix_ms};
use crate::health::Health;
use crate::view::fleet::FleetMemberStatus;

/// What the agent knows of its fleet.
#[derive(Debug)]
pub(super) struct FleetState {
    pub(super) settings: Fleet,
    /// The revision steering now, and when it was applied.
    pub(super) applied: Option<(u64, SystemTime)>,
    pub(super) apply_error: Option<ApplyError>,
    /// `Ok` while a session with etcd runs; the error since it ended.
    pub(super) connection: std::result::Result<(), String>,
    /// Since when etcd has been away (the agent's start before the first
    /// session).
    pub(super) away_since: Option<SystemTime>,
    /// The live edges' own verdicts, by edge.
    pub(super) published: BTreeMap<String, Verdicts>,
    pub(super) verdicts: BTreeMap<IpAddr, FleetVerdict>,
    /// Verdicts in force: `false` once etcd has been away past the grace.
    pub(super) verdicts_in_force: bool,
    pub(super) disagreements: Vec<Disagreement>,
    pub(super) withdrawn_unreachable: bool,
    /// Where the operator's drains go to be stored fleet-wide.
    pub(super) drain_ops: Option<tokio::sync::mpsc::UnboundedSender<DrainOp>>,
    /// `tables_digest` of the plan in force (computed when it changes).
    pub(super) tables_digest: String,
}

impl FleetState {
    pub(super) fn new(settings: Fleet, now: SystemTime) -> FleetState {
        FleetState {
            settings,
            applied: None,
            apply_error: None,
            connection: Err("not connected yet".into()),
            away_since: Some(now),
            published: BTreeMap::new(),
            verdicts: BTreeMap::new(),
            verdicts_in_force: true,
            disagreements: Vec::new(),
            withdrawn_unreachable: false,
            drain_ops: None,
            tables_digest: String::new(),
        }
    }

    /// How the agent decides health now, in the words of status and logs.
    pub(super) fn health_source(&self) -> &'static str {
        match (&self.connection, self.verdicts_in_force) {
            (Ok(()), _) => "fleet",
            (Err(_), true) => "fleet (etcd away: last verdicts, within health_grace)",
            (Err(_), false) => "local (etcd away past health_grace)",
        }
    }
}

/// The edge file with the revision kept in the state file, if there is one
/// this edge accepts; otherwise the file alone (no VIPs until the fleet
/// gives some). The saved drains are restored with any others.
pub(super) fn with_saved_revision(config: Config, fleet: &mut FleetState, saved: &SavedState) -> Config {
    let Some(revision) = saved.revision else {
        info!("fleet: no revision saved; steering nothing until etcd gives one");
        return config;
    };
    match document_config(&config, revision, &saved.document) {
        Ok(with_document) => {
            info!(
                revision,
                drains = saved.drains.len(),
                "fleet: steering with the saved revision and drains until etcd answers"
            );
            fleet.applied = Some((revision, from_unix_ms(saved.applied_at_ms)));
            with_document
        }
        Err(e) => {
            warn!(
                revision,
                "fleet: the saved revision is unusable ({e:#}); steering nothing until etcd gives a revision"
            );
            config
        }
    }
}

/// The edge file's config with fleet document `revision`.
fn document_config(config: &Config, revision: u64, document: &str) -> Result<Config> {
    let file = PathBuf::from(format!("fleet revision {revision}"));
    let (vips, pools) = config::parse_fleet_document(document, &file, &config.edge)?;
    Ok(config.with_document(vips, pools))
}

impl Agent {
    /// Takes one message from the fleet task.
    pub fn on_fleet(&mut self, event: FleetEvent) -> Result<()> {
        let Some(fleet) = &mut self.fleet else { return Ok(()) };
        match event {
            FleetEvent::Connected(Ok(())) => {
                if fleet.connection.is_err() && fleet.applied.is_some() {
                    info!("fleet: etcd is back; resynchronising");
                }
                fleet.connection = Ok(());
                fleet.away_since = None;
                let was_local = !fleet.verdicts_in_force;
                fleet.verdicts_in_force = true;
                if was_local {
                    self.refresh()?;
                }
            }
            FleetEvent::Connected(Err(error)) => {
                if fleet.connection.is_ok() {
                    warn!("fleet: etcd is away ({error}); steering with revision {:?}, the fleet's last verdicts for {}s, then this edge's own", fleet.applied.map(|a| a.0), fleet.settings.health_grace_secs);
                    fleet.away_since = Some(SystemTime::now());
                }
                fleet.connection = Err(error);
            }
            FleetEvent::Revision { revision, document } => {
                if fleet.applied.is_some_and(|(applied, _)| applied == revision) {
                    return Ok(());
                }
                let outcome = document.map_err(anyhow::Error::msg).and_then(|d| self.apply_revision(revision, &d));
                let fleet = self.fleet.as_mut().expect("checked above");
                match outcome {
                    Ok(()) => fleet.apply_error = None,
                    Err(e) => {
                        error!(
                            revision,
                            "fleet: cannot apply revision {revision}: {e:#}; the running config stays in force"
                        );
                        fleet.apply_error = Some(ApplyError { revision, error: format!("{e:#}"), at_ms: now_ms() });
                    }
                }
            }
            FleetEvent::State { verdicts, drains } => {
                fleet.verdicts = fleet_verdicts(verdicts.values(), fleet.settings.quorum);
                fleet.published = verdicts;
                self.drains = drains_of(&drains);
                // Saved for a restart without etcd, without those of
                // backends the revision does not have.
                self.forget_removed();
                self.note_disagreements();
                self.refresh()?;
            }
        }
        Ok(())
    }

    /// Checks the health grace: past it, with etcd still away, the edge
    /// goes by its own checks.
    pub fn check_fleet_grace(&mut self) -> Result<()> {
        let Some(fleet) = &mut self.fleet else { return Ok(()) };
        let grace = Duration::from_secs(fleet.settings.health_grace_secs as u64);
        let past = fleet.away_since.is_some_and(|since| since.elapsed().unwrap_or_default() >= grace);
        if fleet.verdicts_in_force && past {
            warn!(grace_secs = grace.as_secs(), "fleet: etcd away past health_grace; this edge now goes by its own health checks (its tables may differ from other edges')");
            fleet.verdicts_in_force = false;
            self.refresh()?;
        }
        Ok(())
    }

    /// Applies fleet document `revision`: checked against this edge's file
    /// and data plane exactly as a reload is, then saved on disk.
    fn apply_revision(&mut self, revision: u64, document: &str) -> Result<()> {
        let config = document_config(&self.config, revision, document)?;
        let changes = self.install(config)?;
        let now = SystemTime::now();
        let fleet = self.fleet.as_mut().expect("a fleet member");
        fleet.applied = Some((revision, now));
        info!(revision, ?changes, "fleet: applied revision {revision}");
        // Saved for a restart without etcd.
        let live = &mut self.state.live;
        (live.revision, live.applied_at_ms, live.document) = (Some(revision), unix_ms(now), document.to_string());
        self.persist();
        Ok(())
    }

    /// The fleet's verdicts in place of this edge's own, where the fleet
    /// has any and they are in force.
    pub(super) fn overlay_fleet_verdicts(&self, conditions: &mut Conditions) {
        let Some(fleet) = self.fleet.as_ref().filter(|f| f.verdicts_in_force) else { return };
        for (backend, condition) in conditions.iter_mut() {
            if let Some(verdict) = fleet.verdicts.get(backend) {
                condition.down = verdict.health == Health::Down;
                condition.failing = verdict.health != Health::Up;
            }
        }
    }

    /// This edge's own verdicts: one per monitored backend.
    fn own_verdicts(&self) -> Verdicts {
        self.config
            .monitored_backends()
            .into_iter()
            .filter(|(_, monitor)| monitor.is_enabled())
            .filter_map(|(backend, _)| self.health.get(&backend).map(|s| (backend, s.health())))
            .collect()
    }

    /// Records where this edge's checks and the fleet disagree (logged on
    /// change) and whether that is reason to withdraw.
    pub(super) fn note_disagreements(&mut self) {
        let own = self.own_verdicts();
        let Some(fleet) = &mut self.fleet else { return };
        let mut disagreements = Vec::new();
        for (backend, local) in &own {
            let Some(verdict) = fleet.verdicts.get(backend) else { continue };
            if (*local == Health::Down) != (verdict.health == Health::Down) {
                disagreements.push(Disagreement { backend: *backend, local: *local, fleet: verdict.health });
            }
        }
        if disagreements != fleet.disagreements {
            for d in disagreements.iter().filter(|d| !fleet.disagreements.contains(d)) {
                warn!(backend = %d.backend, local = %d.local, fleet = %d.fleet, "fleet: this edge's health checks disagree with the fleet's verdict; the fleet's applies");
            }
            for d in fleet.disagreements.iter().filter(|d| !disagreements.iter().any(|n| n.backend == d.backend)) {
                info!(backend = %d.backend, "fleet: this edge's health checks agree with the fleet again");
            }
            fleet.disagreements = disagreements;
        }
        let unreachable =
            fleet.disagreements.iter().filter(|d| d.local == Health::Down && d.fleet != Health::Down).count();
        let withdraw = fleet.connection.is_ok()
            && fleet.settings.withdraw_unreachable_share.is_some_and(|share| {
                let voted = own.keys().filter(|b| fleet.verdicts.contains_key(b)).count();
                voted > 0 && unreachable as f64 / voted as f64 > share
            });
        if withdraw != fleet.withdrawn_unreachable {
            if withdraw {
                warn!(unreachable, "fleet: this edge cannot reach more than withdraw_unreachable_share of the backends the fleet sees up; withdrawing its routes");
            } else {
                info!("fleet: this edge reaches the fleet's backends again; its routes may be announced");
            }
            fleet.withdrawn_unreachable = withdraw;
        }
    }

    /// Digests a new plan for the report (once per plan, not per report:
    /// at 512 VIPs it takes milliseconds).
    pub(super) fn note_plan_for_fleet(&mut self) {
        if let Some(fleet) = &mut self.fleet {
            fleet.tables_digest = tables_digest(&self.plan);
        }
    }

    /// Whether the announcer must withdraw every route for the fleet's sake.
    pub(super) fn fleet_withdraws(&self) -> bool {
        self.fleet.as_ref().is_some_and(|f| f.withdrawn_unreachable)
    }

    /// What this edge publishes now.
    pub fn fleet_outgoing(&self) -> Option<Outgoing> {
        let fleet = self.fleet.as_ref()?;
        let announcements = self.announcer.as_ref().map(|announcer| {
            let mut announced = Vec::new();
            let mut withdrawn = Vec::new();
            for (address, state) in announcer.addresses() {
                if state.announced {
                    announced.push(*address);
                } else if state.reason != Reason::Settling {
                    withdrawn.push(*address);
                }
            }
            Announcements { announced, withdrawn }
        });
        let report = EdgeReport {
            edge: self.config.edge.name.clone(),
            group: fleet.settings.group.clone(),
            applied_revision: fleet.applied.map(|a| a.0),
            applied_at_ms: fleet.applied.map(|a| unix_ms(a.1)),
            apply_error: fleet.apply_error.clone(),
            tables_digest: fleet.tables_digest.clone(),
            panic_vips: self.plan.vips.values().filter(|v| v.panic).map(|v| v.name.clone()).collect(),
            announcements,
            disagreements: fleet.disagreements.clone(),
            withdrawn_unreachable: fleet.withdrawn_unreachable,
            reported_at_ms: 0,
            version: env!("CARGO_PKG_VERSION").to_string(),
        };
        Some(Outgoing { report, verdicts: self.own_verdicts() })
    }

    /// Stores an operator's drain fleet-wide (it applies here at once).
    pub(super) fn share_drain(&self, op: DrainOp) {
        if let Some(sender) = self.fleet.as_ref().and_then(|f| f.drain_ops.as_ref()) {
            let _ = sender.send(op);
        }
    }

    /// Connects the agent to the fleet task's drain channel.
    pub fn set_fleet_drains(&mut self, sender: tokio::sync::mpsc::UnboundedSender<DrainOp>) {
        if let Some(fleet) = &mut self.fleet {
            fleet.drain_ops = Some(sender);
        }
    }

    /// The fleet part of `gslb status`.
    pub(super) fn fleet_status(&self) -> Option<FleetMemberStatus> {
        let fleet = self.fleet.as_ref()?;
        Some(FleetMemberStatus {
            group: fleet.settings.group.clone(),
            endpoints: fleet.settings.endpoints.clone(),
            connected: fleet.connection.is_ok(),
            error: fleet.connection.clone().err(),
            away_since_unix_ms: fleet.away_since.map(unix_ms),
            health_source: fleet.health_source().to_string(),
            applied_revision: fleet.applied.map(|a| a.0),
            applied_at_unix_ms: fleet.applied.map(|a| unix_ms(a.1)),
            apply_error: fleet.apply_error.clone(),
            tables_digest: fleet.tables_digest.clone(),
            disagreements: fleet.disagreements.clone(),
            withdrawn_unreachable: fleet.withdrawn_unreachable,
            verdicts: fleet.verdicts.clone(),
        })
    }

    /// `[fleet]`, if this edge is in a fleet.
    pub fn fleet_settings(&self) -> Option<&Fleet> {
        self.fleet.as_ref().map(|f| &f.settings)
    }
}

/// A digest of every planned table: which backend (address and weight) is
/// in which VIP's table at which size. Equal digests, equal tables (Maglev
/// tables are a pure function of these).
pub fn tables_digest(plan: &Plan) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for (matcher, vip) in &plan.vips {
        context.update(format!("{matcher:?}").as_bytes());
        let tables = std::iter::once(((None, 0), &vip.default))
            .chain(vip.client_tables.iter().map(|((a, l), t)| ((Some(*a), *l), t)));
        for (prefix, table) in tables {
            context.update(format!("{prefix:?}/{}", table.table_size).as_bytes());
            for (backend, weight) in &table.weights {
                context.update(format!("{backend}={weight};").as_bytes());
            }
        }
    }
    context.finish().as_ref().iter().take(12).map(|b| format!("{b:02x}")).collect()
}
