//! Agent and host faults: an edge interface going down, or deleted and
//! created again; the agent killed at random moments of a reload; and the
//! start-up errors an operator meets first (no bpffs, a wrong interface
//! name, an admin socket that cannot be created).
//!
//! The lab tests share the machine's two cores, so they run one at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::net::IpAddr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gslb_tests::checks::{assert_untouched, wait_for_forwarded, wait_for_progress, web_v4};
use gslb_tests::deploy::{xdp_mode, Deployment, Setup, Weights};
use gslb_tests::lab::{BackendNode, ClientNode, EdgeNode, Region};
use gslb_tests::scale;
use gslb_tests::traffic::{short_connections, LongLived};
use gslb_userspace::sys::steer::Steer;
use gslb_userspace::view::status::{InterfaceStatus, Status};
use rand::{Rng, SeedableRng};

static SERIAL: Mutex<()> = Mutex::new(());

const LAB_BINARY: &str = env!("CARGO_BIN_EXE_gslb-lab");
/// Long-lived connections send a request this often.
const INTERVAL: Duration = Duration::from_millis(10);
/// How long the agent may take to notice an interface change: a few of its
/// 250 ms polls, plus room for a loaded machine.
const NOTICE: Duration = Duration::from_secs(10);
/// The edge interface in the lab.
const IFACE: &str = "eth0";

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn deploy(setup: &Setup) -> Deployment {
    Deployment::start(LAB_BINARY.as_ref(), setup).expect("deploying gslb on the lab")
}

fn link(status: &Status) -> InterfaceStatus {
    status.links.iter().find(|l| l.name == IFACE).cloned().unwrap_or_else(|| panic!("no {IFACE} in {status:?}"))
}

/// Waits until the edge's status shows its interface in a state `want`
/// accepts; returns that state.
fn wait_for_link(
    d: &Deployment,
    edge: EdgeNode,
    what: &str,
    want: impl Fn(&InterfaceStatus) -> bool,
) -> InterfaceStatus {
    let deadline = Instant::now() + NOTICE;
    loop {
        let now = link(&d.status(edge).expect("status"));
        if want(&now) {
            return now;
        }
        assert!(Instant::now() < deadline, "{edge}: status did not report {what} within {NOTICE:?}; it shows {now:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// New connections through the edge the VIPs are routed to all succeed, and
/// `edge` forwards their packets.
fn assert_new_connections_through(d: &Deployment, edge: EdgeNode, what: &str) {
    let forwarded = d.status(edge).unwrap().counters.forwarded;
    let report = short_connections(&d.lab, ClientNode::Client2, web_v4(), 300, 16).unwrap();
    assert_eq!(report.failures, 0, "{what}: new connections failed: {:?}", report.errors);
    // Each connection is at least three packets from the client.
    wait_for_forwarded(d, edge, forwarded, 900);
}

#[test]
fn interface_down_then_up_keeps_steer_attached_and_connections_alive() {
    let _serial = serial();
    let d = deploy(&Setup::default());
    let traffic = LongLived::start(&d.lab, ClientNode::Client1, web_v4(), 30, INTERVAL).unwrap();
    let edge = EdgeNode::EdgeA;
    let before = link(&d.status(edge).unwrap());
    assert_eq!(before.state, "up", "{before:?}");
    assert_eq!(before.mode.as_deref(), Some(xdp_mode(edge)), "{before:?}");

    d.lab.set_edge_link(edge, false).unwrap();
    let down = wait_for_link(&d, edge, "the interface down", |l| l.state == "down");
    // Down is not gone: the same interface, steer still attached to it.
    assert!(down.attached && down.ifindex == before.ifindex && down.reattaches == 0, "{down:?}");
    assert_eq!(down.last_event.as_ref().map(|e| e.kind.as_str()), Some("down"));
    let (_, text, _) = Deployment::run_gslb(LAB_BINARY.as_ref(), &["status", "--socket", &socket(&d, edge)]).unwrap();
    assert!(text.contains(&format!("{IFACE}: down, steer attached")), "gslb status says:\n{text}");

    d.lab.set_edge_link(edge, true).unwrap();
    let up = wait_for_link(&d, edge, "the interface up again", |l| l.state == "up");
    assert!(up.attached && up.ifindex == before.ifindex && up.reattaches == 0, "{up:?}");
    assert_eq!(up.last_event.as_ref().map(|e| e.kind.as_str()), Some("up"));

    // Existing connections carry on (TCP retransmitted what the outage
    // dropped; the flow table kept their backends) and new ones work.
    let now = traffic.snapshot();
    wait_for_progress(&traffic, &now, 10, "after the interface came back up");
    assert_new_connections_through(&d, edge, "after the interface came back up");
    assert_untouched(&traffic.stop(), "across the interface going down and up");

    // A pinned link removed by hand detaches steer; the agent puts it back.
    std::fs::remove_file(d.lab.bpffs_dir(edge).join("links").join(IFACE)).unwrap();
    let back = wait_for_link(&d, edge, "steer attached again", |l| l.reattaches == 1 && l.attached);
    assert_eq!(back.ifindex, before.ifindex, "{back:?}");
    assert!(d.agent_log(edge).contains("the pinned XDP link was gone"), "{}", d.agent_log(edge));
    assert_new_connections_through(&d, edge, "after the pinned link was put back");
}

fn socket(d: &Deployment, edge: EdgeNode) -> String {
    gslb_tests::deploy::admin_socket(&d.lab, edge).display().to_string()
}

#[test]
fn a_recreated_interface_gets_steer_attached_again() {
    let _serial = serial();
    let d = deploy(&Setup::default());
    let edge = EdgeNode::EdgeA;
    // Connections run through the edge while its interface is replaced.
    // Those the outage breaks are expected (a reset, or TCP giving up
    // while the edge is unreachable); they are counted, not asserted.
    let traffic = LongLived::start(&d.lab, ClientNode::Client1, web_v4(), 30, INTERVAL).unwrap();
    let before = link(&d.status(edge).unwrap());

    d.lab.delete_edge_link(edge).unwrap();
    let missing = wait_for_link(&d, edge, "the interface missing", |l| l.state == "missing");
    assert!(!missing.attached && missing.ifindex.is_none(), "{missing:?}");
    assert_eq!(missing.last_event.as_ref().map(|e| e.kind.as_str()), Some("vanished"));
    let (_, text, _) = Deployment::run_gslb(LAB_BINARY.as_ref(), &["status", "--socket", &socket(&d, edge)]).unwrap();
    assert!(text.contains(&format!("{IFACE}: missing, steer NOT attached")), "gslb status says:\n{text}");
    // The agent stays manageable meanwhile: a reload goes through.
    d.reload(edge).unwrap();

    d.create_edge_link(edge).unwrap();
    // The router's VIP routes went with its old end of the link.
    d.lab.route_vips_to(edge).unwrap();
    let after = wait_for_link(&d, edge, "steer attached again", |l| l.reattaches >= 1 && l.attached);
    assert_ne!(after.ifindex, before.ifindex, "the recreated interface kept its ifindex: {after:?}");
    assert_eq!(after.reattaches, 1, "{after:?}");
    assert_eq!(after.mode.as_deref(), Some(xdp_mode(edge)), "re-attached in the wrong mode: {after:?}");
    assert!(d.agent_log(edge).contains("steer attached again"), "no log of the re-attach:\n{}", d.agent_log(edge));
    let metrics = d.metrics(edge).unwrap();
    for line in [
        format!("gslb_interface_reattach_total{{interface=\"{IFACE}\"}} 1"),
        format!("gslb_interface_attached{{interface=\"{IFACE}\"}} 1"),
    ] {
        assert!(metrics.lines().any(|l| l == line), "metrics lack {line:?}:\n{metrics}");
    }

    wait_for_link(&d, edge, "the new interface up", |l| l.state == "up");
    assert_new_connections_through(&d, edge, "after the interface was recreated");
    let reports = traffic.stop();
    let broken = reports.iter().filter(|r| r.broken()).count();
    println!("{broken} of {} long-lived connections broke while the interface was replaced", reports.len());
}

/// The config of round `round`: pool and backend weights move, and
/// ap-south-2 comes and goes. It is never in the starting config, so no
/// long-lived connection is on it when it is removed.
fn round_weights(round: u64) -> Weights {
    let mut weights = Weights::default();
    weights.backends.remove(&BackendNode::ApSouth2);
    weights.pools.insert(Region::UsEast, 100 + 50 * (round % 3) as u32);
    weights.backends.insert(BackendNode::EuWest1, 100 - 10 * (round % 5) as u32);
    if round.is_multiple_of(2) {
        weights.backends.insert(BackendNode::ApSouth2, 60);
    }
    weights
}

/// Both edges hold the same VIPs, backends and bit-identical tables.
fn assert_same_state(d: &Deployment, what: &str) {
    let a = Steer::open_pinned(&d.lab.bpffs_dir(EdgeNode::EdgeA)).expect("open edge-a's pins");
    let b = Steer::open_pinned(&d.lab.bpffs_dir(EdgeNode::EdgeB)).expect("open edge-b's pins");
    let vips = |s: &Steer| s.vip_entries().unwrap().into_iter().map(|(m, _)| m).collect::<BTreeSet<_>>();
    let (vips_a, vips_b) = (vips(&a), vips(&b));
    assert_eq!(vips_a, vips_b, "{what}: the edges hold different VIPs");
    assert_eq!(vips_a.len(), 4, "{what}: {vips_a:?}");
    let backends = |s: &Steer| s.installed_backends().unwrap().into_iter().collect::<BTreeSet<_>>();
    assert_eq!(backends(&a), backends(&b), "{what}: the edges hold different backends");
    for vip in vips_a {
        let (table_a, table_b) = (a.vip_table(vip).unwrap(), b.vip_table(vip).unwrap());
        let differing = table_a.iter().zip(&table_b).filter(|(x, y)| x != y).count();
        assert!(
            table_a.len() == table_b.len() && differing == 0,
            "{what}: {vip:?}: {differing} of {} slots differ between the edges",
            table_a.len()
        );
    }
}

/// `status` shows exactly the configured weights, and the `web` VIP's
/// effective weights follow from them.
fn assert_status_weights(status: &Status, weights: &Weights, what: &str) {
    let mut configured = BTreeMap::new();
    for pool in status.pools.iter().filter(|p| !p.name.ends_with("-v6")) {
        let region = *Region::ALL.iter().find(|r| r.name() == pool.name).expect("a lab region");
        assert_eq!(pool.weight, weights.pools[&region], "{what}: pool {}", pool.name);
        for b in &pool.backends {
            configured.insert(b.address, b.weight);
        }
    }
    let want: BTreeMap<IpAddr, u32> = weights.backends.iter().map(|(b, &w)| (IpAddr::from(b.v4()), w)).collect();
    assert_eq!(configured, want, "{what}: backend weights in status");
    let web = status.vips.iter().find(|v| v.name == "web").expect("web VIP");
    let effective: BTreeMap<IpAddr, u64> = web.backends.iter().map(|b| (b.address, b.effective_weight)).collect();
    let want: BTreeMap<IpAddr, u64> = weights
        .backends
        .iter()
        .map(|(b, &w)| (IpAddr::from(b.v4()), (weights.pools[&b.region()] * w) as u64))
        .collect();
    assert_eq!(effective, want, "{what}: web's effective weights");
}

#[test]
fn agent_killed_at_random_moments_of_a_reload_comes_back_to_the_config() {
    let _serial = serial();
    let d = deploy(&Setup::from(&round_weights(1)));
    let traffic = LongLived::start(&d.lab, ClientNode::Client1, web_v4(), 40, INTERVAL).unwrap();
    let seed: u64 = std::env::var("GSLB_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("seed {seed} (GSLB_SEED={seed} repeats these delays)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let rounds = scale::sized(5, 20);
    let mut cut_short = 0;
    for round in 0..rounds {
        let weights = round_weights(round);
        let what = format!("round {round}");
        d.write_configs(&Setup::from(&weights)).unwrap();
        // edge-b reloads cleanly first: its state is the reference, and
        // its reload time tells how long edge-a's reload runs.
        let started = Instant::now();
        d.reload(EdgeNode::EdgeB).unwrap();
        let reload_time = started.elapsed();
        // Mostly inside the reload, sometimes just before or after it.
        let window = (reload_time * 3 / 2).clamp(Duration::from_millis(1), Duration::from_millis(150));
        let delay = Duration::from_micros(rng.gen_range(0..window.as_micros() as u64));
        let before = traffic.snapshot();
        // The reload runs on its own thread; the kill lands wherever it
        // is by then (possibly before the agent read the request, possibly
        // after it answered). The sleep is the random moment, not a wait.
        let outcome = std::thread::scope(|s| {
            let reload = s.spawn(|| d.reload(EdgeNode::EdgeA));
            std::thread::sleep(delay);
            d.kill_agent(EdgeNode::EdgeA).unwrap();
            reload.join().expect("reload thread")
        });
        println!(
            "{what}: kill -9 {:.1} ms into the reload (edge-b's took {:.1} ms; {})",
            delay.as_secs_f64() * 1000.0,
            reload_time.as_secs_f64() * 1000.0,
            if outcome.is_ok() { "it had been applied" } else { "cut short" }
        );
        cut_short += outcome.is_err() as u64;
        d.start_agent(EdgeNode::EdgeA).unwrap();
        assert_same_state(&d, &what);
        let status = d.status(EdgeNode::EdgeA).unwrap();
        assert!(status.adopted, "{what}: the restarted agent did not adopt the pinned state");
        assert_status_weights(&status, &weights, &what);
        wait_for_progress(&traffic, &before, 5, &what);
    }
    println!("{cut_short} of {rounds} reloads were cut short by the kill");
    let reports = traffic.stop();
    assert_untouched(&reports, "across the kills");
    let timeouts: u64 = reports.iter().map(|r| r.timeouts).sum();
    assert_eq!(timeouts, 0, "requests went unanswered for over a second: traffic stopped");
}

// ---- start-up errors -------------------------------------------------------

/// A scratch directory for one start-up test, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = PathBuf::from(format!("/run/gslb-faults-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A small valid config; `interface`, `admin_socket` and `bpffs_pin` vary.
fn startup_config(interface: &str, admin_socket: &Path, bpffs_pin: &Path) -> String {
    format!(
        r#"[edge]
name = "faults"
interfaces = ["{interface}"]
tunnel_source_v4 = "192.0.2.1"
admin_socket = "{}"
bpffs_pin = "{}"
# The agent runs in a fresh network namespace, whose loopback is down.
metrics_listen = "0.0.0.0:9477"

[[vip]]
name = "web"
address = "203.0.113.1"
port = 80
protocol = "tcp"
pools = ["p"]

[[pool]]
name = "p"
backends = [ {{ address = "198.51.100.1" }} ]
"#,
        admin_socket.display(),
        bpffs_pin.display()
    )
}

/// What the agent's child does to its mount namespace before exec (it
/// always gets a fresh network namespace).
enum Mounts {
    /// The host's mounts.
    Shared,
    /// A private copy with bpffs unmounted from /sys/fs/bpf.
    WithoutBpffs,
    /// A private copy with this directory bind-mounted read-only.
    ReadOnly(PathBuf),
}

/// Runs `gslb run --config CONFIG` to its end in a fresh network
/// namespace, with `mounts`; returns its exit code and stderr. The host's
/// mounts are never changed: the child changes only its private copy.
fn run_agent(config: &Path, mounts: Mounts) -> (Option<i32>, String) {
    let mut cmd = Command::new(LAB_BINARY);
    cmd.args(["gslb", "run", "--config"]).arg(config).env_remove("RUST_BACKTRACE");
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let bpffs = CString::new("/sys/fs/bpf").unwrap();
    let read_only = match &mounts {
        Mounts::ReadOnly(dir) => Some(CString::new(dir.as_os_str().as_bytes()).unwrap()),
        _ => None,
    };
    let private = !matches!(mounts, Mounts::Shared);
    let without_bpffs = matches!(mounts, Mounts::WithoutBpffs);
    // SAFETY: between fork and exec only syscalls are made (unshare, mount,
    // umount2); the strings were allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let flags = libc::CLONE_NEWNET | if private { libc::CLONE_NEWNS } else { 0 };
            if libc::unshare(flags) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if !private {
                return Ok(());
            }
            let root = c"/".as_ptr();
            if libc::mount(std::ptr::null(), root, std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null())
                != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if without_bpffs {
                // bpffs may be mounted more than once there: unmount until
                // nothing is left.
                while libc::umount2(bpffs.as_ptr(), libc::MNT_DETACH) == 0 {}
            }
            if let Some(dir) = &read_only {
                let bind = libc::MS_BIND;
                if libc::mount(dir.as_ptr(), dir.as_ptr(), std::ptr::null(), bind, std::ptr::null()) != 0
                    || libc::mount(
                        std::ptr::null(),
                        dir.as_ptr(),
                        std::ptr::null(),
                        bind | libc::MS_REMOUNT | libc::MS_RDONLY,
                        std::ptr::null(),
                    ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawning gslb run");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            return (status.code(), stderr);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("gslb run did not exit within 30 s: it should have refused to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The agent refused to start with a message holding every one of `says`,
/// and left neither pins nor its socket behind.
fn assert_refused(outcome: (Option<i32>, String), says: &[&str], pins: &Path, socket: &Path) {
    let (code, stderr) = outcome;
    println!("gslb run said: {}", stderr.trim());
    assert_eq!(code, Some(1), "exit status; stderr:\n{stderr}");
    for text in says {
        assert!(stderr.contains(text), "the error does not say {text:?}:\n{stderr}");
    }
    assert!(!pins.exists(), "{} was created", pins.display());
    assert!(!socket.exists(), "{} was left behind", socket.display());
}

/// A pin directory on the host's bpffs, unique to this test.
fn host_pins(name: &str) -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/gslb-faults-{}-{name}", std::process::id()))
}

#[test]
fn startup_refuses_without_bpffs() {
    let _serial = serial();
    let scratch = Scratch::new("bpffs");
    let socket = scratch.0.join("gslb.sock");
    let config = scratch.0.join("gslb.toml");

    // bpffs not mounted at all (in the agent's private mount namespace).
    let pins = host_pins("unmounted");
    std::fs::write(&config, startup_config("lo", &socket, &pins)).unwrap();
    let outcome = run_agent(&config, Mounts::WithoutBpffs);
    assert_refused(outcome, &["is not on a BPF filesystem", "mount -t bpf bpf /sys/fs/bpf"], &pins, &socket);

    // A pin path on another filesystem.
    let pins = scratch.0.join("pins");
    std::fs::write(&config, startup_config("lo", &socket, &pins)).unwrap();
    let outcome = run_agent(&config, Mounts::Shared);
    assert_refused(outcome, &["is not on a BPF filesystem", "choose a path under a bpffs mount"], &pins, &socket);
}

#[test]
fn startup_refuses_an_interface_that_does_not_exist() {
    let _serial = serial();
    let scratch = Scratch::new("interface");
    let socket = scratch.0.join("gslb.sock");
    let config = scratch.0.join("gslb.toml");
    let pins = host_pins("interface");
    // The fresh namespace has only `lo`.
    std::fs::write(&config, startup_config("eth0", &socket, &pins)).unwrap();
    let outcome = run_agent(&config, Mounts::Shared);
    assert_refused(outcome, &["names eth0, which does not exist", "ip link show"], &pins, &socket);
}

#[test]
fn startup_refuses_an_admin_socket_it_cannot_create() {
    let _serial = serial();
    let scratch = Scratch::new("socket");
    let config = scratch.0.join("gslb.toml");
    let pins = host_pins("socket");

    // The socket's directory is a file.
    let file = scratch.0.join("not-a-directory");
    std::fs::write(&file, "").unwrap();
    let socket = file.join("gslb.sock");
    std::fs::write(&config, startup_config("lo", &socket, &pins)).unwrap();
    let outcome = run_agent(&config, Mounts::Shared);
    assert_refused(outcome, &["is not a directory", "choose another edge.admin_socket"], &pins, &socket);

    // ... or one level further up.
    let socket = file.join("run").join("gslb.sock");
    std::fs::write(&config, startup_config("lo", &socket, &pins)).unwrap();
    let outcome = run_agent(&config, Mounts::Shared);
    assert_refused(outcome, &["cannot create its directory", "choose another edge.admin_socket"], &pins, &socket);

    // A read-only filesystem (root ignores permission bits, not this).
    let read_only = scratch.0.join("read-only");
    std::fs::create_dir(&read_only).unwrap();
    let socket = read_only.join("gslb.sock");
    std::fs::write(&config, startup_config("lo", &socket, &pins)).unwrap();
    let outcome = run_agent(&config, Mounts::ReadOnly(read_only));
    assert_refused(outcome, &["Read-only file system", "choose another edge.admin_socket"], &pins, &socket);
}
