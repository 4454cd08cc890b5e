//! End to end: real TCP and UDP connections from client namespaces, through
//! a router, to `steer` on an edge, tunnelled to `decap` on regional
//! backends, answered directly to the client.
//!
//! The tests share the machine's two cores, so they run one at a time.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use gslb_common::proto;
use gslb_tests::checks::{
    assert_untouched, backends_used, short_from_both, wait_for_forwarded, wait_for_progress, web_v4, web_v6,
};
use gslb_tests::deploy::{edge_config, xdp_mode, Deployment, Setup, Weights};
use gslb_tests::lab::{BackendNode, ClientNode, EdgeNode, Region, TCP_PORT, UDP_PORT, VIP_V4, VIP_V6};
use gslb_tests::traffic::{short_connections, udp_flows, ConnReport, LongLived, ShortReport};
use gslb_userspace::{decide::plan::VipMatch, sys::steer::Steer};

static SERIAL: Mutex<()> = Mutex::new(());

const LAB_BINARY: &str = env!("CARGO_BIN_EXE_gslb-lab");
/// Long-lived connections send a request this often.
const INTERVAL: Duration = Duration::from_millis(10);
/// Allowed distance between a backend's share of new connections and its
/// share of the weights.
const SHARE_TOLERANCE: f64 = 0.05;

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn deploy(weights: &Weights) -> Deployment {
    Deployment::start(LAB_BINARY.as_ref(), &Setup::from(weights)).expect("deploying gslb on the lab")
}

fn assert_shares(report: &ShortReport, weights: &Weights) {
    assert_eq!(report.failures, 0, "failed connections: {:?}", report.errors);
    let total: u64 = report.per_backend.values().sum();
    let expected = weights.expected_shares();
    let mut lines = Vec::new();
    let mut worst: f64 = 0.0;
    for backend in BackendNode::ALL {
        let got = report.per_backend.get(backend.name()).copied().unwrap_or(0) as f64 / total as f64;
        let want = expected.get(&backend).copied().unwrap_or(0.0);
        worst = worst.max((got - want).abs());
        lines.push(format!("{backend}: got {:.1}% want {:.1}%", got * 100.0, want * 100.0));
    }
    println!("{total} connections: {}", lines.join(", "));
    assert!(worst <= SHARE_TOLERANCE, "shares off by {:.1}pp: {}", worst * 100.0, lines.join(", "));
    for name in report.per_backend.keys() {
        let backend = BackendNode::from_name(name).unwrap_or_else(|| panic!("answer from unknown backend {name}"));
        assert!(weights.backends.contains_key(&backend), "{name} answered but is not configured");
    }
}

/// Both edges hold bit-identical lookup tables for every VIP.
fn assert_identical_tables(d: &Deployment) {
    let a = Steer::open_pinned(&d.lab.bpffs_dir(EdgeNode::EdgeA)).expect("open edge-a's pins");
    let b = Steer::open_pinned(&d.lab.bpffs_dir(EdgeNode::EdgeB)).expect("open edge-b's pins");
    let vips = [
        (IpAddr::from(VIP_V4), TCP_PORT, proto::TCP),
        (IpAddr::from(VIP_V4), UDP_PORT, proto::UDP),
        (IpAddr::from(VIP_V6), TCP_PORT, proto::TCP),
        (IpAddr::from(VIP_V6), UDP_PORT, proto::UDP),
    ];
    for (address, port, proto) in vips {
        let vip = VipMatch { address, port, proto };
        let table_a = a.vip_table(vip).expect("edge-a table");
        let table_b = b.vip_table(vip).expect("edge-b table");
        assert_eq!(table_a.len(), table_b.len());
        let differing = table_a.iter().zip(&table_b).filter(|(x, y)| x != y).count();
        assert_eq!(differing, 0, "{vip:?}: {differing} of {} slots differ between the edges", table_a.len());
        let mut distinct = table_a.clone();
        distinct.sort();
        distinct.dedup();
        assert!(distinct.len() >= 2, "{vip:?}: table uses {} backends", distinct.len());
    }
}

#[test]
fn new_connections_follow_weights_and_edges_agree() {
    let _serial = serial();
    let mut weights = Weights::default();
    weights.pools.insert(Region::EuWest, 50);
    weights.backends.insert(BackendNode::UsEast2, 50);
    weights.backends.insert(BackendNode::ApSouth2, 25);
    let d = deploy(&weights);

    assert_identical_tables(&d);
    let report = short_from_both(&d, web_v4(), 3000);
    assert_shares(&report, &weights);

    // The edge counted what it steered.
    let status = d.status(EdgeNode::EdgeA).unwrap();
    let web = status.vips.iter().find(|v| v.name == "web").unwrap();
    assert!(web.new_flows >= 3000, "edge-a recorded {} new flows", web.new_flows);
}

#[test]
fn reload_changes_weights_without_moving_connections() {
    let _serial = serial();
    let d = deploy(&Weights::default());
    let traffic = LongLived::start(&d.lab, ClientNode::Client1, web_v4(), 60, INTERVAL).unwrap();
    assert!(backends_used(&traffic.snapshot()) >= 4, "connections are not spread");

    // A broken config is refused, with where and why, and changes nothing.
    let good = edge_config(&d.lab, EdgeNode::EdgeA, &Setup::default());
    let broken = good.replacen("weight = 100", "weight = 100000", 1);
    let line = broken.lines().position(|l| l.contains("100000")).unwrap() + 1;
    d.write_raw_config(EdgeNode::EdgeA, &broken).unwrap();
    let error = d.reload(EdgeNode::EdgeA).unwrap_err().to_string();
    assert!(error.contains(&format!("edge-a.toml:{line}:")), "error does not locate the bad weight: {error}");
    let status = d.status(EdgeNode::EdgeA).unwrap();
    assert!(!status.last_reload.unwrap().ok);
    assert_identical_tables(&d);

    // New weights: edge-a reloads through the admin socket, edge-b on
    // SIGHUP.
    let mut heavier_east = Weights::default();
    heavier_east.pools.insert(Region::UsEast, 300);
    d.write_configs(&Setup::from(&heavier_east)).unwrap();
    let before = traffic.snapshot();
    let changes = d.reload(EdgeNode::EdgeA).unwrap();
    assert!(changes.vips_changed.contains(&"web".to_string()), "{changes:?}");
    let outcome = d.signal_reload(EdgeNode::EdgeB).unwrap();
    assert!(outcome.ok, "SIGHUP reload failed: {:?}", outcome.error);
    assert_identical_tables(&d);

    let report = short_from_both(&d, web_v4(), 3000);
    assert_shares(&report, &heavier_east);
    wait_for_progress(&traffic, &before, 20, "after the reload");
    assert_untouched(&traffic.stop(), "during the reload");
}

#[test]
fn route_moves_between_edges_without_moving_connections() {
    let _serial = serial();
    let d = deploy(&Weights::default());
    let v4 = LongLived::start(&d.lab, ClientNode::Client1, web_v4(), 60, INTERVAL).unwrap();
    let v6 = LongLived::start(&d.lab, ClientNode::Client2, web_v6(), 30, INTERVAL).unwrap();

    for edge in EdgeNode::ALL {
        let mode = d.status(edge).unwrap().interfaces["eth0"].clone();
        assert_eq!(mode, xdp_mode(edge), "{edge} attached in the wrong mode");
    }
    let mut forwarded: BTreeMap<EdgeNode, u64> =
        EdgeNode::ALL.iter().map(|&e| (e, d.status(e).unwrap().counters.forwarded)).collect();
    for round in 0..3 {
        for edge in [EdgeNode::EdgeB, EdgeNode::EdgeA] {
            let (before_v4, before_v6) = (v4.snapshot(), v6.snapshot());
            d.lab.route_vips_to(edge).unwrap();
            // The edge now carries the traffic, and every connection keeps
            // being answered.
            let now = wait_for_forwarded(&d, edge, forwarded[&edge], 500);
            forwarded.insert(edge, now);
            wait_for_progress(&v4, &before_v4, 10, &format!("round {round}, via {edge}"));
            wait_for_progress(&v6, &before_v6, 10, &format!("round {round}, via {edge}"));
        }
    }
    assert_untouched(&v4.stop(), "IPv4 while the route moved");
    assert_untouched(&v6.stop(), "IPv6 while the route moved");
}

#[test]
fn removing_a_backend_affects_only_its_connections() {
    let _serial = serial();
    let d = deploy(&Weights::default());
    let traffic = LongLived::start(&d.lab, ClientNode::Client1, web_v4(), 90, INTERVAL).unwrap();
    let removed = BackendNode::UsEast2;
    let on_removed = |r: &ConnReport| r.runs.first().is_some_and(|(b, _)| b == removed.name());
    let initial = traffic.snapshot();
    assert!(initial.iter().any(on_removed), "no connection landed on {removed}");

    let mut without = Weights::default();
    without.backends.remove(&removed);
    d.write_configs(&Setup::from(&without)).unwrap();
    d.reload_all().unwrap();

    let report = short_from_both(&d, web_v4(), 600);
    assert_eq!(report.failures, 0, "{:?}", report.errors);
    assert!(!report.per_backend.contains_key(removed.name()), "new connections still reach {removed}");

    let before = traffic.snapshot();
    wait_for_progress(&traffic, &before, 20, "after removing a backend");
    let reports = traffic.stop();
    let (theirs, others): (Vec<ConnReport>, Vec<ConnReport>) = reports.into_iter().partition(|r| on_removed(r));
    println!("{} connections were on {removed}; {} broke", theirs.len(), theirs.iter().filter(|r| r.broken()).count());
    assert_untouched(&others, "connections on other backends");
}

#[test]
fn agent_killed_and_restarted_keeps_connections() {
    let _serial = serial();
    let d = deploy(&Weights::default());
    let traffic = LongLived::start(&d.lab, ClientNode::Client1, web_v4(), 60, INTERVAL).unwrap();
    assert!(!d.status(EdgeNode::EdgeA).unwrap().adopted);

    let before = traffic.snapshot();
    let forwarded = d.status(EdgeNode::EdgeA).unwrap().counters.forwarded;
    d.kill_agent(EdgeNode::EdgeA).unwrap();
    // With no agent at all, steering goes on: established and new flows.
    wait_for_progress(&traffic, &before, 20, "with the agent dead");
    let report = short_connections(&d.lab, ClientNode::Client2, web_v4(), 300, 16).unwrap();
    assert_eq!(report.failures, 0, "new connections failed with the agent dead: {:?}", report.errors);

    d.start_agent(EdgeNode::EdgeA).unwrap();
    let status = d.status(EdgeNode::EdgeA).unwrap();
    assert!(status.adopted, "the restarted agent did not adopt the pinned state");
    assert!(
        status.counters.forwarded > forwarded,
        "counters restarted from {} (was {forwarded}): state was not adopted",
        status.counters.forwarded
    );
    assert_eq!(status.interfaces.get("eth0").map(String::as_str), Some("adopted"));

    let before = traffic.snapshot();
    wait_for_progress(&traffic, &before, 20, "after the restart");
    assert_untouched(&traffic.stop(), "across kill -9 and restart");
}

#[test]
fn ipv6_tcp_and_udp_over_both_families() {
    let _serial = serial();
    let d = deploy(&Weights::default());

    let report = short_from_both(&d, web_v6(), 600);
    assert_eq!(report.failures, 0, "IPv6 connections failed: {:?}", report.errors);
    assert!(report.per_backend.len() >= 4, "IPv6 connections reached only {:?}", report.per_backend);

    for vip in [IpAddr::from(VIP_V4), IpAddr::from(VIP_V6)] {
        let flows = udp_flows(&d.lab, ClientNode::Client1, SocketAddr::new(vip, UDP_PORT), 60, 10, INTERVAL).unwrap();
        let timeouts: u64 = flows.iter().map(|f| f.timeouts).sum();
        assert_eq!(timeouts, 0, "UDP to {vip}: {timeouts} datagrams unanswered");
        assert_untouched(&flows, &format!("UDP flows to {vip}"));
        assert!(flows.iter().all(|f| f.ok == 10), "UDP to {vip}: some datagrams unanswered");
        assert!(backends_used(&flows) >= 4, "UDP to {vip} reached {} backends", backends_used(&flows));
    }
    let dns = d.status(EdgeNode::EdgeA).unwrap().vips.into_iter().find(|v| v.name == "dns6").unwrap();
    assert!(dns.packets >= 600, "edge-a steered {} IPv6 UDP packets", dns.packets);
}
