//! The edge's state file (`edge.state_file`, also called `fleet.state_file`):
//! what the operator decided at runtime — drains with their end times, the
//! edge drain — and, in a fleet, the applied revision, kept on disk so that
//! the next start of the agent (after `kill -9`, a crash or a reboot) goes
//! on as before.
//!
//! The file is JSON, written whole (a temporary file, flushed, renamed over
//! the old one, then the directory flushed) and only when what it holds
//! changes. Weights are not in it: the config file is their source.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use super::Agent;
use crate::config::Config;
use crate::decide::conditions::{Drain, Drains};
use crate::fleet::keys::DrainRecord;
use crate::fleet::{from_unix_ms, unix_ms};
use crate::view::status::StateFileStatus;

/// What the file holds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct SavedState {
    /// `[fleet]` only: the revision applied last, when, and its document.
    #[serde(default)]
    pub(super) revision: Option<u64>,
    #[serde(default)]
    pub(super) applied_at_ms: u64,
    #[serde(default)]
    pub(super) document: String,
    /// Drains, by backend (a pool's drain is one per backend), with their
    /// end times (`until_ms`: when recorded flows are cut).
    #[serde(default)]
    pub(super) drains: BTreeMap<IpAddr, DrainRecord>,
    /// `gslb drain --edge`: since when, and until when if `--for` was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) edge_drain: Option<DrainRecord>,
}

/// What the agent's start found in the file.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Found {
    /// No file: a first start.
    Missing,
    Read,
    /// Unreadable or not a state file: set aside (`moved_to`) and ignored.
    Bad {
        error: String,
        moved_to: Option<PathBuf>,
    },
}

/// The state file, as the agent keeps it.
#[derive(Debug)]
pub(super) struct StateFile {
    pub(super) path: PathBuf,
    /// What the file holds: as read at the start, then as last written.
    pub(super) saved: SavedState,
    /// What it should hold: `persist` fills in the drains; the fleet's
    /// revision and the edge drain (in wall-clock time) are set here.
    pub(super) live: SavedState,
    found: Found,
    /// What the start took back from the file, and what it left out.
    restored_drains: usize,
    restored_edge_drain: bool,
    dropped: Vec<String>,
    /// The last write's error, until a write succeeds.
    write_error: Option<String>,
}

impl StateFile {
    /// Reads the file at `path`. One that cannot be read or parsed is
    /// renamed to `{path}.bad` and reported; the agent starts without it.
    pub(super) fn open(path: &Path) -> StateFile {
        let (saved, found) = read(path);
        match &found {
            Found::Missing => info!(path = %path.display(), "no state file: nothing to restore (a first start)"),
            Found::Read => {}
            Found::Bad { error, moved_to } => error!(
                path = %path.display(),
                moved_to = %moved_to.as_ref().map_or("(could not be moved)".to_string(), |p| p.display().to_string()),
                "the state file is unusable ({error}); starting without it: no drain or edge drain is restored"
            ),
        }
        StateFile {
            path: path.to_path_buf(),
            live: SavedState { edge_drain: None, ..saved.clone() },
            saved,
            found,
            restored_drains: 0,
            restored_edge_drain: false,
            dropped: Vec::new(),
            write_error: None,
        }
    }

    /// The saved drains of backends `config` still has (logged; the others
    /// are dropped with a log line, and leave the file at its next write).
    pub(super) fn restore_drains(&mut self, config: &Config, now: SystemTime) -> Drains {
        let (drains, dropped) = restore_drains(&self.saved, config);
        for backend in &dropped {
            warn!(%backend, path = %self.path.display(), "a saved drain names a backend no longer in the config: dropped");
            self.dropped.push(format!("drain of {backend}: no longer in the config"));
        }
        for (backend, drain) in &drains {
            let left = drain.until.map(|u| u.duration_since(now).unwrap_or_default());
            info!(
                %backend,
                flows_cut_in = ?left,
                cut = drain.until.is_some_and(|u| u <= now),
                "drain restored from the state file: no new flows"
            );
        }
        self.restored_drains = drains.len();
        drains
    }

    /// The saved edge drain, as (time since it began, time left), unless
    /// its time is over (then it is dropped, logged).
    pub(super) fn restore_edge_drain(&mut self, now: SystemTime) -> Option<(Duration, Option<Duration>)> {
        let record = self.saved.edge_drain?;
        match edge_drain_left(&record, now) {
            Some(left) => {
                self.live.edge_drain = Some(record);
                self.restored_edge_drain = true;
                Some(left)
            }
            None => {
                info!(path = %self.path.display(), "the saved edge drain's time is over while the agent was away: not restored");
                self.dropped.push("edge drain: its time was over".into());
                None
            }
        }
    }

    /// An edge drain the agent cannot take back (no BGP daemon).
    pub(super) fn drop_edge_drain(&mut self, why: &str) {
        if self.saved.edge_drain.is_some() {
            warn!(path = %self.path.display(), "the saved edge drain is dropped: {why}");
            self.dropped.push(format!("edge drain: {why}"));
        }
    }

    /// Writes `next` if it differs from what the file holds (or the last
    /// write failed). A failure is logged once and reported in status; the
    /// next change tries again.
    fn write(&mut self, next: SavedState) {
        if next == self.saved && self.write_error.is_none() {
            return;
        }
        match save(&self.path, &next) {
            Ok(()) => {
                if self.write_error.take().is_some() {
                    info!(path = %self.path.display(), "the state file is written again");
                }
                self.saved = next;
            }
            Err(e) => {
                let message = format!("{e:#}");
                if self.write_error.as_deref() != Some(message.as_str()) {
                    warn!(path = %self.path.display(), "the state file was not written; a restart would lose the latest decisions: {message}");
                }
                self.write_error = Some(message);
            }
        }
    }

    /// The `state_file` part of `gslb status`.
    pub(super) fn status(&self) -> StateFileStatus {
        let (found, error, moved_to) = match &self.found {
            Found::Missing => ("missing", None, None),
            Found::Read => ("read", None, None),
            Found::Bad { error, moved_to } => ("bad", Some(error.clone()), moved_to.clone()),
        };
        StateFileStatus {
            path: self.path.clone(),
            found: found.to_string(),
            error,
            moved_to,
            restored_drains: self.restored_drains,
            restored_edge_drain: self.restored_edge_drain,
            dropped: self.dropped.clone(),
            write_error: self.write_error.clone(),
        }
    }
}

/// Reads and parses the file; a bad one is moved aside.
fn read(path: &Path) -> (SavedState, Found) {
    let parsed = match std::fs::read(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (SavedState::default(), Found::Missing),
        Err(e) => Err(format!("cannot read it: {e}")),
        Ok(bytes) => serde_json::from_slice::<SavedState>(&bytes).map_err(|e| format!("not a state file: {e}")),
    };
    match parsed {
        Ok(saved) => (saved, Found::Read),
        Err(error) => {
            let aside = PathBuf::from(format!("{}.bad", path.display()));
            let moved_to = match std::fs::rename(path, &aside) {
                Ok(()) => Some(aside),
                Err(e) => {
                    warn!(path = %path.display(), "cannot move the unusable state file aside: {e}");
                    None
                }
            };
            (SavedState::default(), Found::Bad { error, moved_to })
        }
    }
}

/// The drains of `saved` whose backend `config` has, and the backends of
/// those it has not. A drain's end time stays as it was: once it has
/// passed, the backend stays drained and its recorded flows are cut, as on
/// an agent that never stopped.
fn restore_drains(saved: &SavedState, config: &Config) -> (Drains, Vec<IpAddr>) {
    let known = |a: &IpAddr| config.pools.iter().any(|p| p.backends.iter().any(|b| b.address == *a));
    let (kept, dropped): (Vec<_>, Vec<_>) = saved.drains.keys().copied().partition(known);
    let records = saved.drains.iter().filter(|(a, _)| kept.contains(a)).map(|(a, r)| (*a, *r)).collect();
    (drains_of(&records), dropped)
}

/// Time since an edge drain began and its time left (`None` for a drain
/// without end), or `None` once its end has passed.
fn edge_drain_left(record: &DrainRecord, now: SystemTime) -> Option<(Duration, Option<Duration>)> {
    let elapsed = now.duration_since(from_unix_ms(record.since_ms)).unwrap_or_default();
    match record.until_ms.map(from_unix_ms) {
        None => Some((elapsed, None)),
        Some(until) => until.duration_since(now).ok().filter(|left| !left.is_zero()).map(|left| (elapsed, Some(left))),
    }
}

/// Drains as the planner takes them.
pub(super) fn drains_of(records: &BTreeMap<IpAddr, DrainRecord>) -> Drains {
    records
        .iter()
        .map(|(backend, d)| (*backend, Drain { since: from_unix_ms(d.since_ms), until: d.until_ms.map(from_unix_ms) }))
        .collect()
}

/// A drain as stored (in the file and in etcd).
pub(super) fn drain_record(drain: &Drain) -> DrainRecord {
    DrainRecord { since_ms: unix_ms(drain.since), until_ms: drain.until.map(unix_ms) }
}

/// Writes `saved` to `path` whole: a crash (or a power cut) leaves the old
/// file or the new one, never a mix.
pub(super) fn save(path: &Path, saved: &SavedState) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let temporary = PathBuf::from(format!("{}.tmp", path.display()));
    let mut file = std::fs::File::create(&temporary).with_context(|| format!("creating {}", temporary.display()))?;
    file.write_all(&serde_json::to_vec_pretty(saved)?)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", temporary.display()))?;
    drop(file);
    std::fs::rename(&temporary, path)
        .with_context(|| format!("renaming {} to {}", temporary.display(), path.display()))?;
    // The rename itself is durable once the directory is.
    std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("flushing {}", dir.display()))
}

impl Agent {
    /// Writes the operator's decisions in force (and the fleet revision
    /// noted in `state.saved`) to the state file, if they changed.
    pub(super) fn persist(&mut self) {
        self.state.live.drains = self.drains.iter().map(|(a, d)| (*a, drain_record(d))).collect();
        let next = self.state.live.clone();
        self.state.write(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::fixtures::MINIMAL;

    fn config() -> Config {
        crate::config::parse(MINIMAL, Path::new("test.toml")).unwrap()
    }

    fn backend() -> IpAddr {
        config().pools[0].backends[0].address
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gslb-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn record(since: SystemTime, until: Option<SystemTime>) -> DrainRecord {
        DrainRecord { since_ms: unix_ms(since), until_ms: until.map(unix_ms) }
    }

    #[test]
    fn saves_and_reads_back_and_writes_only_changes() {
        let dir = temp_dir("roundtrip");
        let path = dir.join("sub").join("edge.json");
        let mut state = StateFile::open(&path);
        assert_eq!(state.found, Found::Missing);
        assert!(!path.exists(), "opening a missing file creates nothing");

        let now = SystemTime::now();
        let mut next = SavedState::default();
        next.drains.insert(backend(), record(now, Some(now + Duration::from_secs(600))));
        next.edge_drain = Some(record(now, None));
        state.write(next.clone());
        assert!(state.status().write_error.is_none());
        let written = std::fs::metadata(&path).unwrap().modified().unwrap();
        assert!(!PathBuf::from(format!("{}.tmp", path.display())).exists(), "the temporary file is renamed");

        // The same state again: no write.
        std::thread::sleep(Duration::from_millis(20));
        state.write(next.clone());
        assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), written);

        let again = StateFile::open(&path);
        assert_eq!((again.found.clone(), again.saved.clone()), (Found::Read, next));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn reads_a_fleet_file_from_before_the_edge_drain() {
        let dir = temp_dir("old");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("fleet.json");
        std::fs::write(&path, r#"{"revision":3,"applied_at_ms":5,"document":"x","drains":{}}"#).unwrap();
        let state = StateFile::open(&path);
        assert_eq!(state.found, Found::Read);
        assert_eq!((state.saved.revision, state.saved.edge_drain), (Some(3), None));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_corrupt_file_is_set_aside_and_reported() {
        let dir = temp_dir("corrupt");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("edge.json");
        std::fs::write(&path, b"{\"drains\": {\"10.0.0.1\": tru").unwrap();
        let mut state = StateFile::open(&path);
        let aside = PathBuf::from(format!("{}.bad", path.display()));
        match &state.found {
            Found::Bad { error, moved_to } => {
                assert!(error.contains("not a state file"), "{error}");
                assert_eq!(moved_to.as_ref(), Some(&aside));
            }
            other => panic!("a corrupt file read as {other:?}"),
        }
        assert!(!path.exists() && aside.exists(), "the bad file is kept aside, not left to be overwritten");
        assert_eq!(state.saved, SavedState::default());
        assert!(state.restore_drains(&config(), SystemTime::now()).is_empty());
        let status = state.status();
        assert_eq!((status.found.as_str(), status.moved_to.as_ref()), ("bad", Some(&aside)));

        // The next decision writes a good file; the bad one stays aside.
        let next = SavedState { edge_drain: Some(record(SystemTime::now(), None)), ..SavedState::default() };
        state.write(next);
        assert_eq!(StateFile::open(&path).found, Found::Read);
        assert_eq!(std::fs::read(&aside).unwrap(), b"{\"drains\": {\"10.0.0.1\": tru");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unwritable_file_is_reported_and_tried_again() {
        let dir = temp_dir("unwritable");
        std::fs::create_dir_all(&dir).unwrap();
        // A directory where the file's parent should be: no write can work.
        std::fs::write(dir.join("file"), b"").unwrap();
        let mut state = StateFile::open(&dir.join("file").join("edge.json"));
        assert!(matches!(state.found, Found::Bad { moved_to: None, .. }), "{:?}", state.found);
        let next = SavedState { edge_drain: Some(record(SystemTime::now(), None)), ..SavedState::default() };
        state.write(next.clone());
        assert!(state.status().write_error.is_some());
        assert_eq!(state.saved, SavedState::default(), "what the file holds did not change");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn drains_of_removed_backends_are_dropped_and_end_times_kept() {
        let now = SystemTime::now();
        let gone: IpAddr = "192.0.2.99".parse().unwrap();
        let mut saved = SavedState::default();
        let until = now - Duration::from_secs(5);
        saved.drains.insert(backend(), record(now - Duration::from_secs(60), Some(until)));
        saved.drains.insert(gone, record(now, None));
        let (drains, dropped) = restore_drains(&saved, &config());
        assert_eq!(dropped, vec![gone]);
        // A drain whose time passed while the agent was away stays a drain
        // whose flows are cut, as on an agent that never stopped.
        let drain = drains[&backend()];
        assert_eq!(drain.until.map(unix_ms), Some(unix_ms(until)));
        assert_eq!(drain_record(&drain), saved.drains[&backend()]);
    }

    #[test]
    fn edge_drains_continue_with_their_time_left_or_end() {
        // Whole milliseconds, as in the file.
        let now = from_unix_ms(unix_ms(SystemTime::now()));
        let since = now - Duration::from_secs(90);
        let left = |until: Option<SystemTime>| edge_drain_left(&record(since, until), now);
        assert_eq!(left(None), Some((Duration::from_secs(90), None)));
        let (elapsed, remaining) = left(Some(now + Duration::from_secs(30))).unwrap();
        assert_eq!(elapsed, Duration::from_secs(90));
        assert_eq!(remaining, Some(Duration::from_secs(30)));
        assert_eq!(left(Some(now - Duration::from_secs(1))), None, "over while the agent was away");

        let mut state = StateFile::open(Path::new("/nonexistent/gslb-state-test.json"));
        state.saved.edge_drain = Some(record(since, Some(now - Duration::from_secs(1))));
        assert_eq!(state.restore_edge_drain(now), None);
        assert_eq!(state.live.edge_drain, None);
        assert_eq!(state.status().dropped, vec!["edge drain: its time was over".to_string()]);
        state.saved.edge_drain = Some(record(since, None));
        assert!(state.restore_edge_drain(now).is_some());
        assert!(state.status().restored_edge_drain);
    }
}
