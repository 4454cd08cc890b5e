//! The anycast announcer end to end: the router runs BIRD and installs the
//! VIP routes it learns from the edges as ECMP; each edge runs BIRD (or
//! GoBGP) driven by its agent. Times from an event to the router's kernel
//! table changing are printed (never asserted) and quoted in
//! docs/operations.md.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gslb_tests::bgp::{
    lab_vips, router_edges_for, wait_for_edges, BgpSetup, Daemon, RouteWatch, LAB_DRAIN_WAIT_MS, LAB_WITHDRAW_AFTER_MS,
};
use gslb_tests::checks::{assert_untouched, short_from_both, web_v4};
use gslb_tests::deploy::{Deployment, Setup};
use gslb_tests::lab::{BackendNode, ClientNode, EdgeNode, Node, Region};
use gslb_tests::traffic::LongLived;

static SERIAL: Mutex<()> = Mutex::new(());
const LAB_BINARY: &str = env!("CARGO_BIN_EXE_gslb-lab");
const INTERVAL: Duration = Duration::from_millis(10);
/// Bound on a route change the agent causes (hysteresis, the daemon, BGP).
const ROUTE_CHANGE: Duration = Duration::from_secs(10);
const BOTH: [EdgeNode; 2] = [EdgeNode::EdgeA, EdgeNode::EdgeB];
/// A VIP on its own address whose only pool is ap-south (scenario 3).
const LONE_VIP: &str = "203.0.113.20";
/// The same, with us-east as its fallback pool (scenario 3).
const RESCUED_VIP: &str = "203.0.113.21";

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn deploy(edge_a: Daemon, edge_b: Daemon, tune: impl FnOnce(&mut Setup)) -> Deployment {
    let bgp = BgpSetup { edge_a, edge_b, agent_config: true, ..BgpSetup::default() };
    let mut setup = Setup { bgp: Some(bgp), ..Setup::default() };
    tune(&mut setup);
    let d = Deployment::start(LAB_BINARY.as_ref(), &setup).expect("deploying gslb with BGP on the lab");
    for vip in lab_vips() {
        wait_for_edges(&d.lab, vip, &BOTH, ROUTE_CHANGE).expect("both edges announce every VIP");
    }
    d
}

/// Polls `done` until it holds, for at most `ROUTE_CHANGE`.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + ROUTE_CHANGE;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {ROUTE_CHANGE:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn announced(d: &Deployment, edge: EdgeNode, address: &str) -> bool {
    let address: IpAddr = address.parse().unwrap();
    let bgp = d.status(edge).unwrap().bgp.expect("status has a bgp section");
    bgp.routes.iter().any(|r| r.address == address && r.announced)
}

/// Drops `edge`'s health checks (port 8080) to `backends` in its own
/// namespace: the edge's view only.
fn block_checks(d: &Deployment, edge: EdgeNode, backends: &[BackendNode]) {
    let v4: Vec<String> = backends.iter().map(|b| b.v4().to_string()).collect();
    let v6: Vec<String> = backends.iter().map(|b| b.v6().to_string()).collect();
    let (v4, v6) = (format!("{{ {} }}", v4.join(", ")), format!("{{ {} }}", v6.join(", ")));
    let commands: [&[&str]; 4] = [
        &["nft", "add", "table", "inet", "block_checks"],
        &["nft", "add", "chain", "inet", "block_checks", "out", "{ type filter hook output priority 0; }"],
        &["nft", "add", "rule", "inet", "block_checks", "out", "ip", "daddr", &v4, "tcp", "dport", "8080", "drop"],
        &["nft", "add", "rule", "inet", "block_checks", "out", "ip6", "daddr", &v6, "tcp", "dport", "8080", "drop"],
    ];
    for command in commands {
        d.lab.exec(Node::Edge(edge), command).expect("blocking health checks");
    }
}

#[test]
fn both_edges_announce_and_traffic_spreads_over_them() {
    let _serial = serial();
    let d = deploy(Daemon::Bird, Daemon::Gobgp, |_| {});
    for vip in lab_vips() {
        assert_eq!(router_edges_for(&d.lab, vip).unwrap(), BOTH.into_iter().collect(), "{vip}");
    }
    let before: Vec<u64> = BOTH.iter().map(|&e| d.status(e).unwrap().counters.forwarded).collect();
    let report = short_from_both(&d, web_v4(), 400);
    assert_eq!(report.failures, 0, "{:?}", report.errors);
    for (i, edge) in BOTH.into_iter().enumerate() {
        let status = d.status(edge).unwrap();
        assert!(status.counters.forwarded > before[i] + 100, "{edge} forwarded too little: ECMP not spreading");
        let bgp = status.bgp.unwrap();
        assert!(bgp.reachable && bgp.sessions_established >= 2, "{edge}: {bgp:?}");
        assert!(bgp.routes.iter().all(|r| r.announced && r.reason_code == "serving"), "{edge}: {bgp:?}");
    }
}

#[test]
fn an_edge_whose_agent_stops_or_dies_is_withdrawn_and_no_connection_breaks() {
    let _serial = serial();
    let d = deploy(Daemon::Bird, Daemon::Bird, |_| {});
    let watch = RouteWatch::start(&d.lab).unwrap();
    let traffic = LongLived::start(&d.lab, ClientNode::Client1, web_v4(), 60, INTERVAL).unwrap();
    let vip: IpAddr = lab_vips()[0];

    for (how, stop) in [
        ("SIGTERM", Deployment::stop_agent as fn(&Deployment, EdgeNode) -> anyhow::Result<()>),
        ("SIGKILL", Deployment::kill_agent),
    ] {
        let at = Instant::now();
        stop(&d, EdgeNode::EdgeA).unwrap();
        let took = watch.change_after(at, vip, ROUTE_CHANGE).unwrap();
        wait_for_edges(&d.lab, vip, &[EdgeNode::EdgeB], ROUTE_CHANGE).unwrap();
        println!("agent {how}: router table changed after {:.1} ms", took.as_secs_f64() * 1e3);
        // Everything now arrives at edge-b, which picks the same backends.
        let before = traffic.snapshot();
        gslb_tests::checks::wait_for_progress(&traffic, &before, 20, &format!("after the {how}"));
        d.start_agent(EdgeNode::EdgeA).unwrap();
        wait_for_edges(&d.lab, vip, &BOTH, ROUTE_CHANGE).unwrap();
    }
    let reports = traffic.stop();
    assert_untouched(&reports, "edge-a's agent stopped and killed");
}

#[test]
fn a_vip_with_no_serving_pool_is_withdrawn_alone_and_the_guard_holds_on_total_failure() {
    let _serial = serial();
    let extra = format!(
        "\n[[vip]]\nname = \"lone\"\naddress = \"{LONE_VIP}\"\nport = 80\nprotocol = \"tcp\"\npools = [\"ap-south\"]\n\
         \n[[vip]]\nname = \"rescued\"\naddress = \"{RESCUED_VIP}\"\nport = 80\nprotocol = \"tcp\"\npools = [\"ap-south\"]\n\
         fallback_pool = \"us-east\"\n"
    );
    let d = deploy(Daemon::Bird, Daemon::Bird, |s| {
        s.monitor = true;
        s.extra = extra;
    });
    let lone: IpAddr = LONE_VIP.parse().unwrap();
    let rescued: IpAddr = RESCUED_VIP.parse().unwrap();
    wait_for_edges(&d.lab, lone, &BOTH, ROUTE_CHANGE).unwrap();
    wait_for_edges(&d.lab, rescued, &BOTH, ROUTE_CHANGE).unwrap();

    // Scenario 3: edge-a alone sees ap-south down: it withdraws the lone
    // VIP only; edge-b keeps it; the other VIPs stay on both, and so does
    // the VIP whose fallback pool passes its checks (with the default
    // panic cap, which every listed backend down trips).
    let ap_south = Region::ApSouth.backends();
    let watch = RouteWatch::start(&d.lab).unwrap();
    let at = Instant::now();
    block_checks(&d, EdgeNode::EdgeA, &ap_south);
    let took = watch.change_after(at, lone, ROUTE_CHANGE).unwrap();
    wait_for_edges(&d.lab, lone, &[EdgeNode::EdgeB], ROUTE_CHANGE).unwrap();
    println!("every backend of a VIP down: router table changed after {:.0} ms", took.as_secs_f64() * 1e3);
    let bgp = d.status(EdgeNode::EdgeA).unwrap().bgp.unwrap();
    let lone_status = bgp.routes.iter().find(|r| r.address == lone).unwrap();
    assert_eq!(lone_status.reason_code, "no-serving-pool", "{lone_status:?}");
    // Decided in the same step as the lone VIP's withdrawal.
    let rescued_status = bgp.routes.iter().find(|r| r.address == rescued).unwrap();
    assert!(rescued_status.announced && rescued_status.reason_code == "serving", "{rescued_status:?}");
    let vip = d.status(EdgeNode::EdgeA).unwrap().vips.into_iter().find(|v| v.name == "rescued").unwrap();
    assert!(vip.fallback && !vip.panic, "edge-a: {vip:?}");
    assert_eq!(router_edges_for(&d.lab, rescued).unwrap(), BOTH.into_iter().collect(), "the rescued VIP moved");
    for vip in lab_vips() {
        assert_eq!(router_edges_for(&d.lab, vip).unwrap(), BOTH.into_iter().collect(), "{vip} moved");
        assert!(announced(&d, EdgeNode::EdgeA, &vip.to_string()));
    }

    // Scenario 4: edge-a's checks fail everywhere (its own fault): it
    // keeps announcing what it announced and says so.
    let all: Vec<BackendNode> = BackendNode::ALL.to_vec();
    d.lab.exec(Node::Edge(EdgeNode::EdgeA), &["nft", "delete", "table", "inet", "block_checks"]).unwrap();
    block_checks(&d, EdgeNode::EdgeA, &all);
    wait_until("edge-a reports the guard with every backend down", || {
        let status = d.status(EdgeNode::EdgeA).unwrap();
        let all_down = status.pools.iter().flat_map(|p| &p.backends).all(|b| b.health == "down");
        all_down && status.bgp.is_some_and(|b| b.guard)
    });
    // Longer than withdraw_after_ms: the guard, not the timer, holds.
    std::thread::sleep(Duration::from_millis(3 * LAB_WITHDRAW_AFTER_MS));
    assert!(d.metrics(EdgeNode::EdgeA).unwrap().contains("gslb_announce_guard 1"), "no guard metric");
    for vip in lab_vips() {
        assert_eq!(router_edges_for(&d.lab, vip).unwrap(), BOTH.into_iter().collect(), "{vip} withdrawn by the guard");
    }
    let report = short_from_both(&d, web_v4(), 200);
    assert_eq!(report.failures, 0, "traffic stopped under the guard: {:?}", report.errors);
}

#[test]
fn an_edge_drain_prefers_the_other_edge_first_then_withdraws() {
    let _serial = serial();
    let d = deploy(Daemon::Bird, Daemon::Bird, |_| {});
    let bgp = d.bgp.as_ref().unwrap();
    let traffic = LongLived::start(&d.lab, ClientNode::Client1, web_v4(), 60, INTERVAL).unwrap();
    let vip: IpAddr = lab_vips()[0];
    let watch = RouteWatch::start(&d.lab).unwrap();

    let at = Instant::now();
    d.drain_edge(EdgeNode::EdgeA, None).unwrap();
    // First less preferred: the router still holds edge-a's route, not
    // best, and sends everything to edge-b.
    let moved = watch.change_after(at, vip, ROUTE_CHANGE).unwrap();
    let routes = bgp.router_routes(vip).unwrap();
    let a = routes.iter().find(|r| r.edge == EdgeNode::EdgeA).expect("edge-a's route is still there while draining");
    assert!(!a.best && a.as_path.len() > 1, "edge-a's route is not less preferred: {routes:?}");
    assert_eq!(router_edges_for(&d.lab, vip).unwrap(), [EdgeNode::EdgeB].into_iter().collect());
    // Then, after drain_wait_ms, withdrawn.
    wait_until("edge-a's route withdrawn after the drain", || {
        !bgp.router_routes(vip).unwrap().iter().any(|r| r.edge == EdgeNode::EdgeA)
    });
    let withdrawn = at.elapsed();
    assert!(withdrawn >= Duration::from_millis(LAB_DRAIN_WAIT_MS), "withdrawn before drain_wait_ms");
    println!(
        "edge drain: less preferred after {:.1} ms, withdrawn after {:.0} ms",
        moved.as_secs_f64() * 1e3,
        withdrawn.as_secs_f64() * 1e3
    );
    let edge_drain = d.status(EdgeNode::EdgeA).unwrap().bgp.unwrap().edge_drain;
    assert_eq!(edge_drain.as_deref(), Some("drained"));

    d.undrain_edge(EdgeNode::EdgeA).unwrap();
    wait_for_edges(&d.lab, vip, &BOTH, ROUTE_CHANGE).unwrap();
    let reports = traffic.stop();
    assert_untouched(&reports, "edge-a drained and undrained");
}

#[test]
fn a_dead_daemon_is_reported_steering_goes_on_and_announcements_resume() {
    let _serial = serial();
    // GoBGP restarts with an empty table: only the agent can announce again.
    let d = deploy(Daemon::Gobgp, Daemon::Bird, |_| {});
    let bgp = d.bgp.as_ref().unwrap();
    let vip: IpAddr = lab_vips()[0];
    bgp.kill_daemon(&d.lab, EdgeNode::EdgeA).unwrap();
    wait_for_edges(&d.lab, vip, &[EdgeNode::EdgeB], ROUTE_CHANGE).unwrap();
    // The agent notices and says so; steer stays attached.
    wait_until("the agent notices its daemon is gone", || !d.status(EdgeNode::EdgeA).unwrap().bgp.unwrap().reachable);
    let status = d.status(EdgeNode::EdgeA).unwrap();
    let error = status.bgp.as_ref().unwrap().last_error.clone().unwrap_or_default();
    assert!(!error.is_empty(), "no error reported");
    assert!(status.links.iter().all(|l| l.attached), "steer detached: {:?}", status.links);
    // Steering itself works: route the VIP to edge-a by hand.
    d.lab.route_vips_to(EdgeNode::EdgeA).unwrap();
    let report = gslb_tests::traffic::short_connections(&d.lab, ClientNode::Client2, web_v4(), 100, 10).unwrap();
    assert_eq!(report.failures, 0, "{:?}", report.errors);
    // Remove the hand-made routes (the kernel's `boot` protocol), not BIRD's.
    for (family, prefix) in [("-4", format!("{vip}/32")), ("-6", format!("{}/128", lab_vips()[1]))] {
        d.lab.exec(Node::Router, &["ip", family, "route", "del", &prefix, "proto", "boot"]).unwrap();
    }

    // The daemon comes back with no routes: the agent announces again.
    bgp.restart_daemon(&d.lab, EdgeNode::EdgeA).unwrap();
    wait_for_edges(&d.lab, vip, &BOTH, ROUTE_CHANGE).unwrap();
    println!("daemon down: agent reported {error:?}");
}

/// Whether `pid` is a running `bgp-watchdog` (zombies and reused pids
/// excluded).
fn is_watchdog(pid: i32) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next());
    cmdline.split(|&b| b == 0).any(|arg| arg == b"bgp-watchdog") && state != Some("Z")
}

#[test]
fn a_new_agent_takes_over_from_the_watchdog_of_one_killed_while_its_daemon_was_down() {
    let _serial = serial();
    let d = deploy(Daemon::Bird, Daemon::Bird, |_| {});
    let bgp = d.bgp.as_ref().unwrap();
    let vip: IpAddr = lab_vips()[0];
    let pid_file = gslb_tests::deploy::admin_socket(&d.lab, EdgeNode::EdgeA).with_extension("bgp-watchdog.pid");

    // The daemon dies, then the agent: its watchdog cannot withdraw and
    // keeps retrying.
    bgp.kill_daemon(&d.lab, EdgeNode::EdgeA).unwrap();
    wait_until("the agent notices its daemon is gone", || !d.status(EdgeNode::EdgeA).unwrap().bgp.unwrap().reachable);
    let old: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    d.kill_agent(EdgeNode::EdgeA).unwrap();
    assert!(is_watchdog(old), "the old watchdog should be retrying its withdrawal");

    // A new agent starts while the daemon is still down: it stops the old
    // watchdog, whose late withdrawal would otherwise undo its routes once
    // the daemon is back.
    d.start_agent(EdgeNode::EdgeA).unwrap();
    assert!(!is_watchdog(old), "the new agent left the old watchdog running");
    let new: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    assert!(new != old && is_watchdog(new), "the new agent's watchdog is not recorded");
    // Each agent has its own: edge-b's watchdog still runs.
    let other = gslb_tests::deploy::admin_socket(&d.lab, EdgeNode::EdgeB).with_extension("bgp-watchdog.pid");
    assert!(is_watchdog(std::fs::read_to_string(other).unwrap().trim().parse().unwrap()), "edge-b's watchdog is gone");

    bgp.restart_daemon(&d.lab, EdgeNode::EdgeA).unwrap();
    wait_for_edges(&d.lab, vip, &BOTH, ROUTE_CHANGE).unwrap();
    // Longer than two of the old watchdog's retry intervals (500 ms): the
    // routes stay.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(router_edges_for(&d.lab, vip).unwrap(), BOTH.into_iter().collect(), "edge-a's route was withdrawn");
}

#[test]
fn drain_on_exit_goes_less_preferred_before_withdrawing() {
    let _serial = serial();
    let d = deploy(Daemon::Bird, Daemon::Bird, |_| {});
    let bgp = d.bgp.as_ref().unwrap();
    let vip: IpAddr = lab_vips()[0];
    d.stop_agent(EdgeNode::EdgeA).unwrap();
    d.start_agent_with(EdgeNode::EdgeA, &["--drain-on-exit"]).unwrap();
    wait_for_edges(&d.lab, vip, &BOTH, ROUTE_CHANGE).unwrap();
    let traffic = LongLived::start(&d.lab, ClientNode::Client1, web_v4(), 60, INTERVAL).unwrap();

    let at = Instant::now();
    let stopping = std::thread::scope(|s| {
        let stop = s.spawn(|| d.stop_agent(EdgeNode::EdgeA));
        // While the agent waits drain_wait_ms, its route is held but not best.
        wait_until("edge-a's route less preferred during the exit", || {
            bgp.router_routes(vip).unwrap().iter().any(|r| r.edge == EdgeNode::EdgeA && !r.best && r.as_path.len() > 1)
        });
        assert_eq!(router_edges_for(&d.lab, vip).unwrap(), [EdgeNode::EdgeB].into_iter().collect());
        stop.join().unwrap()
    });
    stopping.unwrap();
    let exited = at.elapsed();
    assert!(exited >= Duration::from_millis(LAB_DRAIN_WAIT_MS), "exited after {exited:?}, before drain_wait_ms");
    wait_until("edge-a's route withdrawn at exit", || {
        !bgp.router_routes(vip).unwrap().iter().any(|r| r.edge == EdgeNode::EdgeA)
    });
    println!("--drain-on-exit: the agent exited {:.0} ms after SIGTERM", exited.as_secs_f64() * 1e3);
    let reports = traffic.stop();
    assert_untouched(&reports, "edge-a's agent exiting with --drain-on-exit");
}
