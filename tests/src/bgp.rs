//! Real BGP routing in the lab: the router runs BIRD 2 and peers with every
//! edge; each edge runs its own BIRD or GoBGP, which the agent drives (or a
//! test, by hand). The router installs the VIP routes it learns into its
//! kernel table, as one ECMP route when several edges announce a VIP.
//!
//! ```text
//!  router (AS 65000, BIRD) ── eBGP, one session per edge and family ── edge (AS 65100)
//! ```
//!
//! Both edges use the same AS, as an anycast fleet would. Sessions use the
//! link addresses, so the routes' next hops are the edges' link addresses.
//! Timers are short so that sessions come up in about a second and come
//! back quickly after a daemon restarts.
//!
//! The contract with the agent, per edge (see `EdgeBgp`):
//! - BIRD: `bird_include` is included at the top level of the edge's
//!   config. The agent writes `protocol static` blocks into it (one per
//!   family, see `bird_static_routes`) and runs `configure` on
//!   `bird_socket`. The edge exports static routes within the VIP ranges
//!   to the router with whatever BGP attributes they carry (MED, path,
//!   communities: drain).
//! - GoBGP: the agent adds and deletes routes in the global RIB through
//!   `gobgp_api` (the API or `gobgp -u HOST -p PORT global rib ...`).
//!
//! Every daemon's files are in the lab's run directory and every daemon is
//! a child of the lab, killed with it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::lab::{EdgeNode, Lab, Node, VIP_V4, VIP_V6};

pub const ROUTER_AS: u32 = 65000;
/// Every edge's AS: the anycast fleet's.
pub const EDGE_AS: u32 = 65100;
/// The prefixes the router accepts from edges, any length down to a host
/// route. The lab's VIPs are in them.
pub const VIP_RANGE_V4: (Ipv4Addr, u8) = (Ipv4Addr::new(203, 0, 113, 0), 24);
pub const VIP_RANGE_V6: (Ipv6Addr, u8) = (Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 0), 48);
/// Where GoBGP's API listens, on the edge's own loopback.
pub const GOBGP_API: &str = "127.0.0.1:50051";

/// How long a daemon may take to answer on its control socket or API.
const DAEMON_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `Bgp::start` waits for every session to be established.
const SESSIONS_TIMEOUT: Duration = Duration::from_secs(15);
/// Timers shared by both ends of every session, in seconds. The error wait
/// time keeps BIRD from idling for minutes after a session flaps.
const HOLD_TIME: u32 = 3;
const KEEPALIVE_TIME: u32 = 1;
const CONNECT_RETRY: u32 = 1;

/// The BGP daemon an edge runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Daemon {
    #[default]
    Bird,
    Gobgp,
}

impl Daemon {
    /// The name the agent's `[bgp] daemon` key uses.
    pub fn name(self) -> &'static str {
        match self {
            Daemon::Bird => "bird",
            Daemon::Gobgp => "gobgp",
        }
    }
}

/// BGP in a deployment: which daemon each edge runs, and whether the
/// agents get a `[bgp]` section that makes them drive it.
#[derive(Clone, Debug)]
pub struct BgpSetup {
    pub edge_a: Daemon,
    pub edge_b: Daemon,
    /// Write `[bgp]` into the agents' configs (off: the daemons run, the
    /// agents don't know them, tests announce by hand).
    pub agent_config: bool,
    /// The `[bgp] drain` method.
    pub drain: Drain,
}

impl Default for BgpSetup {
    fn default() -> Self {
        BgpSetup { edge_a: Daemon::Bird, edge_b: Daemon::Bird, agent_config: false, drain: Drain::Prepend }
    }
}

/// How an edge makes its routes less preferred before it withdraws them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Drain {
    /// A longer AS path (the edge's AS twice more).
    #[default]
    Prepend,
    /// A higher MED than the other edges' (none, i.e. 0).
    Med,
    /// The GRACEFUL_SHUTDOWN community (65535:0, RFC 8326); the router
    /// sets such routes' local preference to 0.
    GracefulShutdown,
}

impl Drain {
    pub const ALL: [Drain; 3] = [Drain::Prepend, Drain::Med, Drain::GracefulShutdown];

    /// The name the agent's `[bgp] drain` key uses.
    pub fn name(self) -> &'static str {
        match self {
            Drain::Prepend => "prepend",
            Drain::Med => "med",
            Drain::GracefulShutdown => "graceful-shutdown",
        }
    }

    /// BIRD filter statements that mark a static route.
    fn bird_statements(self) -> String {
        match self {
            Drain::Prepend => format!("bgp_path.prepend({EDGE_AS}); bgp_path.prepend({EDGE_AS});"),
            Drain::Med => "bgp_med = 100;".to_string(),
            Drain::GracefulShutdown => "bgp_community.add((65535, 0));".to_string(),
        }
    }

    /// `gobgp global rib add` arguments that mark a route.
    fn gobgp_args(self) -> Vec<String> {
        match self {
            // GoBGP prepends its own AS once more towards an eBGP peer.
            Drain::Prepend => vec!["aspath".into(), format!("{EDGE_AS},{EDGE_AS}")],
            Drain::Med => vec!["med".into(), "100".into()],
            Drain::GracefulShutdown => vec!["community".into(), "65535:0".into()],
        }
    }
}

impl BgpSetup {
    pub fn daemon(&self, edge: EdgeNode) -> Daemon {
        match edge {
            EdgeNode::EdgeA => self.edge_a,
            EdgeNode::EdgeB => self.edge_b,
        }
    }
}

/// Hysteresis and drain timings of lab agents: short, so tests are quick.
pub const LAB_ANNOUNCE_AFTER_MS: u64 = 300;
pub const LAB_WITHDRAW_AFTER_MS: u64 = 100;
pub const LAB_DRAIN_WAIT_MS: u64 = 1000;

/// One edge's daemon and the paths the agent's `[bgp]` section names.
/// The paths exist for both daemons; only the daemon's own are used.
#[derive(Clone, Debug)]
pub struct EdgeBgp {
    pub edge: EdgeNode,
    pub daemon: Daemon,
    pub bird_socket: PathBuf,
    pub bird_include: PathBuf,
    pub gobgp_api: String,
    /// The daemon's config file.
    pub config: PathBuf,
    /// The daemon's log (`Deployment::log(log_name)`).
    pub log: PathBuf,
}

impl EdgeBgp {
    /// The paths of `edge`'s daemon in `lab`; creates nothing.
    pub fn new(lab: &Lab, edge: EdgeNode, daemon: Daemon) -> EdgeBgp {
        let dir = lab.run_dir();
        let stem = format!("{}-{}", daemon_binary(daemon), edge.name());
        EdgeBgp {
            edge,
            daemon,
            bird_socket: dir.join(format!("{stem}.ctl")),
            bird_include: dir.join(format!("{}-vips.conf", edge.name())),
            gobgp_api: GOBGP_API.to_string(),
            config: dir.join(format!("{stem}.{}", if daemon == Daemon::Bird { "conf" } else { "toml" })),
            log: dir.join(format!("{stem}.log")),
        }
    }

    /// The `[bgp]` section of the edge's agent config.
    pub fn agent_section(&self, setup: &BgpSetup) -> String {
        let mut toml = format!("[bgp]\ndaemon = \"{}\"\n", self.daemon.name());
        match self.daemon {
            Daemon::Bird => {
                let _ = writeln!(toml, "bird_socket = \"{}\"", self.bird_socket.display());
                let _ = writeln!(toml, "bird_include = \"{}\"", self.bird_include.display());
            }
            Daemon::Gobgp => {
                let _ = writeln!(toml, "gobgp_api = \"{}\"", self.gobgp_api);
            }
        }
        let _ = write!(
            toml,
            "announce_after_ms = {LAB_ANNOUNCE_AFTER_MS}\nwithdraw_after_ms = {LAB_WITHDRAW_AFTER_MS}\ndrain = \"{}\"\ndrain_wait_ms = {LAB_DRAIN_WAIT_MS}\nlocal_as = {EDGE_AS}\n\n",
            setup.drain.name()
        );
        toml
    }

    /// Announces exactly `vips` (host routes) from this edge, by hand, as
    /// the agent would: BIRD gets a new include file and `configure`;
    /// GoBGP gets `vips` added (again) and other routes deleted.
    pub fn set_announced(&self, lab: &Lab, vips: &[IpAddr]) -> Result<()> {
        self.set_announced_as(lab, vips, None)
    }

    /// `set_announced`, with every route marked as `drain` makes it less
    /// preferred (None: plain). Routes already announced get the new mark.
    pub fn set_announced_as(&self, lab: &Lab, vips: &[IpAddr], drain: Option<Drain>) -> Result<()> {
        match self.daemon {
            Daemon::Bird => {
                let text = bird_static_routes_with(vips, &drain.map(Drain::bird_statements).unwrap_or_default());
                std::fs::write(&self.bird_include, text)
                    .with_context(|| format!("writing {}", self.bird_include.display()))?;
                self.birdc(&["configure"]).map(|_| ())
            }
            Daemon::Gobgp => {
                let wanted: BTreeSet<IpAddr> = vips.iter().copied().collect();
                let current = self.gobgp_routes(lab)?;
                let marks = drain.map(Drain::gobgp_args).unwrap_or_default();
                // Adding a route again replaces its attributes (a mark).
                for &vip in &wanted {
                    let prefix = host_prefix(vip);
                    let mut args = vec!["global", "rib", "add", "-a", family(vip), &prefix];
                    args.extend(marks.iter().map(String::as_str));
                    self.gobgp(lab, &args)?;
                }
                for vip in current.difference(&wanted) {
                    self.gobgp(lab, &["global", "rib", "del", "-a", family(*vip), &host_prefix(*vip)])?;
                }
                Ok(())
            }
        }
    }

    /// Withdraws everything this edge announces, in as few commands as the
    /// daemon needs: an empty include file and `configure`, or one
    /// `gobgp global rib del all` per family.
    pub fn withdraw_all(&self, lab: &Lab) -> Result<()> {
        match self.daemon {
            Daemon::Bird => self.set_announced(lab, &[]),
            Daemon::Gobgp => {
                for family in ["ipv4", "ipv6"] {
                    self.gobgp(lab, &["global", "rib", "del", "all", "-a", family])?;
                }
                Ok(())
            }
        }
    }

    /// `birdc -s bird_socket ARGS`; fails on an error reply.
    pub fn birdc(&self, args: &[&str]) -> Result<String> {
        birdc(&self.bird_socket, args)
    }

    /// `gobgp -u HOST -p PORT ARGS`, in the edge's namespace (the API
    /// listens on its loopback).
    pub fn gobgp(&self, lab: &Lab, args: &[&str]) -> Result<String> {
        let (host, port) = self.gobgp_api.rsplit_once(':').context("gobgp_api is HOST:PORT")?;
        let mut all = vec!["gobgp", "-u", host, "-p", port];
        all.extend(args);
        lab.exec(self.edge, &all)
    }

    /// The host routes in GoBGP's global RIB (both families).
    fn gobgp_routes(&self, lab: &Lab) -> Result<BTreeSet<IpAddr>> {
        let mut routes = BTreeSet::new();
        for family in ["ipv4", "ipv6"] {
            let out = self.gobgp(lab, &["global", "rib", "-a", family, "-j"])?;
            let rib: BTreeMap<String, serde_json::Value> =
                serde_json::from_str(&out).with_context(|| format!("parsing `gobgp global rib -j`: {out}"))?;
            for prefix in rib.keys() {
                let address = prefix.split('/').next().unwrap_or(prefix);
                routes.insert(address.parse().with_context(|| format!("a prefix in GoBGP's RIB: {prefix}"))?);
            }
        }
        Ok(routes)
    }

    /// Whether the daemon answers on its control socket or API.
    fn answers(&self, lab: &Lab) -> bool {
        match self.daemon {
            Daemon::Bird => self.birdc(&["show", "status"]).is_ok(),
            Daemon::Gobgp => self.gobgp(lab, &["neighbor"]).is_ok(),
        }
    }
}

/// The contents of a BIRD include file announcing `vips` as host routes:
/// one `protocol static` per family that has any. An empty list gives an
/// empty file (nothing announced).
pub fn bird_static_routes(vips: &[IpAddr]) -> String {
    bird_static_routes_with(vips, "")
}

/// `bird_static_routes` with filter `statements` run on every route (to set
/// BGP attributes: `bgp_med = 100;`).
pub fn bird_static_routes_with(vips: &[IpAddr], statements: &str) -> String {
    let block = if statements.is_empty() { String::new() } else { format!(" {{ {statements} }}") };
    let mut text = String::from("# VIP routes this edge announces.\n");
    for (name, channel, v6) in [("gslb_vips4", "ipv4", false), ("gslb_vips6", "ipv6", true)] {
        let routes: Vec<String> = vips
            .iter()
            .filter(|vip| vip.is_ipv6() == v6)
            .map(|vip| format!("  route {} blackhole{block};\n", host_prefix(*vip)))
            .collect();
        if !routes.is_empty() {
            let _ = write!(text, "protocol static {name} {{\n  {channel};\n{}}}\n", routes.concat());
        }
    }
    text
}

/// A BGP session as the router's BIRD reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// `edge_a_v4`, `edge_b_v6`, ...
    pub name: String,
    pub edge: EdgeNode,
    pub v6: bool,
    /// BIRD's protocol state: `up`, `start`, ...
    pub state: String,
    /// BIRD's info column: `Established`, `Active  Socket: ...`, ...
    pub info: String,
}

impl Session {
    pub fn established(&self) -> bool {
        self.info.starts_with("Established")
    }
}

/// A route the router learned from an edge, with the attributes that
/// decide between edges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterRoute {
    pub edge: EdgeNode,
    /// BIRD chose it (with `merge paths`, every equal route is in the
    /// kernel's ECMP route; one of them is marked best).
    pub best: bool,
    pub as_path: Vec<u32>,
    pub med: Option<u32>,
    pub local_pref: Option<u32>,
    /// BIRD's text: `(65535,0)`.
    pub communities: String,
}

/// Parses `birdc show route PREFIX all`.
fn parse_routes(out: &str) -> Vec<RouterRoute> {
    let mut routes: Vec<RouterRoute> = Vec::new();
    for line in out.lines() {
        // A route starts with `... unicast [edge_a_v4 05:26:09.412] * (100) ...`.
        if let Some((_, rest)) = line.split_once('[') {
            let name = rest.split_whitespace().next().unwrap_or("");
            if let Some((edge, _)) = session_of(name) {
                routes.push(RouterRoute {
                    edge,
                    best: line.contains("] * "),
                    as_path: Vec::new(),
                    med: None,
                    local_pref: None,
                    communities: String::new(),
                });
                continue;
            }
        }
        let (Some(route), Some((key, value))) = (routes.last_mut(), line.trim().split_once(": ")) else { continue };
        match key {
            "BGP.as_path" => route.as_path = value.split_whitespace().filter_map(|a| a.parse().ok()).collect(),
            "BGP.med" => route.med = value.parse().ok(),
            "BGP.local_pref" => route.local_pref = value.parse().ok(),
            "BGP.community" => route.communities = value.to_string(),
            _ => {}
        }
    }
    routes
}

/// The lab's BGP daemons, started by `Bgp::start`; they die with the lab.
pub struct Bgp {
    edges: BTreeMap<EdgeNode, EdgeBgp>,
    router_socket: PathBuf,
    /// Running daemons' pids, the router's under `Node::Router`.
    pids: Mutex<BTreeMap<Node, u32>>,
    sessions_up_in: Duration,
}

impl Bgp {
    /// Starts BIRD on the router and the chosen daemon on every edge (none
    /// announcing anything), and waits until every session is established.
    pub fn start(lab: &Lab, setup: &BgpSetup) -> Result<Bgp> {
        let start = Instant::now();
        let edges: BTreeMap<EdgeNode, EdgeBgp> =
            EdgeNode::ALL.iter().map(|&e| (e, EdgeBgp::new(lab, e, setup.daemon(e)))).collect();
        let bgp = Bgp {
            router_socket: lab.run_dir().join("bird-router.ctl"),
            edges,
            pids: Mutex::new(BTreeMap::new()),
            sessions_up_in: Duration::ZERO,
        };
        spread_flows_over_paths(lab)?;
        bgp.start_router(lab)?;
        for edge in EdgeNode::ALL {
            let info = &bgp.edges[&edge];
            match info.daemon {
                Daemon::Bird => {
                    std::fs::write(&info.bird_include, bird_static_routes(&[]))?;
                    std::fs::write(&info.config, edge_bird_config(info))?;
                }
                Daemon::Gobgp => std::fs::write(&info.config, edge_gobgp_config(edge))?,
            }
            bgp.start_daemon(lab, edge)?;
        }
        bgp.wait_for_sessions(&EdgeNode::ALL, SESSIONS_TIMEOUT)?;
        Ok(Bgp { sessions_up_in: start.elapsed(), ..bgp })
    }

    /// How long `start` took, sessions up included.
    pub fn started_in(&self) -> Duration {
        self.sessions_up_in
    }

    pub fn edge(&self, edge: EdgeNode) -> &EdgeBgp {
        &self.edges[&edge]
    }

    /// The router's BIRD control socket.
    pub fn router_socket(&self) -> &Path {
        &self.router_socket
    }

    /// `birdc` on the router's BIRD.
    pub fn router_birdc(&self, args: &[&str]) -> Result<String> {
        birdc(&self.router_socket, args)
    }

    /// The router's BGP sessions.
    pub fn sessions(&self) -> Result<Vec<Session>> {
        let out = self.router_birdc(&["show", "protocols"])?;
        Ok(parse_protocols(&out))
    }

    /// The routes the router's BIRD holds for `vip`'s host route, chosen or
    /// not: a drained edge's route stays here, not best, until withdrawn.
    pub fn router_routes(&self, vip: IpAddr) -> Result<Vec<RouterRoute>> {
        match self.router_birdc(&["show", "route", &host_prefix(vip), "all"]) {
            Ok(out) => Ok(parse_routes(&out)),
            Err(e) if format!("{e:#}").contains("Network not found") => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Waits until both sessions (IPv4 and IPv6) of every edge in `edges`
    /// are established; returns how long that took.
    pub fn wait_for_sessions(&self, edges: &[EdgeNode], timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let sessions = self.sessions()?;
            let up = |e: EdgeNode| sessions.iter().filter(|s| s.edge == e && s.established()).count() == 2;
            if edges.iter().all(|&e| up(e)) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!("BGP sessions not established within {timeout:?}: {sessions:#?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs the daemon of `edge`: its sessions drop at once (the kernel
    /// closes its sockets), with no chance to withdraw anything.
    pub fn kill_daemon(&self, lab: &Lab, edge: EdgeNode) -> Result<()> {
        let pid = self.pids.lock().unwrap().remove(&Node::Edge(edge)).context("no daemon running")?;
        lab.kill(pid)
    }

    /// Starts the daemon of `edge` again with the same config (BIRD reads
    /// the include file as it is; GoBGP starts with an empty RIB) and waits
    /// until it answers. Sessions come up on their own: `wait_for_sessions`.
    pub fn restart_daemon(&self, lab: &Lab, edge: EdgeNode) -> Result<()> {
        if self.pids.lock().unwrap().contains_key(&Node::Edge(edge)) {
            bail!("the daemon of {edge} is running");
        }
        self.start_daemon(lab, edge)
    }

    fn start_router(&self, lab: &Lab) -> Result<()> {
        let config = lab.run_dir().join("bird-router.conf");
        let log = lab.run_dir().join("bird-router.log");
        std::fs::write(&config, router_bird_config(&log)).context("writing the router's BIRD config")?;
        let pid = spawn_bird(lab, Node::Router, &config, &self.router_socket, &log)?;
        self.pids.lock().unwrap().insert(Node::Router, pid);
        wait_until_answers(lab, pid, &log, "the router's BIRD", || {
            birdc(&self.router_socket, &["show", "status"]).is_ok()
        })
    }

    fn start_daemon(&self, lab: &Lab, edge: EdgeNode) -> Result<()> {
        let info = &self.edges[&edge];
        let pid = match info.daemon {
            Daemon::Bird => spawn_bird(lab, Node::Edge(edge), &info.config, &info.bird_socket, &info.log)?,
            Daemon::Gobgp => {
                let mut cmd = Command::new("gobgpd");
                cmd.arg("-f")
                    .arg(&info.config)
                    .args(["-t", "toml", "-p", "--pprof-disable", "--api-hosts", &info.gobgp_api])
                    .stdin(Stdio::null())
                    .stdout(append(&info.log)?)
                    .stderr(append(&info.log)?);
                lab.spawn(edge, cmd)?
            }
        };
        self.pids.lock().unwrap().insert(Node::Edge(edge), pid);
        wait_until_answers(lab, pid, &info.log, &format!("{}'s {}", edge, info.daemon.name()), || info.answers(lab))
    }
}

/// Flows to an ECMP route spread over its paths by ports too (L4 hash):
/// the lab's clients are only two addresses.
fn spread_flows_over_paths(lab: &Lab) -> Result<()> {
    lab.in_ns(Node::Router, || -> Result<()> {
        for family in ["ipv4", "ipv6"] {
            let path = format!("/proc/sys/net/{family}/fib_multipath_hash_policy");
            std::fs::write(&path, "1").with_context(|| format!("writing {path}"))?;
        }
        Ok(())
    })
    .join()
    .map_err(|_| anyhow!("setting the router's multipath hash panicked"))?
}

fn daemon_binary(daemon: Daemon) -> &'static str {
    match daemon {
        Daemon::Bird => "bird",
        Daemon::Gobgp => "gobgpd",
    }
}

fn append(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// BIRD in the foreground (so the lab owns the process), with its own
/// config, socket, pid file and log.
fn spawn_bird(lab: &Lab, node: Node, config: &Path, socket: &Path, log: &Path) -> Result<u32> {
    let mut cmd = Command::new("bird");
    cmd.arg("-f")
        .arg("-c")
        .arg(config)
        .arg("-s")
        .arg(socket)
        .arg("-P")
        .arg(config.with_extension("pid"))
        .stdin(Stdio::null())
        .stdout(append(log)?)
        .stderr(append(log)?);
    lab.spawn(node, cmd)
}

fn wait_until_answers(lab: &Lab, pid: u32, log: &Path, what: &str, answers: impl Fn() -> bool) -> Result<()> {
    let deadline = Instant::now() + DAEMON_READY_TIMEOUT;
    loop {
        if answers() {
            return Ok(());
        }
        let log_text = || std::fs::read_to_string(log).unwrap_or_default();
        if !lab.is_running(pid) {
            bail!("{what} exited:\n{}", log_text());
        }
        if Instant::now() > deadline {
            bail!("{what} did not answer within {DAEMON_READY_TIMEOUT:?}:\n{}", log_text());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `birdc -s SOCKET ARGS`; BIRD's error replies become errors.
fn birdc(socket: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("birdc")
        .arg("-s")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running birdc (install bird2: cargo xtask setup)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // birdc exits 1 on BIRD's error replies (a config that doesn't parse).
    if !out.status.success() {
        bail!(
            "birdc -s {} {}: {}{}",
            socket.display(),
            args.join(" "),
            text.trim(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(text)
}

/// Parses `birdc show protocols` into the router's BGP sessions.
fn parse_protocols(out: &str) -> Vec<Session> {
    out.lines()
        .filter_map(|line| {
            // Name Proto Table State Since Info...
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 5 || fields[1] != "BGP" {
                return None;
            }
            let (edge, v6) = session_of(fields[0])?;
            Some(Session {
                name: fields[0].to_string(),
                edge,
                v6,
                state: fields[3].to_string(),
                info: fields[5..].join(" "),
            })
        })
        .collect()
}

/// The router's session names: `edge_a_v4`, `edge_a_v6`, `edge_b_v4`, ...
fn session_name(edge: EdgeNode, v6: bool) -> String {
    format!("{}_{}", edge.name().replace('-', "_"), if v6 { "v6" } else { "v4" })
}

fn session_of(name: &str) -> Option<(EdgeNode, bool)> {
    EdgeNode::ALL.into_iter().flat_map(|e| [(e, false), (e, true)]).find(|&(e, v6)| session_name(e, v6) == name)
}

fn host_prefix(vip: IpAddr) -> String {
    match vip {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

fn family(vip: IpAddr) -> &'static str {
    if vip.is_ipv4() {
        "ipv4"
    } else {
        "ipv6"
    }
}

fn vip_ranges() -> (String, String) {
    let (v4, len4) = VIP_RANGE_V4;
    let (v6, len6) = VIP_RANGE_V6;
    (format!("{v4}/{len4}{{{len4},32}}"), format!("{v6}/{len6}{{{len6},128}}"))
}

/// The router: one eBGP session per edge and family, VIP routes only,
/// installed into the kernel with equal paths merged into one ECMP route.
fn router_bird_config(log: &Path) -> String {
    let (range4, range6) = vip_ranges();
    let mut conf = format!(
        r#"# The lab's router: learns VIP routes from the edges over eBGP.
router id {router_id};
log "{log}" all;

protocol device {{ }}

# Equal routes from several edges become one multipath kernel route.
protocol kernel kernel4 {{
  merge paths on;
  ipv4 {{ import none; export where net ~ [ {range4} ]; }};
}}
protocol kernel kernel6 {{
  merge paths on;
  ipv6 {{ import none; export where net ~ [ {range6} ]; }};
}}

# The origin is normalised (BIRD and GoBGP set different ones, which would
# keep their routes from merging); GRACEFUL_SHUTDOWN (RFC 8326) lowers the
# route's preference, as the RFC asks of a receiver.
filter vips4 {{
  if net !~ [ {range4} ] then reject;
  bgp_origin = ORIGIN_IGP;
  if (65535, 0) ~ bgp_community then bgp_local_pref = 0;
  accept;
}}
filter vips6 {{
  if net !~ [ {range6} ] then reject;
  bgp_origin = ORIGIN_IGP;
  if (65535, 0) ~ bgp_community then bgp_local_pref = 0;
  accept;
}}

template bgp edge {{
  local as {ROUTER_AS};
{timers}}}
"#,
        router_id = Node::Edge(EdgeNode::EdgeA).gateway_v4().expect("leaf"),
        log = log.display(),
        timers = bird_timers(),
    );
    for edge in EdgeNode::ALL {
        let node = Node::Edge(edge);
        for (v6, neighbor, channel, filter) in [
            (false, IpAddr::from(node.v4().expect("leaf")), "ipv4", "vips4"),
            (true, IpAddr::from(node.v6().expect("leaf")), "ipv6", "vips6"),
        ] {
            let _ = writeln!(
                conf,
                "protocol bgp {} from edge {{\n  neighbor {neighbor} as {EDGE_AS};\n  {channel} {{ import filter {filter}; export none; }};\n}}",
                session_name(edge, v6)
            );
        }
    }
    conf
}

/// Timers for both ends: sessions up in about a second, back in about a
/// second after an error (BIRD's default error wait idles for minutes).
fn bird_timers() -> String {
    format!(
        "  hold time {HOLD_TIME};\n  keepalive time {KEEPALIVE_TIME};\n  connect delay time 1;\n  connect retry time {CONNECT_RETRY};\n  error wait time 1, 5;\n"
    )
}

/// An edge's BIRD: whatever static routes the agent's include file holds,
/// within the VIP ranges, go to the router; nothing comes back.
fn edge_bird_config(info: &EdgeBgp) -> String {
    let (range4, range6) = vip_ranges();
    let node = Node::Edge(info.edge);
    format!(
        r#"# {edge}: announces the VIP routes of the agent's include file.
router id {router_id};
log "{log}" all;

protocol device {{ }}

# Written by the agent: `protocol static` blocks, one per family.
include "{include}";

template bgp uplink {{
  local as {EDGE_AS};
{timers}}}
protocol bgp router_v4 from uplink {{
  neighbor {gw4} as {ROUTER_AS};
  ipv4 {{ import none; export where source = RTS_STATIC && net ~ [ {range4} ]; }};
}}
protocol bgp router_v6 from uplink {{
  neighbor {gw6} as {ROUTER_AS};
  ipv6 {{ import none; export where source = RTS_STATIC && net ~ [ {range6} ]; }};
}}
"#,
        edge = info.edge,
        router_id = node.v4().expect("leaf"),
        log = info.log.display(),
        include = info.bird_include.display(),
        timers = bird_timers(),
        gw4 = node.gateway_v4().expect("leaf"),
        gw6 = node.gateway_v6().expect("leaf"),
    )
}

/// An edge's GoBGP: listens on 179 (sessions the router opens come back
/// quickly), the router as neighbour for each family.
fn edge_gobgp_config(edge: EdgeNode) -> String {
    let node = Node::Edge(edge);
    let mut conf =
        format!("[global.config]\n  as = {EDGE_AS}\n  router-id = \"{}\"\n  port = 179\n", node.v4().expect("leaf"));
    for (neighbor, family) in [
        (IpAddr::from(node.gateway_v4().expect("leaf")), "ipv4-unicast"),
        (IpAddr::from(node.gateway_v6().expect("leaf")), "ipv6-unicast"),
    ] {
        let _ = write!(
            conf,
            r#"
[[neighbors]]
  [neighbors.config]
    neighbor-address = "{neighbor}"
    peer-as = {ROUTER_AS}
  [neighbors.timers.config]
    connect-retry = {CONNECT_RETRY}
    hold-time = {HOLD_TIME}
    keepalive-interval = {KEEPALIVE_TIME}
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "{family}"
"#
        );
    }
    conf
}

/// The router's kernel next hops for `vip`'s host route (empty if none).
pub fn router_next_hops(lab: &Lab, vip: IpAddr) -> Result<BTreeSet<IpAddr>> {
    let family = if vip.is_ipv4() { "-4" } else { "-6" };
    let out = lab.exec(Node::Router, &["ip", family, "-j", "route", "show", &host_prefix(vip)])?;
    let routes: Vec<serde_json::Value> =
        serde_json::from_str(&out).with_context(|| format!("parsing `ip -j route show`: {out}"))?;
    let mut hops = BTreeSet::new();
    for route in &routes {
        // One path: "gateway" on the route; several: a "nexthops" list.
        let paths = match route.get("nexthops").and_then(|n| n.as_array()) {
            Some(list) => list.iter().collect(),
            None => vec![route],
        };
        for path in paths {
            if let Some(gateway) = path.get("gateway").and_then(|g| g.as_str()) {
                hops.insert(gateway.parse().with_context(|| format!("a gateway in {route}"))?);
            }
        }
    }
    Ok(hops)
}

/// The edges the router sends `vip` to (next hops that are edges).
pub fn router_edges_for(lab: &Lab, vip: IpAddr) -> Result<BTreeSet<EdgeNode>> {
    let hops = router_next_hops(lab, vip)?;
    Ok(EdgeNode::ALL.into_iter().filter(|&e| hops.contains(&edge_address(e, vip))).collect())
}

/// The edge's link address of `vip`'s family: its next hop at the router.
pub fn edge_address(edge: EdgeNode, vip: IpAddr) -> IpAddr {
    if vip.is_ipv4() {
        edge.v4().into()
    } else {
        edge.v6().into()
    }
}

/// Waits until the router sends `vip` to exactly `edges` (none: no route);
/// returns how long that took.
pub fn wait_for_edges(lab: &Lab, vip: IpAddr, edges: &[EdgeNode], timeout: Duration) -> Result<Duration> {
    let start = Instant::now();
    let wanted: BTreeSet<IpAddr> = edges.iter().map(|&e| edge_address(e, vip)).collect();
    loop {
        let hops = router_next_hops(lab, vip)?;
        if hops == wanted {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            bail!("the router's next hops for {vip} are {hops:?}, not {wanted:?}, after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Both lab VIPs.
pub fn lab_vips() -> [IpAddr; 2] {
    [VIP_V4.into(), VIP_V6.into()]
}

/// A change of the router's kernel routing table, as `ip monitor route`
/// printed it, stamped when it arrived.
#[derive(Clone, Debug)]
pub struct RouteEvent {
    pub at: Instant,
    /// The event's first line (`203.0.113.10 via ...`, `Deleted ...`).
    pub line: String,
}

impl RouteEvent {
    /// Whether the event is about `vip`'s host route.
    pub fn is_for(&self, vip: IpAddr) -> bool {
        let (bare, prefixed) = (vip.to_string(), host_prefix(vip));
        self.line.split_whitespace().any(|t| t == bare || t == prefixed)
    }
}

/// Timestamps every change of the router's kernel routing table, so a test
/// can measure "event -> router table changed". Runs `ip monitor route` in
/// the router's namespace; stops on drop.
pub struct RouteWatch {
    child: Child,
    events: Arc<Mutex<Vec<RouteEvent>>>,
    reader: Option<JoinHandle<()>>,
}

/// A route `RouteWatch::start` adds and deletes to know it is listening.
const MARKER_ROUTE: &str = "198.18.255.254";

impl RouteWatch {
    /// Starts watching; returns once the watcher provably sees changes.
    pub fn start(lab: &Lab) -> Result<RouteWatch> {
        let mut child = lab
            .command(Node::Router, "ip")
            .args(["monitor", "route"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting `ip monitor route` in the router")?;
        let stdout = child.stdout.take().expect("piped");
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&events);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let at = Instant::now();
                // Multipath routes continue on indented lines.
                if !line.starts_with(char::is_whitespace) {
                    sink.lock().unwrap().push(RouteEvent { at, line });
                }
            }
        });
        let watch = RouteWatch { child, events, reader: Some(reader) };
        // `ip` subscribes some time after it starts: flip a marker route
        // until the watcher reports it.
        let started = Instant::now();
        let deadline = started + Duration::from_secs(5);
        loop {
            lab.exec(Node::Router, &["ip", "route", "add", "blackhole", MARKER_ROUTE])?;
            lab.exec(Node::Router, &["ip", "route", "del", "blackhole", MARKER_ROUTE])?;
            let seen = watch.wait_for(started, Duration::from_millis(100), |e| e.line.contains(MARKER_ROUTE));
            if seen.is_ok() {
                return Ok(watch);
            }
            if Instant::now() > deadline {
                return seen.map(|_| watch).context("`ip monitor route` in the router reports no change");
            }
        }
    }

    /// Every change seen so far.
    pub fn events(&self) -> Vec<RouteEvent> {
        self.events.lock().unwrap().clone()
    }

    /// Waits for the first change of `vip`'s route at or after `since`;
    /// returns the time from `since` to that change.
    pub fn change_after(&self, since: Instant, vip: IpAddr, timeout: Duration) -> Result<Duration> {
        self.wait_for(since, timeout, |e| e.is_for(vip))
            .map(|e| e.at.duration_since(since))
            .with_context(|| format!("no change of the router's route to {vip} within {timeout:?}"))
    }

    fn wait_for(&self, since: Instant, timeout: Duration, matches: impl Fn(&RouteEvent) -> bool) -> Result<RouteEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            // The reader stamps events; polling only bounds the wait.
            if let Some(e) = self.events.lock().unwrap().iter().find(|e| e.at >= since && matches(e)) {
                return Ok(e.clone());
            }
            if Instant::now() > deadline {
                bail!("seen: {:#?}", self.events());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for RouteWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bird_include_has_one_static_protocol_per_family() {
        let text = bird_static_routes(&[VIP_V4.into(), VIP_V6.into()]);
        assert!(text.contains("protocol static gslb_vips4 {\n  ipv4;\n  route 203.0.113.10/32 blackhole;\n}"));
        assert!(text.contains("protocol static gslb_vips6 {\n  ipv6;\n  route 2001:db8:f::10/128 blackhole;\n}"));
        assert!(!bird_static_routes(&[]).contains("protocol"));
    }

    #[test]
    fn protocols_parse() {
        let out = "BIRD 2.0.12 ready.\nName       Proto      Table      State  Since         Info\n\
                   device1    Device     ---        up     05:26:04.000  \n\
                   edge_a_v4  BGP        ---        up     05:26:04.823  Established   \n\
                   edge_b_v6  BGP        ---        start  05:26:04.000  Active        Socket: Connection refused\n";
        let sessions = parse_protocols(out);
        assert_eq!(sessions.len(), 2);
        assert!(sessions[0].established() && sessions[0].edge == EdgeNode::EdgeA && !sessions[0].v6);
        assert_eq!(sessions[1].info, "Active Socket: Connection refused");
        assert!(!sessions[1].established() && sessions[1].v6);
    }

    #[test]
    fn routes_parse() {
        let out = "BIRD 2.0.12 ready.\nTable master4:\n\
                   203.0.113.10/32      unicast [edge_a_v4 05:26:09.412] * (100) [AS65100i]\n\
                   \tvia 10.2.1.2 on ea\n\tType: BGP univ\n\tBGP.origin: IGP\n\tBGP.as_path: 65100\n\
                   \tBGP.next_hop: 10.2.1.2\n\tBGP.local_pref: 100\n\
                   \x20                    unicast [edge_b_v4 05:26:18.491] (100) [AS65100i]\n\
                   \tvia 10.2.2.2 on eb\n\tBGP.as_path: 65100 65100 65100\n\tBGP.med: 100\n\
                   \tBGP.local_pref: 0\n\tBGP.community: (65535,0)\n";
        let routes = parse_routes(out);
        assert_eq!(routes.len(), 2, "{routes:?}");
        assert_eq!(routes[0].edge, EdgeNode::EdgeA);
        assert!(routes[0].best && routes[0].med.is_none());
        assert_eq!((routes[0].as_path.clone(), routes[0].local_pref), (vec![65100], Some(100)));
        assert_eq!(routes[1].edge, EdgeNode::EdgeB);
        assert!(!routes[1].best);
        assert_eq!((routes[1].as_path.len(), routes[1].med, routes[1].local_pref), (3, Some(100), Some(0)));
        assert_eq!(routes[1].communities, "(65535,0)");
    }

    #[test]
    fn agent_section_names_the_daemons_own_paths() {
        let edge = |daemon| EdgeBgp {
            edge: EdgeNode::EdgeA,
            daemon,
            bird_socket: "/run/x/bird-edge-a.ctl".into(),
            bird_include: "/run/x/edge-a-vips.conf".into(),
            gobgp_api: GOBGP_API.into(),
            config: "/run/x/c".into(),
            log: "/run/x/l".into(),
        };
        let setup = BgpSetup { drain: Drain::GracefulShutdown, ..BgpSetup::default() };
        let bird = edge(Daemon::Bird).agent_section(&setup);
        assert!(bird.starts_with("[bgp]\ndaemon = \"bird\"\nbird_socket = \"/run/x/bird-edge-a.ctl\"\n"), "{bird}");
        assert!(bird.contains("bird_include = \"/run/x/edge-a-vips.conf\"\n") && !bird.contains("gobgp_api"));
        assert!(bird.contains("drain = \"graceful-shutdown\"\n") && bird.contains("announce_after_ms = 300\n"));
        let gobgp = edge(Daemon::Gobgp).agent_section(&setup);
        assert!(gobgp.contains("daemon = \"gobgp\"\ngobgp_api = \"127.0.0.1:50051\"\n") && !gobgp.contains("bird_"));
    }

    #[test]
    fn vips_are_in_the_ranges() {
        let (v4, len4) = VIP_RANGE_V4;
        assert_eq!(u32::from(VIP_V4) >> (32 - len4), u32::from(v4) >> (32 - len4));
        let (v6, len6) = VIP_RANGE_V6;
        assert_eq!(u128::from(VIP_V6) >> (128 - len6), u128::from(v6) >> (128 - len6));
    }
}
