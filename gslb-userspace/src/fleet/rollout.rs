//! Staged rollouts: which revision each edge runs, and when a rollout moves
//! from its canary group to every edge, or halts.
//!
//! A push starts in `Canary`: edges of the canary group apply the new
//! revision, every other edge keeps the previous one. Once every live
//! canary has applied it, the rollout bakes for `bake_secs`; then it is
//! `Complete` and every edge applies it. A canary that cannot apply the
//! revision, goes into panic with it, or withdraws its routes halts the
//! rollout: canaries keep what they run, the rest keep the previous
//! revision, until the operator rolls back or pushes again.
//!
//! Every agent steps the rollout; etcd's compare-and-swap makes one
//! transition win, so the rules here must only depend on what is in etcd.

use serde::{Deserialize, Serialize};

use super::keys::EdgeReport;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "phase")]
pub enum Phase {
    /// The canary group applies the revision.
    Canary,
    /// Every live canary has applied it; the rest follow at `until_ms`.
    Baking { since_ms: u64, until_ms: u64 },
    /// Every edge runs the revision.
    Complete,
    /// Stopped by a canary's failure; only a rollback or a push moves on.
    Halted { reason: String, at_ms: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// The revision being rolled out (or rolled out).
    pub revision: u64,
    /// What edges outside the canary group run until the rollout completes.
    pub previous: Option<u64>,
    /// `None`: every edge at once.
    pub canary_group: Option<String>,
    pub bake_secs: u64,
    #[serde(flatten)]
    pub phase: Phase,
    pub started_ms: u64,
    /// Set by `gslb fleet rollback`: the revision rolled back from.
    pub rolled_back_from: Option<u64>,
}

impl Rollout {
    /// A new rollout of `revision` over `current` (the rollout it replaces).
    pub fn push(
        current: Option<&Rollout>,
        revision: u64,
        canary_group: Option<String>,
        bake_secs: u64,
        now_ms: u64,
    ) -> Rollout {
        let phase = if canary_group.is_some() { Phase::Canary } else { Phase::Complete };
        Rollout {
            revision,
            previous: current.and_then(Rollout::stable),
            canary_group,
            bake_secs,
            phase,
            started_ms: now_ms,
            rolled_back_from: None,
        }
    }

    /// Every edge back to `to` at once.
    pub fn rollback(current: &Rollout, to: u64, now_ms: u64) -> Rollout {
        Rollout {
            revision: to,
            previous: None,
            canary_group: None,
            bake_secs: 0,
            phase: Phase::Complete,
            started_ms: now_ms,
            rolled_back_from: Some(current.revision),
        }
    }

    /// The revision every edge outside a canary group can count on.
    pub fn stable(&self) -> Option<u64> {
        match self.phase {
            Phase::Complete => Some(self.revision),
            _ => self.previous,
        }
    }

    /// The revision an edge of `group` should run.
    pub fn target(&self, group: &str) -> Option<u64> {
        let canary = self.canary_group.as_deref() == Some(group);
        if canary {
            Some(self.revision)
        } else {
            self.stable()
        }
    }

    pub fn is_canary(&self, report: &EdgeReport) -> bool {
        self.canary_group.as_deref() == Some(report.group.as_str())
    }

    /// The transition due now, given the live edges' reports; `None`: stay.
    pub fn step(&self, reports: &[EdgeReport], now_ms: u64) -> Option<Rollout> {
        let moved = |phase| Some(Rollout { phase, ..self.clone() });
        match self.phase {
            Phase::Complete | Phase::Halted { .. } => None,
            Phase::Canary | Phase::Baking { .. } => {
                let canaries: Vec<&EdgeReport> = reports.iter().filter(|r| self.is_canary(r)).collect();
                if let Some(reason) = canaries.iter().find_map(|r| self.failure(r)) {
                    return moved(Phase::Halted { reason, at_ms: now_ms });
                }
                match self.phase {
                    Phase::Canary if canaries.is_empty() => moved(Phase::Halted {
                        reason: format!(
                            "no live edge in canary group {:?}",
                            self.canary_group.as_deref().unwrap_or_default()
                        ),
                        at_ms: now_ms,
                    }),
                    Phase::Canary if canaries.iter().all(|r| r.applied_revision == Some(self.revision)) => {
                        moved(Phase::Baking { since_ms: now_ms, until_ms: now_ms + self.bake_secs * 1000 })
                    }
                    Phase::Baking { until_ms, .. } if now_ms >= until_ms => moved(Phase::Complete),
                    _ => None,
                }
            }
        }
    }

    /// Why a canary's report halts the rollout, if it does.
    fn failure(&self, report: &EdgeReport) -> Option<String> {
        let edge = &report.edge;
        if let Some(error) = report.apply_error.as_ref().filter(|e| e.revision == self.revision) {
            return Some(format!("canary {edge} could not apply revision {}: {}", self.revision, error.error));
        }
        if report.applied_revision != Some(self.revision) {
            return None;
        }
        if let Some(vip) = report.panic_vips.first() {
            return Some(format!("canary {edge} is in panic with revision {} (vip {vip})", self.revision));
        }
        if let Some(address) = report.announcements.as_ref().and_then(|a| a.withdrawn.first()) {
            return Some(format!("canary {edge} withdrew {address} with revision {}", self.revision));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::keys::{Announcements, ApplyError};

    fn report(edge: &str, group: &str, applied: Option<u64>) -> EdgeReport {
        EdgeReport { edge: edge.into(), group: group.into(), applied_revision: applied, ..Default::default() }
    }

    fn staged() -> Rollout {
        let first = Rollout::push(None, 1, None, 0, 0);
        Rollout::push(Some(&first), 2, Some("canary".into()), 10, 1000)
    }

    #[test]
    fn canaries_first_then_bake_then_everyone() {
        let rollout = staged();
        assert_eq!(rollout.target("canary"), Some(2));
        assert_eq!(rollout.target("default"), Some(1));
        let waiting = [report("a", "canary", Some(1)), report("b", "default", Some(1))];
        assert_eq!(rollout.step(&waiting, 2000), None, "the canary has not applied it yet");
        let applied = [report("a", "canary", Some(2)), report("b", "default", Some(1))];
        let baking = rollout.step(&applied, 3000).expect("bakes once every canary applied it");
        assert_eq!(baking.phase, Phase::Baking { since_ms: 3000, until_ms: 13_000 });
        assert_eq!(baking.target("default"), Some(1), "the rest wait while it bakes");
        assert_eq!(baking.step(&applied, 12_999), None);
        let complete = baking.step(&applied, 13_000).expect("complete after the bake");
        assert_eq!(complete.phase, Phase::Complete);
        assert_eq!(complete.target("default"), Some(2));
        assert_eq!(complete.step(&applied, 20_000), None);
    }

    #[test]
    fn a_failing_canary_halts_it() {
        let rollout = staged();
        let mut refused = report("a", "canary", Some(1));
        refused.apply_error = Some(ApplyError { revision: 2, error: "too many VIPs".into(), at_ms: 1 });
        let halted = rollout.step(&[refused], 2000).unwrap();
        assert!(
            matches!(&halted.phase, Phase::Halted { reason, .. } if reason.contains("too many VIPs")),
            "{halted:?}"
        );
        assert_eq!(halted.target("default"), Some(1));
        assert_eq!(halted.step(&[], 9000), None, "a halted rollout stays halted");

        let mut panic = report("a", "canary", Some(2));
        panic.panic_vips = vec!["web".into()];
        assert!(matches!(rollout.step(&[panic], 2000).unwrap().phase, Phase::Halted { .. }));

        let mut withdrawn = report("a", "canary", Some(2));
        withdrawn.announcements =
            Some(Announcements { announced: vec![], withdrawn: vec!["203.0.113.10".parse().unwrap()] });
        let baking = Rollout { phase: Phase::Baking { since_ms: 0, until_ms: 99_000 }, ..rollout.clone() };
        assert!(matches!(baking.step(&[withdrawn], 2000).unwrap().phase, Phase::Halted { .. }));

        // An old error, about another revision, is no reason.
        let mut old = report("a", "canary", Some(2));
        old.apply_error = Some(ApplyError { revision: 1, error: "old".into(), at_ms: 1 });
        assert!(matches!(rollout.step(&[old], 2000).unwrap().phase, Phase::Baking { .. }));
    }

    #[test]
    fn no_live_canary_halts_it() {
        let halted = staged().step(&[report("b", "default", Some(1))], 2000).unwrap();
        assert!(matches!(&halted.phase, Phase::Halted { reason, .. } if reason.contains("no live edge")));
    }

    #[test]
    fn all_at_once_and_rollback() {
        let first = Rollout::push(None, 1, None, 0, 0);
        assert_eq!(first.target("anything"), Some(1));
        let second = Rollout::push(Some(&first), 2, Some("canary".into()), 60, 0);
        let halted = Rollout { phase: Phase::Halted { reason: "x".into(), at_ms: 0 }, ..second };
        // A push over a halted rollout starts from what the fleet runs.
        let third = Rollout::push(Some(&halted), 3, None, 0, 0);
        assert_eq!(third.previous, Some(1));
        let back = Rollout::rollback(&third, 1, 0);
        assert_eq!((back.target("canary"), back.target("default")), (Some(1), Some(1)));
        assert_eq!(back.rolled_back_from, Some(3));
    }
}
