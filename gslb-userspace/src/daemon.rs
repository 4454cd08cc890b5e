//! The long-running processes: the agent's runtime (its tickers, signals,
//! admin socket and metrics endpoint around one `Arc<Mutex<Agent>>`) and
//! `decap` on a backend.

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use crate::agent::Agent;
use crate::config;
use crate::serve;
use crate::sys::decap::{Decap, HopLists};
use crate::sys::interfaces;
use crate::view::metrics;

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the tokio runtime")
}

/// The agent, shared by the runtime's tasks.
type Shared = Arc<Mutex<Agent>>;

/// Locks the agent; a panic elsewhere while it was held does not stop it.
fn lock(agent: &Mutex<Agent>) -> MutexGuard<'_, Agent> {
    agent.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `f` on the agent on the blocking pool (it writes maps and waits
/// for the lock) and waits for it to finish.
async fn on_agent(agent: &Shared, f: impl FnOnce(&mut Agent) + Send + 'static) {
    let agent = agent.clone();
    let _ = tokio::task::spawn_blocking(move || f(&mut lock(&agent))).await;
}

/// `gslb run`: starts the agent and serves it until SIGINT or SIGTERM.
pub fn run_agent(config_path: &Path, remove_on_exit: bool, drain_on_exit: bool) -> Result<()> {
    // The socket first: a second agent for the same edge stops here, before
    // it touches the data plane.
    let edge = config::load(config_path)?.edge;
    let socket = edge.admin_socket;
    let listener = serve::admin::bind(&socket)?;
    // A start that fails leaves nothing behind, not even the socket.
    // The watchdog's pid file is named after the admin socket (one per
    // agent): /run/gslb/gslb.bgp-watchdog.pid.
    let watchdog_pid = socket.with_extension("bgp-watchdog.pid");
    let started = serve::metrics::bind(edge.metrics_listen).and_then(|metrics| {
        let mut agent = Agent::start(config_path)?;
        agent.start_announcing(&watchdog_pid)?;
        Ok((metrics, agent))
    });
    let (metrics_listener, agent) = match started {
        Ok(started) => started,
        Err(error) => {
            let _ = std::fs::remove_file(&socket);
            return Err(error);
        }
    };
    let pin_dir = agent.pin_dir().to_path_buf();
    let has_announcer = agent.announces();
    let agent: Shared = Arc::new(Mutex::new(agent));
    runtime()?.block_on(async {
        let (events, mut health) = tokio::sync::mpsc::unbounded_channel();
        lock(&agent).start_monitoring(events);
        lock(&agent).start_next_hops();
        // The fleet task, when `[fleet]` is configured.
        let fleet_settings = lock(&agent).fleet_settings().cloned();
        let (mut fleet_events, fleet_outgoing, fleet_task) = match fleet_settings {
            Some(settings) => {
                let name = lock(&agent).edge_name();
                let link = crate::fleet::sync::spawn(settings, name);
                lock(&agent).set_fleet_drains(link.drains);
                (link.events, Some(link.outgoing), Some(link.task))
            }
            None => (tokio::sync::mpsc::unbounded_channel().1, None, None),
        };
        let publish = |agent: &Shared| {
            if let (Some(outgoing), Some(now)) = (&fleet_outgoing, lock(agent).fleet_outgoing()) {
                outgoing.send_if_modified(|current| {
                    let changed = *current != now;
                    *current = now;
                    changed
                });
            }
        };
        publish(&agent);
        let answered = agent.clone();
        let handler: serve::admin::Handler = Arc::new(move |request| lock(&answered).answer(request));
        let server = tokio::spawn(serve::admin::serve(listener, handler));
        let scraped = agent.clone();
        let metrics_server = tokio::spawn(async move {
            let snapshot = move || Ok(metrics::render(&lock(&scraped).status()?));
            if let Err(error) = serve::metrics::serve_listener(metrics_listener, snapshot).await {
                tracing::error!("the metrics endpoint stopped: {error:#}");
            }
        });
        let mut drain_clock = tokio::time::interval(std::time::Duration::from_millis(250));
        let mut link_clock = tokio::time::interval(interfaces::POLL_INTERVAL);
        let mut announce_clock = tokio::time::interval(crate::announce::STEP_INTERVAL);
        announce_clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut hangup = signal(SignalKind::hangup())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        info!(socket = %socket.display(), "agent running; SIGHUP or `gslb reload` re-reads the config");
        loop {
            tokio::select! {
                _ = hangup.recv() => on_agent(&agent, |agent| { let _ = agent.reload(); }).await,
                Some(event) = health.recv() => {
                    on_agent(&agent, move |agent| {
                        if let Err(error) = agent.on_health(event) {
                            warn!("applying a health change failed: {error:#}");
                        }
                    }).await;
                    // A new verdict goes to the fleet at once.
                    publish(&agent);
                }
                _ = drain_clock.tick() => {
                    on_agent(&agent, |agent| {
                        if let Err(error) = agent.expire_drains() {
                            warn!("ending a drain failed: {error:#}");
                        }
                        if let Err(error) = agent.check_fleet_grace() {
                            warn!("going by this edge's own health checks failed: {error:#}");
                        }
                    }).await;
                    publish(&agent);
                }
                Some(event) = fleet_events.recv(), if fleet_outgoing.is_some() => {
                    on_agent(&agent, move |agent| {
                        if let Err(error) = agent.on_fleet(event) {
                            warn!("applying the fleet's state failed: {error:#}");
                        }
                    }).await;
                    publish(&agent);
                }
                _ = link_clock.tick() => on_agent(&agent, Agent::watch_interfaces).await,
                _ = announce_clock.tick(), if has_announcer => on_agent(&agent, Agent::step_announcements).await,
                _ = interrupt.recv() => break,
                _ = terminate.recv() => break,
            }
        }
        server.abort();
        metrics_server.abort();
        // The fleet task revokes this edge's lease once its channel closes;
        // an etcd that does not answer only delays the exit by a deadline.
        drop(fleet_outgoing);
        if let Some(task) = fleet_task {
            let _ = tokio::time::timeout(crate::fleet::etcd::CALL_TIMEOUT, task).await;
        }
        anyhow::Ok(())
    })?;
    let _ = std::fs::remove_file(&socket);
    let mut agent = lock(&agent);
    agent.stop_announcing(drain_on_exit);
    if remove_on_exit {
        agent.remove_pins()?;
        info!("removed the pinned state; steer detaches as this process exits");
    } else {
        warn!(pin_dir = %pin_dir.display(), "agent stopped; steer stays attached with the last config (restart the agent to adopt it)");
    }
    Ok(())
}

/// How often `gslb decap` makes the kernel resolve peers whose next hop is
/// not resolved (the first time at once).
const PEER_PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// `gslb decap`: attaches `decap` (serving its counters if asked) and waits
/// for SIGINT or SIGTERM; logs the counters on the way out.
pub fn run_decap(
    iface: &str,
    addresses: &[IpAddr],
    hop_lists: &HopLists,
    metrics_listen: Option<std::net::SocketAddr>,
) -> Result<()> {
    crate::sys::capabilities::require_xdp("gslb decap")?;
    crate::sys::kernel::require_supported_here()?;
    let metrics_listener = metrics_listen.map(serve::metrics::bind).transpose()?;
    let mut decap = Decap::configured(addresses, hop_lists)?;
    let _link = decap
        .program()
        .attach(iface, aya::programs::XdpMode::Default)
        .with_context(|| format!("attaching decap to {iface}"))?;
    info!(
        iface,
        ?addresses,
        edges = ?hop_lists.edges,
        peers = hop_lists.peers.len(),
        "decap attached; Ctrl-C to detach"
    );
    if hop_lists.edges.is_empty() {
        info!("no --edge given: hop-list (second chance) packets are refused");
    }
    let peer_hops = decap.next_hops();
    let decap = Arc::new(Mutex::new(decap));
    runtime()?.block_on(async {
        // Next hops to the peers, resolved and kept current, so handing a
        // packet on needs no route lookup (nor forwarding enabled).
        if !hop_lists.peers.is_empty() {
            crate::sys::next_hops::spawn(peer_hops.clone())?;
            tokio::spawn(async move {
                let mut probe = tokio::time::interval(PEER_PROBE_INTERVAL);
                loop {
                    probe.tick().await;
                    Decap::probe_unresolved_peers(&peer_hops);
                }
            });
        }
        if let Some(listener) = metrics_listener {
            let scraped = decap.clone();
            tokio::spawn(async move {
                let snapshot = move || Ok(crate::view::decap::render(&scraped.lock().unwrap().stats()?));
                if let Err(error) = serve::metrics::serve_listener(listener, snapshot).await {
                    tracing::error!("the metrics endpoint stopped: {error:#}");
                }
            });
        }
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        anyhow::Ok(())
    })?;
    let stats = decap.lock().unwrap().stats()?;
    let hop_lists: Vec<String> =
        crate::view::decap::outcome_counts(&stats).iter().map(|(name, n)| format!("{name}={n}")).collect();
    info!(
        received = stats.received,
        decapsulated = stats.decapsulated,
        errors = stats.errors,
        hop_lists = hop_lists.join(" "),
        "decap detached"
    );
    Ok(())
}
