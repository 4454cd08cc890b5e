//! The operator's decisions survive the agent without a fleet: drains and
//! the edge drain are kept in the edge's state file, and an agent killed
//! with SIGKILL and started again goes on with them, checked with real
//! connections and, for the edge drain, with the router's routes.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use gslb_tests::bgp::{lab_vips, wait_for_edges, BgpSetup, Daemon, LAB_ANNOUNCE_AFTER_MS, LAB_DRAIN_WAIT_MS};
use gslb_tests::checks::{short_from_both, web_v4};
use gslb_tests::deploy::{admin_socket, state_file, Deployment, Setup};
use gslb_tests::lab::{BackendNode, EdgeNode, Region};
use gslb_userspace::view::status::{BackendStatus, Status};

static SERIAL: Mutex<()> = Mutex::new(());
const LAB_BINARY: &str = env!("CARGO_BIN_EXE_gslb-lab");
const EDGE: EdgeNode = EdgeNode::EdgeA;
/// Bound on a route change the agent causes (hysteresis, the daemon, BGP).
const ROUTE_CHANGE: Duration = Duration::from_secs(10);

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn addr(b: BackendNode) -> IpAddr {
    b.v4().into()
}

fn backend(status: &Status, b: BackendNode) -> BackendStatus {
    let mut all = status.pools.iter().flat_map(|p| &p.backends);
    all.find(|s| s.address == addr(b)).unwrap_or_else(|| panic!("{b} not in status")).clone()
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
}

/// The backends new connections to the web VIP reach (all of them succeed).
fn reached(d: &Deployment) -> Vec<String> {
    let report = short_from_both(d, web_v4(), 300);
    assert_eq!(report.failures, 0, "{:?}", report.errors);
    report.per_backend.keys().cloned().collect()
}

/// `gslb status` as an operator reads it.
fn status_text(d: &Deployment) -> String {
    let socket = admin_socket(&d.lab, EDGE);
    let (ok, out, err) =
        Deployment::run_gslb(LAB_BINARY.as_ref(), &["status", "--socket", &socket.to_string_lossy()]).unwrap();
    assert!(ok, "gslb status failed: {err}");
    out
}

fn restart(d: &Deployment) -> Duration {
    d.kill_agent(EDGE).unwrap();
    let at = Instant::now();
    d.start_agent(EDGE).unwrap();
    at.elapsed()
}

#[test]
fn drains_survive_kill_9_and_restarts_without_a_fleet() {
    let _serial = serial();
    let started = Instant::now();
    let d = Deployment::start(LAB_BINARY.as_ref(), &Setup::default()).expect("deploying gslb on the lab");
    let names = |backends: &[BackendNode]| backends.iter().map(|b| b.name().to_string()).collect::<Vec<_>>();
    assert_eq!(reached(&d).len(), 6, "every backend serves before any drain");
    assert!(!state_file(&d.lab, EDGE).exists(), "no decision yet, no state file");

    // A backend for 10 minutes, a pool without end, a backend whose time
    // ends while the agent is away, and one drained then undrained.
    let long = BackendNode::UsEast1;
    let short = BackendNode::ApSouth1;
    let undrained = BackendNode::UsEast2;
    d.drain(EDGE, &addr(long).to_string(), Some(Duration::from_secs(600))).unwrap();
    assert_eq!(d.drain(EDGE, Region::EuWest.name(), None).unwrap().len(), 2);
    d.drain(EDGE, &addr(undrained).to_string(), None).unwrap();
    d.undrain(EDGE, &addr(undrained).to_string()).unwrap();
    let short_for = Duration::from_secs(3);
    d.drain(EDGE, &addr(short).to_string(), Some(short_for)).unwrap();
    let short_drained_at = Instant::now();
    let mut serving = names(&[BackendNode::UsEast2, BackendNode::ApSouth2]);
    serving.sort();
    assert_eq!(reached(&d), serving);

    // SIGKILL, and back after the short drain's time is over.
    d.kill_agent(EDGE).unwrap();
    std::thread::sleep(short_for.saturating_sub(short_drained_at.elapsed()) + Duration::from_millis(500));
    let at = Instant::now();
    d.start_agent(EDGE).unwrap();
    println!("agent restarted in {} ms", at.elapsed().as_millis());

    let status = d.status(EDGE).unwrap();
    let file = status.state_file.clone().expect("status reports the state file");
    assert_eq!((&file.path, file.found.as_str()), (&state_file(&d.lab, EDGE), "read"));
    assert_eq!((file.restored_drains, file.restored_edge_drain, file.dropped.len()), (4, false, 0), "{file:?}");
    let b = backend(&status, long);
    let left = b.drain_until_unix.expect("the 10-minute drain keeps its end").saturating_sub(unix_now());
    assert!(b.drained && (560..=600).contains(&left), "{long}: drained {}, {left} s left", b.drained);
    for pool_backend in Region::EuWest.backends() {
        let b = backend(&status, pool_backend);
        assert!(b.drained && b.drain_until_unix.is_none(), "{pool_backend}: {b:?}");
    }
    // The drain whose time ended while the agent was away is what it would
    // have become on an agent that never stopped: drained, its flows cut.
    let b = backend(&status, short);
    assert!(b.drained && b.dead && b.drain_until_unix.is_some_and(|u| u <= unix_now()), "{short}: {b:?}");
    assert!(!backend(&status, undrained).drained, "an undrained backend came back drained");
    assert_eq!(reached(&d), serving, "new connections after the restart");
    let text = status_text(&d);
    println!(
        "{}",
        text.lines().filter(|l| l.contains("state file") || l.contains("drained")).collect::<Vec<_>>().join("\n")
    );
    assert!(text.contains("decisions restored at the start: 4 drains"), "{text}");
    assert!(text.contains("drained: no new flows; recorded flows cut in 9m"), "{text}");
    assert!(text.contains("drained: no new flows; recorded flows run until they end"), "{text}");

    // Undrained, then killed again: nothing comes back drained.
    for target in [addr(long).to_string(), Region::EuWest.name().to_string(), addr(short).to_string()] {
        d.undrain(EDGE, &target).unwrap();
    }
    restart(&d);
    let status = d.status(EDGE).unwrap();
    assert!(status.pools.iter().flat_map(|p| &p.backends).all(|b| !b.drained), "drained after undrain and restart");
    assert_eq!(status.state_file.unwrap().restored_drains, 0);
    assert_eq!(reached(&d).len(), 6, "every backend serves again");

    // A corrupt file is set aside and reported; the agent steers without it.
    d.drain(EDGE, &addr(long).to_string(), None).unwrap();
    d.kill_agent(EDGE).unwrap();
    std::fs::write(state_file(&d.lab, EDGE), b"{\"drains\": {").unwrap();
    d.start_agent(EDGE).unwrap();
    let file = d.status(EDGE).unwrap().state_file.unwrap();
    let aside = format!("{}.bad", state_file(&d.lab, EDGE).display());
    assert_eq!(file.found, "bad", "{file:?}");
    assert_eq!(file.moved_to.as_ref().map(|p| p.display().to_string()), Some(aside.clone()));
    assert_eq!(std::fs::read(&aside).unwrap(), b"{\"drains\": {", "the bad file is kept as it was");
    assert!(status_text(&d).contains("UNUSABLE at the start"));
    assert!(d.agent_log(EDGE).contains("the state file is unusable"));
    assert_eq!(reached(&d).len(), 6, "the agent steers without its state file");
    println!("took {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn an_edge_drain_survives_a_restart_until_its_time_is_over() {
    let _serial = serial();
    let started = Instant::now();
    let bgp = BgpSetup { edge_a: Daemon::Bird, edge_b: Daemon::Bird, agent_config: true, ..BgpSetup::default() };
    let d = Deployment::start(LAB_BINARY.as_ref(), &Setup { bgp: Some(bgp), ..Setup::default() })
        .expect("deploying gslb with BGP on the lab");
    let both = [EdgeNode::EdgeA, EdgeNode::EdgeB];
    let routed_via = |edges: &[EdgeNode]| {
        for vip in lab_vips() {
            wait_for_edges(&d.lab, vip, edges, ROUTE_CHANGE).unwrap_or_else(|e| panic!("{vip}: {e:#}"));
        }
    };
    let edge_drain = || d.status(EDGE).unwrap().bgp.expect("a bgp section").edge_drain;
    // Less preferred first (the router already prefers edge-b), withdrawn
    // after drain_wait_ms.
    let withdrawn = || {
        let deadline = Instant::now() + ROUTE_CHANGE;
        while edge_drain().as_deref() != Some("drained") {
            assert!(Instant::now() < deadline, "the edge drain did not reach its withdraw phase");
            std::thread::sleep(Duration::from_millis(20));
        }
        routed_via(&[EdgeNode::EdgeB]);
    };
    routed_via(&both);

    // Drained, killed, started again: still withdrawn, well past the time
    // a VIP takes to be announced.
    d.drain_edge(EDGE, None).unwrap();
    withdrawn();
    restart(&d);
    std::thread::sleep(Duration::from_millis(LAB_ANNOUNCE_AFTER_MS * 5));
    routed_via(&[EdgeNode::EdgeB]);
    assert_eq!(edge_drain().as_deref(), Some("drained"), "the edge drain is restored in its withdrawn phase");
    assert!(d.status(EDGE).unwrap().state_file.unwrap().restored_edge_drain);
    assert_eq!(reached(&d).len(), 6, "edge-b serves everything");

    // Undrained, killed, started again: announced again.
    d.undrain_edge(EDGE).unwrap();
    routed_via(&both);
    restart(&d);
    routed_via(&both);
    assert_eq!(edge_drain(), None);

    // A drain for a while: with time left at the restart it goes on, and
    // ends by itself; once over while the agent is away, not restored.
    let drain_for = Duration::from_millis(LAB_DRAIN_WAIT_MS * 8);
    d.drain_edge(EDGE, Some(drain_for)).unwrap();
    let drained_at = Instant::now();
    withdrawn();
    restart(&d);
    assert_eq!(edge_drain().as_deref(), Some("drained"), "restored with its time left");
    routed_via(&[EdgeNode::EdgeB]);
    std::thread::sleep(drain_for.saturating_sub(drained_at.elapsed()));
    routed_via(&both);
    println!("an edge drain for {drain_for:?} ended after {:.1} s, over a restart", drained_at.elapsed().as_secs_f64());

    d.drain_edge(EDGE, Some(Duration::from_secs(2))).unwrap();
    withdrawn();
    d.kill_agent(EDGE).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    d.start_agent(EDGE).unwrap();
    routed_via(&both);
    let file = d.status(EDGE).unwrap().state_file.unwrap();
    assert!(!file.restored_edge_drain && file.dropped.iter().any(|d| d.contains("time was over")), "{file:?}");
    assert_eq!(edge_drain(), None);
    println!("took {:.1} s", started.elapsed().as_secs_f64());
}
