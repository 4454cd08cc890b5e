//! Anycast announcements: each VIP address is announced through a local BGP
//! daemon (BIRD or GoBGP) only while this edge can serve it.
//!
//! `decision` is the pure state machine (hysteresis, guard, edge drain);
//! `bird` and `gobgp` drive the daemons behind [`Daemon`]; the worker
//! thread here pushes the wanted routes to the daemon away from the agent's
//! lock (a daemon that hangs must not stall steering) and polls its
//! sessions; `watchdog` withdraws what the agent announced if it dies.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Result};
use tracing::{info, warn};

use crate::config::{Bgp, BgpDaemon};
pub use crate::view::bgp::Session;

pub mod bird;
pub mod decision;
pub mod gobgp;
pub mod status;
pub mod watchdog;

pub use decision::{Decision, Inputs, Reason, Route, Timers, VipView};

/// How often the agent steps the decision.
pub const STEP_INTERVAL: Duration = Duration::from_millis(50);
/// How often the worker asks the daemon for its sessions.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How soon the worker retries a daemon that failed.
const RETRY_INTERVAL: Duration = Duration::from_millis(500);

/// A BGP daemon the agent drives.
pub trait Daemon: Send {
    /// Makes the daemon announce exactly `routes`. `held` is what it may
    /// announce now (from earlier pushes, some perhaps failed); `full`
    /// asks to send every route again (the daemon may have restarted).
    fn announce(&mut self, routes: &BTreeSet<Route>, held: &BTreeSet<Route>, full: bool) -> Result<()>;
    /// The daemon's BGP sessions; an error when it cannot be reached.
    fn sessions(&mut self) -> Result<Vec<Session>>;
}

/// The daemon `bgp` configures, if any.
pub fn daemon(bgp: &Bgp) -> Option<Box<dyn Daemon>> {
    match bgp.daemon {
        BgpDaemon::None => None,
        BgpDaemon::Bird => Some(Box::new(bird::Bird::new(bgp))),
        BgpDaemon::Gobgp => Some(Box::new(gobgp::Gobgp::new(bgp))),
    }
}

pub fn timers(bgp: &Bgp) -> Timers {
    Timers {
        announce_after: Duration::from_millis(bgp.announce_after_ms as u64),
        withdraw_after: Duration::from_millis(bgp.withdraw_after_ms as u64),
        drain_wait: Duration::from_millis(bgp.drain_wait_ms as u64),
        guard: bgp.keep_on_total_failure,
    }
}

/// What the worker knows of the daemon, for status and metrics.
#[derive(Clone, Debug, Default)]
pub struct DaemonState {
    pub reachable: bool,
    pub sessions: Vec<Session>,
    /// The daemon holds the routes last wanted.
    pub in_sync: bool,
    /// When the announced set last reached the daemon.
    pub last_change: Option<SystemTime>,
    pub last_error: Option<(SystemTime, String)>,
}

/// The agent's side: the decision, and the worker that applies it.
pub struct Announcer {
    pub daemon_kind: BgpDaemon,
    pub decision: Decision,
    /// The routes last handed to the worker.
    pub wanted: BTreeMap<IpAddr, Route>,
    pub state: Arc<Mutex<DaemonState>>,
    worker: Option<(mpsc::Sender<Command>, std::thread::JoinHandle<()>)>,
    guard_reported: bool,
}

enum Command {
    Announce(BTreeSet<Route>),
    /// Withdraw everything, tell the watchdog to stand down if that
    /// worked, and stop.
    Stop,
}

impl Announcer {
    /// Starts the watchdog (its pid recorded in `watchdog_pid_file`) and
    /// the worker for `bgp`; `None` without a daemon. The daemon is told to
    /// announce nothing until the decision says otherwise.
    pub fn start(bgp: &Bgp, watchdog_pid_file: &Path) -> Result<Option<Announcer>> {
        let Some(daemon) = daemon(bgp) else { return Ok(None) };
        let watchdog = watchdog::Watchdog::spawn(bgp, watchdog_pid_file)?;
        let state = Arc::new(Mutex::new(DaemonState::default()));
        let (commands, receive) = mpsc::channel();
        let worker_state = state.clone();
        let thread = std::thread::Builder::new()
            .name("gslb-bgp".into())
            .spawn(move || work(daemon, watchdog, receive, worker_state))?;
        commands.send(Command::Announce(BTreeSet::new())).ok();
        info!(daemon = ?bgp.daemon, "announcing VIPs through the BGP daemon");
        Ok(Some(Announcer {
            daemon_kind: bgp.daemon,
            decision: Decision::new(timers(bgp)),
            wanted: BTreeMap::new(),
            state,
            worker: Some((commands, thread)),
            guard_reported: false,
        }))
    }

    /// Steps the decision with what the agent knows now and hands changed
    /// routes to the daemon worker.
    pub fn step(&mut self, inputs: &Inputs) {
        let routes = self.decision.step(Instant::now(), inputs);
        let guard = self.decision.guard_active;
        if guard != self.guard_reported {
            self.guard_reported = guard;
            if guard {
                warn!("GUARD: every health check fails at once (most likely this edge's own network); keeping the announced VIPs announced");
            } else {
                info!("guard over: announcements follow the health checks again");
            }
        }
        self.want(routes, None);
    }

    /// `gslb drain --edge`: announce less preferred, then withdraw (the
    /// next step hands it to the daemon).
    pub fn drain_edge(&mut self, duration: Option<Duration>) {
        self.decision.drain_edge(Instant::now(), duration);
        info!(?duration, "edge drain: routes less preferred now, withdrawn after drain_wait_ms");
    }

    /// Takes back the edge drain of a previous agent: begun `elapsed` ago
    /// (wall-clock time, the agent's absence included), ending by itself
    /// after `remaining` if it has an end. A drain begun more than
    /// `drain_wait_ms` ago is in its withdraw phase at once.
    pub fn restore_edge_drain(&mut self, elapsed: Duration, remaining: Option<Duration>) {
        let now = Instant::now();
        let wait = self.decision.timers.drain_wait;
        // The boot clock may not reach back that far (a reboot): what
        // matters is only whether the drain is past drain_wait.
        let since = now.checked_sub(elapsed).or_else(|| now.checked_sub(wait.min(elapsed))).unwrap_or(now);
        self.decision.drain = Some(decision::EdgeDrain { since, until: remaining.map(|r| now + r) });
        info!(?remaining, "edge drain restored from the state file: nothing is announced while it lasts");
    }

    /// Whether an edge drain is in force.
    pub fn edge_drained(&self) -> bool {
        self.decision.drain.is_some()
    }

    /// Ends an edge drain (the next step hands it to the daemon).
    pub fn undrain_edge(&mut self) {
        self.decision.undrain_edge();
        info!("edge undrained: VIPs that can be served are announced again");
    }

    /// Each address's state, as last decided.
    pub fn addresses(&self) -> &BTreeMap<IpAddr, decision::AddressState> {
        &self.decision.addresses
    }

    /// Takes the timers of a reloaded `[bgp]` section.
    pub fn set_timers(&mut self, bgp: &Bgp) {
        self.decision.timers = timers(bgp);
    }

    /// Hands `routes` to the worker if they differ from the last ones;
    /// `why` overrides the decision's reasons in the log.
    fn want(&mut self, routes: BTreeMap<IpAddr, Route>, why: Option<&str>) {
        if routes == self.wanted {
            return;
        }
        for (address, state) in &self.decision.addresses {
            let was = self.wanted.get(address);
            let now = routes.get(address);
            if was != now {
                let what = match now {
                    Some(r) if r.drain => "announce (less preferred)",
                    Some(_) => "announce",
                    None => "withdraw",
                };
                let reason = why.map_or_else(|| state.reason.describe(), String::from);
                info!(%address, vips = ?state.vips, reason, "BGP: {what}");
            }
        }
        self.wanted = routes;
        if let Some((commands, _)) = &self.worker {
            commands.send(Command::Announce(self.wanted.values().copied().collect())).ok();
        }
    }

    /// Withdraws everything (after a drain phase if `drain`), waits for
    /// the daemon to confirm (bounded), and stops the worker; the watchdog
    /// stands down only if the withdrawal reached the daemon.
    pub fn shutdown(&mut self, drain: bool) {
        if drain && !self.wanted.is_empty() {
            let marked = self.wanted.iter().map(|(a, r)| (*a, Route { drain: true, ..*r })).collect();
            self.want(marked, Some("agent exiting (--drain-on-exit)"));
            info!(wait_ms = self.decision.timers.drain_wait.as_millis() as u64, "draining the edge before exit");
            std::thread::sleep(self.decision.timers.drain_wait);
        }
        self.want(BTreeMap::new(), Some("agent exiting"));
        if let Some((commands, thread)) = self.worker.take() {
            commands.send(Command::Stop).ok();
            let _ = thread.join();
        }
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        // Dropped without `shutdown` (an error path): the worker sees the
        // channel close and withdraws; if the process exits first, the
        // watchdog does.
        if let Some((commands, _)) = self.worker.take() {
            drop(commands);
        }
    }
}

/// The worker: pushes the wanted routes, retries, polls sessions.
fn work(
    mut daemon: Box<dyn Daemon>,
    mut watchdog: watchdog::Watchdog,
    commands: mpsc::Receiver<Command>,
    state: Arc<Mutex<DaemonState>>,
) {
    let mut wanted = BTreeSet::new();
    // What the daemon may hold; unknown at start, so withdraw on first push.
    let mut held: BTreeSet<Route> = BTreeSet::new();
    let mut dirty = true;
    let mut full = true;
    let mut next_poll = Instant::now();
    let mut stopping = false;
    let set = |f: &mut dyn FnMut(&mut DaemonState)| f(&mut state.lock().unwrap_or_else(|p| p.into_inner()));
    loop {
        let wait = if dirty { RETRY_INTERVAL } else { next_poll.saturating_duration_since(Instant::now()) };
        let command = if stopping { Err(RecvTimeoutError::Disconnected) } else { commands.recv_timeout(wait) };
        match command {
            Ok(Command::Announce(routes)) => {
                // Take the latest wanted set; skip the ones in between.
                wanted = routes;
                while let Ok(next) = commands.try_recv() {
                    match next {
                        Command::Announce(routes) => wanted = routes,
                        Command::Stop => stopping = true,
                    }
                }
                dirty = wanted != held || full;
                if !dirty {
                    continue;
                }
            }
            Ok(Command::Stop) => stopping = true,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => stopping = true,
        }
        if stopping {
            wanted.clear();
            let withdrawn = (0..4).any(|attempt| {
                if attempt > 0 {
                    std::thread::sleep(RETRY_INTERVAL);
                }
                daemon.announce(&wanted, &held, full).is_ok()
            });
            if withdrawn {
                info!("BGP: withdrew every VIP");
                watchdog.stand_down();
            } else {
                warn!("BGP: could not withdraw the VIPs; the watchdog will keep trying");
            }
            return;
        }
        if dirty {
            // The watchdog learns of a route before the daemon does.
            let all: BTreeSet<Route> = held.union(&wanted).copied().collect();
            watchdog.tell(&all);
            match daemon.announce(&wanted, &held, full) {
                Ok(()) => {
                    if full || held != wanted {
                        set(&mut |s| s.last_change = Some(SystemTime::now()));
                    }
                    held = wanted.clone();
                    watchdog.tell(&held);
                    dirty = false;
                    full = false;
                    set(&mut |s| {
                        s.in_sync = true;
                        s.reachable = true;
                        s.last_error = None;
                    });
                }
                Err(error) => {
                    held = all;
                    report_error(&state, &error, "announcing");
                    full = true;
                    continue;
                }
            }
        }
        if Instant::now() >= next_poll {
            next_poll = Instant::now() + POLL_INTERVAL;
            match daemon.sessions() {
                Ok(sessions) => {
                    let was = state.lock().unwrap_or_else(|p| p.into_inner()).reachable;
                    if !was {
                        // It may have restarted without our routes.
                        full = true;
                        dirty = true;
                    }
                    set(&mut |s| {
                        s.reachable = true;
                        s.sessions = sessions.clone();
                    });
                }
                Err(error) => {
                    report_error(&state, &error, "reading the sessions of");
                    full = true;
                    dirty = true;
                }
            }
        }
    }
}

/// Records a daemon error; logs it when it is new.
fn report_error(state: &Mutex<DaemonState>, error: &anyhow::Error, doing: &str) {
    let message = format!("{error:#}");
    let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
    let new = state.reachable || state.last_error.as_ref().is_none_or(|(_, m)| *m != message);
    state.reachable = false;
    state.in_sync = false;
    state.sessions.clear();
    state.last_error = Some((SystemTime::now(), message.clone()));
    if new {
        warn!("BGP daemon unreachable while {doing} it: {message}; steering goes on, announcements resume when it answers");
    }
}

/// Whether a VIP's table has a serving pool: a backend in it that
/// `serves`, from its listed pools or, when those have nothing up, its
/// fallback pool (the planner puts the fallback's backends that are not
/// down in the table). A table in panic holds every listed backend, down
/// ones included: those do not count.
pub fn has_serving_pool(table: &crate::decide::plan::PlannedTable, serves: impl Fn(&IpAddr) -> bool) -> bool {
    table.weights.keys().any(serves)
}

/// Refuses a reload that changes how the daemon is driven.
pub fn check_reload(old: &Bgp, new: &Bgp) -> Result<()> {
    let fixed = |b: &Bgp| {
        (
            b.daemon,
            b.bird_socket.clone(),
            b.bird_include.clone(),
            b.gobgp_api,
            b.drain,
            b.local_as,
            b.prepend_count,
            b.drain_med,
        )
    };
    if fixed(old) != fixed(new) {
        bail!(
            "[bgp] daemon, bird_socket, bird_include, gobgp_api and the drain keys cannot change while the agent runs \
             (only the timers and keep_on_total_failure can); restart the agent instead"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::plan::PlannedTable;

    fn table(backends: &[&str], fallback: bool) -> PlannedTable {
        PlannedTable {
            weights: backends.iter().map(|a| (a.parse().unwrap(), 100)).collect(),
            pools: vec!["p".into()],
            fallback,
            members: Vec::new(),
            table_size: 0,
        }
    }

    #[test]
    fn a_serving_pool_is_a_serving_backend_listed_or_fallback() {
        let up = |a: &IpAddr| ["198.51.100.1", "198.51.100.9"].iter().any(|u| *a == u.parse::<IpAddr>().unwrap());
        assert!(has_serving_pool(&table(&["198.51.100.1", "198.51.100.2"], false), up));
        // The planner keeps unhealthy backends when nothing else is left
        // (panic): that is no serving pool.
        assert!(!has_serving_pool(&table(&["198.51.100.2"], false), up));
        // A fallback pool serves with its backends that are up.
        assert!(has_serving_pool(&table(&["198.51.100.9"], true), up));
        assert!(!has_serving_pool(&table(&["198.51.100.8"], true), up));
        assert!(!has_serving_pool(&table(&[], true), up));
    }

    #[test]
    fn a_vip_its_fallback_pool_serves_has_a_serving_pool() {
        use crate::decide::plan::{plan, Condition, Conditions};
        let text = format!(
            "{}{}",
            crate::config::fixtures::EDGE,
            r#"
[[vip]]
name = "web"
address = "203.0.113.10"
port = 80
protocol = "tcp"
pools = ["east"]
fallback_pool = "spare"

[[pool]]
name = "east"
backends = [ { address = "10.0.1.1" }, { address = "10.0.1.2" } ]

[[pool]]
name = "spare"
backends = [ { address = "10.0.9.1" } ]
"#
        );
        let config = crate::config::parse(&text, std::path::Path::new("test.toml")).unwrap();
        let down = Condition { down: true, failing: true, ..Condition::default() };
        let suspect = Condition { failing: true, ..Condition::default() };
        let serving = |conditions: &Conditions| {
            let p = plan(&config, &BTreeMap::new(), 4096, 4099, conditions).unwrap();
            let web = p.vips.values().next().unwrap();
            has_serving_pool(&web.default, |a| !conditions.get(a).is_some_and(|c| c.down))
        };
        let east_down: Conditions =
            [("10.0.1.1", down), ("10.0.1.2", down)].map(|(a, c)| (a.parse().unwrap(), c)).into();
        assert!(serving(&east_down), "the healthy fallback pool serves the VIP");
        let mut all_failing = east_down.clone();
        all_failing.insert("10.0.9.1".parse().unwrap(), suspect);
        assert!(!serving(&all_failing), "in panic, only down backends are in the table");
    }

    #[test]
    fn reload_may_change_timers_only() {
        let old = Bgp { daemon: BgpDaemon::Bird, bird_include: Some("/etc/bird/v.conf".into()), ..Bgp::default() };
        let timers = Bgp { announce_after_ms: 10, keep_on_total_failure: false, ..old.clone() };
        assert!(check_reload(&old, &timers).is_ok());
        let other = Bgp { daemon: BgpDaemon::Gobgp, ..old.clone() };
        assert!(format!("{:#}", check_reload(&old, &other).unwrap_err()).contains("restart the agent"));
    }
}
