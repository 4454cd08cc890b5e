//! The `gslb` command line.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use crate::admin::{self, Request};
use crate::agent::Agent;
use crate::config;
use crate::dataplane::{Decap, Limits, Steer};
use crate::links;
use crate::metrics;
use crate::status::Status;

use crate::config::DEFAULT_ADMIN_SOCKET;

#[derive(Parser)]
#[command(name = "gslb", version, about = "XDP edge packet steerer for global server load balancing")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// How a command finds a running agent.
#[derive(clap::Args)]
pub struct AgentAddress {
    /// The agent's admin socket.
    #[arg(long, conflicts_with = "config")]
    socket: Option<PathBuf>,
    /// Read the admin socket's path from this config file.
    #[arg(long)]
    config: Option<PathBuf>,
}

impl AgentAddress {
    fn socket(&self) -> Result<PathBuf> {
        if let Some(socket) = &self.socket {
            return Ok(socket.clone());
        }
        if let Some(path) = &self.config {
            return Ok(config::load(path)?.edge.admin_socket);
        }
        Ok(PathBuf::from(DEFAULT_ADMIN_SOCKET))
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the edge agent: attach `steer` to the configured interfaces and
    /// program it from the config until stopped. Steering outlives the
    /// agent: a restarted agent adopts the pinned state.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// On exit, remove the pinned state: `steer` detaches and recorded
        /// flows are forgotten.
        #[arg(long)]
        remove_on_exit: bool,
        /// On SIGTERM/SIGINT, announce the VIPs less preferred for
        /// bgp.drain_wait_ms before withdrawing them ([bgp] only).
        #[arg(long)]
        drain_on_exit: bool,
    },
    /// Make the running agent re-read its config file (as SIGHUP does).
    Reload {
        #[command(flatten)]
        agent: AgentAddress,
    },
    /// Show VIPs, pools, backends, table shares and counters.
    Status {
        #[command(flatten)]
        agent: AgentAddress,
        #[arg(long)]
        json: bool,
    },
    /// Stop new flows to a backend (address) or to every backend of a pool
    /// (name). Recorded flows keep going until they end, or until
    /// `--for` has passed. With `--edge`: drain the whole edge from BGP
    /// (announce less preferred, then withdraw; `--for`: undrain after).
    Drain {
        #[arg(required_unless_present = "edge", conflicts_with = "edge")]
        target: Option<String>,
        /// Drain this edge's BGP announcements instead of backends.
        #[arg(long)]
        edge: bool,
        /// How long recorded flows may run on (e.g. 30s, 5m); unlimited if
        /// not given.
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
        #[command(flatten)]
        agent: AgentAddress,
    },
    /// Put a drained backend or pool back into rotation (`--edge`: announce
    /// the edge's VIPs again).
    Undrain {
        #[arg(required_unless_present = "edge", conflicts_with = "edge")]
        target: Option<String>,
        #[arg(long)]
        edge: bool,
        #[command(flatten)]
        agent: AgentAddress,
    },
    /// Validate a config file and exit.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Attach `decap` to a backend interface and keep running until
    /// interrupted.
    Decap {
        #[arg(long)]
        iface: String,
        /// The backend's tunnel address (repeat for several).
        #[arg(long, required = true)]
        address: Vec<IpAddr>,
    },
    /// Load `steer` and `decap` through the kernel verifier, then exit.
    Verify,
    /// Internal: started by `gslb run` with [bgp]; withdraws the agent's
    /// VIPs if the agent dies (see docs/operations.md).
    #[command(hide = true)]
    BgpWatchdog,
}

pub fn main() -> Result<()> {
    run(Cli::parse())
}

pub fn run(cli: Cli) -> Result<()> {
    init_logging();
    match cli.command {
        Command::Run { config, remove_on_exit, drain_on_exit } => run_agent(&config, remove_on_exit, drain_on_exit),
        Command::BgpWatchdog => crate::announce::watchdog::run(),
        Command::Reload { agent } => {
            let response = admin::request(&agent.socket()?, &Request::Reload)?;
            if let Some(error) = response.error {
                bail!("reload refused: {error}");
            }
            println!("reloaded: {}", serde_json::to_string(&response.changes)?);
            Ok(())
        }
        Command::Status { agent, json } => {
            let response = admin::request(&agent.socket()?, &Request::Status)?;
            let Some(status) = response.status else {
                bail!("status failed: {}", response.error.unwrap_or_default());
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.render());
            }
            Ok(())
        }
        Command::Drain { target, edge, duration, agent } => {
            let duration_ms = duration.map(|d| d.as_millis() as u64);
            let Some(target) = target.filter(|_| !edge) else {
                let response = admin::request(&agent.socket()?, &Request::DrainEdge { duration_ms })?;
                return print_edge(
                    "edge drained: VIPs announced less preferred, withdrawn after bgp.drain_wait_ms",
                    response,
                );
            };
            let request = Request::Drain { target, duration_ms };
            print_backends("drained", admin::request(&agent.socket()?, &request)?)
        }
        Command::Undrain { target, edge, agent } => {
            let Some(target) = target.filter(|_| !edge) else {
                let response = admin::request(&agent.socket()?, &Request::UndrainEdge)?;
                return print_edge("edge undrained", response);
            };
            print_backends("undrained", admin::request(&agent.socket()?, &Request::Undrain { target })?)
        }
        Command::Check { config } => {
            let parsed = config::load(&config)?;
            println!(
                "{}: valid ({} VIPs, {} pools, {} backends)",
                config.display(),
                parsed.vips.len(),
                parsed.pools.len(),
                parsed.pools.iter().map(|p| p.backends.len()).sum::<usize>()
            );
            Ok(())
        }
        Command::Decap { iface, address } => run_decap(&iface, &address),
        Command::Verify => {
            Steer::load(Limits::default())?;
            Decap::load()?;
            println!("steer and decap passed the verifier");
            Ok(())
        }
    }
}

fn print_edge(what: &str, response: admin::Response) -> Result<()> {
    if let Some(error) = response.error {
        bail!("{error}");
    }
    println!("{what}");
    Ok(())
}

fn print_backends(what: &str, response: admin::Response) -> Result<()> {
    if let Some(error) = response.error {
        bail!("{error}");
    }
    let backends: Vec<String> = response.backends.unwrap_or_default().iter().map(|b| b.to_string()).collect();
    println!("{what}: {}", backends.join(" "));
    Ok(())
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,aya=error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the tokio runtime")
}

fn run_agent(config_path: &Path, remove_on_exit: bool, drain_on_exit: bool) -> Result<()> {
    // The socket first: a second agent for the same edge stops here, before
    // it touches the data plane.
    let edge = config::load(config_path)?.edge;
    let socket = edge.admin_socket;
    let listener = admin::bind(&socket)?;
    // A start that fails leaves nothing behind, not even the socket.
    let started = metrics::bind(edge.metrics_listen).and_then(|m| Ok((m, Agent::start(config_path)?)));
    let (metrics_listener, agent) = match started {
        Ok(started) => started,
        Err(error) => {
            let _ = std::fs::remove_file(&socket);
            return Err(error);
        }
    };
    let pin_dir = agent.config.edge.bpffs_pin.clone();
    let mut agent = agent;
    // Named after the admin socket (one per agent): /run/gslb/gslb.bgp-watchdog.pid.
    let watchdog_pid = socket.with_extension("bgp-watchdog.pid");
    match crate::announce::Announcer::start(&agent.config.bgp, &watchdog_pid) {
        Ok(announcer) => agent.announce = announcer,
        Err(error) => {
            let _ = std::fs::remove_file(&socket);
            return Err(error);
        }
    }
    let agent = Arc::new(Mutex::new(agent));
    runtime()?.block_on(async {
        let (events, mut health) = tokio::sync::mpsc::unbounded_channel();
        agent.lock().unwrap_or_else(|p| p.into_inner()).start_monitoring(events);
        let server = tokio::spawn(admin::serve(listener, agent.clone()));
        let scraped = agent.clone();
        let metrics_server = tokio::spawn(async move {
            let snapshot = move || {
                let agent = scraped.lock().unwrap_or_else(|p| p.into_inner());
                Ok(metrics::render(&Status::of(&agent)?))
            };
            if let Err(error) = metrics::serve_listener(metrics_listener, snapshot).await {
                tracing::error!("the metrics endpoint stopped: {error:#}");
            }
        });
        let mut drain_clock = tokio::time::interval(std::time::Duration::from_millis(250));
        let mut link_clock = tokio::time::interval(links::POLL_INTERVAL);
        let mut announce_clock = tokio::time::interval(crate::announce::STEP_INTERVAL);
        announce_clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let has_announcer = agent.lock().unwrap_or_else(|p| p.into_inner()).announce.is_some();
        let mut hangup = signal(SignalKind::hangup())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        info!(socket = %socket.display(), "agent running; SIGHUP or `gslb reload` re-reads the config");
        loop {
            tokio::select! {
                _ = hangup.recv() => {
                    let agent = agent.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        let _ = agent.lock().unwrap_or_else(|p| p.into_inner()).reload();
                    }).await;
                }
                Some(event) = health.recv() => {
                    let agent = agent.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        if let Err(error) = agent.lock().unwrap_or_else(|p| p.into_inner()).on_health(event) {
                            warn!("applying a health change failed: {error:#}");
                        }
                    }).await;
                }
                _ = drain_clock.tick() => {
                    let agent = agent.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        if let Err(error) = agent.lock().unwrap_or_else(|p| p.into_inner()).expire_drains() {
                            warn!("ending a drain failed: {error:#}");
                        }
                    }).await;
                }
                _ = link_clock.tick() => {
                    let agent = agent.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        agent.lock().unwrap_or_else(|p| p.into_inner()).watch_interfaces();
                    }).await;
                }
                _ = announce_clock.tick(), if has_announcer => {
                    let agent = agent.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        agent.lock().unwrap_or_else(|p| p.into_inner()).step_announcements();
                    }).await;
                }
                _ = interrupt.recv() => break,
                _ = terminate.recv() => break,
            }
        }
        server.abort();
        metrics_server.abort();
        anyhow::Ok(())
    })?;
    let _ = std::fs::remove_file(&socket);
    let mut agent = agent.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(mut announcer) = agent.announce.take() {
        announcer.shutdown(drain_on_exit);
    }
    if remove_on_exit {
        agent.remove_pins()?;
        info!("removed the pinned state; steer detaches as this process exits");
    } else {
        warn!(pin_dir = %pin_dir.display(), "agent stopped; steer stays attached with the last config (restart the agent to adopt it)");
    }
    Ok(())
}

fn run_decap(iface: &str, addresses: &[IpAddr]) -> Result<()> {
    let mut decap = Decap::load()?;
    for address in addresses {
        decap.add_address(*address)?;
    }
    let _link = decap
        .program()
        .attach(iface, aya::programs::XdpMode::Default)
        .with_context(|| format!("attaching decap to {iface}"))?;
    info!(iface, ?addresses, "decap attached; Ctrl-C to detach");
    runtime()?.block_on(async {
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        anyhow::Ok(())
    })
}
