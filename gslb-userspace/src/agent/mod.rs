//! The edge agent: the one owner of the running state (config, data plane,
//! health, drains, announcements). Its reactions live beside it
//! (`reactions`, `announce`, `requests`); `snapshot` turns the state into
//! the status contract that views and servers read.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use tracing::{info, warn};

use crate::announce::Announcer;
use crate::config::{self, Config};
use crate::decide::capacity::capacity;
use crate::decide::conditions::{conditions_of, Drains, LatencySteps};
use crate::decide::failover::Failovers;
use crate::decide::plan::{Conditions, Plan, PlannedVip};
use crate::health::{HealthEvent, HealthTable, Monitors};
use crate::reconcile::{reconcile, Changes, Installed};
use crate::sys::interfaces::Interfaces;
use crate::sys::next_hops;
use crate::sys::steer::Steer;
use crate::sys::tunnel_errors::{self, TunnelErrors};
use crate::sys::{attach, bpffs, capabilities};
use crate::view::status::ProgramStatus;
use crate::view::time::unix_secs;

mod announce;
mod fleet;
mod reactions;
mod requests;
mod snapshot;
mod state;

pub struct Agent {
    /// The `steer` program steering, as this agent found or made it.
    program: ProgramStatus,
    config_path: PathBuf,
    config: Config,
    steer: Steer,
    installed: Installed,
    /// The last plan applied, without its tables (`installed` holds them).
    plan: Plan,
    /// The configured interfaces: state, attachment, re-attaches.
    interfaces: Interfaces,
    /// Whether this agent adopted state pinned by an earlier one.
    adopted: bool,
    started: SystemTime,
    reloads: u64,
    reloads_failed: u64,
    last_reload: Option<ReloadRecord>,
    /// Health of monitored backends, fed by `monitors`.
    health: HealthTable,
    monitors: Option<Monitors>,
    drains: Drains,
    failovers: Failovers,
    latency_steps: LatencySteps,
    /// VIPs whose N+1 check failed when last planned (warned once).
    n_plus_one_failing: BTreeSet<String>,
    /// ICMP errors about tunnel packets, per backend (reported, never acted on).
    tunnel_errors: Arc<TunnelErrors>,
    /// BGP announcements (`[bgp]`), once started.
    announcer: Option<Announcer>,
    /// The fleet (`[fleet]`): revisions, verdicts and drains from etcd.
    fleet: Option<fleet::FleetState>,
    /// The operator's decisions (and the fleet revision) kept on disk.
    state: state::StateFile,
}

/// The outcome of the last reload.
#[derive(Clone, Debug)]
struct ReloadRecord {
    at: SystemTime,
    ok: bool,
    error: Option<String>,
}

impl Agent {
    /// Loads the config, adopts pinned state or loads `steer` afresh,
    /// programs the maps, then attaches to the interfaces.
    pub fn start(config_path: &Path) -> Result<Agent> {
        let mut config = config::load(config_path)?;
        // Before anything with a side effect: without these, nothing below
        // can be done.
        capabilities::require_xdp("gslb run")?;
        crate::sys::kernel::require_supported_here()?;
        // The operator's decisions outlive the agent: drains come back from
        // the state file. A fleet member also starts with the revision it
        // last applied, so that it steers as before even when etcd is away.
        let mut state = state::StateFile::open(&config.edge.state_file);
        let mut fleet = config.fleet.clone().map(|settings| fleet::FleetState::new(settings, SystemTime::now()));
        if let Some(fleet) = &mut fleet {
            config = fleet::with_saved_revision(config, fleet, &state.saved);
        }
        let drains: Drains = state.restore_drains(&config, SystemTime::now());
        let pin_dir = config.edge.bpffs_pin.clone();
        bpffs::check(&pin_dir)?;
        for interface in &config.edge.interfaces {
            if attach::find_ifindex(interface).is_none() {
                bail!(
                    "edge.interfaces in {} names {interface}, which does not exist in this network namespace; check the name with `ip link show`, then fix the config or create the interface",
                    config_path.display()
                );
            }
        }

        let adopted = Steer::is_pinned(&pin_dir);
        let (mut steer, mut installed) = if adopted {
            // A pinned program of another build (an upgrade, or a downgrade)
            // is replaced in place, keeping every map.
            let steer = if Steer::pinned_is_this_build(&pin_dir)? {
                Steer::open_pinned(&pin_dir)?
            } else {
                Steer::upgrade(&pin_dir)?
            };
            let installed = Installed::read(&steer)?;
            info!(
                pin_dir = %pin_dir.display(),
                vips = installed.vips.len(),
                backends = installed.backend_ids.len(),
                "adopted the pinned data plane; recorded flows carry on"
            );
            if !steer.tables_mapped() {
                warn!(
                    pin_dir = %pin_dir.display(),
                    "the pinned MAGLEV map is not memory-mappable (pinned by an older gslb): tables are written one map update per slot and kept in memory, as then; start afresh (remove {}) to write them through a memory mapping",
                    pin_dir.display()
                );
            }
            let wanted = config.edge.limits();
            if wanted != steer.limits {
                warn!(
                    pinned = ?steer.limits,
                    configured = ?wanted,
                    "the pinned maps have other sizes than the config asks; keeping the pinned ones (remove {} to start afresh, dropping recorded flows)",
                    pin_dir.display()
                );
            }
            (steer, installed)
        } else {
            let mut steer = Steer::load(config.edge.limits())?;
            // Links without a pinned program belong to no state we can
            // adopt: replace them.
            for interface in attach::pinned_interfaces(&pin_dir) {
                warn!(interface, "removing a pinned link left without its program");
                attach::detach(&interface, &pin_dir)?;
            }
            steer.pin(&pin_dir)?;
            info!(pin_dir = %pin_dir.display(), "loaded steer and pinned its state");
            (steer, Installed::default())
        };

        // Every backend counts as up until its checks say otherwise (a
        // starting agent must not drain the fleet before probing it),
        // except those the previous agent had found dead: they must prove
        // themselves first, rather than take new flows for a second.
        let mut health = HealthTable::new();
        health.update(&config.monitored_backends());
        let now = SystemTime::now();
        for address in &installed.dead {
            health.assume_down(*address, now, "marked dead by the previous agent");
        }
        let conditions = conditions_of(&config, &health, &drains, now);
        let (plan, changes) = reconcile(&config, &conditions, &mut installed, &mut steer)?;
        info!(?changes, "programmed the data plane");

        let program = ProgramStatus {
            version: steer.program_version().unwrap_or_default(),
            loaded_unix: steer.program_loaded_at().map_or(0, unix_secs),
            upgraded_from: steer.upgraded_from().map(str::to_string),
        };
        let mut agent = Agent {
            program,
            config_path: config_path.to_path_buf(),
            config,
            steer,
            installed,
            plan,
            interfaces: Interfaces::default(),
            adopted,
            started: SystemTime::now(),
            reloads: 0,
            reloads_failed: 0,
            last_reload: None,
            health,
            monitors: None,
            drains,
            failovers: Failovers::default(),
            latency_steps: LatencySteps::new(),
            n_plus_one_failing: BTreeSet::new(),
            tunnel_errors: TunnelErrors::new(),
            announcer: None,
            fleet,
            state,
        };
        agent.note_plan_for_fleet();
        agent.configure_tunnel_errors();
        agent.warn_capacity();
        agent.sync_interfaces()?;
        Ok(agent)
    }

    /// Starts probing the configured monitors; results arrive on `events`
    /// (to be fed to `on_health`). Must run inside a tokio runtime.
    pub fn start_monitoring(&mut self, events: tokio::sync::mpsc::UnboundedSender<HealthEvent>) {
        let mut monitors = Monitors::new(events);
        let wanted = self.config.monitored_backends();
        self.health.update(&wanted);
        monitors.update(&wanted);
        self.monitors = Some(monitors);
        if let Err(error) = tunnel_errors::spawn(self.tunnel_errors.clone()) {
            let hint = match capabilities::missing(&[capabilities::RAW_SOCKETS]).is_empty() {
                true => "",
                false => " (the agent lacks CAP_NET_RAW)",
            };
            warn!("tunnel errors (ICMP from backends about tunnel packets) will not be counted{hint}: {error:#}");
        }
    }

    /// Starts resolving each backend's next hop in the agent, kept current
    /// from the kernel's notifications (`sys::next_hops`). Must run inside a
    /// tokio runtime.
    pub fn start_next_hops(&self) {
        if let Err(error) = next_hops::spawn(self.steer.next_hops()) {
            warn!("next hops will not be resolved by the agent; steer asks the kernel's routing table for every packet: {error:#}");
        }
    }

    /// Starts announcing over BGP (`[bgp]`); the watchdog's pid goes to
    /// `watchdog_pid_file`. Nothing happens without a daemon configured.
    pub fn start_announcing(&mut self, watchdog_pid_file: &Path) -> Result<()> {
        self.announcer = Announcer::start(&self.config.bgp, watchdog_pid_file)?;
        self.restore_edge_drain();
        Ok(())
    }

    /// Whether the agent announces over BGP.
    pub fn announces(&self) -> bool {
        self.announcer.is_some()
    }

    /// Stops announcing: withdraws the VIPs (first announcing them less
    /// preferred for `bgp.drain_wait_ms` if `drain`).
    pub fn stop_announcing(&mut self, drain: bool) {
        if let Some(mut announcer) = self.announcer.take() {
            announcer.shutdown(drain);
        }
    }

    /// This edge's name (`edge.name`).
    pub fn edge_name(&self) -> String {
        self.config.edge.name.clone()
    }

    /// Where the agent pins its state.
    pub fn pin_dir(&self) -> &Path {
        &self.config.edge.bpffs_pin
    }

    /// Tells the tunnel-error counter our tunnel sources and backends.
    fn configure_tunnel_errors(&self) {
        let edge = &self.config.edge;
        let sources = std::iter::once(edge.tunnel_source_v4.into()).chain(edge.tunnel_source_v6.map(Into::into));
        let backends = self.config.pools.iter().flat_map(|p| p.backends.iter().map(|b| b.address));
        self.tunnel_errors.configure(sources, backends);
    }

    /// Re-reads the config file. A config that fails validation, or that
    /// this data plane cannot hold, is refused before anything changes.
    pub fn reload(&mut self) -> Result<Changes> {
        let outcome = self.try_reload();
        self.reloads += 1;
        self.reloads_failed += outcome.is_err() as u64;
        self.last_reload = Some(ReloadRecord {
            at: SystemTime::now(),
            ok: outcome.is_ok(),
            error: outcome.as_ref().err().map(|e| format!("{e:#}")),
        });
        match &outcome {
            Ok(changes) => info!(?changes, "reloaded {}", self.config_path.display()),
            Err(error) => warn!("refused {}: {error:#}; the running config stays in force", self.config_path.display()),
        }
        outcome
    }

    fn try_reload(&mut self) -> Result<Changes> {
        let mut config = config::load(&self.config_path)?;
        if config.fleet != self.config.fleet {
            bail!("[fleet] cannot change while the agent runs; restart it instead");
        }
        if config.fleet.is_some() {
            // The file gives this host's sections; VIPs and pools stay those
            // of the applied fleet revision.
            config = config.with_document(self.config.vips.clone(), self.config.pools.clone());
        }
        self.install(config)
    }

    /// Takes `config` in place of the running one, or refuses it whole
    /// before anything changes.
    fn install(&mut self, config: Config) -> Result<Changes> {
        // These take effect only when the agent starts (sizes: only on a
        // fresh start); accepting them silently would misreport the state.
        let (new, old) = (&config.edge, &self.config.edge);
        if new.bpffs_pin != old.bpffs_pin {
            bail!("edge.bpffs_pin cannot change while the agent runs; restart it instead");
        }
        if new.state_file != old.state_file {
            bail!("edge.state_file cannot change while the agent runs; restart it instead");
        }
        if new.admin_socket != old.admin_socket {
            bail!("edge.admin_socket cannot change while the agent runs; restart it instead");
        }
        if new.limits() != old.limits() {
            bail!(
                "map sizes (max_flows, max_vips, max_backends, table_size) cannot change on a reload; they apply when the agent starts without pinned state (see docs/operations.md, \"Starting afresh\")"
            );
        }
        // A new interface must exist; one already steered may be missing
        // for now (the watcher re-attaches it when it returns).
        for interface in config.edge.interfaces.iter().filter(|i| !self.interfaces.contains(i)) {
            attach::ifindex(interface)?;
        }
        crate::announce::check_reload(&self.config.bgp, &config.bgp)?;
        let limits = self.steer.limits;
        if config.vips.len() > limits.max_vips as usize {
            bail!("{} VIPs do not fit the loaded maps (max_vips {})", config.vips.len(), limits.max_vips);
        }
        // Plan before touching anything: a config this data plane cannot
        // hold is refused whole.
        let conditions = self.conditions(SystemTime::now());
        crate::decide::plan::plan(
            &config,
            &self.installed.backend_ids,
            limits.max_backends,
            limits.table_size,
            &conditions,
        )?;
        self.config = config;
        if let Some(announcer) = &mut self.announcer {
            announcer.set_timers(&self.config.bgp);
        }
        self.configure_tunnel_errors();
        self.forget_removed();
        let wanted = self.config.monitored_backends();
        self.health.update(&wanted);
        if let Some(monitors) = &mut self.monitors {
            monitors.update(&wanted);
        }
        let changes = self.replan(&self.conditions(SystemTime::now()))?;
        self.sync_interfaces()?;
        Ok(changes)
    }

    /// Plans with `conditions` and applies the difference.
    fn replan(&mut self, conditions: &Conditions) -> Result<Changes> {
        let started = std::time::Instant::now();
        let (plan, changes) = reconcile(&self.config, conditions, &mut self.installed, &mut self.steer)?;
        log_vip_changes(&self.plan, &plan, &self.config);
        tracing::debug!(reconcile_ms = started.elapsed().as_millis() as u64, "replanned");
        self.plan = plan;
        self.note_plan_for_fleet();
        self.warn_capacity();
        Ok(changes)
    }

    /// Logs a warning when a VIP starts failing its N+1 check, and a note
    /// when it holds again.
    fn warn_capacity(&mut self) {
        for planned in self.plan.vips.values() {
            let Some(verdict) = capacity(&self.config, &planned.default.weights) else { continue };
            if !verdict.ok && self.n_plus_one_failing.insert(planned.name.clone()) {
                warn!(vip = planned.name, "{}", verdict.message);
            } else if verdict.ok && self.n_plus_one_failing.remove(&planned.name) {
                info!(vip = planned.name, "{}", verdict.message);
            }
        }
    }

    /// Attaches to configured interfaces and detaches from ones no longer
    /// configured.
    fn sync_interfaces(&mut self) -> Result<()> {
        let pin_dir = self.config.edge.bpffs_pin.clone();
        let known = self.interfaces.iter().map(|(name, _)| name.clone());
        let stale: Vec<String> = attach::pinned_interfaces(&pin_dir)
            .into_iter()
            .chain(known)
            .filter(|interface| !self.config.edge.interfaces.contains(interface))
            .collect();
        for interface in stale {
            self.interfaces.detach(&interface, &pin_dir)?;
        }
        for interface in self.config.edge.interfaces.clone() {
            if !self.interfaces.contains(&interface) {
                self.interfaces.attach(self.steer.program(), &interface, self.config.edge.xdp_mode, &pin_dir)?;
            }
        }
        Ok(())
    }

    /// One look at the interfaces (see `sys::interfaces`): notes up/down
    /// changes and attaches `steer` again to an interface that came back
    /// without it.
    pub fn watch_interfaces(&mut self) {
        let pin_dir = self.config.edge.bpffs_pin.clone();
        self.interfaces.watch(self.steer.program(), self.config.edge.xdp_mode, &pin_dir);
    }

    /// Removes the agent's pins: `steer` stops on every interface once this
    /// process exits, and recorded flows are forgotten.
    pub fn remove_pins(&self) -> Result<()> {
        let dir = &self.config.edge.bpffs_pin;
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
    }
}

/// Says loudly when a VIP enters or leaves panic, and why, and when its
/// fallback pool takes over or hands back.
fn log_vip_changes(old: &Plan, new: &Plan, config: &Config) {
    let on_fallback = |v: &PlannedVip| v.default.fallback || v.client_tables.values().any(|t| t.fallback);
    for (matcher, vip) in &new.vips {
        let before = old.vips.get(matcher);
        let configured = config.vips.iter().find(|v| v.name == vip.name);
        let cap = configured.map_or(0.5, |v| v.max_unhealthy_fraction);
        let was = before.is_some_and(|v| v.panic);
        if vip.panic && !was {
            let capped = vip.total > 0 && vip.failing as f64 / vip.total as f64 > cap;
            let why = if capped {
                "health checks would take out more than the cap allows"
            } else {
                "no backend is up in the pools of one of its tables, nor in its fallback pool"
            };
            warn!(
                vip = vip.name,
                failing = vip.failing,
                backends = vip.total,
                max_unhealthy_fraction = cap,
                "PANIC: {why}; keeping the listed pools' backends in rotation regardless of health (trust the fleet, not the check)"
            );
        } else if was && !vip.panic {
            info!(vip = vip.name, failing = vip.failing, backends = vip.total, "panic over: health checks apply again");
        }
        let was = before.is_some_and(on_fallback);
        let fallback_pool = configured.and_then(|v| v.fallback_pool.as_deref()).unwrap_or("");
        if on_fallback(vip) && !was {
            warn!(
                vip = vip.name,
                down = vip.down,
                backends = vip.total,
                fallback_pool,
                "FALLBACK: the listed pools have no backend up; new flows go to the fallback pool"
            );
        } else if was && !on_fallback(vip) {
            info!(vip = vip.name, fallback_pool, "fallback over: new flows go to the listed pools again");
        }
    }
}
