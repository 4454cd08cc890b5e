//! The `gslb` command line: parses arguments and calls in (`daemon` runs
//! the agent and decap, `client` talks to a running agent).

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};

use crate::config::{self, DEFAULT_ADMIN_SOCKET};
use crate::sys::decap::HopLists;
use crate::{client, daemon};

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
    pub fn socket(&self) -> Result<PathBuf> {
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
        /// The config file (TOML; `gslb check` validates it).
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
    /// Validate a config file (or a fleet document: VIPs and pools without
    /// [edge]) and exit.
    Check {
        /// The file to validate.
        #[arg(long)]
        config: PathBuf,
    },
    /// Attach `decap` to a backend interface and keep running until
    /// interrupted.
    Decap {
        /// The interface tunnel packets arrive on.
        #[arg(long)]
        iface: String,
        /// The backend's tunnel address (repeat for several).
        #[arg(long, required = true)]
        address: Vec<IpAddr>,
        /// Second chance: an edge tunnel source (its `tunnel_source_v4` or
        /// `tunnel_source_v6`) whose hop-list packets are taken (repeat for
        /// every edge). Without any, hop-list packets are refused.
        #[arg(long)]
        edge: Vec<IpAddr>,
        /// Second chance: another backend's tunnel address that hop-list
        /// packets may be handed on to (repeat for every backend of the
        /// pools this one serves in).
        #[arg(long)]
        peer: Vec<IpAddr>,
        /// The UDP port hop-list (GUE) packets arrive on: the edges'
        /// `gue_port`.
        #[arg(long, default_value_t = gslb_common::DEFAULT_GUE_PORT)]
        gue_port: u16,
        /// Serve decap's counters at http://ADDR/metrics (OpenMetrics).
        #[arg(long)]
        metrics_listen: Option<std::net::SocketAddr>,
    },
    /// Load `steer` and `decap` through the kernel verifier, then exit.
    Verify,
    /// The fleet's config, rollouts and health through etcd (`[fleet]`).
    Fleet {
        #[command(subcommand)]
        command: FleetCommand,
        #[command(flatten)]
        address: FleetAddress,
    },
    /// Print a completion script for this shell to stdout (for example
    /// `gslb completions bash > /etc/bash_completion.d/gslb`).
    Completions { shell: clap_complete::Shell },
    /// Write the man pages, gslb(1) and one per subcommand (gslb-run(1),
    /// ...), into a directory; the package build uses it.
    #[command(hide = true)]
    Man {
        #[arg(long)]
        out_dir: PathBuf,
    },
    /// Internal: started by `gslb run` with [bgp]; withdraws the agent's
    /// VIPs if the agent dies (see docs/operations.md).
    #[command(hide = true)]
    BgpWatchdog,
}

/// How a `gslb fleet` command finds etcd: an edge file's `[fleet]`.
#[derive(clap::Args)]
pub struct FleetAddress {
    /// An edge config file whose [fleet] section gives the endpoints,
    /// credentials and key prefix.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
}

impl FleetAddress {
    fn fleet(&self) -> Result<config::Fleet> {
        let Some(path) = &self.config else {
            anyhow::bail!("give --config EDGE_FILE: its [fleet] section says where etcd is");
        };
        match config::load(path)?.fleet {
            Some(fleet) => Ok(fleet),
            None => anyhow::bail!("{} has no [fleet] section", path.display()),
        }
    }
}

#[derive(Subcommand)]
pub enum FleetCommand {
    /// Validate a fleet document ([[vip]] and [[pool]] only) as `gslb check`
    /// does, store it as the next revision and roll it out: the canary
    /// group first, then after the bake time every edge.
    Push {
        file: PathBuf,
        /// The rollout group that takes the revision first (fleet.group).
        #[arg(long, default_value = "canary", conflicts_with = "all_at_once")]
        canary: String,
        /// How long the canaries run the revision before every edge takes it.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        bake: std::time::Duration,
        /// Every edge at once, no canary.
        #[arg(long)]
        all_at_once: bool,
        /// Only validate the file; store nothing.
        #[arg(long)]
        dry_run: bool,
        /// Wait until every live edge has applied it (exit 1 if it halts or an
        /// edge refuses it),
        /// at most this long (e.g. 5m).
        #[arg(long, value_parser = humantime::parse_duration)]
        wait: Option<std::time::Duration>,
    },
    /// Return every edge at once to the previous revision (or `--to N`).
    Rollback {
        #[arg(long)]
        to: Option<u64>,
    },
    /// The rollout, every live edge's revision, tables and announcements,
    /// and per backend each edge's verdict next to the fleet's.
    Status {
        #[arg(long)]
        json: bool,
    },
}

fn run_fleet(command: FleetCommand, address: &FleetAddress) -> Result<()> {
    use crate::fleet::admin;
    if let FleetCommand::Push { file, dry_run: true, .. } = &command {
        let text = std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
        let (vips, pools) = config::parse_fleet_document(&text, file, &config::Edge::permissive())?;
        println!(
            "{}: valid fleet document ({} VIPs, {} pools); nothing stored (--dry-run)",
            file.display(),
            vips.len(),
            pools.len()
        );
        return Ok(());
    }
    let fleet = address.fleet()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        match command {
            FleetCommand::Push { file, canary, bake, all_at_once, wait, .. } => {
                let options = admin::PushOptions { canary_group: (!all_at_once).then_some(canary), bake };
                let revision = admin::push(&fleet, &file, &options).await?;
                match &options.canary_group {
                    Some(group) => println!(
                        "stored revision {revision}; rolling out to group {group:?} first, then after {} to every edge",
                        humantime::format_duration(bake)
                    ),
                    None => println!("stored revision {revision}; every edge applies it now"),
                }
                if let Some(timeout) = wait {
                    admin::wait(&fleet, revision, timeout, |r| println!("revision {}: {:?}", r.revision, r.phase))
                        .await?;
                    println!("revision {revision} applied by every live edge");
                }
                Ok(())
            }
            FleetCommand::Rollback { to } => {
                let (from, to) = admin::rollback(&fleet, to).await?;
                println!("rolled back from revision {from} to {to}: every edge applies {to} now");
                Ok(())
            }
            FleetCommand::Status { json } => {
                let status = admin::status(&fleet).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&status)?);
                } else {
                    print!("{}", crate::view::fleet::render_fleet(&status));
                }
                Ok(())
            }
        }
    })
}

pub fn main() -> Result<()> {
    run(Cli::parse())
}

pub fn run(cli: Cli) -> Result<()> {
    init_logging();
    match cli.command {
        Command::Run { config, remove_on_exit, drain_on_exit } => {
            daemon::run_agent(&config, remove_on_exit, drain_on_exit)
        }
        Command::BgpWatchdog => crate::announce::watchdog::run(),
        Command::Reload { agent } => client::reload(&agent.socket()?),
        Command::Status { agent, json } => client::status(&agent.socket()?, json),
        Command::Drain { target, edge, duration, agent } => match target.filter(|_| !edge) {
            Some(target) => client::drain(&agent.socket()?, target, duration),
            None => client::drain_edge(&agent.socket()?, duration),
        },
        Command::Undrain { target, edge, agent } => match target.filter(|_| !edge) {
            Some(target) => client::undrain(&agent.socket()?, target),
            None => client::undrain_edge(&agent.socket()?),
        },
        Command::Check { config } => client::check(&config),
        Command::Decap { iface, address, edge, peer, gue_port, metrics_listen } => {
            let hop_lists = HopLists { edges: edge, peers: peer, gue_port: Some(gue_port) };
            daemon::run_decap(&iface, &address, &hop_lists, metrics_listen)
        }
        Command::Verify => client::verify(),
        Command::Fleet { command, address } => run_fleet(command, &address),
        Command::Completions { shell } => {
            // Rendered first: clap_complete panics on a failed write (a
            // closed pipe), which is an error here instead.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "gslb", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script)?;
            Ok(())
        }
        Command::Man { out_dir } => clap_mangen::generate_to(Cli::command(), &out_dir)
            .map_err(|e| anyhow::anyhow!("writing man pages to {}: {e}", out_dir.display())),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn completions_and_man_pages_name_the_subcommands() {
        let mut bash = Vec::new();
        clap_complete::generate(clap_complete::Shell::Bash, &mut Cli::command(), "gslb", &mut bash);
        let bash = String::from_utf8(bash).unwrap();
        for sub in ["run", "reload", "status", "drain", "decap", "fleet", "completions"] {
            assert!(bash.contains(sub), "bash completion lacks {sub}");
        }
        let mut page = Vec::new();
        clap_mangen::Man::new(Cli::command()).render(&mut page).unwrap();
        let page = String::from_utf8(page).unwrap();
        assert!(page.starts_with(".ie") || page.contains(".TH gslb 1"), "{page}");
        assert!(page.contains("gslb\\-run(1)") && !page.contains("bgp\\-watchdog"), "{page}");
    }
}
