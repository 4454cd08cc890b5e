//! Second chance end to end: long-lived TCP connections through edge-a; a
//! table change applied on both edges (weights reloaded, a backend
//! drained); then the route moves to edge-b, which never saw those
//! connections. edge-b sends their packets with a hop list of each table
//! slot's previous owners, and the backends hand each one on to the
//! backend that owns it: no connection breaks or changes backend. The
//! negative control runs the same with `second_chance` off, and breaks
//! connections: the test can fail.
//!
//! Before the move, each test checks against edge-b's pinned tables that
//! at least 10% of its connections map to another backend under the new
//! table, so a pass is never vacuous.
//!
//! The tests share the machine's two cores, so they run one at a time.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use gslb_common::{addr_from_ip, hash_flow, proto};
use gslb_tests::checks::{wait_for_forwarded, wait_for_progress, web_v4, web_v6};
use gslb_tests::deploy::{Deployment, Setup, Weights};
use gslb_tests::lab::{BackendNode, ClientNode, EdgeNode, Region, UDP_PORT, VIP_V4};
use gslb_tests::traffic::{udp_flows, ConnReport, LongLived};
use gslb_userspace::{decide::plan::VipMatch, sys::steer::Steer};

static SERIAL: Mutex<()> = Mutex::new(());

const LAB_BINARY: &str = env!("CARGO_BIN_EXE_gslb-lab");
/// Long-lived connections send a request this often.
const INTERVAL: Duration = Duration::from_millis(20);
const V4_CONNECTIONS: usize = 100;
const V6_CONNECTIONS: usize = 50;
/// At least this share of the connections must map to another backend
/// after the change, or the test proves nothing.
const MIN_MOVED_SHARE: f64 = 0.10;

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A table change applied on both edges before the move.
#[derive(Clone)]
enum Change {
    Weights(Weights),
    /// A region's pools drained on both edges: no new flows to their
    /// backends (a third of the slots move), recorded flows stay.
    Drain(Region),
}

#[derive(Clone, Default)]
struct Scenario {
    second_chance: bool,
    changes: Vec<Change>,
    /// edge-b's agent is stopped and started again (adopting its pins)
    /// after the changes, before the move.
    restart_edge_b: bool,
    /// `net.ipv4.tcp_syncookies=2` on every backend.
    syncookies: bool,
    /// Requests padded to this many bytes (full-size segments).
    request_len: usize,
}

/// US east three times as heavy: shifts many slots between regions.
fn heavier_east() -> Weights {
    let mut w = Weights::default();
    w.pools.insert(Region::UsEast, 300);
    w
}

/// Then Asia lighter too: a second, different change.
fn lighter_asia() -> Weights {
    let mut w = heavier_east();
    w.pools.insert(Region::ApSouth, 40);
    w
}

/// What a scenario ended with.
struct Outcome {
    v4: Vec<ConnReport>,
    v6: Vec<ConnReport>,
    /// Packets edge-b sent with a hop list.
    hop_list_packets: u64,
}

impl Outcome {
    fn broken(&self) -> usize {
        self.v4.iter().chain(&self.v6).filter(|r| r.broken()).count()
    }

    fn moved(&self) -> usize {
        self.v4.iter().chain(&self.v6).filter(|r| r.changed_backend()).count()
    }
}

/// Which backend each connection's table slot names on `edge` now, read
/// from its pinned tables and hashed the way the flow hash is defined.
fn owners(d: &Deployment, edge: EdgeNode, vip: SocketAddr, reports: &[ConnReport]) -> Vec<Option<IpAddr>> {
    let steer = Steer::open_pinned(&d.lab.bpffs_dir(edge)).expect("open the pins");
    let table = steer.vip_table(VipMatch { address: vip.ip(), port: vip.port(), proto: proto::TCP }).unwrap();
    let backends: BTreeMap<u32, IpAddr> =
        steer.installed_backends().unwrap().into_iter().map(|(id, addr, _)| (id, addr)).collect();
    reports
        .iter()
        .map(|r| {
            let client = r.local?;
            let hash =
                hash_flow(&addr_from_ip(client.ip()), &addr_from_ip(vip.ip()), client.port(), vip.port(), proto::TCP);
            backends.get(&table[(hash as u32 % table.len() as u32) as usize]).copied()
        })
        .collect()
}

fn changed_share(before: &[Option<IpAddr>], after: &[Option<IpAddr>]) -> f64 {
    before.iter().zip(after).filter(|(b, a)| b != a).count() as f64 / before.len() as f64
}

fn run(s: &Scenario) -> Outcome {
    let setup = Setup { second_chance: s.second_chance, ..Setup::default() };
    let d = Deployment::start(LAB_BINARY.as_ref(), &setup).expect("deploying gslb on the lab");
    if s.syncookies {
        for backend in BackendNode::ALL {
            d.lab.exec(backend, &["sysctl", "-qw", "net.ipv4.tcp_syncookies=2"]).unwrap();
        }
    }
    let v4 =
        LongLived::start_sized(&d.lab, ClientNode::Client1, web_v4(), V4_CONNECTIONS, INTERVAL, s.request_len).unwrap();
    let v6 =
        LongLived::start_sized(&d.lab, ClientNode::Client2, web_v6(), V6_CONNECTIONS, INTERVAL, s.request_len).unwrap();
    let before =
        (owners(&d, EdgeNode::EdgeB, web_v4(), &v4.snapshot()), owners(&d, EdgeNode::EdgeB, web_v6(), &v6.snapshot()));

    for change in &s.changes {
        match change {
            Change::Weights(weights) => {
                d.write_configs(&Setup { weights: weights.clone(), ..setup.clone() }).unwrap();
                d.reload_all().unwrap();
            }
            Change::Drain(region) => {
                for edge in EdgeNode::ALL {
                    for pool in [region.name().to_string(), format!("{}-v6", region.name())] {
                        d.drain(edge, &pool, None).unwrap();
                    }
                }
            }
        }
        let (b4, b6) = (v4.snapshot(), v6.snapshot());
        wait_for_progress(&v4, &b4, 5, "on edge-a after the change");
        wait_for_progress(&v6, &b6, 5, "on edge-a after the change");
    }
    let after =
        (owners(&d, EdgeNode::EdgeB, web_v4(), &v4.snapshot()), owners(&d, EdgeNode::EdgeB, web_v6(), &v6.snapshot()));
    let (share_v4, share_v6) = (changed_share(&before.0, &after.0), changed_share(&before.1, &after.1));
    println!("connections whose slot changed owner: IPv4 {:.0}%, IPv6 {:.0}%", share_v4 * 100.0, share_v6 * 100.0);
    assert!(
        share_v4 >= MIN_MOVED_SHARE && share_v6 >= MIN_MOVED_SHARE,
        "the change moved too few slots to prove anything: IPv4 {share_v4:.2}, IPv6 {share_v6:.2}"
    );

    if s.restart_edge_b {
        d.stop_agent(EdgeNode::EdgeB).unwrap();
        d.start_agent(EdgeNode::EdgeB).unwrap();
        assert!(d.status(EdgeNode::EdgeB).unwrap().adopted, "edge-b did not adopt its pinned state");
    }

    // The move: edge-b never saw these connections.
    let forwarded = d.status(EdgeNode::EdgeB).unwrap().counters.forwarded;
    let (b4, b6) = (v4.snapshot(), v6.snapshot());
    d.lab.route_vips_to(EdgeNode::EdgeB).unwrap();
    wait_for_forwarded(&d, EdgeNode::EdgeB, forwarded, 500);
    wait_for_progress(&v4, &b4, 20, "via edge-b");
    wait_for_progress(&v6, &b6, 20, "via edge-b");
    let hop_list_packets = d.status(EdgeNode::EdgeB).unwrap().counters.hop_list_packets;
    let outcome = Outcome { v4: v4.stop(), v6: v6.stop(), hop_list_packets };
    println!(
        "{} broken, {} moved of {} connections; edge-b sent {} packets with a hop list",
        outcome.broken(),
        outcome.moved(),
        V4_CONNECTIONS + V6_CONNECTIONS,
        outcome.hop_list_packets
    );
    outcome
}

/// Every connection survived on its backend, and the hop lists did it.
fn assert_sticky(outcome: &Outcome, what: &str) {
    let broken: Vec<_> = outcome.v4.iter().chain(&outcome.v6).filter(|r| r.broken()).collect();
    let moved: Vec<_> = outcome.v4.iter().chain(&outcome.v6).filter(|r| r.changed_backend()).collect();
    assert!(broken.is_empty(), "{what}: {} connections broke: {:?}", broken.len(), &broken[..broken.len().min(3)]);
    assert!(
        moved.is_empty(),
        "{what}: {} connections changed backend: {:?}",
        moved.len(),
        &moved[..moved.len().min(3)]
    );
    assert!(outcome.hop_list_packets > 0, "{what}: edge-b sent no hop list");
}

#[test]
fn connections_survive_a_weight_change_and_a_route_move() {
    let _serial = serial();
    let scenario =
        Scenario { second_chance: true, changes: vec![Change::Weights(heavier_east())], ..Scenario::default() };
    assert_sticky(&run(&scenario), "one reload, then the move");
}

#[test]
fn without_second_chance_the_same_scenario_breaks_connections() {
    let _serial = serial();
    let scenario =
        Scenario { second_chance: false, changes: vec![Change::Weights(heavier_east())], ..Scenario::default() };
    let outcome = run(&scenario);
    assert!(outcome.broken() > 0, "no connection broke without second chance: the scenario proves nothing");
    assert_eq!(outcome.hop_list_packets, 0, "hop lists were sent with second chance off");
}

#[test]
fn connections_survive_two_reloads_before_the_move() {
    let _serial = serial();
    let changes = vec![Change::Weights(heavier_east()), Change::Weights(lighter_asia())];
    let scenario = Scenario { second_chance: true, changes, ..Scenario::default() };
    assert_sticky(&run(&scenario), "two reloads, then the move");
}

#[test]
fn connections_survive_a_drain_before_the_move() {
    let _serial = serial();
    let scenario =
        Scenario { second_chance: true, changes: vec![Change::Drain(Region::EuWest)], ..Scenario::default() };
    assert_sticky(&run(&scenario), "a drained region, then the move");
}

#[test]
fn connections_survive_when_edge_b_restarts_before_the_move() {
    let _serial = serial();
    let scenario = Scenario {
        second_chance: true,
        changes: vec![Change::Weights(heavier_east())],
        restart_edge_b: true,
        ..Scenario::default()
    };
    assert_sticky(&run(&scenario), "edge-b restarted, then the move");
}

#[test]
fn connections_survive_with_syn_cookies_and_full_size_segments() {
    let _serial = serial();
    let scenario = Scenario {
        second_chance: true,
        changes: vec![Change::Weights(heavier_east())],
        syncookies: true,
        request_len: 4000,
        ..Scenario::default()
    };
    assert_sticky(&run(&scenario), "SYN cookies, full-size segments");
}

/// Waits (bounded) until `edge` has recorded at least `flows` new flows of
/// VIP `vip`.
fn wait_for_new_flows(d: &Deployment, edge: EdgeNode, vip: &str, flows: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = d.status(edge).unwrap();
        let seen = status.vips.iter().find(|v| v.name == vip).map_or(0, |v| v.new_flows);
        if seen >= flows {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{edge} recorded {seen} of {flows} {vip} flows in 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// UDP has no socket to ask: a flow whose slot changed owner changes
/// backend when the route moves. Measured, for the docs; the assertion is
/// only that flows whose slot kept its owner stay put.
#[test]
fn udp_flows_across_a_coincident_change_follow_the_new_table() {
    let _serial = serial();
    let setup = Setup { second_chance: true, ..Setup::default() };
    let d = Deployment::start(LAB_BINARY.as_ref(), &setup).expect("deploying gslb on the lab");
    let target = SocketAddr::new(VIP_V4.into(), UDP_PORT);
    let flows = std::thread::scope(|scope| {
        let lab = &d.lab;
        let flows =
            scope.spawn(move || udp_flows(lab, ClientNode::Client1, target, 60, 120, Duration::from_millis(50)));
        // Every flow recorded on edge-a before the change.
        wait_for_new_flows(&d, EdgeNode::EdgeA, "dns", 60);
        d.write_configs(&Setup { weights: heavier_east(), ..setup.clone() }).unwrap();
        d.reload_all().unwrap();
        let forwarded = d.status(EdgeNode::EdgeB).unwrap().counters.forwarded;
        d.lab.route_vips_to(EdgeNode::EdgeB).unwrap();
        wait_for_forwarded(&d, EdgeNode::EdgeB, forwarded, 60);
        flows.join().unwrap().unwrap()
    });
    let changed = flows.iter().filter(|f| f.changed_backend()).count();
    let broken = flows.iter().filter(|f| f.broken()).count();
    println!(
        "UDP: {changed} of {} flows changed backend across the change and the move ({broken} failed)",
        flows.len()
    );
    assert_eq!(broken, 0, "UDP flows failed");
    assert!(changed < flows.len() / 2, "{changed} of {} UDP flows changed backend", flows.len());
}
