//! A black-hole backend: it passes its health checks (they go straight to
//! its address) but cannot take tunnelled traffic, because `decap` is gone.
//! Its kernel answers the tunnel packets with ICMP "protocol unreachable";
//! the agent counts those for that backend alone and says so, and leaves
//! the backend in rotation (ICMP can be forged).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gslb_tests::checks::{web_v4, web_v6};
use gslb_tests::deploy::{Deployment, Setup};
use gslb_tests::lab::{BackendNode, ClientNode, EdgeNode};
use gslb_tests::traffic::short_connections;
use gslb_userspace::view::status::{BackendStatus, Status};

static SERIAL: Mutex<()> = Mutex::new(());
const LAB_BINARY: &str = env!("CARGO_BIN_EXE_gslb-lab");
/// Bound on the agent counting the first errors while connections run.
const DETECTION: Duration = Duration::from_secs(30);

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn backend(status: &Status, address: IpAddr) -> &BackendStatus {
    status.pools.iter().flat_map(|p| &p.backends).find(|b| b.address == address).expect("a configured backend")
}

#[test]
fn a_backend_without_decap_is_reported_by_its_tunnel_errors_while_its_checks_pass() {
    let _serial = serial();
    let setup = Setup { monitor: true, ..Setup::default() };
    let d = Deployment::start(LAB_BINARY.as_ref(), &setup).expect("deploying gslb on the lab");
    let edge = EdgeNode::EdgeA;
    let victim = BackendNode::UsEast1;
    let address = IpAddr::V4(victim.v4());

    // Everything works, and nothing reports tunnel errors.
    let report = short_connections(&d.lab, ClientNode::Client1, web_v4(), 120, 16).unwrap();
    assert_eq!(report.failures, 0, "{:?}", report.errors);
    assert!(report.per_backend.contains_key(victim.name()), "no connection reached {victim}: {report:?}");
    let status = d.status(edge).unwrap();
    assert!(status.pools.iter().flat_map(|p| &p.backends).all(|b| b.tunnel_errors.is_empty()), "{status:?}");

    d.stop_decap(victim).unwrap();
    let link = d.lab.exec(victim, &["ip", "-d", "link", "show", "dev", "eth0"]).unwrap();
    assert!(!link.contains("prog/xdp"), "decap still attached on {victim}:\n{link}");

    // Connections to the victim now fail; the ones that land there make its
    // kernel answer the tunnel packets. Keep connecting until the agent
    // has counted some.
    let start = Instant::now();
    let mut failures = 0;
    let errors = loop {
        let report = short_connections(&d.lab, ClientNode::Client1, web_v4(), 60, 30).unwrap();
        failures += report.failures;
        assert!(!report.per_backend.contains_key(victim.name()), "{victim} answered without decap: {report:?}");
        let status = d.status(edge).unwrap();
        let errors = backend(&status, address).tunnel_errors.clone();
        if !errors.is_empty() {
            break errors;
        }
        assert!(start.elapsed() < DETECTION, "no tunnel errors counted for {victim} within {DETECTION:?}");
    };
    println!(
        "{victim}: tunnel errors {errors:?} after {} ms ({failures} failed connections)",
        start.elapsed().as_millis()
    );
    assert!(failures > 0, "no connection failed with {victim} black-holed");
    assert!(errors.get("protocol_unreachable").copied().unwrap_or(0) > 0, "{errors:?}");

    let status = d.status(edge).unwrap();
    let others: BTreeMap<IpAddr, &BTreeMap<String, u64>> = status
        .pools
        .iter()
        .flat_map(|p| &p.backends)
        .filter(|b| b.address != address && !b.tunnel_errors.is_empty())
        .map(|b| (b.address, &b.tunnel_errors))
        .collect();
    assert!(others.is_empty(), "tunnel errors counted for healthy backends: {others:?}");

    // The black hole: its health checks pass, and the agent does not act
    // on ICMP by itself.
    let b = backend(&status, address);
    assert!(b.health == "up" && !b.dead && !b.drained, "{victim} should still be in rotation: {b:?}");
    assert!(status.render().contains("tunnel errors (ICMP about tunnel packets): protocol_unreachable"));
    let metrics = d.metrics(edge).unwrap();
    let line = format!("gslb_backend_tunnel_errors_total{{backend=\"{address}\",kind=\"protocol_unreachable\"}} ");
    let count: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .unwrap_or_else(|| panic!("no {line} in the metrics:\n{metrics}"))
        .parse()
        .unwrap();
    assert!(count > 0, "metric {line}{count}");
    let log = d.agent_log(edge);
    assert!(
        log.lines().any(|l| l.contains(&address.to_string()) && l.contains("is decap attached on the backend")),
        "no warning naming {address} in the agent's log:\n{log}"
    );

    // IPv6 tunnels to its IPv6 address: an ICMPv6 parameter problem
    // (unrecognised next header), counted as the same kind.
    let address6 = IpAddr::V6(victim.v6());
    let start = Instant::now();
    let errors6 = loop {
        let report = short_connections(&d.lab, ClientNode::Client1, web_v6(), 60, 30).unwrap();
        assert!(!report.per_backend.contains_key(victim.name()), "{victim} answered without decap: {report:?}");
        let errors = backend(&d.status(edge).unwrap(), address6).tunnel_errors.clone();
        if !errors.is_empty() {
            break errors;
        }
        assert!(start.elapsed() < DETECTION, "no IPv6 tunnel errors counted for {victim} within {DETECTION:?}");
    };
    println!("{victim} over IPv6: tunnel errors {errors6:?} after {} ms", start.elapsed().as_millis());
    assert!(errors6.get("protocol_unreachable").copied().unwrap_or(0) > 0, "{errors6:?}");
    let status = d.status(edge).unwrap();
    let b = backend(&status, address6);
    assert!(b.health == "up" && !b.dead && !b.drained, "{victim} should still be in rotation: {b:?}");
}
