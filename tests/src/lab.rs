//! The end-to-end lab: clients, a router, two edges and six backends, each
//! in its own named network namespace, joined by veth pairs to the router.
//!
//! ```text
//!  client-1 ─┐                  ┌─ edge-a     us-east-1  us-east-2
//!  client-2 ─┼───── router ─────┼─ edge-b     eu-west-1  eu-west-2
//!            │                  └─ (each backend has its own link)
//! ```
//!
//! Every leaf has one veth `eth0` to the router. Backends own both VIPs on
//! `lo` and answer clients directly through the router (direct server
//! return). The router sends VIP traffic to one edge (or, without an agent,
//! straight to one backend).
//!
//! Namespaces are named `gslb-{pid}-{seq}-{node}`, so labs in one process
//! (parallel tests) and in different processes never collide. `Drop` kills
//! tracked children and deletes the namespaces and scratch directories,
//! also while a test panics.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Serialize, Serializer};
use tokio::sync::watch;

pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 0x10);
pub const TCP_PORT: u16 = 80;
pub const UDP_PORT: u16 = 5353;

/// MTU of client links.
pub const CLIENT_MTU: u32 = 1500;
/// MTU of router<->edge and router<->backend links: room for a tunnel header.
pub const INNER_MTU: u32 = 1600;
/// The leaf side of every link.
pub const LEAF_IFACE: &str = "eth0";

/// Distinguishes labs created by one process.
static NEXT_SEQ: AtomicU64 = AtomicU64::new(0);

/// The namespace name prefix shared by every lab.
const NETNS_PREFIX: &str = "gslb-";
const BPFFS_PREFIX: &str = "/sys/fs/bpf/gslb-lab-";
const RUN_PREFIX: &str = "/run/gslb-lab-";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClientNode {
    Client1,
    Client2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EdgeNode {
    EdgeA,
    EdgeB,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Region {
    UsEast,
    EuWest,
    ApSouth,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackendNode {
    UsEast1,
    UsEast2,
    EuWest1,
    EuWest2,
    ApSouth1,
    ApSouth2,
}

/// Any node of the lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Node {
    Client(ClientNode),
    Router,
    Edge(EdgeNode),
    Backend(BackendNode),
}

impl ClientNode {
    pub const ALL: [ClientNode; 2] = [ClientNode::Client1, ClientNode::Client2];

    pub fn name(self) -> &'static str {
        match self {
            ClientNode::Client1 => "client-1",
            ClientNode::Client2 => "client-2",
        }
    }

    pub fn v4(self) -> Ipv4Addr {
        Node::Client(self).v4().expect("leaf")
    }

    pub fn v6(self) -> Ipv6Addr {
        Node::Client(self).v6().expect("leaf")
    }
}

impl EdgeNode {
    pub const ALL: [EdgeNode; 2] = [EdgeNode::EdgeA, EdgeNode::EdgeB];

    pub fn name(self) -> &'static str {
        match self {
            EdgeNode::EdgeA => "edge-a",
            EdgeNode::EdgeB => "edge-b",
        }
    }

    pub fn v4(self) -> Ipv4Addr {
        Node::Edge(self).v4().expect("leaf")
    }

    pub fn v6(self) -> Ipv6Addr {
        Node::Edge(self).v6().expect("leaf")
    }
}

impl Region {
    pub const ALL: [Region; 3] = [Region::UsEast, Region::EuWest, Region::ApSouth];

    pub fn name(self) -> &'static str {
        match self {
            Region::UsEast => "us-east",
            Region::EuWest => "eu-west",
            Region::ApSouth => "ap-south",
        }
    }

    /// 1, 2, 3: the region's digit in backend addresses (10.1{r}.k.2).
    pub fn number(self) -> u8 {
        match self {
            Region::UsEast => 1,
            Region::EuWest => 2,
            Region::ApSouth => 3,
        }
    }

    pub fn backends(self) -> [BackendNode; 2] {
        let all = BackendNode::ALL;
        let i = (self.number() as usize - 1) * 2;
        [all[i], all[i + 1]]
    }
}

impl BackendNode {
    pub const ALL: [BackendNode; 6] = [
        BackendNode::UsEast1,
        BackendNode::UsEast2,
        BackendNode::EuWest1,
        BackendNode::EuWest2,
        BackendNode::ApSouth1,
        BackendNode::ApSouth2,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BackendNode::UsEast1 => "us-east-1",
            BackendNode::UsEast2 => "us-east-2",
            BackendNode::EuWest1 => "eu-west-1",
            BackendNode::EuWest2 => "eu-west-2",
            BackendNode::ApSouth1 => "ap-south-1",
            BackendNode::ApSouth2 => "ap-south-2",
        }
    }

    pub fn region(self) -> Region {
        match self {
            BackendNode::UsEast1 | BackendNode::UsEast2 => Region::UsEast,
            BackendNode::EuWest1 | BackendNode::EuWest2 => Region::EuWest,
            BackendNode::ApSouth1 | BackendNode::ApSouth2 => Region::ApSouth,
        }
    }

    /// 1 or 2 within the region.
    pub fn index(self) -> u8 {
        match self {
            BackendNode::UsEast1 | BackendNode::EuWest1 | BackendNode::ApSouth1 => 1,
            _ => 2,
        }
    }

    pub fn from_name(name: &str) -> Option<BackendNode> {
        BackendNode::ALL.into_iter().find(|b| b.name() == name)
    }

    pub fn v4(self) -> Ipv4Addr {
        Node::Backend(self).v4().expect("leaf")
    }

    pub fn v6(self) -> Ipv6Addr {
        Node::Backend(self).v6().expect("leaf")
    }
}

impl Node {
    pub const ALL: [Node; 11] = [
        Node::Client(ClientNode::Client1),
        Node::Client(ClientNode::Client2),
        Node::Router,
        Node::Edge(EdgeNode::EdgeA),
        Node::Edge(EdgeNode::EdgeB),
        Node::Backend(BackendNode::UsEast1),
        Node::Backend(BackendNode::UsEast2),
        Node::Backend(BackendNode::EuWest1),
        Node::Backend(BackendNode::EuWest2),
        Node::Backend(BackendNode::ApSouth1),
        Node::Backend(BackendNode::ApSouth2),
    ];

    pub fn name(self) -> &'static str {
        match self {
            Node::Client(c) => c.name(),
            Node::Router => "router",
            Node::Edge(e) => e.name(),
            Node::Backend(b) => b.name(),
        }
    }

    pub fn from_name(name: &str) -> Option<Node> {
        Node::ALL.into_iter().find(|n| n.name() == name)
    }

    /// The link's numbers (a, b): addresses 10.a.b.0/24 and fd00:a:b::/64,
    /// where `a` is written with the same digits in both (13 -> fd00:13:...).
    /// None for the router, which has one address per link.
    fn link(self) -> Option<(u8, u8)> {
        match self {
            Node::Client(ClientNode::Client1) => Some((1, 1)),
            Node::Client(ClientNode::Client2) => Some((1, 2)),
            Node::Router => None,
            Node::Edge(EdgeNode::EdgeA) => Some((2, 1)),
            Node::Edge(EdgeNode::EdgeB) => Some((2, 2)),
            Node::Backend(b) => Some((10 + b.region().number(), b.index())),
        }
    }

    /// The router's interface towards this leaf (`c1`, `ea`, `b21`, ...).
    pub fn router_iface(self) -> Option<&'static str> {
        Some(match self {
            Node::Client(ClientNode::Client1) => "c1",
            Node::Client(ClientNode::Client2) => "c2",
            Node::Router => return None,
            Node::Edge(EdgeNode::EdgeA) => "ea",
            Node::Edge(EdgeNode::EdgeB) => "eb",
            Node::Backend(BackendNode::UsEast1) => "b11",
            Node::Backend(BackendNode::UsEast2) => "b12",
            Node::Backend(BackendNode::EuWest1) => "b21",
            Node::Backend(BackendNode::EuWest2) => "b22",
            Node::Backend(BackendNode::ApSouth1) => "b31",
            Node::Backend(BackendNode::ApSouth2) => "b32",
        })
    }

    pub fn mtu(self) -> u32 {
        match self {
            Node::Client(_) => CLIENT_MTU,
            _ => INNER_MTU,
        }
    }

    /// The leaf's address on its link to the router (.2).
    pub fn v4(self) -> Option<Ipv4Addr> {
        self.link().map(|(a, b)| Ipv4Addr::new(10, a, b, 2))
    }

    /// The leaf's address on its link to the router (::2).
    pub fn v6(self) -> Option<Ipv6Addr> {
        self.link().map(|(a, b)| link_v6(a, b, 2))
    }

    /// The router's address on the link to this leaf (.1).
    pub fn gateway_v4(self) -> Option<Ipv4Addr> {
        self.link().map(|(a, b)| Ipv4Addr::new(10, a, b, 1))
    }

    /// The router's address on the link to this leaf (::1).
    pub fn gateway_v6(self) -> Option<Ipv6Addr> {
        self.link().map(|(a, b)| link_v6(a, b, 1))
    }

    fn is_leaf(self) -> bool {
        self != Node::Router
    }
}

/// fd00:{a}:{b}::{host}, with `a`'s decimal digits read as hex (13 -> 0x13).
fn link_v6(a: u8, b: u8, host: u16) -> Ipv6Addr {
    let a = u16::from(a / 10) * 16 + u16::from(a % 10);
    Ipv6Addr::new(0xfd00, a, u16::from(b), 0, 0, 0, 0, host)
}

impl From<ClientNode> for Node {
    fn from(c: ClientNode) -> Node {
        Node::Client(c)
    }
}

impl From<EdgeNode> for Node {
    fn from(e: EdgeNode) -> Node {
        Node::Edge(e)
    }
}

impl From<BackendNode> for Node {
    fn from(b: BackendNode) -> Node {
        Node::Backend(b)
    }
}

// Nodes serialise as their names ("edge-a").
macro_rules! serialize_as_name {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    )*};
}
serialize_as_name!(ClientNode, EdgeNode, Region, BackendNode, Node);

/// A backend as the agent's configuration needs it.
#[derive(Clone, Debug, Serialize)]
pub struct BackendInfo {
    pub node: BackendNode,
    pub name: &'static str,
    pub region: Region,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    pub netns: String,
}

/// An edge as the agent needs it.
#[derive(Clone, Debug, Serialize)]
pub struct EdgeInfo {
    pub node: EdgeNode,
    pub name: &'static str,
    pub netns: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    /// The router's addresses on the edge's link (its next hop).
    pub gateway_v4: Ipv4Addr,
    pub gateway_v6: Ipv6Addr,
    /// The router's interface towards the edge.
    pub router_iface: &'static str,
    /// The edge's own interface, where XDP attaches.
    pub iface: &'static str,
}

/// A running lab. Cleans up on drop.
pub struct Lab {
    pid: u32,
    seq: u64,
    /// Children started with `spawn`, killed on drop.
    children: Mutex<Vec<Child>>,
    /// Flips to true (and then closes) when the lab drops, so servers and
    /// traffic running on `in_ns` threads stop with it.
    stop: watch::Sender<bool>,
    created_in: Duration,
}

impl Lab {
    /// Builds the whole topology. Takes well under a second.
    pub fn new() -> Result<Lab> {
        let start = Instant::now();
        remove_stale_labs();
        let (stop, _) = watch::channel(false);
        let mut lab = Lab {
            pid: std::process::id(),
            seq: NEXT_SEQ.fetch_add(1, Ordering::Relaxed),
            children: Mutex::new(Vec::new()),
            stop,
            created_in: Duration::ZERO,
        };
        // From here on, an error drops `lab`, which removes what was built.
        std::fs::create_dir_all(lab.run_dir()).context("creating the run directory")?;
        lab.create_namespaces_and_links()?;
        lab.configure_nodes()?;
        lab.created_in = start.elapsed();
        Ok(lab)
    }

    /// How long `new` took.
    pub fn creation_time(&self) -> Duration {
        self.created_in
    }

    /// `{pid}-{seq}`, unique to this lab.
    pub fn id(&self) -> String {
        format!("{}-{}", self.pid, self.seq)
    }

    pub fn nodes(&self) -> &'static [Node] {
        &Node::ALL
    }

    /// The node's namespace name, `gslb-{pid}-{seq}-{node}`.
    pub fn netns(&self, node: impl Into<Node>) -> String {
        format!("{NETNS_PREFIX}{}-{}", self.id(), node.into().name())
    }

    /// The node's namespace file under /run/netns.
    pub fn netns_path(&self, node: impl Into<Node>) -> PathBuf {
        Path::new("/run/netns").join(self.netns(node))
    }

    pub fn backends(&self) -> Vec<BackendInfo> {
        BackendNode::ALL.into_iter().map(|b| self.backend(b)).collect()
    }

    pub fn backend(&self, b: BackendNode) -> BackendInfo {
        BackendInfo { node: b, name: b.name(), region: b.region(), v4: b.v4(), v6: b.v6(), netns: self.netns(b) }
    }

    pub fn edges(&self) -> Vec<EdgeInfo> {
        EdgeNode::ALL.into_iter().map(|e| self.edge(e)).collect()
    }

    pub fn edge(&self, e: EdgeNode) -> EdgeInfo {
        let node = Node::Edge(e);
        EdgeInfo {
            node: e,
            name: e.name(),
            netns: self.netns(e),
            v4: e.v4(),
            v6: e.v6(),
            gateway_v4: node.gateway_v4().expect("leaf"),
            gateway_v6: node.gateway_v6().expect("leaf"),
            router_iface: node.router_iface().expect("leaf"),
            iface: LEAF_IFACE,
        }
    }

    /// Where an edge's agent pins its objects. Not created here; the lab's
    /// whole bpffs directory is removed on drop.
    pub fn bpffs_dir(&self, edge: EdgeNode) -> PathBuf {
        self.bpffs_root().join(edge.name())
    }

    fn bpffs_root(&self) -> PathBuf {
        PathBuf::from(format!("{BPFFS_PREFIX}{}", self.id()))
    }

    /// Scratch directory for configs and admin sockets; removed on drop.
    pub fn run_dir(&self) -> PathBuf {
        PathBuf::from(format!("{RUN_PREFIX}{}", self.id()))
    }

    /// A receiver that sees `true` (or a closed channel) once the lab is
    /// dropping; long-running helpers select on it.
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Sends the VIPs (both families) from the router to `edge`.
    pub fn route_vips_to(&self, edge: EdgeNode) -> Result<()> {
        self.route_vips_via(Node::Edge(edge))
    }

    /// Sends the VIPs straight to a backend, which owns them on `lo`; for
    /// testing without an agent.
    pub fn route_vips_to_backend(&self, backend: BackendNode) -> Result<()> {
        self.route_vips_via(Node::Backend(backend))
    }

    fn route_vips_via(&self, leaf: Node) -> Result<()> {
        let dev = leaf.router_iface().expect("leaf");
        let script = format!(
            "route replace {VIP_V4}/32 via {} dev {dev}\nroute replace {VIP_V6}/128 via {} dev {dev}\n",
            leaf.v4().expect("leaf"),
            leaf.v6().expect("leaf"),
        );
        self.ip_batch(Some(Node::Router), &script)
    }

    /// Sets an edge's link to the router administratively down or up. Down
    /// makes the kernel drop the link's IPv6 address and every route through
    /// it; up puts them back, as a host's network configuration would.
    pub fn set_edge_link(&self, edge: EdgeNode, up: bool) -> Result<()> {
        let node = Node::Edge(edge);
        if !up {
            return self.ip_batch(Some(node), &format!("link set {LEAF_IFACE} down\n"));
        }
        let (v4, v6) = (node.v4().expect("leaf"), node.v6().expect("leaf"));
        let (gw4, gw6) = (node.gateway_v4().expect("leaf"), node.gateway_v6().expect("leaf"));
        let script = format!(
            "link set {LEAF_IFACE} up\naddr replace {v4}/24 dev {LEAF_IFACE}\naddr replace {v6}/64 dev {LEAF_IFACE} nodad\nroute replace default via {gw4}\nroute replace ::/0 via {gw6}\n"
        );
        self.ip_batch(Some(node), &script)
    }

    /// Deletes an edge's link to the router (both ends), as pulling a NIC
    /// would. What was attached to it (XDP programs) goes with it, and so
    /// do the routes through it, the router's VIP routes included.
    pub fn delete_edge_link(&self, edge: EdgeNode) -> Result<()> {
        self.ip_batch(Some(Node::Edge(edge)), &format!("link del {LEAF_IFACE}\n")).context("deleting the edge's link")
    }

    /// Creates a deleted edge link again with the same names, MTU,
    /// addresses and routes, as replacing a NIC would. Both ends have new
    /// ifindexes and MACs. The router's VIP routes are not restored: route
    /// the VIPs again.
    pub fn create_edge_link(&self, edge: EdgeNode) -> Result<()> {
        let leaf = Node::Edge(edge);
        let mtu = leaf.mtu();
        let script = format!(
            "link add {} netns {} mtu {mtu} type veth peer name {LEAF_IFACE} netns {} mtu {mtu}\n",
            leaf.router_iface().expect("leaf"),
            self.netns(Node::Router),
            self.netns(leaf),
        );
        self.ip_batch(None, &script).context("creating the edge's link again")?;
        let router = self.in_ns(Node::Router, move || configure_router_link(leaf));
        let edge_side = self.in_ns(leaf, move || configure_node(leaf));
        for (side, thread) in [("router", router), ("edge", edge_side)] {
            thread.join().map_err(|_| anyhow!("configuring the {side} end panicked"))??;
        }
        Ok(())
    }

    /// A command whose child runs in the node's network namespace. It joins
    /// with setns before exec rather than through `ip netns exec`, which
    /// remounts /sys and so hides /sys/fs/bpf.
    pub fn command(&self, node: impl Into<Node>, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        self.enter_ns_before_exec(&mut cmd, node.into());
        cmd
    }

    fn enter_ns_before_exec(&self, cmd: &mut Command, node: Node) {
        enter_netns_before_exec(cmd, &self.netns_path(node));
    }

    /// Spawns `cmd` in the node's namespace and tracks it: the lab kills
    /// (SIGKILL) and reaps it on drop. Returns its pid.
    pub fn spawn(&self, node: impl Into<Node>, mut cmd: Command) -> Result<u32> {
        let node = node.into();
        self.enter_ns_before_exec(&mut cmd, node);
        let child = cmd.spawn().with_context(|| format!("spawning {:?} in {node}", cmd.get_program()))?;
        let pid = child.id();
        self.children.lock().unwrap().push(child);
        Ok(pid)
    }

    /// Kills (SIGKILL) and reaps a child started with `spawn`.
    pub fn kill(&self, pid: u32) -> Result<()> {
        let child = {
            let mut children = self.children.lock().unwrap();
            let i = children.iter().position(|c| c.id() == pid).ok_or_else(|| anyhow!("no child {pid}"))?;
            children.swap_remove(i)
        };
        kill_and_reap(child);
        Ok(())
    }

    /// Whether a child started with `spawn` is still running.
    pub fn is_running(&self, pid: u32) -> bool {
        let mut children = self.children.lock().unwrap();
        children.iter_mut().any(|c| c.id() == pid && matches!(c.try_wait(), Ok(None)))
    }

    /// Runs `args` (program first) to completion in the node's namespace;
    /// returns its stdout. The error carries stderr.
    pub fn exec(&self, node: impl Into<Node>, args: &[&str]) -> Result<String> {
        let node = node.into();
        let (program, rest) = args.split_first().ok_or_else(|| anyhow!("exec: no program"))?;
        let out = self
            .command(node, program)
            .args(rest)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {args:?} in {node}"))?;
        if !out.status.success() {
            bail!("{args:?} in {node} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `f` on a new OS thread that has joined the node's namespace
    /// (a thread's network namespace is its own); sockets it opens stay in
    /// that namespace. Panics inside the thread if the namespace is gone.
    pub fn in_ns<T, F>(&self, node: impl Into<Node>, f: F) -> JoinHandle<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let node = node.into();
        let path = self.netns_path(node);
        std::thread::Builder::new()
            .name(format!("ns-{node}"))
            .spawn(move || {
                enter_netns(&path).unwrap_or_else(|e| panic!("entering {}: {e}", path.display()));
                f()
            })
            .expect("spawning a thread")
    }

    /// Runs an `ip -batch` script, in a node's namespace or (None) in ours.
    fn ip_batch(&self, node: Option<Node>, script: &str) -> Result<()> {
        let mut cmd = match node {
            Some(n) => self.command(n, "ip"),
            None => Command::new("ip"),
        };
        cmd.args(["-batch", "-"]);
        run_with_stdin(cmd, script)
    }

    /// One `ip -batch` in our own namespace: every namespace, then every
    /// veth pair created straight into its two namespaces with its MTU.
    fn create_namespaces_and_links(&self) -> Result<()> {
        let mut script = String::new();
        for node in Node::ALL {
            script += &format!("netns add {}\n", self.netns(node));
        }
        let router = self.netns(Node::Router);
        for leaf in Node::ALL.into_iter().filter(|n| n.is_leaf()) {
            let mtu = leaf.mtu();
            script += &format!(
                "link add {} netns {router} mtu {mtu} type veth peer name {LEAF_IFACE} netns {} mtu {mtu}\n",
                leaf.router_iface().expect("leaf"),
                self.netns(leaf),
            );
        }
        let mut cmd = Command::new("ip");
        cmd.args(["-batch", "-"]);
        run_with_stdin(cmd, &script).context("creating namespaces and veths")
    }

    /// Configures every node in parallel, one thread per node inside its
    /// namespace: sysctls written directly, then one `ip -batch` and the
    /// ethtool calls (children inherit the thread's namespace).
    fn configure_nodes(&self) -> Result<()> {
        let threads: Vec<_> =
            Node::ALL.into_iter().map(|node| (node, self.in_ns(node, move || configure_node(node)))).collect();
        let mut errors = Vec::new();
        for (node, thread) in threads {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(format!("{node}: {e:#}")),
                Err(_) => errors.push(format!("{node}: configuration thread panicked")),
            }
        }
        if !errors.is_empty() {
            bail!("configuring the lab: {}", errors.join("; "));
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for child in self.children.get_mut().unwrap_or_else(|e| e.into_inner()).drain(..) {
            kill_and_reap(child);
        }
        // What those children started in the namespaces (an agent's BGP
        // watchdog, in a session of its own) goes with the lab too.
        for node in Node::ALL {
            kill_processes_in(&self.netns(node));
        }
        // -force: keep deleting after a failure (e.g. a half-built lab).
        let script: String = Node::ALL.into_iter().map(|n| format!("netns del {}\n", self.netns(n))).collect();
        let mut cmd = Command::new("ip");
        cmd.args(["-force", "-batch", "-"]);
        if let Err(e) = run_with_stdin(cmd, &script) {
            eprintln!("lab {}: deleting namespaces: {e:#}", self.id());
        }
        for dir in [self.bpffs_root(), self.run_dir()] {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                if e.kind() != io::ErrorKind::NotFound {
                    eprintln!("lab {}: removing {}: {e}", self.id(), dir.display());
                }
            }
        }
    }
}

/// SIGKILLs every process in the named network namespace.
fn kill_processes_in(netns: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", netns]).output() else { return };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
        // SAFETY: kill(2) on a process inside the lab's own namespace.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

pub(crate) fn kill_and_reap(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Makes `cmd`'s child join the network namespace at `path` (a file under
/// /run/netns) before exec, as `Lab::command` does; for helpers that keep
/// a namespace's path rather than a borrow of the lab.
pub fn enter_netns_before_exec(cmd: &mut Command, path: &Path) {
    let path = CString::new(path.as_os_str().as_bytes()).expect("no NUL in path");
    // SAFETY: between fork and exec only async-signal-safe calls are made
    // (open, setns, close); io::Error's OS variant doesn't allocate.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let rc = libc::setns(fd, libc::CLONE_NEWNET);
            let err = io::Error::last_os_error();
            libc::close(fd);
            if rc != 0 {
                return Err(err);
            }
            Ok(())
        });
    }
}

/// Moves the calling thread into the namespace at `path`.
fn enter_netns(path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    // SAFETY: setns on a valid fd only changes this thread's namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `cmd` with `input` on stdin; the error carries stderr.
fn run_with_stdin(mut cmd: Command, input: &str) -> Result<()> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {:?}", cmd.get_program()))?;
    child.stdin.take().expect("piped").write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{:?} failed ({}): {}", cmd.get_program(), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Runs on a thread already inside `node`'s namespace.
fn configure_node(node: Node) -> Result<()> {
    let ifaces: Vec<&str> = match node {
        Node::Router => Node::ALL.iter().filter_map(|n| n.router_iface()).collect(),
        _ => vec![LEAF_IFACE],
    };

    // Sysctls first, before the links come up, so that link-local
    // addresses skip duplicate address detection too. /proc/sys/net shows
    // the namespace of the thread that opens it.
    let mut sysctls = Vec::new();
    for conf in ["all", "default", "lo"].iter().chain(&ifaces) {
        // Replies come back on other paths than requests (DSR, tunnels).
        sysctls.push((format!("ipv4/conf/{conf}/rp_filter"), "0"));
        sysctls.push((format!("ipv6/conf/{conf}/accept_dad"), "0"));
    }
    if matches!(node, Node::Router | Node::Edge(_)) {
        sysctls.push(("ipv4/conf/all/forwarding".into(), "1"));
        sysctls.push(("ipv6/conf/all/forwarding".into(), "1"));
    }
    if let Node::Edge(_) = node {
        // An edge hands encapsulated packets whose source is its own
        // address to the kernel when a neighbour is unresolved.
        sysctls.push(("ipv4/conf/all/accept_local".into(), "1"));
        sysctls.push((format!("ipv4/conf/{LEAF_IFACE}/accept_local"), "1"));
    }
    for (key, value) in &sysctls {
        let path = format!("/proc/sys/net/{key}");
        std::fs::write(&path, value).with_context(|| format!("writing {path}"))?;
    }

    let mut script = String::from("link set lo up\n");
    for iface in &ifaces {
        script += &format!("link set {iface} up\n");
    }
    if node.is_leaf() {
        let (v4, v6) = (node.v4().expect("leaf"), node.v6().expect("leaf"));
        let (gw4, gw6) = (node.gateway_v4().expect("leaf"), node.gateway_v6().expect("leaf"));
        script += &format!("addr add {v4}/24 dev {LEAF_IFACE}\n");
        script += &format!("addr add {v6}/64 dev {LEAF_IFACE} nodad\n");
        script += &format!("route add default via {gw4}\n");
        script += &format!("route add ::/0 via {gw6}\n");
    } else {
        for leaf in Node::ALL.into_iter().filter(|n| n.is_leaf()) {
            let dev = leaf.router_iface().expect("leaf");
            script += &format!("addr add {}/24 dev {dev}\n", leaf.gateway_v4().expect("leaf"));
            script += &format!("addr add {}/64 dev {dev} nodad\n", leaf.gateway_v6().expect("leaf"));
        }
    }
    if let Node::Backend(_) = node {
        // Backends serve the VIPs themselves.
        script += &format!("addr add {VIP_V4}/32 dev lo\n");
        script += &format!("addr add {VIP_V6}/128 dev lo nodad\n");
    }
    let mut ip = Command::new("ip");
    ip.args(["-batch", "-"]);
    run_with_stdin(ip, &script)?;

    offloads_off(&ifaces)
}

/// Runs on a thread inside the router's namespace: configures its end of
/// the link to `leaf` as `configure_node` does, for that link alone.
fn configure_router_link(leaf: Node) -> Result<()> {
    let dev = leaf.router_iface().expect("leaf");
    for key in [format!("ipv4/conf/{dev}/rp_filter"), format!("ipv6/conf/{dev}/accept_dad")] {
        let path = format!("/proc/sys/net/{key}");
        std::fs::write(&path, "0").with_context(|| format!("writing {path}"))?;
    }
    let script = format!(
        "link set {dev} up\naddr add {}/24 dev {dev}\naddr add {}/64 dev {dev} nodad\n",
        leaf.gateway_v4().expect("leaf"),
        leaf.gateway_v6().expect("leaf")
    );
    let mut ip = Command::new("ip");
    ip.args(["-batch", "-"]);
    run_with_stdin(ip, &script)?;
    offloads_off(&[dev])
}

/// Turns checksum, segmentation and receive offloads off on `ifaces` (of
/// the calling thread's namespace).
fn offloads_off(ifaces: &[&str]) -> Result<()> {
    // XDP on veth sees partially checksummed packets unless the sender
    // computes checksums and segments itself. GRO stays off everywhere: a
    // router merging tunnelled segments into one GSO packet would hand the
    // backend's XDP `decap` something no wire ever carries. (Frames an edge
    // sends with XDP_TX need NAPI on the router's end instead; the
    // deployment gets it by attaching an XDP program there, see
    // `deploy::Deployment::start`.)
    let ethtools: Vec<_> = ifaces
        .iter()
        .map(|iface| {
            let mut cmd = Command::new("ethtool");
            cmd.args(["-K", iface, "tx", "off", "tso", "off", "gso", "off"]);
            cmd.args(["gro", "off"]);
            cmd.stdout(Stdio::null()).stderr(Stdio::piped());
            cmd.spawn().map(|child| (*iface, child))
        })
        .collect::<io::Result<_>>()
        .context("spawning ethtool")?;
    for (iface, child) in ethtools {
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("ethtool -K {iface}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
    }
    Ok(())
}

/// Removes namespaces and directories left by labs of processes that no
/// longer run (a killed test run never reaches Drop).
fn remove_stale_labs() {
    let dead = |pid: &str| pid.parse::<u32>().is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());

    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        let mut script = String::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "NAME" or "NAME (id: 3)"
            let name = line.split_whitespace().next().unwrap_or("");
            if let Some((pid, _seq, _node)) = parse_netns_name(name) {
                if dead(pid) {
                    kill_processes_in(name);
                    script += &format!("netns del {name}\n");
                }
            }
        }
        if !script.is_empty() {
            let mut cmd = Command::new("ip");
            cmd.args(["-force", "-batch", "-"]);
            // Another process may be cleaning the same ones: ignore errors.
            let _ = run_with_stdin(cmd, &script);
        }
    }

    for prefix in [BPFFS_PREFIX, RUN_PREFIX] {
        let (parent, stem) = prefix.rsplit_once('/').expect("absolute prefix");
        let Ok(entries) = std::fs::read_dir(parent) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_prefix(stem)) else { continue };
            if id.split_once('-').is_some_and(|(pid, seq)| seq.parse::<u64>().is_ok() && dead(pid)) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// Splits `gslb-{pid}-{seq}-{node}` into its parts, for lab names only.
fn parse_netns_name(name: &str) -> Option<(&str, &str, &str)> {
    let rest = name.strip_prefix(NETNS_PREFIX)?;
    let (pid, rest) = rest.split_once('-')?;
    let (seq, node) = rest.split_once('-')?;
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (numeric(pid) && numeric(seq) && Node::from_name(node).is_some()).then_some((pid, seq, node))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_plan() {
        assert_eq!(BackendNode::UsEast1.v4(), Ipv4Addr::new(10, 11, 1, 2));
        assert_eq!(BackendNode::ApSouth2.v4(), Ipv4Addr::new(10, 13, 2, 2));
        assert_eq!(BackendNode::ApSouth2.v6(), "fd00:13:2::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(ClientNode::Client2.v6(), "fd00:1:2::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(Node::Edge(EdgeNode::EdgeB).gateway_v4(), Some(Ipv4Addr::new(10, 2, 2, 1)));
        assert_eq!(Region::EuWest.backends(), [BackendNode::EuWest1, BackendNode::EuWest2]);
    }

    #[test]
    fn netns_names() {
        assert_eq!(parse_netns_name("gslb-12-0-edge-a"), Some(("12", "0", "edge-a")));
        assert_eq!(parse_netns_name("gslb-12-0-ap-south-2"), Some(("12", "0", "ap-south-2")));
        assert_eq!(parse_netns_name("gslb-12-x-edge-a"), None);
        assert_eq!(parse_netns_name("gslb-12-0-other"), None);
    }
}
