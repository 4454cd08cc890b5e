//! A real three-member etcd cluster in the lab's router namespace, where
//! every leaf reaches it through its default route (agents on the edges,
//! tests anywhere).
//!
//! ```text
//!  edge-a ─┐            router: lo 10.250.0.1  etcd-1  (client :2379, peer :2380)
//!  edge-b ─┼── router ──        lo 10.250.0.2  etcd-2
//!   ...   ─┘                    lo 10.250.0.3  etcd-3
//! ```
//!
//! Members are numbered from 0 in this API (`endpoints()[member]`) and
//! named `etcd-1` to `etcd-3`. Their data directories and logs are in a
//! fresh directory under the lab's run directory; the logs' tails go into
//! every error (and to stderr when a test panics with the cluster alive).
//!
//! The members are this value's children, not the lab's: `kill` and
//! `restart` need no lab, and a deployment can own a cluster next to its
//! lab. `Drop` kills them and removes the data directories; the lab's own
//! drop kills whatever still runs in its namespaces too, and the next lab
//! of a later run removes what a killed run left.
//!
//! Timers are short so that elections take about a second (see
//! `HEARTBEAT_MS`). Data sits on tmpfs (/run), so fsyncs are cheap.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

use crate::lab::{enter_netns_before_exec, kill_and_reap, Lab, Node};

/// Members in the cluster.
pub const MEMBERS: usize = 3;
pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;

/// Raft timers, in milliseconds. A follower campaigns after 1 to 2
/// election timeouts without a heartbeat, so a dead leader is replaced in
/// about 1.5 s. Ten heartbeats per timeout keep a loaded two-core machine
/// (parallel tests) from electing without cause.
const HEARTBEAT_MS: u32 = 100;
const ELECTION_MS: u32 = 1000;

/// How long a new member may take to serve its peers.
const PEER_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `wait_healthy` waits: a first election, or a restarted cluster
/// finding its leader again.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `wait_leader` waits: a few election timeouts.
const LEADER_TIMEOUT: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Lines of each member's log in error messages.
const LOG_TAIL_LINES: usize = 12;

/// Member `m` runs as this uid plus `m` (and the same gid), so that
/// nftables can tell its connections from its peers' (`partition`): on the
/// router's `lo` a connection's source address is its destination's.
const MEMBER_UID_BASE: u32 = 64_520;

/// Distinguishes clusters of one process (tokens and directories).
static NEXT_CLUSTER: AtomicU64 = AtomicU64::new(0);

/// A running cluster, started by `EtcdCluster::start`.
pub struct EtcdCluster {
    router_netns: PathBuf,
    /// The cluster's scratch directory under the lab's run directory.
    dir: PathBuf,
    token: String,
    /// Each member's process while it runs (killed members: None).
    members: Mutex<[Option<Child>; MEMBERS]>,
    started_in: Duration,
    options: EtcdOptions,
}

/// How the members run (`EtcdCluster::start_with`); the default is what
/// `start` runs: plain http.
#[derive(Clone, Debug, Default)]
pub struct EtcdOptions {
    /// Client URLs over TLS that ask for client certificates signed by the
    /// files' CA (peers stay on http).
    pub tls: Option<TlsFiles>,
    /// More flags for every member, e.g. `["--auth-token-ttl", "2"]`.
    pub flags: Vec<String>,
}

/// A test CA, the members' server certificate (the three member addresses
/// as IP SANs) and a client certificate, as PEM files in one directory.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub dir: PathBuf,
}

impl TlsFiles {
    /// Generates a fresh CA and certificates into `dir`.
    pub fn generate(dir: &Path) -> Result<TlsFiles> {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "gslb lab etcd CA");
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
        let sans: Vec<String> = (0..MEMBERS).map(|m| address(m).to_string()).collect();
        let files = TlsFiles { dir: dir.to_path_buf() };
        for (name, sans, common_name) in [("server", sans, "etcd"), ("client", Vec::new(), "gslb-edge")] {
            let mut params = CertificateParams::new(sans)?;
            params.distinguished_name.push(DnType::CommonName, common_name);
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, &ca)?;
            std::fs::write(files.cert(name), cert.pem())?;
            std::fs::write(files.key(name), key.serialize_pem())?;
        }
        std::fs::write(files.ca(), ca.pem())?;
        // The members run as their own uids.
        for entry in std::fs::read_dir(dir)? {
            std::fs::set_permissions(entry?.path(), std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        }
        Ok(files)
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// "server" or "client".
    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }

    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-key.pem"))
    }
}

impl EtcdCluster {
    /// Adds the members' addresses to the router's `lo`, starts the three
    /// members one after the other (each once the previous one serves its
    /// peers: a new member asks the others for the cluster and would wait
    /// a second on each peer that listens but does not answer yet), and
    /// waits until every member is healthy.
    pub fn start(lab: &Lab) -> Result<EtcdCluster> {
        EtcdCluster::start_with(lab, EtcdOptions::default())
    }

    /// As `start`, with TLS or more flags.
    pub fn start_with(lab: &Lab, options: EtcdOptions) -> Result<EtcdCluster> {
        let start = Instant::now();
        let seq = NEXT_CLUSTER.fetch_add(1, Ordering::Relaxed);
        let dir = lab.run_dir().join(format!("etcd-{seq}"));
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // `add`, not `replace`: a cluster already running in this lab would
        // answer every readiness check for the new one.
        let script: String = (0..MEMBERS).map(|m| format!("addr add {}/32 dev lo\n", address(m))).collect();
        let mut ip = lab.command(Node::Router, "ip");
        ip.args(["-batch", "-"]);
        run_with_stdin(ip, &script)
            .context("adding the etcd addresses to the router's lo (is another EtcdCluster running in this lab?)")?;

        let mut cluster = EtcdCluster {
            router_netns: lab.netns_path(Node::Router),
            dir,
            token: format!("gslb-{}-{seq}", lab.id()),
            members: Mutex::new([None, None, None]),
            started_in: Duration::ZERO,
            options,
        };
        // From here on, an error drops `cluster`, which kills the members
        // and removes the addresses.
        for member in 0..MEMBERS {
            cluster.spawn(member, "new")?;
            cluster.wait_serving_peers(lab, member)?;
        }
        cluster.wait_healthy().context("a new etcd cluster")?;
        cluster.started_in = start.elapsed();
        Ok(cluster)
    }

    /// How long `start` took, until every member was healthy.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// `etcd-1` for member 0.
    pub fn name(member: usize) -> String {
        format!("etcd-{}", member + 1)
    }

    /// The member's address on the router's `lo` (10.250.0.{member + 1}).
    pub fn address(member: usize) -> Ipv4Addr {
        address(member)
    }

    /// `http://10.250.0.{member + 1}:2379`.
    pub fn endpoint(member: usize) -> String {
        format!("http://{}:{CLIENT_PORT}", address(member))
    }

    /// Every member's client URL, running or not, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        (0..MEMBERS).map(|m| self.url(m)).collect()
    }

    /// Member `member`'s client URL: `endpoint`, or https with TLS.
    pub fn url(&self, member: usize) -> String {
        match self.options.tls {
            Some(_) => EtcdCluster::endpoint(member).replacen("http://", "https://", 1),
            None => EtcdCluster::endpoint(member),
        }
    }

    /// The member's log (etcd's stderr, one JSON object a line).
    pub fn log(&self, member: usize) -> PathBuf {
        self.dir.join(format!("{}.log", EtcdCluster::name(member)))
    }

    pub fn data_dir(&self, member: usize) -> PathBuf {
        self.dir.join(format!("{}.data", EtcdCluster::name(member)))
    }

    /// Members started and not killed (whether or not they still run).
    pub fn running(&self) -> Vec<usize> {
        let members = self.members.lock().unwrap();
        (0..MEMBERS).filter(|&m| members[m].is_some()).collect()
    }

    /// The member every running member names as its leader, when they
    /// agree on one and it is among them; an error otherwise (during an
    /// election, or while a member still names a dead leader).
    pub fn leader(&self) -> Result<usize> {
        let running = self.running();
        if running.is_empty() {
            bail!("no etcd member is running");
        }
        // etcdctl exits 1 when a member does not answer, and still prints
        // the others' status.
        let out = self.etcdctl(&running, Timeouts::POLL, &["endpoint", "status", "-w", "json"])?;
        let statuses: Vec<EndpointStatus> = serde_json::from_str(&out.stdout)
            .with_context(|| format!("parsing `etcdctl endpoint status -w json`: {out}"))?;
        let mut ids = Vec::new();
        let mut leaders = Vec::new();
        for s in &statuses {
            let member = member_of(&s.endpoint)?;
            ids.push((member, s.status.header.member_id));
            leaders.push(s.status.leader);
        }
        if ids.len() != running.len() {
            bail!("not every running member answered: {out}");
        }
        let leader = leaders[0];
        if leader == 0 || leaders.iter().any(|&l| l != leader) {
            bail!("the members do not agree on a leader: {leaders:x?} (members' ids: {ids:x?})");
        }
        ids.iter()
            .find(|(_, id)| *id == leader)
            .map(|(m, _)| *m)
            .ok_or_else(|| anyhow!("the leader {leader:x} is not a running member (ids: {ids:x?})"))
    }

    /// Polls `leader` until it answers; the error carries the last answer
    /// and the members' logs.
    pub fn wait_leader(&self) -> Result<usize> {
        let deadline = Instant::now() + LEADER_TIMEOUT;
        loop {
            let error = match self.leader() {
                Ok(leader) => return Ok(leader),
                Err(e) => e,
            };
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!("no etcd leader within {LEADER_TIMEOUT:?}: {error:#}\n{}", self.log_tails());
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Polls `etcdctl endpoint health` (a quorum read on each member) until
    /// every running member passes; returns how long that took.
    pub fn wait_healthy(&self) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let running = self.running();
            if running.is_empty() {
                bail!("no etcd member is running");
            }
            let health = self.health(&running);
            match &health {
                Ok(h) if h.len() == running.len() && h.iter().all(|h| h.health) => return Ok(start.elapsed()),
                _ => {}
            }
            self.check_alive()?;
            if start.elapsed() > HEALTHY_TIMEOUT {
                let last = match health {
                    Ok(h) => format!("{h:?}"),
                    Err(e) => format!("{e:#}"),
                };
                bail!("etcd members {running:?} not healthy within {HEALTHY_TIMEOUT:?}: {last}\n{}", self.log_tails());
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// SIGKILLs a running member.
    pub fn kill(&self, member: usize) -> Result<()> {
        let child = self.members.lock().unwrap()[checked(member)?].take();
        let child = child.ok_or_else(|| anyhow!("{} is not running", EtcdCluster::name(member)))?;
        kill_and_reap(child);
        Ok(())
    }

    /// SIGKILLs every running member.
    pub fn kill_all(&self) {
        let children: Vec<Child> = self.members.lock().unwrap().iter_mut().filter_map(Option::take).collect();
        for child in children {
            kill_and_reap(child);
        }
    }

    /// Starts a killed member again on its data directory. Returns once the
    /// process runs; `wait_healthy` waits for it to rejoin (a member alone
    /// is never healthy: it needs a quorum).
    pub fn restart(&self, member: usize) -> Result<()> {
        self.spawn(member, "existing")
    }

    /// `etcdctl ARGS` in the router's namespace against the running members
    /// (ETCDCTL_API=3); returns stdout, the error carries stderr.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        self.ctl_members(&self.running(), args)
    }

    /// `etcdctl ARGS` against one member only (`get --consistency=s` reads
    /// its own copy).
    pub fn ctl_on(&self, member: usize, args: &[&str]) -> Result<String> {
        self.ctl_members(&[checked(member)?], args)
    }

    fn ctl_members(&self, members: &[usize], args: &[&str]) -> Result<String> {
        if members.is_empty() {
            bail!("etcdctl {args:?}: no etcd member is running");
        }
        let out = self.etcdctl(members, Timeouts::CTL, args)?;
        if !out.success {
            bail!("etcdctl {args:?} against members {members:?} failed: {out}");
        }
        Ok(out.stdout)
    }

    /// Runs etcdctl against `members`; failing is no error here.
    fn etcdctl(&self, members: &[usize], timeouts: Timeouts, args: &[&str]) -> Result<CtlOutput> {
        let endpoints: Vec<String> = members.iter().map(|&m| self.url(m)).collect();
        let mut cmd = self.router_command("etcdctl");
        if let Some(tls) = &self.options.tls {
            cmd.arg("--cacert").arg(tls.ca()).arg("--cert").arg(tls.cert("client")).arg("--key").arg(tls.key("client"));
        }
        cmd.env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(endpoints.join(","))
            .args(["--dial-timeout", timeouts.dial, "--command-timeout", timeouts.command])
            .args(args)
            .stdin(Stdio::null());
        let out = cmd.output().context("running etcdctl in the router's namespace (cargo xtask setup)")?;
        Ok(CtlOutput {
            success: out.status.success(),
            status: out.status.to_string(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }

    /// `etcdctl endpoint health` of `members`, one entry per answer.
    fn health(&self, members: &[usize]) -> Result<Vec<EndpointHealth>> {
        let out = self.etcdctl(members, Timeouts::POLL, &["endpoint", "health", "-w", "json"])?;
        serde_json::from_str(&out.stdout).with_context(|| format!("parsing `etcdctl endpoint health -w json`: {out}"))
    }

    /// A command whose child runs in the router's namespace, without the
    /// caller's ETCD* variables (etcd reads its flags from ETCD_*,
    /// etcdctl from ETCDCTL_*).
    fn router_command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD") {
                cmd.env_remove(key);
            }
        }
        enter_netns_before_exec(&mut cmd, &self.router_netns);
        cmd
    }

    /// Starts `member` with `--initial-cluster-state state`; its output is
    /// appended to its log after a line saying so.
    fn spawn(&self, member: usize, state: &str) -> Result<()> {
        let name = EtcdCluster::name(checked(member)?);
        let mut members = self.members.lock().unwrap();
        if members[member].is_some() {
            bail!("{name} is running");
        }
        let log_path = self.log(member);
        let mut log = append(&log_path)?;
        writeln!(log, "=== gslb: starting {name} (--initial-cluster-state {state})")?;
        let initial_cluster: Vec<String> =
            (0..MEMBERS).map(|m| format!("{}=http://{}:{PEER_PORT}", EtcdCluster::name(m), address(m))).collect();
        let (client_url, peer_url) = (self.url(member), format!("http://{}:{PEER_PORT}", address(member)));
        let data_dir = self.data_dir(member);
        std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
        std::fs::set_permissions(&data_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let uid = MEMBER_UID_BASE + member as u32;
        std::os::unix::fs::chown(&data_dir, Some(uid), Some(uid))
            .with_context(|| format!("handing {} to uid {uid}", data_dir.display()))?;
        // setpriv (util-linux) drops to the member's uid after the namespace
        // is entered (that needs root), then runs etcd.
        let mut cmd = self.router_command("setpriv");
        cmd.args(["--reuid", &uid.to_string(), "--regid", &uid.to_string(), "--clear-groups", "etcd"]);
        cmd.arg("--name")
            .arg(&name)
            .arg("--data-dir")
            .arg(self.data_dir(member))
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &initial_cluster.join(",")])
            .args(["--initial-cluster-state", state, "--initial-cluster-token", &self.token])
            .args(self.options.tls.iter().flat_map(|tls| {
                [
                    "--cert-file".into(),
                    tls.cert("server").display().to_string(),
                    "--key-file".into(),
                    tls.key("server").display().to_string(),
                    "--trusted-ca-file".into(),
                    tls.ca().display().to_string(),
                    "--client-cert-auth".into(),
                ]
            }))
            .args(["--heartbeat-interval", &HEARTBEAT_MS.to_string()])
            .args(["--election-timeout", &ELECTION_MS.to_string()])
            // A member that comes back cut off cannot depose a leader.
            .arg("--pre-vote")
            // 3.4's default logger (capnslog) is deprecated and says so.
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .args(&self.options.flags)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd.spawn().with_context(|| format!("spawning {name} (etcd; cargo xtask setup installs it)"))?;
        members[member] = Some(child);
        Ok(())
    }

    /// Waits until `member` answers HTTP on its peer port (GET /members,
    /// which the peer handler serves before any election).
    fn wait_serving_peers(&self, lab: &Lab, member: usize) -> Result<()> {
        let peer = SocketAddr::from((address(member), PEER_PORT));
        let deadline = Instant::now() + PEER_READY_TIMEOUT;
        loop {
            let answers = lab.in_ns(Node::Router, move || peer_answers(peer)).join().unwrap_or(false);
            if answers {
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "{} did not serve its peers within {PEER_READY_TIMEOUT:?}:\n{}",
                    EtcdCluster::name(member),
                    self.log_tail(member)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// An error, with its log, if a member that should run has exited.
    fn check_alive(&self) -> Result<()> {
        let mut members = self.members.lock().unwrap();
        for (member, child) in members.iter_mut().enumerate() {
            if let Some(status) = child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                *child = None;
                bail!("{} exited ({status}):\n{}", EtcdCluster::name(member), self.log_tail(member));
            }
        }
        Ok(())
    }

    /// The last lines of every member's log.
    pub fn log_tails(&self) -> String {
        (0..MEMBERS).map(|m| self.log_tail(m)).collect::<Vec<_>>().join("\n")
    }

    fn log_tail(&self, member: usize) -> String {
        let path = self.log(member);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail: Vec<String> =
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..]
                .iter()
                .map(|l| {
                    if l.len() > 400 {
                        format!("{}...", l.chars().take(400).collect::<String>())
                    } else {
                        l.to_string()
                    }
                })
                .collect();
        format!("--- {} (last {} lines):\n{}", path.display(), tail.len(), tail.join("\n"))
    }
}

impl EtcdCluster {
    /// Cuts `member` off from its peers (nftables on the router: nothing to
    /// its peer port, nothing from its process to theirs); its clients still
    /// reach it. `heal` undoes it.
    pub fn partition(&self, lab: &Lab, member: usize) -> Result<()> {
        let uid = MEMBER_UID_BASE + checked(member)? as u32;
        let script = format!(
            "table inet etcd_partition_{member} {{\n chain out {{\n  type filter hook output priority 0;\n  \
             ip daddr {} tcp dport {PEER_PORT} drop\n  meta skuid {uid} tcp dport {PEER_PORT} drop\n }}\n}}\n",
            address(member)
        );
        let mut nft = lab.command(Node::Router, "nft");
        nft.args(["-f", "-"]);
        run_with_stdin(nft, &script).context("partitioning an etcd member with nftables")
    }

    pub fn heal(&self, lab: &Lab, member: usize) -> Result<()> {
        lab.exec(Node::Router, &["nft", "delete", "table", "inet", &format!("etcd_partition_{member}")])?;
        Ok(())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        let members = self.members.get_mut().unwrap_or_else(|e| e.into_inner());
        for child in members.iter_mut().filter_map(Option::take) {
            kill_and_reap(child);
        }
        if std::thread::panicking() {
            eprintln!("etcd cluster {} at the panic:\n{}", self.token, self.log_tails());
        }
        for member in 0..MEMBERS {
            let dir = self.data_dir(member);
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    eprintln!("etcd cluster {}: removing {}: {e}", self.token, dir.display());
                }
            }
        }
        // So that another cluster can start in the lab. Fails quietly when
        // the lab (and its router namespace) went first.
        if self.router_netns.exists() {
            let script: String = (0..MEMBERS).map(|m| format!("addr del {}/32 dev lo\n", address(m))).collect();
            let mut ip = self.router_command("ip");
            ip.args(["-force", "-batch", "-"]);
            if let Err(e) = run_with_stdin(ip, &script) {
                eprintln!("etcd cluster {}: removing its addresses: {e:#}", self.token);
            }
        }
    }
}

/// 10.250.0.{member + 1}.
fn address(member: usize) -> Ipv4Addr {
    assert!(member < MEMBERS, "etcd member {member} (members are 0 to {})", MEMBERS - 1);
    Ipv4Addr::new(10, 250, 0, member as u8 + 1)
}

fn checked(member: usize) -> Result<usize> {
    if member >= MEMBERS {
        bail!("no etcd member {member} (members are 0 to {})", MEMBERS - 1);
    }
    Ok(member)
}

/// The member whose client URL (http or https) `endpoint` is.
fn member_of(endpoint: &str) -> Result<usize> {
    let host_port = endpoint.split_once("://").map_or(endpoint, |(_, rest)| rest);
    (0..MEMBERS)
        .find(|&m| EtcdCluster::endpoint(m).ends_with(&format!("//{host_port}")))
        .ok_or_else(|| anyhow!("unknown endpoint {endpoint}"))
}

/// Whether an HTTP GET of /members on `peer` gets a 200 within a short
/// time. Runs on a thread in the router's namespace.
fn peer_answers(peer: SocketAddr) -> bool {
    let get = || -> std::io::Result<bool> {
        let mut stream = TcpStream::connect_timeout(&peer, Duration::from_millis(200))?;
        stream.set_read_timeout(Some(Duration::from_millis(200)))?;
        stream.write_all(format!("GET /members HTTP/1.0\r\nHost: {peer}\r\n\r\n").as_bytes())?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head)?;
        Ok(head.starts_with(b"HTTP/1.") && head.ends_with(b"200"))
    };
    get().unwrap_or(false)
}

fn append(path: &Path) -> Result<File> {
    OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("opening {}", path.display()))
}

/// Runs `cmd` with `input` on stdin; the error carries stderr.
fn run_with_stdin(mut cmd: Command, input: &str) -> Result<()> {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
    child.stdin.take().expect("piped").write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{:?} failed ({}): {}", cmd.get_program(), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// One element of `etcdctl endpoint status -w json` (etcd 3.4): the outer
/// keys are capitalised Go field names, the status is the protobuf
/// message with its JSON tags: `header.member_id` in snake case next to
/// `raftTerm` in camel case, ids as decimal integers (not the hex of the
/// table output), and zero fields left out (`leader` while there is none).
#[derive(Debug, Deserialize)]
struct EndpointStatus {
    #[serde(rename = "Endpoint")]
    endpoint: String,
    #[serde(rename = "Status")]
    status: Status,
}

#[derive(Debug, Deserialize)]
struct Status {
    header: Header,
    #[serde(default)]
    leader: u64,
}

#[derive(Debug, Deserialize)]
struct Header {
    member_id: u64,
}

/// etcdctl's own bounds (`--dial-timeout`, `--command-timeout`).
#[derive(Clone, Copy)]
struct Timeouts {
    dial: &'static str,
    command: &'static str,
}

impl Timeouts {
    /// Polls give up quickly and try again.
    const POLL: Timeouts = Timeouts { dial: "1s", command: "1s" };
    /// `ctl` has time for a request that waits for an election.
    const CTL: Timeouts = Timeouts { dial: "2s", command: "5s" };
}

struct CtlOutput {
    success: bool,
    status: String,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for CtlOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}; stdout: {:?}; stderr: {:?}", self.status, self.stdout.trim(), self.stderr)
    }
}

/// One element of `etcdctl endpoint health -w json` (lower case keys).
/// The endpoint and error are read in error messages, through Debug.
#[allow(dead_code)]
#[derive(Debug, Deserialize)]
struct EndpointHealth {
    endpoint: String,
    health: bool,
    #[serde(default)]
    error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_etcd_3_4_status() {
        // Captured from etcdctl 3.4.23 with one of three members down.
        let json = r#"[{"Endpoint":"http://10.250.0.1:2379","Status":{"header":{"cluster_id":16407414168828265301,"member_id":644137771615037165,"revision":1,"raft_term":2},"version":"3.4.23","dbSize":20480,"leader":11831294557998627445,"raftIndex":8,"raftTerm":2,"raftAppliedIndex":8,"dbSizeInUse":16384}},{"Endpoint":"http://10.250.0.3:2379","Status":{"header":{"cluster_id":16407414168828265301,"member_id":11831294557998627445,"revision":1,"raft_term":2},"version":"3.4.23","dbSize":20480,"raftIndex":8,"raftTerm":2,"raftAppliedIndex":8,"dbSizeInUse":16384}}]"#;
        let statuses: Vec<EndpointStatus> = serde_json::from_str(json).unwrap();
        assert_eq!(member_of(&statuses[0].endpoint).unwrap(), 0);
        assert_eq!(statuses[0].status.leader, 0xa431_33b7_3285_3a75);
        assert_eq!(statuses[1].status.header.member_id, 0xa431_33b7_3285_3a75);
        assert_eq!(statuses[1].status.leader, 0, "a missing leader is none");
        assert_eq!(member_of(&statuses[1].endpoint).unwrap(), 2);
    }

    #[test]
    fn parses_etcd_3_4_health() {
        let json = r#"[{"endpoint":"http://10.250.0.2:2379","health":true,"took":"1.6ms"},{"endpoint":"http://10.250.0.3:2379","health":false,"took":"5.0s","error":"context deadline exceeded"}]"#;
        let health: Vec<EndpointHealth> = serde_json::from_str(json).unwrap();
        assert_eq!(health.iter().map(|h| h.health).collect::<Vec<_>>(), [true, false]);
    }

    #[test]
    fn member_addresses() {
        assert_eq!(EtcdCluster::endpoint(0), "http://10.250.0.1:2379");
        assert_eq!(EtcdCluster::name(2), "etcd-3");
        assert!(checked(3).is_err());
        assert!(member_of("http://10.250.0.4:2379").is_err());
    }
}
