//! The agent's side of the fleet: one task that keeps a mirror of the
//! fleet's state (`{prefix}/state/`, by watch), tells the agent what changed
//! (the revision to run, the live edges' verdicts, the drains), publishes
//! this edge's report and verdicts under a lease, stores the operator's
//! drains, and steps rollouts.
//!
//! Any failure (an unreachable or leaderless etcd, a lost lease, a watch
//! cancelled) ends the session: the agent is told it is disconnected, keeps
//! steering with what it has, and a new session starts a second later from
//! a fresh snapshot.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use etcd_client::{Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::etcd::{connect, deadline};
use super::keys::{DrainRecord, EdgeReport, Keys, StateKey, Verdicts};
use super::now_ms;
use super::rollout::Rollout;
use crate::config::Fleet;

/// How often rollouts are stepped (bake times end, canaries checked).
const STEP_INTERVAL: Duration = Duration::from_secs(1);
/// Wait before a new session after a failed one.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// What the fleet tells the agent.
#[derive(Clone, Debug, PartialEq)]
pub enum FleetEvent {
    /// Run this revision (`Err`: its document could not be read).
    Revision { revision: u64, document: std::result::Result<String, String> },
    /// The live edges' verdicts (by edge) and the fleet's drains.
    State { verdicts: BTreeMap<String, Verdicts>, drains: BTreeMap<IpAddr, DrainRecord> },
    /// The session started, or ended with this error.
    Connected(std::result::Result<(), String>),
}

/// What the agent publishes: its report and its own verdicts (the latest
/// wins; `reported_at_ms` is stamped when written).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outgoing {
    pub report: EdgeReport,
    pub verdicts: Verdicts,
}

/// An operator's drain to store fleet-wide.
#[derive(Clone, Debug, PartialEq)]
pub enum DrainOp {
    Drain(IpAddr, DrainRecord),
    Undrain(IpAddr),
}

/// The agent's ends of the task's channels.
pub struct FleetLink {
    pub events: mpsc::UnboundedReceiver<FleetEvent>,
    pub outgoing: watch::Sender<Outgoing>,
    pub drains: mpsc::UnboundedSender<DrainOp>,
    /// Ends once `outgoing` is dropped (having revoked this edge's lease,
    /// so that its verdicts stop counting at once).
    pub task: tokio::task::JoinHandle<()>,
}

/// Starts the task on the current tokio runtime.
pub fn spawn(fleet: Fleet, edge: String) -> FleetLink {
    let (events_tx, events) = mpsc::unbounded_channel();
    let (outgoing, outgoing_rx) = watch::channel(Outgoing::default());
    let (drains, drains_rx) = mpsc::unbounded_channel();
    let keys = Keys::new(&fleet.prefix);
    let task =
        Sync { fleet, keys, edge, events: events_tx, outgoing: outgoing_rx, drains: drains_rx, pending: Vec::new() };
    let task = tokio::spawn(task.run());
    FleetLink { events, outgoing, drains, task }
}

struct Sync {
    fleet: Fleet,
    keys: Keys,
    edge: String,
    events: mpsc::UnboundedSender<FleetEvent>,
    outgoing: watch::Receiver<Outgoing>,
    drains: mpsc::UnboundedReceiver<DrainOp>,
    /// Drains not yet stored (etcd away): stored when it returns.
    pending: Vec<DrainOp>,
}

/// The mirror of `{prefix}/state/`: value and mod revision per key.
type Mirror = BTreeMap<String, (Vec<u8>, i64)>;

/// What one session has told the agent, so only changes are sent.
#[derive(Default)]
struct Sent {
    target: Option<u64>,
    state: Option<(BTreeMap<String, Verdicts>, BTreeMap<IpAddr, DrainRecord>)>,
    /// The last report and verdicts written, without their time stamps.
    published: Option<Outgoing>,
}

impl Sync {
    async fn run(mut self) {
        let mut last_error = None;
        loop {
            let error = match self.session().await {
                Ok(()) => return, // the agent is gone
                Err(error) => format!("{error:#}"),
            };
            if last_error.as_ref() != Some(&error) {
                warn!("fleet: etcd session ended: {error}; steering goes on with the last applied revision");
            }
            if self.events.send(FleetEvent::Connected(Err(error.clone()))).is_err() {
                return;
            }
            last_error = Some(error);
            tokio::time::sleep(RETRY_AFTER).await;
        }
    }

    /// One session, from connecting to the first failure. `Ok`: the agent
    /// stopped listening.
    async fn session(&mut self) -> Result<()> {
        let mut client = connect(&self.fleet).await?;
        let ttl = self.fleet.lease_ttl_secs as i64;
        let lease = deadline("granting a lease", client.lease_grant(ttl, None)).await?.id();
        let (mut keeper, mut kept) = deadline("keeping the lease alive", client.lease_keep_alive(lease)).await?;

        let state = self.keys.state();
        let snapshot =
            deadline("reading the fleet state", client.get(state.as_str(), Some(GetOptions::new().with_prefix())))
                .await?;
        let mut mirror: Mirror = BTreeMap::new();
        for kv in snapshot.kvs() {
            mirror.insert(String::from_utf8_lossy(kv.key()).into_owned(), (kv.value().to_vec(), kv.mod_revision()));
        }
        let revision = snapshot.header().map_or(0, |h| h.revision());
        let options = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
        let mut stream = deadline("watching the fleet state", client.watch(state.as_str(), Some(options))).await?;

        info!(endpoints = ?self.fleet.endpoints, lease, "fleet: connected to etcd");
        if self.events.send(FleetEvent::Connected(Ok(()))).is_err() {
            return Ok(());
        }
        let mut sent = Sent::default();
        self.store_drains(&mut client).await?;
        self.publish(&mut client, lease, &mut sent).await?;
        if !self.tell_agent(&mut client, &mirror, &mut sent).await? {
            return Ok(());
        }

        let mut keep_alive = tokio::time::interval(Duration::from_secs((ttl as u64 / 3).max(1)));
        let mut step = tokio::time::interval(STEP_INTERVAL);
        loop {
            tokio::select! {
                message = stream.message() => {
                    let message = message?.ok_or_else(|| anyhow!("etcd ended the watch"))?;
                    if message.canceled() {
                        bail!("etcd cancelled the watch: {}", message.cancel_reason());
                    }
                    for event in message.events() {
                        let Some(kv) = event.kv() else { continue };
                        let key = String::from_utf8_lossy(kv.key()).into_owned();
                        match event.event_type() {
                            EventType::Put => mirror.insert(key, (kv.value().to_vec(), kv.mod_revision())),
                            EventType::Delete => mirror.remove(&key),
                        };
                    }
                    if !self.tell_agent(&mut client, &mirror, &mut sent).await? {
                        return Ok(());
                    }
                }
                _ = keep_alive.tick() => {
                    deadline("keeping the lease alive", keeper.keep_alive()).await?;
                    let answer = deadline("keeping the lease alive", kept.message()).await?;
                    if answer.is_none_or(|a| a.ttl() <= 0) {
                        bail!("this edge's lease expired: its verdicts and report were dropped");
                    }
                }
                changed = self.outgoing.changed() => {
                    if changed.is_err() {
                        // The agent is stopping: its verdicts and report go now.
                        let _ = deadline("revoking this edge's lease", client.lease_revoke(lease)).await;
                        return Ok(());
                    }
                    self.publish(&mut client, lease, &mut sent).await?;
                }
                op = self.drains.recv() => {
                    let Some(op) = op else { return Ok(()) };
                    self.pending.push(op);
                    self.store_drains(&mut client).await?;
                }
                _ = step.tick() => self.step_rollout(&mut client, &mirror).await?,
            }
        }
    }

    /// Sends the agent what changed: its target revision (with the
    /// document), verdicts and drains. `false`: the agent is gone.
    async fn tell_agent(&mut self, client: &mut Client, mirror: &Mirror, sent: &mut Sent) -> Result<bool> {
        let view = View::of(&self.keys, mirror);
        let target = view.rollout.as_ref().and_then(|(r, _)| r.target(&self.fleet.group));
        if let Some(revision) = target.filter(|_| target != sent.target) {
            let key = self.keys.revision(revision);
            let answer = deadline("reading a revision", client.get(key.as_str(), None)).await?;
            let document = match answer.kvs().first() {
                Some(kv) => String::from_utf8(kv.value().to_vec()).map_err(|_| format!("{key} is not UTF-8 text")),
                None => Err(format!("{key} is missing from etcd")),
            };
            if self.events.send(FleetEvent::Revision { revision, document }).is_err() {
                return Ok(false);
            }
            sent.target = target;
        }
        let state = (view.verdicts, view.drains);
        if sent.state.as_ref() != Some(&state) {
            if self.events.send(FleetEvent::State { verdicts: state.0.clone(), drains: state.1.clone() }).is_err() {
                return Ok(false);
            }
            sent.state = Some(state);
        }
        Ok(true)
    }

    /// Writes this edge's report and verdicts (under the lease) if they
    /// changed since last written.
    async fn publish(&mut self, client: &mut Client, lease: i64, sent: &mut Sent) -> Result<()> {
        let outgoing = self.outgoing.borrow_and_update().clone();
        if outgoing.report.edge.is_empty() {
            return Ok(()); // the agent has not reported yet
        }
        let last = sent.published.as_ref();
        if last.is_none_or(|l| l.report != outgoing.report) {
            let report = EdgeReport { reported_at_ms: now_ms(), ..outgoing.report.clone() };
            let value = serde_json::to_vec(&report)?;
            let options = PutOptions::new().with_lease(lease);
            deadline("writing this edge's report", client.put(self.keys.edge(&self.edge), value, Some(options)))
                .await?;
        }
        if last.is_none_or(|l| l.verdicts != outgoing.verdicts) {
            let value = serde_json::to_vec(&outgoing.verdicts)?;
            let options = PutOptions::new().with_lease(lease);
            deadline("writing this edge's verdicts", client.put(self.keys.health(&self.edge), value, Some(options)))
                .await?;
        }
        sent.published = Some(outgoing);
        Ok(())
    }

    /// Stores the drains waiting to be stored, in order.
    async fn store_drains(&mut self, client: &mut Client) -> Result<()> {
        while let Some(op) = self.pending.first().cloned() {
            match &op {
                DrainOp::Drain(backend, record) => {
                    let value = serde_json::to_vec(record)?;
                    deadline("storing a drain", client.put(self.keys.drain(*backend), value, None)).await?;
                }
                DrainOp::Undrain(backend) => {
                    deadline("removing a drain", client.delete(self.keys.drain(*backend), None)).await?;
                }
            }
            self.pending.remove(0);
        }
        Ok(())
    }

    /// Moves the rollout on if it is due; a concurrent writer (another
    /// edge, a push) wins and this one is dropped.
    async fn step_rollout(&mut self, client: &mut Client, mirror: &Mirror) -> Result<()> {
        let view = View::of(&self.keys, mirror);
        let Some((rollout, mod_revision)) = view.rollout else { return Ok(()) };
        let Some(next) = rollout.step(&view.reports, now_ms()) else { return Ok(()) };
        let key = self.keys.rollout();
        let txn = Txn::new()
            .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, mod_revision)])
            .and_then([TxnOp::put(key.as_str(), serde_json::to_vec(&next)?, None)]);
        if deadline("stepping the rollout", client.txn(txn)).await?.succeeded() {
            info!(revision = next.revision, phase = ?next.phase, "fleet: rollout moved on");
        }
        Ok(())
    }
}

/// The fleet's state as the mirror holds it.
pub struct View {
    /// With its mod revision, for compare-and-swap.
    pub rollout: Option<(Rollout, i64)>,
    /// Live edges' reports.
    pub reports: Vec<EdgeReport>,
    pub verdicts: BTreeMap<String, Verdicts>,
    pub drains: BTreeMap<IpAddr, DrainRecord>,
}

impl View {
    pub fn of<'m>(keys: &Keys, entries: impl IntoIterator<Item = (&'m String, &'m (Vec<u8>, i64))>) -> View {
        let mut view = View { rollout: None, reports: Vec::new(), verdicts: BTreeMap::new(), drains: BTreeMap::new() };
        for (key, (value, mod_revision)) in entries {
            // A record this version cannot read is skipped, not fatal: a
            // newer agent may have written it.
            match keys.classify(key) {
                Some(StateKey::Rollout) => {
                    view.rollout = serde_json::from_slice(value).ok().map(|r| (r, *mod_revision));
                }
                Some(StateKey::Edge(_)) => view.reports.extend(serde_json::from_slice(value).ok()),
                Some(StateKey::Health(edge)) => {
                    if let Ok(verdicts) = serde_json::from_slice(value) {
                        view.verdicts.insert(edge.to_string(), verdicts);
                    }
                }
                Some(StateKey::Drain(backend)) => {
                    if let Ok(record) = serde_json::from_slice(value) {
                        view.drains.insert(backend, record);
                    }
                }
                None => {}
            }
        }
        view
    }
}

/// Reads everything under `{prefix}/state/` once (for `gslb fleet`).
pub async fn read_view(client: &mut Client, keys: &Keys) -> Result<View> {
    let state = keys.state();
    let answer =
        deadline("reading the fleet state", client.get(state.as_str(), Some(GetOptions::new().with_prefix()))).await?;
    let entries: Vec<(String, (Vec<u8>, i64))> = answer
        .kvs()
        .iter()
        .map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), (kv.value().to_vec(), kv.mod_revision())))
        .collect();
    Ok(View::of(keys, entries.iter().map(|(k, v)| (k, v))))
}
