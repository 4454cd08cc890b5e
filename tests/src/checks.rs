//! Checks shared by the end-to-end tests: traffic helpers, and bounded
//! waits that poll what the agents and the traffic report.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::deploy::Deployment;
use crate::lab::{ClientNode, EdgeNode, TCP_PORT, VIP_V4, VIP_V6};
use crate::traffic::{short_connections, ConnReport, LongLived, ShortReport};

pub fn web_v4() -> SocketAddr {
    SocketAddr::new(VIP_V4.into(), TCP_PORT)
}

pub fn web_v6() -> SocketAddr {
    SocketAddr::new(VIP_V6.into(), TCP_PORT)
}

/// Short connections from both clients, half each.
pub fn short_from_both(d: &Deployment, target: SocketAddr, count: usize) -> ShortReport {
    let mut total = ShortReport::default();
    for client in ClientNode::ALL {
        let report = short_connections(&d.lab, client, target, count / 2, 32).expect("short connections");
        for (backend, n) in report.per_backend {
            *total.per_backend.entry(backend).or_default() += n;
        }
        total.failures += report.failures;
        total.errors.extend(report.errors);
    }
    total
}

/// Every connection worked throughout and stayed on its first backend.
pub fn assert_untouched(reports: &[ConnReport], what: &str) {
    let broken: Vec<_> = reports.iter().filter(|r| r.broken()).collect();
    let moved: Vec<_> = reports.iter().filter(|r| r.changed_backend()).collect();
    assert!(broken.is_empty(), "{what}: {} connections broke: {broken:?}", broken.len());
    assert!(moved.is_empty(), "{what}: {} connections changed backend: {moved:?}", moved.len());
    assert!(reports.iter().all(|r| r.ok > 0), "{what}: a connection never got an answer");
}

/// Distinct backends that answered.
pub fn backends_used(reports: &[ConnReport]) -> usize {
    let mut all: Vec<String> = reports.iter().flat_map(|r| r.backends()).collect();
    all.sort();
    all.dedup();
    all.len()
}

/// Waits until every connection has had `more` answers beyond `before`:
/// traffic provably flows.
pub fn wait_for_progress(traffic: &LongLived, before: &[ConnReport], more: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = traffic.snapshot();
        let lagging = now.iter().zip(before).filter(|(n, b)| n.ok < b.ok + more && !n.broken()).count();
        if lagging == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {lagging} connections made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `edge` has forwarded `more` packets beyond `before`.
pub fn wait_for_forwarded(d: &Deployment, edge: EdgeNode, before: u64, more: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let forwarded = d.status(edge).expect("status").counters.forwarded;
        if forwarded >= before + more {
            return forwarded;
        }
        assert!(Instant::now() < deadline, "{edge} forwarded {} packets, want {more} more", forwarded - before);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until every edge reports `backend` in `health` ("up", "down",
/// ...); returns how long that took.
pub fn wait_for_health(d: &Deployment, backend: std::net::IpAddr, health: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let reached = EdgeNode::ALL.iter().all(|&edge| {
            d.status(edge).is_ok_and(|s| {
                s.pools.iter().flat_map(|p| &p.backends).any(|b| b.address == backend && b.health == health)
            })
        });
        if reached {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{backend} did not become {health} on every edge within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The backends (by lab name) that answered.
pub fn answered_by(report: &ShortReport) -> Vec<String> {
    report.per_backend.keys().cloned().collect()
}
