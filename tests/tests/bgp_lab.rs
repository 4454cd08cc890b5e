//! The lab's real routing, without the agent driving it: the router's BIRD
//! peers with BIRD on edge-a and GoBGP on edge-b; the test announces and
//! withdraws the VIPs by hand, as the agent will, and kills the daemons.
//! It checks that two announcing edges give an ECMP route that spreads
//! traffic over both, and measures how fast the router's kernel table
//! follows a withdrawal and a daemon's death. Times are printed, never
//! asserted: this machine is shared.

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gslb_tests::bgp::{lab_vips, router_next_hops, wait_for_edges, Bgp, BgpSetup, Daemon, Drain, RouteWatch};
use gslb_tests::checks::{short_from_both, web_v4, web_v6};
use gslb_tests::deploy::{Deployment, Setup};
use gslb_tests::lab::{EdgeNode, Lab};

static SERIAL: Mutex<()> = Mutex::new(());
const LAB_BINARY: &str = env!("CARGO_BIN_EXE_gslb-lab");
/// Generous bounds for route changes (milliseconds when all is well) and
/// for sessions to come back (about a second: BIRD's error wait time).
const ROUTE_TIMEOUT: Duration = Duration::from_secs(10);
const SESSION_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECTIONS: usize = 200;

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Packets `steer` on `edge` forwarded for the VIP at `target`.
fn forwarded(d: &Deployment, edge: EdgeNode, target: SocketAddr) -> u64 {
    let status = d.status(edge).unwrap();
    let vip = status.vips.iter().find(|v| v.address == target.ip() && v.port == target.port());
    vip.unwrap_or_else(|| panic!("{edge} has no VIP {target}")).packets
}

fn other(edge: EdgeNode) -> EdgeNode {
    match edge {
        EdgeNode::EdgeA => EdgeNode::EdgeB,
        EdgeNode::EdgeB => EdgeNode::EdgeA,
    }
}

/// Short connections to `target` all succeed; returns how many of their
/// packets each edge forwarded.
fn traffic(d: &Deployment, target: SocketAddr) -> [u64; 2] {
    let before = EdgeNode::ALL.map(|e| forwarded(d, e, target));
    let report = short_from_both(d, target, CONNECTIONS);
    assert_eq!(report.failures, 0, "connections to {target} failed: {:?}", report.errors);
    let after = EdgeNode::ALL.map(|e| forwarded(d, e, target));
    [after[0] - before[0], after[1] - before[1]]
}

/// What `time_to_reroute` measured.
struct Reroute {
    /// How long the event itself took to run (commands, a kill).
    event: Duration,
    /// From the start of the event to the first change of each VIP's
    /// kernel route at the router.
    changed: Vec<(IpAddr, Duration)>,
}

/// Runs `event`, then waits until the router sends both VIPs to `remaining`
/// only.
fn time_to_reroute(d: &Deployment, watch: &RouteWatch, remaining: &[EdgeNode], event: impl FnOnce()) -> Reroute {
    let since = Instant::now();
    event();
    let event = since.elapsed();
    let changed = lab_vips()
        .into_iter()
        .map(|vip| {
            let changed = watch.change_after(since, vip, ROUTE_TIMEOUT).unwrap();
            wait_for_edges(&d.lab, vip, remaining, ROUTE_TIMEOUT).unwrap();
            (vip, changed)
        })
        .collect();
    Reroute { event, changed }
}

fn both_edges(d: &Deployment) {
    both_edges_in(&d.lab);
}

fn both_edges_in(lab: &Lab) {
    for vip in lab_vips() {
        wait_for_edges(lab, vip, &EdgeNode::ALL, ROUTE_TIMEOUT).unwrap();
    }
}

#[test]
fn bgp_gives_ecmp_over_both_edges_and_follows_withdrawals_and_dead_daemons() {
    let _serial = serial();
    let bgp_setup = BgpSetup { edge_a: Daemon::Bird, edge_b: Daemon::Gobgp, ..BgpSetup::default() };
    let d = Deployment::start(LAB_BINARY.as_ref(), &Setup { bgp: Some(bgp_setup), ..Setup::default() })
        .expect("deploying gslb with BGP on the lab");
    let bgp = d.bgp.as_ref().expect("BGP daemons");
    println!("daemons started and sessions established in {} ms", bgp.started_in().as_millis());

    // Routes come from BGP only: nothing announced, nothing routed.
    for vip in lab_vips() {
        assert!(router_next_hops(&d.lab, vip).unwrap().is_empty(), "a route to {vip} before any announcement");
        assert_eq!(bgp.router_routes(vip).unwrap(), vec![], "the router learned {vip} before any announcement");
    }

    // Both edges announce: one ECMP route per VIP, through both edges.
    for edge in EdgeNode::ALL {
        bgp.edge(edge).set_announced(&d.lab, &lab_vips()).unwrap();
    }
    both_edges(&d);
    for target in [web_v4(), web_v6()] {
        let spread = traffic(&d, target);
        println!(
            "{target}: {CONNECTIONS} connections, packets forwarded by edge-a {}, edge-b {}",
            spread[0], spread[1]
        );
        assert!(spread.iter().all(|&n| n > 0), "traffic to {target} did not reach both edges: {spread:?}");
    }

    let watch = RouteWatch::start(&d.lab).unwrap();
    let mut timings = Vec::new();
    for edge in EdgeNode::ALL {
        let daemon = bgp.edge(edge).daemon.name();
        let rest = [other(edge)];

        // A withdrawal: the route through this edge goes, traffic follows.
        let times = time_to_reroute(&d, &watch, &rest, || bgp.edge(edge).withdraw_all(&d.lab).unwrap());
        timings.push((format!("{daemon} withdraw"), times));
        let spread = traffic(&d, web_v4());
        assert_eq!(spread[edge as usize], 0, "{edge} still gets traffic after withdrawing: {spread:?}");
        bgp.edge(edge).set_announced(&d.lab, &lab_vips()).unwrap();
        both_edges(&d);

        // The daemon dies: its sessions drop, and its routes with them.
        let times = time_to_reroute(&d, &watch, &rest, || bgp.kill_daemon(&d.lab, edge).unwrap());
        timings.push((format!("{daemon} SIGKILL"), times));
        let sessions = bgp.sessions().unwrap();
        assert!(
            sessions.iter().filter(|s| s.edge == edge).all(|s| !s.established()),
            "{edge}'s sessions still established after its daemon died: {sessions:#?}"
        );

        // Back: BIRD re-reads its include file; GoBGP starts empty.
        let since = Instant::now();
        bgp.restart_daemon(&d.lab, edge).unwrap();
        bgp.wait_for_sessions(&[edge], SESSION_TIMEOUT).unwrap();
        let sessions_back = since.elapsed();
        bgp.edge(edge).set_announced(&d.lab, &lab_vips()).unwrap();
        both_edges(&d);
        println!(
            "{daemon} on {edge} restarted: sessions up after {} ms, ECMP again after {} ms",
            sessions_back.as_millis(),
            since.elapsed().as_millis()
        );
    }

    let ms = |t: Duration| format!("{:.1} ms", t.as_secs_f64() * 1e3);
    for (what, reroute) in &timings {
        let times: Vec<String> = reroute.changed.iter().map(|(vip, t)| format!("{vip} {}", ms(*t))).collect();
        println!("{what} (ran for {}) -> router kernel table changed: {}", ms(reroute.event), times.join(", "));
    }
}

/// What a drain relies on at the router: a route marked by any drain method
/// loses to the other edge's plain route, yet stays known (traffic can go
/// back to it at once) until it is withdrawn.
#[test]
fn a_drained_route_loses_to_plain_ones_but_stays_until_withdrawn() {
    let _serial = serial();
    let lab = Lab::new().unwrap();
    let bgp_setup = BgpSetup { edge_a: Daemon::Bird, edge_b: Daemon::Gobgp, ..BgpSetup::default() };
    let bgp = Bgp::start(&lab, &bgp_setup).unwrap();
    for edge in EdgeNode::ALL {
        bgp.edge(edge).set_announced(&lab, &lab_vips()).unwrap();
    }
    both_edges_in(&lab);

    for edge in EdgeNode::ALL {
        let daemon = bgp.edge(edge).daemon.name();
        for drain in Drain::ALL {
            bgp.edge(edge).set_announced_as(&lab, &lab_vips(), Some(drain)).unwrap();
            for vip in lab_vips() {
                wait_for_edges(&lab, vip, &[other(edge)], ROUTE_TIMEOUT)
                    .unwrap_or_else(|e| panic!("{daemon} on {edge}, drain {}: {e:#}", drain.name()));
                let routes = bgp.router_routes(vip).unwrap();
                let drained = routes.iter().find(|r| r.edge == edge);
                let drained = drained.unwrap_or_else(|| panic!("{edge}'s drained route to {vip} is gone: {routes:?}"));
                assert!(!drained.best, "{edge}'s drained route to {vip} is still the best: {routes:?}");
                let marked = match drain {
                    Drain::Prepend => drained.as_path.len() == 3,
                    Drain::Med => drained.med == Some(100),
                    Drain::GracefulShutdown => drained.local_pref == Some(0),
                };
                assert!(marked, "{edge}'s route to {vip} lacks the {} mark: {drained:?}", drain.name());
            }
            bgp.edge(edge).set_announced(&lab, &lab_vips()).unwrap();
            both_edges_in(&lab);
        }
    }
}
