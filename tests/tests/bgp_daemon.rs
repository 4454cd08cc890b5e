//! The agent's BGP backends against a real BIRD 2, without XDP: an "edge"
//! BIRD that the agent's code drives, peering with a "router" BIRD, both in
//! a scratch network namespace (over its loopback). Checks that announce,
//! drain attributes and withdrawals reach the router, that the watchdog
//! withdraws when its pipe closes, and that a missing daemon is a clear
//! error. Skipped, saying so, when `bird` is not installed.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gslb_userspace::announce::bird::{self, Bird};
use gslb_userspace::announce::gobgp::Gobgp;
use gslb_userspace::announce::watchdog::Message;
use gslb_userspace::announce::{Daemon, Route};
use gslb_userspace::config::{Bgp, BgpDaemon, DrainStyle};

static SERIAL: Mutex<()> = Mutex::new(());

const VIP_A: &str = "203.0.113.10";
const VIP_B: &str = "203.0.113.11";

/// Two BIRDs in a scratch namespace; removed on drop.
struct Pair {
    netns: String,
    dir: PathBuf,
    include: PathBuf,
}

impl Pair {
    /// `None` (after saying why) when BIRD is not installed.
    fn start(name: &str) -> Option<Pair> {
        if Command::new("bird").arg("--version").output().is_err() {
            eprintln!("SKIPPED: `bird` is not installed (apt-get install bird2; cargo xtask installs it for the lab)");
            return None;
        }
        let netns = format!("gslb-bgp-{name}-{}", std::process::id());
        let dir = std::env::temp_dir().join(&netns);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let include = dir.join("gslb-vips.conf");
        let pair = Pair { netns: netns.clone(), dir: dir.clone(), include: include.clone() };
        run(Command::new("ip").args(["netns", "add", &netns]));
        pair.exec(&["ip", "link", "set", "lo", "up"]);
        // The agent writes the include before BIRD needs it.
        bird::write_atomically(&include, &bird::include_file(&BTreeSet::new(), &pair.bgp())).unwrap();
        let edge = format!(
            "router id 10.255.0.1;\nprotocol device {{}}\ninclude \"{}\";\n\
             protocol bgp uplink {{\n  local 127.0.0.1 as 65001;\n  neighbor 127.0.0.2 port 1179 as 65000;\n  multihop;\n\
             connect delay time 1;\n  connect retry time 1;\n  error wait time 1,5;\n\
             ipv4 {{ import none; export where proto = \"{}\"; next hop self; }};\n}}\n",
            include.display(),
            bird::PROTOCOL_V4
        );
        let router = "router id 10.255.0.2;\nprotocol device {}\n\
             protocol bgp edge {\n  local 127.0.0.2 port 1179 as 65000;\n  neighbor 127.0.0.1 as 65001;\n  multihop;\n\
             connect delay time 1;\n  connect retry time 1;\n  error wait time 1,5;\n\
             ipv4 { import all; export none; };\n}\n";
        for (who, text) in [("edge", edge.as_str()), ("router", router)] {
            let config = dir.join(format!("{who}.conf"));
            std::fs::write(&config, text).unwrap();
            pair.start_bird(who);
        }
        Some(pair)
    }

    fn start_bird(&self, who: &str) {
        let dir = self.dir.display();
        self.exec(&[
            "bird",
            "-c",
            &format!("{dir}/{who}.conf"),
            "-s",
            &format!("{dir}/{who}.ctl"),
            "-P",
            &format!("{dir}/{who}.pid"),
        ]);
    }

    fn stop_bird(&self, who: &str) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join(format!("{who}.pid"))) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                // SAFETY: kill(2) on a pid BIRD wrote for us.
                unsafe { libc::kill(pid, libc::SIGTERM) };
                let gone = wait_for(Duration::from_secs(10), || unsafe { libc::kill(pid, 0) } != 0);
                assert!(gone, "bird {who} (pid {pid}) did not stop");
            }
        }
        let _ = std::fs::remove_file(self.socket(who));
    }

    fn exec(&self, args: &[&str]) {
        run(Command::new("ip").args(["netns", "exec", &self.netns]).args(args));
    }

    fn socket(&self, who: &str) -> PathBuf {
        self.dir.join(format!("{who}.ctl"))
    }

    fn bgp(&self) -> Bgp {
        Bgp {
            daemon: BgpDaemon::Bird,
            bird_socket: self.socket("edge"),
            bird_include: Some(self.include.clone()),
            drain: DrainStyle::GracefulShutdown,
            ..Bgp::default()
        }
    }

    /// The router's view of `prefix`: `show route ... all`.
    fn router_route(&self, address: &str) -> String {
        self.router_query(&format!("show route {address}/32 all"))
    }

    fn router_query(&self, query: &str) -> String {
        let reply = bird::command(&self.socket("router"), query).unwrap();
        reply.iter().map(|(_, line)| line.as_str()).collect::<Vec<_>>().join("\n")
    }

    fn wait_router(&self, what: &str, check: impl Fn(&Pair) -> bool) {
        assert!(wait_for(Duration::from_secs(30), || check(self)), "the router never saw {what}");
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.stop_bird("edge");
        self.stop_bird("router");
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(command: &mut Command) {
    let output = command.output().unwrap();
    assert!(output.status.success(), "{command:?} failed: {}", String::from_utf8_lossy(&output.stderr));
}

/// Polls `check` (BIRD offers no event to wait on) until it holds or
/// `limit` passes.
fn wait_for(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    check()
}

fn route(address: &str, drain: bool) -> Route {
    Route { address: address.parse().unwrap(), drain }
}

fn has(text: &str, address: &str) -> bool {
    text.contains(&format!("{address}/32"))
}

#[test]
fn bird_announces_drains_and_withdraws() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(pair) = Pair::start("announce") else { return };
    let mut edge = Bird::new(&pair.bgp());
    assert!(wait_for(Duration::from_secs(30), || edge.sessions().is_ok_and(|s| s.iter().any(|s| s.established))));
    let sessions = edge.sessions().unwrap();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!((sessions[0].name.as_str(), sessions[0].state.as_str()), ("uplink", "Established"));

    let both: BTreeSet<Route> = [route(VIP_A, false), route(VIP_B, false)].into();
    edge.announce(&both, &BTreeSet::new(), true).unwrap();
    pair.wait_router("both VIPs", |p| has(&p.router_route(VIP_A), VIP_A) && has(&p.router_route(VIP_B), VIP_B));
    assert!(!pair.router_route(VIP_A).contains("(65535,0)"));

    // Drain: still announced, now with GRACEFUL_SHUTDOWN.
    let drained: BTreeSet<Route> = [route(VIP_A, true), route(VIP_B, false)].into();
    edge.announce(&drained, &both, false).unwrap();
    pair.wait_router("the drain community", |p| p.router_route(VIP_A).contains("(65535,0)"));
    assert!(!pair.router_route(VIP_B).contains("(65535,0)"));

    // Withdraw one: only it goes.
    let one: BTreeSet<Route> = [route(VIP_B, false)].into();
    edge.announce(&one, &drained, false).unwrap();
    pair.wait_router("the withdrawal", |p| !has(&p.router_route(VIP_A), VIP_A));
    assert!(has(&pair.router_route(VIP_B), VIP_B));
}

#[test]
fn bird_down_is_a_clear_error_and_recovers() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(pair) = Pair::start("down") else { return };
    let mut edge = Bird::new(&pair.bgp());
    pair.stop_bird("edge");
    let routes: BTreeSet<Route> = [route(VIP_A, false)].into();
    let error = format!("{:#}", edge.announce(&routes, &BTreeSet::new(), true).unwrap_err());
    assert!(error.contains("connecting to BIRD's control socket") && error.contains("is bird running"), "{error}");
    assert!(edge.sessions().is_err());
    // Back: it reads the include, which already holds the route.
    pair.start_bird("edge");
    assert!(wait_for(Duration::from_secs(10), || edge.sessions().is_ok()));
    edge.announce(&routes, &BTreeSet::new(), true).unwrap();
    pair.wait_router("the VIP after BIRD came back", |p| has(&p.router_route(VIP_A), VIP_A));
}

/// `gslb bgp-watchdog`, as the agent starts it (here through the lab
/// binary, `gslb-lab gslb bgp-watchdog`).
fn watchdog() -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_gslb-lab")).args(["gslb", "bgp-watchdog"]).stdin(Stdio::piped()).spawn().unwrap()
}

fn send(child: &mut std::process::Child, message: &Message) {
    let stdin = child.stdin.as_mut().unwrap();
    writeln!(stdin, "{}", serde_json::to_string(message).unwrap()).unwrap();
}

fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the watchdog did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn watchdog_withdraws_when_the_agent_is_gone_and_not_after_a_clean_exit() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(pair) = Pair::start("watchdog") else { return };
    let bgp = pair.bgp();
    let mut edge = Bird::new(&bgp);
    let routes: BTreeSet<Route> = [route(VIP_A, false)].into();

    // A clean exit: the agent says `exit`; the route stays (the agent
    // withdrew it itself, or in this test, deliberately did not).
    let mut clean = watchdog();
    send(&mut clean, &Message::Config(Box::new(bgp.clone())));
    send(&mut clean, &Message::Routes(routes.clone()));
    edge.announce(&routes, &BTreeSet::new(), true).unwrap();
    pair.wait_router("the VIP", |p| has(&p.router_route(VIP_A), VIP_A));
    send(&mut clean, &Message::Exit);
    drop(clean.stdin.take());
    assert!(wait_exit(&mut clean).success());
    assert!(std::fs::read_to_string(&pair.include).unwrap().contains(VIP_A));

    // The agent dies: its end of the pipe closes without `exit`.
    let mut orphan = watchdog();
    send(&mut orphan, &Message::Config(Box::new(bgp)));
    send(&mut orphan, &Message::Routes(routes));
    drop(orphan.stdin.take());
    assert!(wait_exit(&mut orphan).success());
    assert!(!std::fs::read_to_string(&pair.include).unwrap().contains(VIP_A));
    pair.wait_router("the watchdog's withdrawal", |p| !has(&p.router_route(VIP_A), VIP_A));
}

#[test]
fn include_is_replaced_atomically() {
    let dir = std::env::temp_dir().join(format!("gslb-bgp-include-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("vips.conf");
    bird::write_atomically(&path, "one").unwrap();
    bird::write_atomically(&path, "two").unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "two");
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 1, "a temporary file was left behind: {left:?}");
    let error = format!("{:#}", bird::write_atomically(Path::new("/nonexistent/dir/vips.conf"), "x").unwrap_err());
    assert!(error.contains("bgp.bird_include /nonexistent/dir/vips.conf"), "{error}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The router peers with a gobgpd in the namespace (BGP on 127.0.0.3:179,
/// API on 127.0.0.1:50051 there); the agent's `Gobgp` runs `gobgp` from a
/// thread that entered the namespace.
#[test]
fn gobgp_announces_drains_and_withdraws() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if Command::new("gobgpd").arg("--version").output().is_err() {
        eprintln!("SKIPPED: `gobgpd` is not installed (apt-get install gobgpd)");
        return;
    }
    let Some(pair) = Pair::start("gobgp") else { return };
    // gobgpd takes port 179 in the namespace.
    pair.stop_bird("edge");
    // The router gets a second session, towards gobgpd.
    let router = std::fs::read_to_string(pair.dir.join("router.conf")).unwrap()
        + "protocol bgp gobgp {\n  local 127.0.0.2 port 1179 as 65000;\n  neighbor 127.0.0.3 as 65002;\n  multihop;\n\
           connect delay time 1;\n  connect retry time 1;\n  error wait time 1,5;\n  ipv4 { import all; export none; };\n}\n";
    std::fs::write(pair.dir.join("router.conf"), router).unwrap();
    let reply = bird::command(&pair.socket("router"), "configure").unwrap();
    assert!(reply.last().unwrap().0 < 1000, "{reply:?}");
    let config = pair.dir.join("gobgpd.toml");
    std::fs::write(
        &config,
        "[global.config]\n  as = 65002\n  router-id = \"10.255.0.3\"\n  local-address-list = [\"127.0.0.3\"]\n\
         [[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"127.0.0.2\"\n    peer-as = 65000\n\
         [neighbors.transport.config]\n    remote-port = 1179\n    local-address = \"127.0.0.3\"\n\
         [neighbors.ebgp-multihop.config]\n    enabled = true\n    multihop-ttl = 2\n\
         [neighbors.timers.config]\n    connect-retry = 1\n",
    )
    .unwrap();
    let mut gobgpd = Command::new("ip")
        .args(["netns", "exec", &pair.netns, "gobgpd", "-f"])
        .arg(&config)
        .args(["--api-hosts", "127.0.0.1:50051", "--log-level", "warn"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let netns = pair.netns.clone();
    let outcome = std::thread::spawn(move || {
        enter_netns(&netns);
        let bgp = Bgp { daemon: BgpDaemon::Gobgp, drain: DrainStyle::GracefulShutdown, ..Bgp::default() };
        let mut edge = Gobgp::new(&bgp);
        assert!(
            wait_for(Duration::from_secs(30), || edge.sessions().is_ok_and(|s| s.iter().any(|s| s.established))),
            "gobgpd never established its session: {:?}",
            edge.sessions()
        );
        let one: BTreeSet<Route> = [route(VIP_A, false)].into();
        edge.announce(&one, &BTreeSet::new(), true).unwrap();
        let drained: BTreeSet<Route> = [route(VIP_A, true)].into();
        (edge, one, drained)
    })
    .join();
    let (mut edge, one, drained) = match outcome {
        Ok(v) => v,
        Err(panic) => {
            let _ = gobgpd.kill();
            let _ = gobgpd.wait();
            std::panic::resume_unwind(panic);
        }
    };
    pair.wait_router("the VIP from gobgpd", |p| has(&p.router_route(VIP_A), VIP_A));
    let netns = pair.netns.clone();
    let drain = std::thread::spawn(move || {
        enter_netns(&netns);
        edge.announce(&drained, &one, false).map(|()| (edge, drained))
    });
    let (edge, drained) = drain.join().unwrap().unwrap();
    pair.wait_router("the drain community from gobgpd", |p| p.router_route(VIP_A).contains("(65535,0)"));
    let netns = pair.netns.clone();
    let mut edge = edge;
    std::thread::spawn(move || {
        enter_netns(&netns);
        edge.announce(&BTreeSet::new(), &drained, false)
    })
    .join()
    .unwrap()
    .unwrap();
    pair.wait_router("gobgpd's withdrawal", |p| !has(&p.router_route(VIP_A), VIP_A));
    let _ = gobgpd.kill();
    let _ = gobgpd.wait();
}

/// Moves this thread (and what it spawns) into the namespace.
fn enter_netns(name: &str) {
    let file = std::fs::File::open(format!("/run/netns/{name}")).unwrap();
    // SAFETY: setns on an open namespace file; affects this thread only.
    let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}
