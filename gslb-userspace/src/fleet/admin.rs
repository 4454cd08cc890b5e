//! The operator's side of the fleet (`gslb fleet ...`): push a document as
//! a new revision with a staged rollout, roll back, and read the fleet's
//! state. These talk to etcd directly; no agent needs to run here.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use etcd_client::{Client, Compare, CompareOp, GetOptions, SortOrder, SortTarget, Txn, TxnOp};
use serde::Serialize;

use super::etcd::{connect, deadline};
use super::keys::{DrainRecord, EdgeReport, Keys};
use super::quorum::{fleet_verdicts, FleetVerdict};
use super::rollout::{Phase, Rollout};
use super::sync::read_view;
use super::{now_ms, unix_ms};
use crate::config::{self, Edge, Fleet};
use crate::health::Health;

/// How a push rolls out.
#[derive(Clone, Debug)]
pub struct PushOptions {
    /// `None`: every edge at once.
    pub canary_group: Option<String>,
    pub bake: Duration,
}

/// Validates `file` as `gslb check` would, then stores it as the next
/// revision and starts its rollout. Returns the revision number.
pub async fn push(fleet: &Fleet, file: &Path, options: &PushOptions) -> Result<u64> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    config::parse_fleet_document(&text, file, &Edge::permissive())?;
    let keys = Keys::new(&fleet.prefix);
    let mut client = connect(fleet).await?;
    let view = read_view(&mut client, &keys).await?;
    if let Some(group) = &options.canary_group {
        if !view.reports.iter().any(|r| &r.group == group) {
            bail!(
                "no live edge is in the canary group {group:?} (fleet.group in an edge's file); push with --all-at-once, or name a group that has edges"
            );
        }
    }
    let current = view.rollout.as_ref().map(|(r, _)| r);
    let revision = latest_revision(&mut client, &keys).await?.max(current.map_or(0, |r| r.revision)) + 1;
    let rollout = Rollout::push(current, revision, options.canary_group.clone(), options.bake.as_secs(), now_ms());
    let rollout_key = keys.rollout();
    let unchanged = match &view.rollout {
        Some((_, mod_revision)) => Compare::mod_revision(rollout_key.as_str(), CompareOp::Equal, *mod_revision),
        None => Compare::version(rollout_key.as_str(), CompareOp::Equal, 0),
    };
    let revision_key = keys.revision(revision);
    let txn = Txn::new().when([unchanged, Compare::version(revision_key.as_str(), CompareOp::Equal, 0)]).and_then([
        TxnOp::put(revision_key.as_str(), text.into_bytes(), None),
        TxnOp::put(rollout_key.as_str(), serde_json::to_vec(&rollout)?, None),
    ]);
    if !deadline("storing the revision", client.txn(txn)).await?.succeeded() {
        bail!("another push or rollback changed the rollout meanwhile; nothing was stored: check `gslb fleet status` and push again");
    }
    Ok(revision)
}

/// The highest revision stored.
async fn latest_revision(client: &mut Client, keys: &Keys) -> Result<u64> {
    let options = GetOptions::new().with_prefix().with_keys_only().with_sort(SortTarget::Key, SortOrder::Descend);
    let prefix = keys.revisions();
    let answer = deadline("listing revisions", client.get(prefix.as_str(), Some(options))).await?;
    // Keys sort as text ("9" after "10"): take the largest number.
    Ok(answer.kvs().iter().filter_map(|kv| keys.revision_number(&String::from_utf8_lossy(kv.key()))).max().unwrap_or(0))
}

/// Every edge back to `to`, or to the revision before the current one.
/// Returns (from, to).
pub async fn rollback(fleet: &Fleet, to: Option<u64>) -> Result<(u64, u64)> {
    let keys = Keys::new(&fleet.prefix);
    let mut client = connect(fleet).await?;
    let view = read_view(&mut client, &keys).await?;
    let Some((current, mod_revision)) = view.rollout else { bail!("nothing was ever pushed to this fleet") };
    let Some(target) = to.or(current.previous) else {
        bail!("revision {} has no previous revision to return to; name one with --to N", current.revision);
    };
    let revision_key = keys.revision(target);
    let rollout = Rollout::rollback(&current, target, now_ms());
    let rollout_key = keys.rollout();
    let txn = Txn::new()
        .when([
            Compare::mod_revision(rollout_key.as_str(), CompareOp::Equal, mod_revision),
            Compare::version(revision_key.as_str(), CompareOp::Greater, 0),
        ])
        .and_then([TxnOp::put(rollout_key.as_str(), serde_json::to_vec(&rollout)?, None)]);
    if !deadline("rolling back", client.txn(txn)).await?.succeeded() {
        let exists = deadline("reading a revision", client.get(revision_key.as_str(), None)).await?.count() > 0;
        if !exists {
            bail!("revision {target} is not stored in the fleet");
        }
        bail!("another push or rollback changed the rollout meanwhile; nothing was changed: check `gslb fleet status`");
    }
    Ok((current.revision, target))
}

/// Waits until the rollout of `revision` completes (`Ok`) or halts (`Err`
/// with the reason), at most `timeout`; `progress` hears each phase.
pub async fn wait(fleet: &Fleet, revision: u64, timeout: Duration, progress: impl Fn(&Rollout)) -> Result<()> {
    let keys = Keys::new(&fleet.prefix);
    let mut client = connect(fleet).await?;
    let started = Instant::now();
    let mut last = None;
    loop {
        // A member dying while we wait is etcd's business: ask another.
        let view = match read_view(&mut client, &keys).await {
            Ok(view) => view,
            Err(error) if started.elapsed() < timeout => {
                tracing::debug!("reading the rollout: {error:#}; asking another member");
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Ok(other) = connect(fleet).await {
                    client = other;
                }
                continue;
            }
            Err(error) => return Err(error),
        };
        let Some((rollout, _)) = view.rollout else { bail!("the rollout is gone") };
        if rollout.revision != revision {
            bail!("revision {} replaced revision {revision} before it completed", rollout.revision);
        }
        let everyone_applied = view.reports.iter().all(|r| r.applied_revision == Some(revision));
        let refused = view.reports.iter().find(|r| {
            r.apply_error.as_ref().is_some_and(|e| e.revision == revision) && r.applied_revision != Some(revision)
        });
        if let (Some(report), Phase::Complete) = (refused, &rollout.phase) {
            let error = report.apply_error.as_ref().map_or("", |e| e.error.as_str());
            bail!("edge {} refused revision {revision}: {error}", report.edge);
        }
        if last.as_ref() != Some(&rollout.phase) {
            progress(&rollout);
            last = Some(rollout.phase.clone());
        }
        match &rollout.phase {
            Phase::Halted { reason, .. } => bail!("the rollout of revision {revision} halted: {reason}"),
            Phase::Complete if everyone_applied => return Ok(()),
            _ => {}
        }
        if started.elapsed() > timeout {
            bail!("revision {revision} was not applied by every live edge within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `gslb fleet status`: the rollout, every live edge, and per backend each
/// edge's verdict next to the fleet's.
#[derive(Clone, Debug, Serialize)]
pub struct FleetStatus {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub rollout: Option<Rollout>,
    pub revisions: Vec<u64>,
    pub edges: Vec<EdgeReport>,
    /// Whether every live edge reports the same tables.
    pub tables_identical: bool,
    pub backends: BTreeMap<IpAddr, BackendVerdicts>,
    pub drains: BTreeMap<IpAddr, DrainRecord>,
    pub read_at_ms: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct BackendVerdicts {
    pub fleet: FleetVerdict,
    /// Each live edge's own verdict.
    pub edges: BTreeMap<String, Health>,
}

pub async fn status(fleet: &Fleet) -> Result<FleetStatus> {
    let keys = Keys::new(&fleet.prefix);
    let mut client = connect(fleet).await?;
    let view = read_view(&mut client, &keys).await?;
    let options = GetOptions::new().with_prefix().with_keys_only();
    let prefix = keys.revisions();
    let listed = deadline("listing revisions", client.get(prefix.as_str(), Some(options))).await?;
    let mut revisions: Vec<u64> =
        listed.kvs().iter().filter_map(|kv| keys.revision_number(&String::from_utf8_lossy(kv.key()))).collect();
    revisions.sort_unstable();
    let verdicts = fleet_verdicts(view.verdicts.values(), fleet.quorum);
    let backends = verdicts
        .into_iter()
        .map(|(backend, fleet)| {
            let edges =
                view.verdicts.iter().filter_map(|(edge, v)| v.get(&backend).map(|h| (edge.clone(), *h))).collect();
            (backend, BackendVerdicts { fleet, edges })
        })
        .collect();
    let mut edges = view.reports;
    edges.sort_by(|a, b| a.edge.cmp(&b.edge));
    let tables_identical = edges.windows(2).all(|w| w[0].tables_digest == w[1].tables_digest);
    Ok(FleetStatus {
        endpoints: fleet.endpoints.clone(),
        prefix: fleet.prefix.clone(),
        rollout: view.rollout.map(|(r, _)| r),
        revisions,
        edges,
        tables_identical,
        backends,
        drains: view.drains,
        read_at_ms: unix_ms(std::time::SystemTime::now()),
    })
}
