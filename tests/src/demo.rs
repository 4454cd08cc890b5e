//! `gslb-lab demo` (what `cargo xtask run` starts): the lab with gslb
//! deployed, live traffic, and a table refreshed every second.
//!
//! Every `ROUTE_PERIOD` the router's VIP route moves to the other edge, as
//! a BGP reconvergence would; the table shows that connections neither
//! break nor change backend while it happens.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::deploy::{Deployment, Setup};
use crate::lab::{BackendNode, ClientNode, EdgeNode, TCP_PORT, UDP_PORT, VIP_V4, VIP_V6};
use crate::traffic::{short_connections, udp_flows, ConnReport, LongLived};

/// How often the VIP route moves between the edges.
const ROUTE_PERIOD: Duration = Duration::from_secs(10);
const REFRESH: Duration = Duration::from_secs(1);
/// The health monitor in a VM, where the CPU may be emulated: a second to
/// answer.
const VM_MONITOR: &str =
    "{ protocol = \"http\", port = 8080, path = \"/health\", interval_ms = 1000, timeout_ms = 1000, consecutive_up = 2, consecutive_down = 3 }";

/// Runs the demo until Ctrl-C (or `--seconds N`), then removes the lab.
pub fn run(args: &[String]) -> Result<()> {
    let (mut limit, mut in_vm) = (None, false);
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.as_slice().first()) {
            ("--seconds", Some(n)) => {
                limit = Some(Duration::from_secs(n.parse().context("--seconds N")?));
                args.next();
            }
            ("--in-vm", _) => in_vm = true,
            _ => bail!("usage: gslb-lab demo [--seconds N] [--in-vm]"),
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing the Ctrl-C handler")?;
    }

    eprintln!("building the lab: 2 clients, a router, edge-a and edge-b, 6 backends in 3 regions ...");
    let binary = std::env::current_exe().context("locating gslb-lab")?;
    // In a VM (`cargo xtask run --vm`), under CPU emulation, a health check's round
    // trip can outlast the lab's 150 ms timeout: backends would flap.
    let monitor_spec = in_vm.then_some(VM_MONITOR);
    let d =
        Deployment::start(&binary, &Setup { monitor: true, monitor_spec, second_chance: true, ..Setup::default() })?;
    eprintln!("lab {} is up; starting traffic", d.lab.id());
    let v4 = LongLived::start(&d.lab, ClientNode::Client1, SocketAddr::new(VIP_V4.into(), TCP_PORT), 24, ms(50))?;
    let v6 = LongLived::start(&d.lab, ClientNode::Client2, SocketAddr::new(VIP_V6.into(), TCP_PORT), 12, ms(50))?;

    let started = Instant::now();
    let mut route = EdgeNode::EdgeA;
    let mut route_moves = 0;
    let mut short = BTreeMap::<String, u64>::new();
    let mut failures = 0;
    while !stop.load(Ordering::Relaxed) && limit.is_none_or(|l| started.elapsed() < l) {
        let tick = Instant::now();
        if started.elapsed() >= ROUTE_PERIOD * (route_moves + 1) {
            route = other(route);
            d.lab.route_vips_to(route)?;
            route_moves += 1;
        }
        // A little fresh traffic each second: short TCP connections and
        // UDP flows, so new-flow shares show too.
        let report = short_connections(&d.lab, ClientNode::Client2, SocketAddr::new(VIP_V4.into(), TCP_PORT), 30, 10)?;
        failures += report.failures;
        for (backend, n) in report.per_backend {
            *short.entry(backend).or_default() += n;
        }
        let udp = udp_flows(&d.lab, ClientNode::Client1, SocketAddr::new(VIP_V4.into(), UDP_PORT), 5, 2, ms(10))?;
        failures += udp.iter().filter(|f| f.broken() || f.timeouts > 0).count() as u64;

        let screen =
            render(&d, route, route_moves, &v4.snapshot(), &v6.snapshot(), &short, failures, started.elapsed());
        print!("\x1b[2J\x1b[H{screen}");
        std::thread::sleep(REFRESH.saturating_sub(tick.elapsed()));
    }
    eprintln!("\nstopping traffic and removing the lab ...");
    let (v4, v6) = (v4.stop(), v6.stop());
    let broken = v4.iter().chain(&v6).filter(|c| c.broken()).count();
    let moved = v4.iter().chain(&v6).filter(|c| c.changed_backend()).count();
    drop(d);
    eprintln!(
        "done: {} long-lived connections, {broken} broke, {moved} changed backend, across {route_moves} route moves",
        v4.len() + v6.len()
    );
    Ok(())
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn other(edge: EdgeNode) -> EdgeNode {
    match edge {
        EdgeNode::EdgeA => EdgeNode::EdgeB,
        EdgeNode::EdgeB => EdgeNode::EdgeA,
    }
}

#[allow(clippy::too_many_arguments)]
fn render(
    d: &Deployment,
    route: EdgeNode,
    route_moves: u32,
    v4: &[ConnReport],
    v6: &[ConnReport],
    short: &BTreeMap<String, u64>,
    failures: u64,
    elapsed: Duration,
) -> String {
    // Packets each backend received, summed over both edges (an edge's
    // counters survive route moves and agent restarts alike).
    let mut packets: BTreeMap<String, u64> = BTreeMap::new();
    let mut table_share: BTreeMap<String, f64> = BTreeMap::new();
    let mut health: BTreeMap<String, String> = BTreeMap::new();
    let mut edges = Vec::new();
    for edge in EdgeNode::ALL {
        let Ok(status) = d.status(edge) else {
            edges.push(format!("{edge}: agent not answering"));
            continue;
        };
        edges.push(format!("{edge}: forwarded {}", status.counters.forwarded));
        for pool in &status.pools {
            for backend in &pool.backends {
                if let Some(name) = backend_name(backend.address) {
                    *packets.entry(name.clone()).or_default() += backend.packets;
                    if edge == route {
                        health.insert(name, backend.health.clone());
                    }
                }
            }
        }
        if let Some(web) = status.vips.iter().find(|v| v.name == "web") {
            for b in &web.backends {
                if let Some(name) = backend_name(b.address) {
                    table_share.insert(name, b.share);
                }
            }
        }
    }
    let total_packets: u64 = packets.values().sum::<u64>().max(1);
    let total_short: u64 = short.values().sum::<u64>().max(1);
    let on = |conns: &[ConnReport], name: &str| {
        conns.iter().filter(|c| c.runs.last().is_some_and(|(b, _)| b == name)).count()
    };

    let mut out = String::new();
    let _ = writeln!(out, "gslb lab {}   up {}s   Ctrl-C to stop and clean up", d.lab.id(), elapsed.as_secs());
    let _ = writeln!(
        out,
        "router sends {VIP_V4} and {VIP_V6} to {route} (moved {route_moves} times, every {}s)   {}",
        ROUTE_PERIOD.as_secs(),
        edges.join("   ")
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<12} {:>8} {:>9} {:>9} {:>12} {:>8} {:>12} {:>8}",
        "backend", "health", "tcp v4", "tcp v6", "packets", "share", "new conns", "table"
    );
    for backend in BackendNode::ALL {
        let name = backend.name();
        let p = packets.get(name).copied().unwrap_or(0);
        let s = short.get(name).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "{:<12} {:>8} {:>9} {:>9} {:>12} {:>7.1}% {:>11.1}% {:>7.1}%",
            name,
            health.get(name).map(String::as_str).unwrap_or("?"),
            on(v4, name),
            on(v6, name),
            p,
            100.0 * p as f64 / total_packets as f64,
            100.0 * s as f64 / total_short as f64,
            100.0 * table_share.get(name).copied().unwrap_or(0.0),
        );
    }
    let all: Vec<&ConnReport> = v4.iter().chain(v6).collect();
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "long-lived connections: {}   requests answered: {}   broken: {}   changed backend: {}",
        all.len(),
        all.iter().map(|c| c.ok).sum::<u64>(),
        all.iter().filter(|c| c.broken()).count(),
        all.iter().filter(|c| c.changed_backend()).count(),
    );
    let _ = writeln!(out, "short connections and UDP flows failed: {failures}");
    let _ = writeln!(out, "\n(\"tcp v4/v6\": long-lived connections on each backend; \"new conns\": where fresh short connections went; \"table\": the backend's share of the web VIP's Maglev table)");
    out
}

/// The lab backend with this address.
fn backend_name(address: std::net::IpAddr) -> Option<String> {
    BackendNode::ALL
        .iter()
        .find(|b| std::net::IpAddr::from(b.v4()) == address || std::net::IpAddr::from(b.v6()) == address)
        .map(|b| b.name().to_string())
}
