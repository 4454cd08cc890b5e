//! A real three-member etcd cluster for the fleet tests, in a lab's router
//! namespace: members listen on addresses of the router's `lo`, which the
//! edges reach through their default route. Members can be killed and
//! restarted (same data directory) to test elections and etcd being away;
//! every member is killed and its data removed on drop, also when a test
//! panics.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::lab::{Lab, Node};

/// Members of the cluster.
pub const MEMBERS: usize = 3;
const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;
/// How long a start, an election or a recovery may take.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Member `i`'s address on the router's `lo`.
fn address(i: usize) -> String {
    format!("10.250.0.{}", i + 1)
}

/// The members' client URLs (the same in every lab: each lab has its own
/// router namespace).
pub fn client_urls() -> Vec<String> {
    (0..MEMBERS).map(|i| format!("http://{}:{CLIENT_PORT}", address(i))).collect()
}

pub struct EtcdCluster {
    netns: String,
    dir: PathBuf,
    token: String,
    /// Running members (None: killed).
    members: Mutex<Vec<Option<Child>>>,
}

impl EtcdCluster {
    /// Starts every member and waits until the cluster has a leader and
    /// every member answers.
    pub fn start(lab: &Lab) -> Result<EtcdCluster> {
        let netns = lab.netns(Node::Router);
        for i in 0..MEMBERS {
            lab.exec(Node::Router, &["ip", "addr", "replace", &format!("{}/32", address(i)), "dev", "lo"])?;
        }
        let dir = lab.run_dir().join("etcd");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let cluster = EtcdCluster {
            netns,
            dir,
            token: format!("gslb-{}", lab.id()),
            members: Mutex::new((0..MEMBERS).map(|_| None).collect()),
        };
        for i in 0..MEMBERS {
            cluster.spawn(i, "new")?;
        }
        cluster.wait_healthy()?;
        Ok(cluster)
    }

    fn spawn(&self, i: usize, state: &str) -> Result<()> {
        let initial: Vec<String> =
            (0..MEMBERS).map(|m| format!("etcd-{m}=http://{}:{PEER_PORT}", address(m))).collect();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(i))?;
        let (client, peer) =
            (format!("http://{}:{CLIENT_PORT}", address(i)), format!("http://{}:{PEER_PORT}", address(i)));
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns, "etcd"])
            .args(["--name", &format!("etcd-{i}")])
            .arg("--data-dir")
            .arg(self.dir.join(format!("etcd-{i}")))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial.join(","), "--initial-cluster-state", state])
            .args(["--initial-cluster-token", &self.token])
            // Quick elections, tolerant of a loaded 2-core machine.
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting etcd (installed by `cargo xtask`: Debian's etcd-server)")?;
        self.members.lock().unwrap()[i] = Some(child);
        Ok(())
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("etcd-{i}.log"))
    }

    /// The last lines of every member's log, for failure messages.
    pub fn logs(&self) -> String {
        (0..MEMBERS)
            .map(|i| {
                let text = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(8).collect();
                format!("etcd-{i}:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn endpoints(&self) -> Vec<String> {
        client_urls()
    }

    /// Runs `etcdctl ARGS` against the running members, in the router's
    /// namespace; returns its stdout.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        let running: Vec<String> =
            (0..MEMBERS).filter(|&i| self.is_running(i)).map(|i| client_urls()[i].clone()).collect();
        let out = Command::new("ip")
            .args(["netns", "exec", &self.netns, "etcdctl", "--dial-timeout=1s", "--command-timeout=2s"])
            .arg(format!("--endpoints={}", running.join(",")))
            .args(args)
            .env("ETCDCTL_API", "3")
            .output()
            .context("running etcdctl")?;
        if !out.status.success() {
            bail!("etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The running members' view: (member index, is leader) for each that
    /// answers.
    fn statuses(&self) -> Result<Vec<(usize, bool)>> {
        let text = self.ctl(&["endpoint", "status", "-w", "json"])?;
        let list: serde_json::Value = serde_json::from_str(&text).context("etcdctl endpoint status JSON")?;
        let mut out = Vec::new();
        for entry in list.as_array().into_iter().flatten() {
            let endpoint = entry["Endpoint"].as_str().unwrap_or_default();
            let Some(i) = client_urls().iter().position(|u| u == endpoint) else { continue };
            let status = &entry["Status"];
            let member = status["header"]["member_id"].as_u64();
            let leader = status["leader"].as_u64();
            out.push((i, member.is_some() && member == leader));
        }
        Ok(out)
    }

    /// Which member leads now.
    pub fn leader(&self) -> Result<usize> {
        let statuses = self.statuses()?;
        statuses.iter().find(|(_, leads)| *leads).map(|(i, _)| *i).context("no member reports itself leader")
    }

    /// Waits until the running members elect a leader.
    pub fn wait_leader(&self) -> Result<usize> {
        self.wait("a leader", || self.leader().ok())
    }

    /// Waits until every running member answers and one leads.
    pub fn wait_healthy(&self) -> Result<()> {
        let running = (0..MEMBERS).filter(|&i| self.is_running(i)).count();
        self.wait("every member healthy", || {
            let statuses = self.statuses().ok()?;
            (statuses.len() == running && statuses.iter().any(|(_, l)| *l)).then_some(())
        })
    }

    fn wait<T>(&self, what: &str, mut check: impl FnMut() -> Option<T>) -> Result<T> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(value) = check() {
                return Ok(value);
            }
            if Instant::now() > deadline {
                bail!("etcd: {what}: not within {READY_TIMEOUT:?}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn is_running(&self, i: usize) -> bool {
        self.members.lock().unwrap()[i].is_some()
    }

    /// SIGKILL to member `i`.
    pub fn kill(&self, i: usize) -> Result<()> {
        let child = self.members.lock().unwrap()[i].take();
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
        Ok(())
    }

    pub fn kill_all(&self) -> Result<()> {
        (0..MEMBERS).try_for_each(|i| self.kill(i))
    }

    /// Starts member `i` again on its data directory.
    pub fn restart(&self, i: usize) -> Result<()> {
        if !self.is_running(i) {
            self.spawn(i, "existing")?;
        }
        Ok(())
    }

    /// Starts every stopped member and waits until the cluster is healthy.
    pub fn restart_all(&self) -> Result<()> {
        (0..MEMBERS).try_for_each(|i| self.restart(i))?;
        self.wait_healthy()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        let _ = self.kill_all();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
