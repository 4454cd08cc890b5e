//! The lab with gslb deployed: `decap` and a server on every backend, an
//! agent on each edge, and the router sending the VIPs to `edge-a`.
//!
//! Both edges get the same config apart from their `[edge]` section, as
//! anycast edges would. Agents run the real `gslb` command line (through
//! the `gslb-lab gslb ...` pass-through, so the binary under test is always
//! the one cargo just built).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use gslb_userspace::reconcile::Changes;
use gslb_userspace::view::admin::{self, Request};
use gslb_userspace::view::status::Status;

use crate::bgp::{Bgp, BgpSetup, EdgeBgp};
use crate::etcd::{EtcdCluster, EtcdOptions, TlsFiles};
use crate::lab::{BackendNode, EdgeNode, Lab, Region, TCP_PORT, UDP_PORT, VIP_V4, VIP_V6};
use crate::server::{start_servers, Servers};

/// How long an agent may take to load, program and attach.
const AGENT_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Flow-table size for lab edges: ample for the tests, small to allocate.
const LAB_MAX_FLOWS: u32 = 65_536;

/// Pool and backend weights; a backend absent from `backends` is not in
/// the config at all.
#[derive(Clone, Debug, PartialEq)]
pub struct Weights {
    pub pools: BTreeMap<Region, u32>,
    pub backends: BTreeMap<BackendNode, u32>,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            pools: Region::ALL.iter().map(|&r| (r, 100)).collect(),
            backends: BackendNode::ALL.iter().map(|&b| (b, 100)).collect(),
        }
    }
}

impl Weights {
    /// The share of new flows each backend should get: pool weight x
    /// backend weight over the total.
    pub fn expected_shares(&self) -> BTreeMap<BackendNode, f64> {
        let effective: BTreeMap<BackendNode, f64> =
            self.backends.iter().map(|(&b, &w)| (b, (self.pools[&b.region()] * w) as f64)).collect();
        let total: f64 = effective.values().sum();
        effective.into_iter().map(|(b, w)| (b, w / total)).collect()
    }
}

/// Health checks in the lab: HTTP on each backend's own address, fast
/// enough that a test sees a failover within a second.
pub const LAB_MONITOR: &str = "{ protocol = \"http\", port = 8080, path = \"/health\", interval_ms = 200, timeout_ms = 150, consecutive_up = 2, consecutive_down = 3 }";

/// Everything a lab config can vary.
#[derive(Clone, Debug, Default)]
pub struct Setup {
    pub weights: Weights,
    /// Health-check every backend with `LAB_MONITOR`.
    pub monitor: bool,
    /// With `monitor`: this monitor instead of `LAB_MONITOR`.
    pub monitor_spec: Option<&'static str>,
    /// Every pool's `max_latency_ms`.
    pub max_latency_ms: Option<u32>,
    /// The `web` VIP's pools, if not every region.
    pub web_pools: Option<Vec<Region>>,
    /// Lines added to the `web` VIP's table (and `[[vip.steer]]` tables).
    pub web_extra: String,
    /// `edge.max_flows` of both edges, if not `LAB_MAX_FLOWS`.
    pub max_flows: Option<u32>,
    /// `edge.max_vips` and `edge.table_size` of both edges, if not the
    /// config's defaults (64 VIPs of 65,537 slots).
    pub max_vips: Option<u32>,
    pub table_size: Option<u32>,
    /// Real routing: BGP daemons on the router and the edges, instead of
    /// the static route to `edge-a` (see `bgp`).
    pub bgp: Option<BgpSetup>,
    /// Text appended to every edge's config (extra VIPs and pools).
    pub extra: String,
    /// Every pool's backends understand hop lists (`second_chance`): edges
    /// send mid-flow packets of flows they never saw with a hop list.
    pub second_chance: bool,
    /// A fleet: a three-member etcd cluster on the router, and edges whose
    /// files hold `[fleet]` instead of VIPs and pools (those are the fleet
    /// document, `fleet_document`, pushed with `gslb fleet push`).
    pub fleet: Option<FleetSetup>,
}

/// The lab's fleet.
#[derive(Clone, Debug, Default)]
pub struct FleetSetup {
    /// `fleet.group` per edge ("default" when absent).
    pub groups: BTreeMap<EdgeNode, String>,
    /// Lines added to every edge's `[fleet]` section.
    pub extra: String,
    /// etcd over TLS with client certificates (`tls_files`): the edges get
    /// https endpoints, `ca_file`, `cert_file` and `key_file`.
    pub tls: bool,
    /// The edges log in as etcd user `FLEET_USER` with `FLEET_PASSWORD`
    /// (from `password_file`); the test turns etcd's auth on.
    pub user: bool,
    /// More flags for every etcd member, e.g. `["--auth-token-ttl", "2"]`.
    pub etcd_flags: Vec<String>,
}

/// The etcd user and password of `FleetSetup::user`.
pub const FLEET_USER: &str = "gslb-edge";
pub const FLEET_PASSWORD: &str = "lab-secret";

fn password_file(lab: &Lab) -> PathBuf {
    lab.run_dir().join("etcd-password")
}

/// Where a lab's etcd TLS files are (`FleetSetup::tls`).
pub fn tls_files(lab: &Lab) -> TlsFiles {
    TlsFiles { dir: lab.run_dir().join("etcd-tls") }
}

impl From<&Weights> for Setup {
    fn from(weights: &Weights) -> Setup {
        Setup { weights: weights.clone(), ..Setup::default() }
    }
}

/// The config of one edge: with a fleet, its own sections only.
pub fn edge_config(lab: &Lab, edge: EdgeNode, setup: &Setup) -> String {
    let mut toml = edge_section(lab, edge, setup);
    match &setup.fleet {
        None => toml.push_str(&fleet_document(setup)),
        Some(fleet) => {
            let group = fleet.groups.get(&edge).map_or("default", String::as_str);
            let scheme = if fleet.tls { "https://" } else { "http://" };
            let endpoints: Vec<String> = (0..crate::etcd::MEMBERS)
                .map(|m| format!("\"{}\"", EtcdCluster::endpoint(m).replacen("http://", scheme, 1)))
                .collect();
            let _ = write!(
                toml,
                "[fleet]\nendpoints = [{}]\ngroup = \"{group}\"\nstate_file = \"{}\"\n{}\n",
                endpoints.join(", "),
                lab.run_dir().join(format!("{}-fleet.json", edge.name())).display(),
                fleet.extra
            );
            if fleet.user {
                let _ =
                    writeln!(toml, "user = \"{FLEET_USER}\"\npassword_file = \"{}\"\n", password_file(lab).display());
            }
            if fleet.tls {
                let tls = tls_files(lab);
                let _ = writeln!(
                    toml,
                    "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
                    tls.ca().display(),
                    tls.cert("client").display(),
                    tls.key("client").display()
                );
            }
        }
    }
    if let Some(bgp) = setup.bgp.as_ref().filter(|b| b.agent_config) {
        toml += &EdgeBgp::new(lab, edge, bgp.daemon(edge)).agent_section(bgp);
    }
    toml
}

/// An edge's `[edge]` section.
fn edge_section(lab: &Lab, edge: EdgeNode, setup: &Setup) -> String {
    let mut toml = String::new();
    let _ = write!(
        toml,
        r#"[edge]
name = "{edge}"
interfaces = ["eth0"]
xdp_mode = "{mode}"
tunnel_source_v4 = "{v4}"
tunnel_source_v6 = "{v6}"
admin_socket = "{socket}"
bpffs_pin = "{pin}"
max_flows = {max_flows}
"#,
        edge = edge.name(),
        mode = xdp_mode(edge),
        v4 = edge.v4(),
        v6 = edge.v6(),
        socket = admin_socket(lab, edge).display(),
        pin = lab.bpffs_dir(edge).display(),
        max_flows = setup.max_flows.unwrap_or(LAB_MAX_FLOWS),
    );
    if let Some(max_vips) = setup.max_vips {
        let _ = writeln!(toml, "max_vips = {max_vips}");
    }
    if let Some(table_size) = setup.table_size {
        let _ = writeln!(toml, "table_size = {table_size}");
    }
    // In the lab's run directory, not the host's /var/lib/gslb (with a
    // fleet, fleet.state_file names it).
    if setup.fleet.is_none() {
        let _ = writeln!(toml, "state_file = \"{}\"", state_file(lab, edge).display());
    }
    toml.push('\n');
    toml
}

/// The state file of `edge` without a fleet (`edge.state_file`).
pub fn state_file(lab: &Lab, edge: EdgeNode) -> PathBuf {
    lab.run_dir().join(format!("{}-state.json", edge.name()))
}

/// The VIPs and pools every edge has: the rest of an edge's file, or, with
/// a fleet, the document pushed to it.
pub fn fleet_document(setup: &Setup) -> String {
    let weights = &setup.weights;
    let mut toml = String::new();
    let v4_pools: Vec<String> = Region::ALL.iter().map(|r| format!("\"{}\"", r.name())).collect();
    let v6_pools: Vec<String> = Region::ALL.iter().map(|r| format!("\"{}-v6\"", r.name())).collect();
    let web_pools: Vec<String> = match &setup.web_pools {
        Some(regions) => regions.iter().map(|r| format!("\"{}\"", r.name())).collect(),
        None => v4_pools.clone(),
    };
    for (name, address, port, protocol, pools) in [
        ("web", VIP_V4.to_string(), TCP_PORT, "tcp", &web_pools),
        ("dns", VIP_V4.to_string(), UDP_PORT, "udp", &v4_pools),
        ("web6", VIP_V6.to_string(), TCP_PORT, "tcp", &v6_pools),
        ("dns6", VIP_V6.to_string(), UDP_PORT, "udp", &v6_pools),
    ] {
        let _ = write!(
            toml,
            "[[vip]]\nname = \"{name}\"\naddress = \"{address}\"\nport = {port}\nprotocol = \"{protocol}\"\npools = [{}]\n",
            pools.join(", ")
        );
        if name == "web" {
            toml.push_str(&setup.web_extra);
        }
        toml.push('\n');
    }
    for region in Region::ALL {
        for (suffix, v6) in [("", false), ("-v6", true)] {
            let backends: Vec<String> = region
                .backends()
                .iter()
                .filter_map(|b| {
                    let weight = weights.backends.get(b)?;
                    let address = if v6 { b.v6().to_string() } else { b.v4().to_string() };
                    Some(format!("{{ address = \"{address}\", weight = {weight} }}"))
                })
                .collect();
            if backends.is_empty() {
                continue;
            }
            let _ = write!(
                toml,
                "[[pool]]\nname = \"{}{suffix}\"\nweight = {}\nbackends = [ {} ]\n",
                region.name(),
                weights.pools[&region],
                backends.join(", ")
            );
            if setup.monitor {
                let _ = writeln!(toml, "monitor = {}", setup.monitor_spec.unwrap_or(LAB_MONITOR));
            }
            if let Some(max) = setup.max_latency_ms {
                let _ = writeln!(toml, "max_latency_ms = {max}");
            }
            if setup.second_chance {
                toml.push_str("second_chance = true\n");
            }
            toml.push('\n');
        }
    }
    toml.push_str(&setup.extra);
    toml
}

/// edge-a runs `steer` in the veth driver, edge-b in the generic path, so
/// the tests cover both attach modes.
pub fn xdp_mode(edge: EdgeNode) -> &'static str {
    match edge {
        EdgeNode::EdgeA => "native",
        EdgeNode::EdgeB => "generic",
    }
}

pub fn admin_socket(lab: &Lab, edge: EdgeNode) -> PathBuf {
    lab.run_dir().join(format!("{}.sock", edge.name()))
}

pub fn config_path(lab: &Lab, edge: EdgeNode) -> PathBuf {
    lab.run_dir().join(format!("{}.toml", edge.name()))
}

/// The lab with gslb deployed on it.
pub struct Deployment {
    /// Dropped after `servers`, so servers stop before namespaces vanish.
    pub servers: Servers,
    /// The fleet's etcd cluster (`Setup::fleet`); stopped before the lab.
    pub etcd: Option<EtcdCluster>,
    pub lab: Lab,
    /// The `gslb-lab` binary; `gslb-lab gslb ARGS` runs `gslb ARGS`.
    lab_binary: PathBuf,
    agents: Mutex<BTreeMap<EdgeNode, u32>>,
    /// `gslb decap` on each backend.
    decaps: Mutex<BTreeMap<BackendNode, u32>>,
    /// The BGP daemons, with `Setup::bgp`.
    pub bgp: Option<Bgp>,
}

impl Deployment {
    /// Builds the lab, starts decap and servers on every backend, both
    /// agents with `weights`, and routes the VIPs to `edge-a`. With
    /// `setup.bgp`, starts the BGP daemons (sessions up) before the agents
    /// instead, and routes nothing: routes come from BGP.
    pub fn start(lab_binary: &Path, setup: &Setup) -> Result<Deployment> {
        let lab = Lab::new()?;
        let servers = start_servers(&lab)?;
        let mut deployment = Deployment {
            servers,
            etcd: None,
            lab,
            lab_binary: lab_binary.to_path_buf(),
            agents: Mutex::new(BTreeMap::new()),
            decaps: Mutex::new(BTreeMap::new()),
            bgp: None,
        };
        for backend in BackendNode::ALL {
            deployment.start_decap(backend)?;
        }
        for edge in EdgeNode::ALL {
            deployment.enable_napi_towards(edge)?;
        }
        // Backends send hop-list packets on to each other with XDP_TX.
        for backend in BackendNode::ALL {
            deployment.enable_napi_towards(backend)?;
        }
        if let Some(bgp) = &setup.bgp {
            deployment.bgp = Some(Bgp::start(&deployment.lab, bgp)?);
        }
        if let Some(fleet) = &setup.fleet {
            let tls = match fleet.tls {
                true => Some(TlsFiles::generate(&tls_files(&deployment.lab).dir)?),
                false => None,
            };
            let options = EtcdOptions { tls, flags: fleet.etcd_flags.clone() };
            deployment.etcd = Some(EtcdCluster::start_with(&deployment.lab, options)?);
        }
        if setup.fleet.as_ref().is_some_and(|f| f.user) {
            std::fs::write(password_file(&deployment.lab), format!("{FLEET_PASSWORD}\n"))?;
        }
        for edge in EdgeNode::ALL {
            deployment.write_config(edge, setup)?;
            deployment.start_agent(edge)?;
        }
        if setup.bgp.is_none() {
            deployment.lab.route_vips_to(EdgeNode::EdgeA)?;
        }
        Ok(deployment)
    }

    fn gslb(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.lab_binary);
        cmd.arg("gslb").env("RUST_LOG", "info,gslb_userspace::agent=debug").env_remove("RUST_BACKTRACE");
        cmd
    }

    /// `gslb decap` on a backend, taking hop lists from both edges and
    /// handing them on to any other backend (whether edges send hop lists
    /// is their config's `second_chance`).
    pub fn start_decap(&self, backend: BackendNode) -> Result<()> {
        self.spawn_decap(backend, self.gslb())
    }

    /// As `start_decap`, run as `user` with only the capabilities `caps`
    /// (see `start_agent_as`).
    pub fn start_decap_as(&self, backend: BackendNode, user: &str, caps: &str) -> Result<()> {
        self.spawn_decap(backend, self.setpriv(user, caps))
    }

    /// The pid of `gslb decap` on a backend, while it runs.
    pub fn decap_pid(&self, backend: BackendNode) -> Option<u32> {
        self.decaps.lock().unwrap().get(&backend).copied()
    }

    fn spawn_decap(&self, backend: BackendNode, mut cmd: std::process::Command) -> Result<()> {
        let log = format!("decap-{}", backend.name());
        // The log is appended to by each decap the backend runs.
        let attached_before = self.log(&log).matches("decap attached").count();
        cmd.args(["decap", "--iface", "eth0", "--address"])
            .arg(backend.v4().to_string())
            .arg("--address")
            .arg(backend.v6().to_string());
        for edge in EdgeNode::ALL {
            cmd.arg("--edge").arg(edge.v4().to_string()).arg("--edge").arg(edge.v6().to_string());
        }
        for peer in BackendNode::ALL.into_iter().filter(|&b| b != backend) {
            cmd.arg("--peer").arg(peer.v4().to_string()).arg("--peer").arg(peer.v6().to_string());
        }
        cmd.stdout(Stdio::null()).stderr(self.log_file(&log)?);
        let pid = self.lab.spawn(backend, cmd)?;
        self.decaps.lock().unwrap().insert(backend, pid);
        // decap is attached once its log says so.
        self.wait_for_log_count(&log, "decap attached", attached_before + 1)
    }

    /// SIGKILLs `gslb decap` on a backend: its XDP link goes with the
    /// process, so tunnel packets reach the backend's kernel undecapsulated.
    pub fn stop_decap(&self, backend: BackendNode) -> Result<()> {
        let pid = self.decaps.lock().unwrap().remove(&backend).context("no decap running")?;
        self.lab.kill(pid)
    }

    /// A veth drops frames its peer sends with XDP_TX unless it runs NAPI,
    /// which an attached XDP program turns on (GRO would too, but see
    /// `lab`). `decap` for the router's own address on the link passes
    /// every packet untouched: nothing tunnels to the router.
    fn enable_napi_towards(&self, leaf: impl Into<crate::lab::Node>) -> Result<()> {
        let leaf = leaf.into();
        let router_iface = leaf.router_iface().context("not a leaf")?;
        let gateway_v4 = leaf.gateway_v4().context("not a leaf")?;
        let log = format!("napi-{router_iface}");
        // The log is appended to when the link is recreated: wait for one
        // more "attached" line than it has now.
        let attached_before = self.log(&log).matches("decap attached").count();
        let mut cmd = self.gslb();
        cmd.args(["decap", "--iface", router_iface, "--address"])
            .arg(gateway_v4.to_string())
            .stdout(Stdio::null())
            .stderr(self.log_file(&log)?);
        self.lab.spawn(crate::lab::Node::Router, cmd)?;
        self.wait_for_log_count(&log, "decap attached", attached_before + 1)
    }

    /// Creates the link between `edge` and the router again after
    /// `Lab::delete_edge_link` (see `Lab::create_edge_link`), and attaches
    /// the XDP program the router's end needs (it went with the old end).
    /// The edge's agent must notice on its own.
    pub fn create_edge_link(&self, edge: EdgeNode) -> Result<()> {
        self.lab.create_edge_link(edge)?;
        self.enable_napi_towards(edge)
    }

    pub fn write_config(&self, edge: EdgeNode, setup: &Setup) -> Result<()> {
        let path = config_path(&self.lab, edge);
        std::fs::write(&path, edge_config(&self.lab, edge, setup))
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Writes the same weights into both edges' configs.
    pub fn write_configs(&self, setup: &Setup) -> Result<()> {
        EdgeNode::ALL.iter().try_for_each(|&edge| self.write_config(edge, setup))
    }

    /// Starts the agent of `edge` and waits until it answers on its admin
    /// socket (it attaches before it listens).
    pub fn start_agent(&self, edge: EdgeNode) -> Result<()> {
        self.start_agent_with(edge, &[])
    }

    /// As `start_agent`, with more `gslb run` arguments.
    pub fn start_agent_with(&self, edge: EdgeNode, args: &[&str]) -> Result<()> {
        self.spawn_agent(edge, self.gslb(), args)
    }

    /// As `start_agent`, with another `gslb` binary (another build).
    pub fn start_agent_from(&self, edge: EdgeNode, gslb: &Path) -> Result<()> {
        let mut cmd = std::process::Command::new(gslb);
        cmd.env("RUST_LOG", "info").env_remove("RUST_BACKTRACE");
        self.spawn_agent(edge, cmd, &[])
    }

    /// As `start_agent`, run as `user` (and its groups) with only the
    /// capabilities `caps` (setpriv's syntax: `+bpf,+net_admin`).
    pub fn start_agent_as(&self, edge: EdgeNode, user: &str, caps: &str) -> Result<()> {
        self.spawn_agent(edge, self.setpriv(user, caps), &[])
    }

    /// `gslb` as `user` (and its groups) with only the capabilities `caps`.
    fn setpriv(&self, user: &str, caps: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new("setpriv");
        cmd.arg(format!("--reuid={user}"))
            .arg(format!("--regid={user}"))
            .arg("--init-groups")
            .arg(format!("--inh-caps=-all,{caps}"))
            .arg(format!("--ambient-caps=-all,{caps}"))
            .arg(format!("--bounding-set=-all,{caps}"))
            .arg("--")
            .arg(&self.lab_binary)
            .arg("gslb")
            .env("RUST_LOG", "info")
            .env_remove("RUST_BACKTRACE");
        cmd
    }

    fn spawn_agent(&self, edge: EdgeNode, mut cmd: std::process::Command, args: &[&str]) -> Result<()> {
        cmd.arg("run")
            .args(args)
            .arg("--config")
            .arg(config_path(&self.lab, edge))
            .stdout(Stdio::null())
            .stderr(self.log_file(&format!("agent-{}", edge.name()))?);
        let pid = self.lab.spawn(edge, cmd)?;
        self.agents.lock().unwrap().insert(edge, pid);
        let deadline = Instant::now() + AGENT_READY_TIMEOUT;
        loop {
            if admin::request(&admin_socket(&self.lab, edge), &Request::Status).is_ok_and(|r| r.ok) {
                return Ok(());
            }
            if !self.lab.is_running(pid) {
                bail!("the agent of {edge} exited:\n{}", self.log(&format!("agent-{}", edge.name())));
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent of {edge} did not answer within {AGENT_READY_TIMEOUT:?}:\n{}",
                    self.log(&format!("agent-{}", edge.name()))
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the agent of `edge` with SIGTERM (a clean exit) and waits,
    /// bounded, until it has exited.
    pub fn stop_agent(&self, edge: EdgeNode) -> Result<()> {
        let pid = self.agents.lock().unwrap().remove(&edge).context("no agent running")?;
        // SAFETY: kill(2) with a pid we spawned and still track.
        if unsafe { libc::kill(pid as i32, libc::SIGTERM) } != 0 {
            bail!("SIGTERM to {edge}'s agent: {}", std::io::Error::last_os_error());
        }
        let deadline = Instant::now() + AGENT_READY_TIMEOUT;
        while self.lab.is_running(pid) {
            if Instant::now() > deadline {
                bail!("{edge}'s agent did not exit within {AGENT_READY_TIMEOUT:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Drains the whole edge from BGP (`gslb drain --edge`).
    pub fn drain_edge(&self, edge: EdgeNode, duration: Option<Duration>) -> Result<()> {
        let request = Request::DrainEdge { duration_ms: duration.map(|d| d.as_millis() as u64) };
        match admin::request(&admin_socket(&self.lab, edge), &request)?.error {
            Some(error) => bail!("edge drain of {edge} refused: {error}"),
            None => Ok(()),
        }
    }

    pub fn undrain_edge(&self, edge: EdgeNode) -> Result<()> {
        match admin::request(&admin_socket(&self.lab, edge), &Request::UndrainEdge)?.error {
            Some(error) => bail!("edge undrain of {edge} refused: {error}"),
            None => Ok(()),
        }
    }

    /// The pid of the agent of `edge`, while it runs (`gslb-lab` runs the
    /// `gslb` command line in its own process: this is the agent).
    pub fn agent_pid(&self, edge: EdgeNode) -> Option<u32> {
        self.agents.lock().unwrap().get(&edge).copied()
    }

    /// SIGKILLs the agent of `edge`: no chance to clean up.
    pub fn kill_agent(&self, edge: EdgeNode) -> Result<()> {
        let pid = self.agents.lock().unwrap().remove(&edge).context("no agent running")?;
        self.lab.kill(pid)
    }

    /// Sends SIGHUP to the agent of `edge` and waits until it has reloaded
    /// (its reload count goes up); returns the outcome it recorded.
    pub fn signal_reload(&self, edge: EdgeNode) -> Result<gslb_userspace::view::status::LastReload> {
        let before = self.status(edge)?.reloads;
        let pid = *self.agents.lock().unwrap().get(&edge).context("no agent running")?;
        // SAFETY: kill(2) with a pid we spawned and still track.
        if unsafe { libc::kill(pid as i32, libc::SIGHUP) } != 0 {
            bail!("SIGHUP to {edge}'s agent: {}", std::io::Error::last_os_error());
        }
        let deadline = Instant::now() + AGENT_READY_TIMEOUT;
        loop {
            let status = self.status(edge)?;
            if status.reloads > before {
                return status.last_reload.context("a reload left no record");
            }
            if Instant::now() > deadline {
                bail!("{edge}'s agent did not reload within {AGENT_READY_TIMEOUT:?} of SIGHUP");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Writes `text` as the config of `edge`, as an operator might.
    pub fn write_raw_config(&self, edge: EdgeNode, text: &str) -> Result<()> {
        std::fs::write(config_path(&self.lab, edge), text).context("writing a config")
    }

    pub fn reload(&self, edge: EdgeNode) -> Result<Changes> {
        let response = admin::request(&admin_socket(&self.lab, edge), &Request::Reload)?;
        match response.error {
            Some(error) => bail!("reload of {edge} refused: {error}"),
            None => Ok(response.changes.unwrap_or_default()),
        }
    }

    /// Reloads both edges.
    pub fn reload_all(&self) -> Result<()> {
        EdgeNode::ALL.iter().try_for_each(|&edge| self.reload(edge).map(|_| ()))
    }

    /// Drains a backend (address) or pool (name) on one edge.
    pub fn drain(&self, edge: EdgeNode, target: &str, duration: Option<Duration>) -> Result<Vec<std::net::IpAddr>> {
        let request =
            Request::Drain { target: target.to_string(), duration_ms: duration.map(|d| d.as_millis() as u64) };
        let response = admin::request(&admin_socket(&self.lab, edge), &request)?;
        match response.error {
            Some(error) => bail!("drain on {edge} refused: {error}"),
            None => Ok(response.backends.unwrap_or_default()),
        }
    }

    pub fn undrain(&self, edge: EdgeNode, target: &str) -> Result<Vec<std::net::IpAddr>> {
        let response =
            admin::request(&admin_socket(&self.lab, edge), &Request::Undrain { target: target.to_string() })?;
        match response.error {
            Some(error) => bail!("undrain on {edge} refused: {error}"),
            None => Ok(response.backends.unwrap_or_default()),
        }
    }

    /// The agent's Prometheus metrics, fetched inside the edge's namespace
    /// (they listen on its loopback).
    pub fn metrics(&self, edge: EdgeNode) -> Result<String> {
        let fetch = self.lab.in_ns(edge, || -> Result<String> {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect("127.0.0.1:9477").context("connecting to metrics")?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
            let mut text = String::new();
            stream.read_to_string(&mut text)?;
            Ok(text)
        });
        fetch.join().map_err(|_| anyhow::anyhow!("metrics fetch panicked"))?
    }

    /// Runs `gslb fleet ARGS --config {edge-a's file}` to completion on the
    /// router (where etcd is): exit status, stdout and stderr.
    pub fn fleet(&self, args: &[&str]) -> Result<(bool, String, String)> {
        self.fleet_with(&config_path(&self.lab, EdgeNode::EdgeA), args)
    }

    /// As `fleet`, with the `[fleet]` of the edge file at `config`.
    pub fn fleet_with(&self, config: &Path, args: &[&str]) -> Result<(bool, String, String)> {
        let out = self
            .lab
            .command(crate::lab::Node::Router, &self.lab_binary)
            .args(["gslb", "fleet"])
            .args(args)
            .arg("--config")
            .arg(config)
            .env_remove("RUST_BACKTRACE")
            .output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        ))
    }

    /// Writes `text` to a file in the lab's run directory and pushes it
    /// (`gslb fleet push FILE ARGS`); fails with the command's output.
    pub fn push(&self, name: &str, text: &str, args: &[&str]) -> Result<String> {
        let path = self.lab.run_dir().join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        let path = path.to_string_lossy().into_owned();
        let mut all = vec!["push", path.as_str()];
        all.extend_from_slice(args);
        let (ok, stdout, stderr) = self.fleet(&all)?;
        if !ok {
            bail!("gslb fleet push {name} failed:\n{stdout}{stderr}");
        }
        Ok(stdout)
    }

    /// Runs `gslb ARGS` to completion on this host (not in a namespace):
    /// exit status, stdout and stderr.
    pub fn run_gslb(lab_binary: &Path, args: &[&str]) -> Result<(bool, String, String)> {
        let out =
            std::process::Command::new(lab_binary).arg("gslb").args(args).env_remove("RUST_BACKTRACE").output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        ))
    }

    pub fn status(&self, edge: EdgeNode) -> Result<Status> {
        let response = admin::request(&admin_socket(&self.lab, edge), &Request::Status)?;
        response.status.with_context(|| format!("status of {edge}: {}", response.error.unwrap_or_default()))
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.lab.run_dir().join(format!("{name}.log"))
    }

    fn log_file(&self, name: &str) -> Result<std::fs::File> {
        let path = self.log_path(name);
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))
    }

    /// The log of the agent of `edge` so far.
    pub fn agent_log(&self, edge: EdgeNode) -> String {
        self.log(&format!("agent-{}", edge.name()))
    }

    /// A process's log so far.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.log_path(name)).unwrap_or_default()
    }

    /// Waits until the log holds `needle` at least `count` times.
    fn wait_for_log_count(&self, name: &str, needle: &str, count: usize) -> Result<()> {
        let deadline = Instant::now() + AGENT_READY_TIMEOUT;
        while self.log(name).matches(needle).count() < count {
            if Instant::now() > deadline {
                bail!("{name} did not log {needle:?} within {AGENT_READY_TIMEOUT:?}:\n{}", self.log(name));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}
