//! A SYN flood from spoofed sources through an edge whose flow table is
//! far smaller than the flood: the table overflows and evicts established
//! flows, which must come back to the same backend through the lookup
//! table, so no connection breaks or moves.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gslb_common::{addr_from_ip, FlowKey};
use gslb_tests::checks::{assert_untouched, wait_for_progress, web_v4};
use gslb_tests::deploy::{Deployment, Setup};
use gslb_tests::flood::{flood_edge, Flood, FLOOD_SOURCE_LEN, FLOOD_SOURCE_NET};
use gslb_tests::lab::{BackendNode, ClientNode, EdgeNode, Lab, Node, VIP_V4};
use gslb_tests::scale;
use gslb_tests::traffic::LongLived;
use gslb_userspace::sys::steer::Steer;

static SERIAL: Mutex<()> = Mutex::new(());
const LAB_BINARY: &str = env!("CARGO_BIN_EXE_gslb-lab");
/// edge-a's flow table: a small fraction of the flood.
const MAX_FLOWS: u32 = 4_096;
/// SYNs a second at most: the whole lab (edge, router, six backends
/// answering with SYN cookies) shares two cores.
const FLOOD_RATE: u64 = 50_000;
/// Long-lived connections ask every second: far longer than the flood
/// takes to turn the flow table over, so their entries get evicted.
const INTERVAL: Duration = Duration::from_secs(1);
const CONNECTIONS: usize = 32;
/// The nftables table on the router that counts what edge-a sends it.
const NFT_TABLE: &str = "gslb_flood";

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn a_syn_flood_overflowing_the_flow_table_moves_no_connection() {
    let _serial = serial();
    // Half the SYNs in each phase.
    let frames = scale::sized(200_000, 1_000_000) / 2;
    let setup = Setup { max_flows: Some(MAX_FLOWS), ..Setup::default() };
    let d = Deployment::start(LAB_BINARY.as_ref(), &setup).expect("deploying gslb on the lab");
    let edge = EdgeNode::EdgeA;
    assert_eq!(d.status(edge).unwrap().limits.max_flows, MAX_FLOWS);
    count_on_router(&d.lab, edge);

    let traffic = LongLived::start(&d.lab, ClientNode::Client1, web_v4(), CONNECTIONS, INTERVAL).unwrap();
    let keys: Vec<FlowKey> = traffic.snapshot().iter().map(|r| flow_key(r.local.expect("connected"))).collect();
    let steer = Steer::open_pinned(&d.lab.bpffs_dir(edge)).expect("opening edge-a's pinned maps");
    let recorded: Vec<Option<u32>> = keys.iter().map(|k| steer.flow(k)).collect();
    assert!(recorded.iter().all(Option::is_some), "long-lived flows not in the flow table: {recorded:?}");

    // One SYN per spoofed source: the kernel's LRU keeps entries that were
    // looked up again (the long-lived flows) on its active list, and the
    // flood churns only the inactive one.
    let plain = flood_phase(&d, &steer, &keys, Flood { frames, per_flow: 1, rate_pps: FLOOD_RATE });
    // Every SYN sent twice (as a retransmitting client would): the flood's
    // entries look as alive as the real ones, and those get evicted too.
    let twice = flood_phase(&d, &steer, &keys, Flood { frames, per_flow: 2, rate_pps: FLOOD_RATE });
    assert!(twice.evicted > 0, "the flood evicted no long-lived flow: the test proves nothing");

    // Each evicted flow came back to the same backend: the flow table
    // forgot it, the lookup table did not change.
    for (i, ids) in plain.backends.iter().zip(&twice.backends).map(|(a, b)| [a.clone(), b.clone()].concat()).enumerate()
    {
        assert!(ids.iter().all(|id| Some(*id) == recorded[i]), "flow {i} recorded on {ids:?}, first {:?}", recorded[i]);
    }
    let now = traffic.snapshot();
    wait_for_progress(&traffic, &now, 2, "after the flood");
    let reports = traffic.stop();
    assert_untouched(&reports, "long-lived connections through the flood");

    // What edge-a sent the router: tunnel packets to configured backends
    // only, and no flood SYN unencapsulated.
    let counters = router_counters(&d.lab);
    let flood_flows = plain.new_flows + twice.new_flows;
    println!("router, from edge-a: {counters:?}");
    assert_eq!(counters["tunnel_elsewhere"], 0, "edge-a tunnelled packets to something that is not a backend");
    assert_eq!(counters["flood_plain"], 0, "flood SYNs left edge-a without a tunnel");
    assert!(
        counters["tunnel_to_backends"] >= flood_flows,
        "only {} tunnel packets reached the router for {flood_flows} flood flows",
        counters["tunnel_to_backends"]
    );
}

/// What one flood did to the edge.
struct Phase {
    new_flows: u64,
    /// Long-lived flows seen missing from the flow table at least once.
    evicted: usize,
    /// Per long-lived flow, the backends its entry named while watched.
    backends: Vec<Vec<u32>>,
}

/// Floods edge-a while watching the long-lived flows' entries (an entry
/// seen missing was evicted; its next packet records it again), then checks
/// that the edge counted every SYN the link delivered.
fn flood_phase(d: &Deployment, steer: &Steer, keys: &[FlowKey], flood: Flood) -> Phase {
    let edge = EdgeNode::EdgeA;
    let before = web_counters(d, edge);
    let ethtool_before = veth_stats(&d.lab, Node::Router, lab_iface(edge));
    let dst = SocketAddrV4::new(VIP_V4, 80);
    let stop = AtomicBool::new(false);
    let (report, evicted, backends) = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let mut evicted = vec![false; keys.len()];
            let mut seen: Vec<Vec<u32>> = vec![Vec::new(); keys.len()];
            while !stop.load(Ordering::Relaxed) {
                for (i, key) in keys.iter().enumerate() {
                    match steer.flow(key) {
                        None => evicted[i] = true,
                        Some(id) if !seen[i].contains(&id) => seen[i].push(id),
                        Some(_) => {}
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (evicted, seen)
        });
        let report = flood_edge(&d.lab, edge, dst, flood);
        stop.store(true, Ordering::Relaxed);
        let (evicted, seen) = watcher.join().expect("flow-table watcher");
        (report, evicted, seen)
    });
    let report = report.expect("flooding edge-a");
    assert_eq!(report.sent, flood.frames, "the generator must send every frame");

    // A SYN the veth could not queue towards the edge was dropped by the
    // router's end of the link, which counts it.
    let dropped = veth_xmit_errors(&ethtool_before, &veth_stats(&d.lab, Node::Router, lab_iface(edge)));
    let delivered = report.sent - dropped;
    let after = wait_for_received(d, edge, before.received + delivered);
    let received = after.received - before.received;
    let new_flows = after.new_flows - before.new_flows;
    let evicted = evicted.iter().filter(|&&e| e).count();
    println!(
        "flood of {} SYNs ({} per source) in {:.2} s ({:.0}/s): {dropped} dropped by the veth towards edge-a; \
         edge-a received {received} packets, {new_flows} new flows; {evicted} of {} long-lived flows evicted \
         (flow table {MAX_FLOWS} entries)",
        report.sent,
        flood.per_flow,
        report.elapsed.as_secs_f64(),
        report.sent as f64 / report.elapsed.as_secs_f64(),
        keys.len(),
    );
    assert!(received >= delivered, "edge-a received {received} packets, the link delivered {delivered} SYNs");
    let flows = report.sent / flood.per_flow as u64;
    assert!(new_flows + dropped >= flows, "edge-a counted {new_flows} new flows of {flows}, {dropped} SYNs dropped");
    assert!(delivered >= report.sent / 2, "the veth dropped {dropped} of {} SYNs", report.sent);
    Phase { new_flows, evicted, backends }
}

fn lab_iface(edge: EdgeNode) -> &'static str {
    Node::Edge(edge).router_iface().expect("leaf")
}

fn flow_key(local: SocketAddr) -> FlowKey {
    FlowKey {
        src: addr_from_ip(local.ip()),
        dst: addr_from_ip(IpAddr::V4(VIP_V4)),
        src_port: local.port(),
        dst_port: 80,
        proto: 6,
        ..FlowKey::default()
    }
}

struct WebCounters {
    new_flows: u64,
    received: u64,
}

fn web_counters(d: &Deployment, edge: EdgeNode) -> WebCounters {
    let status = d.status(edge).expect("status");
    let web = status.vips.iter().find(|v| v.name == "web").expect("the web VIP");
    WebCounters { new_flows: web.new_flows, received: status.counters.received }
}

/// Waits until the edge has received `want` packets, or its count has
/// stopped growing (the check that follows then says what is missing).
fn wait_for_received(d: &Deployment, edge: EdgeNode, want: u64) -> WebCounters {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = web_counters(d, edge);
    loop {
        if last.received >= want {
            return last;
        }
        std::thread::sleep(Duration::from_millis(200));
        let now = web_counters(d, edge);
        if now.received == last.received || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// `ethtool -S` of a veth inside a node.
fn veth_stats(lab: &Lab, node: Node, iface: &str) -> BTreeMap<String, u64> {
    let out = lab.exec(node, &["ethtool", "-S", iface]).expect("ethtool -S");
    out.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// Frames a veth could not hand to its peer (XDP redirects into a full
/// ring), between two `ethtool -S` readings.
fn veth_xmit_errors(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> u64 {
    after.iter().filter(|(k, _)| k.contains("xdp_xmit_err")).map(|(k, v)| v - before.get(k).copied().unwrap_or(0)).sum()
}

/// Counts, at the router's ingress from the edge, tunnel packets to the
/// configured backends, tunnel packets to anything else, and packets from
/// the flood's sources without a tunnel.
fn count_on_router(lab: &Lab, edge: EdgeNode) {
    let backends: Vec<String> = BackendNode::ALL.iter().map(|b| b.v4().to_string()).collect();
    let script = format!(
        "table netdev {NFT_TABLE} {{\n\
         counter tunnel_to_backends {{}}\ncounter tunnel_elsewhere {{}}\ncounter flood_plain {{}}\n\
         chain from_edge {{\n type filter hook ingress device \"{dev}\" priority 0; policy accept;\n\
         ip protocol 4 ip daddr {{ {list} }} counter name \"tunnel_to_backends\"\n\
         ip protocol 4 ip daddr != {{ {list} }} counter name \"tunnel_elsewhere\"\n\
         ip saddr {FLOOD_SOURCE_NET}/{FLOOD_SOURCE_LEN} counter name \"flood_plain\"\n}}\n}}\n",
        dev = lab_iface(edge),
        list = backends.join(", "),
    );
    let path = lab.run_dir().join("flood.nft");
    std::fs::write(&path, script).unwrap();
    lab.exec(Node::Router, &["nft", "-f", path.to_str().unwrap()]).expect("installing the router's counters");
}

fn router_counters(lab: &Lab) -> BTreeMap<String, u64> {
    let out = lab.exec(Node::Router, &["nft", "-j", "list", "counters", "table", "netdev", NFT_TABLE]).unwrap();
    let json: serde_json::Value = serde_json::from_str(&out).expect("nft -j output");
    json["nftables"]
        .as_array()
        .expect("nftables array")
        .iter()
        .filter_map(|item| {
            let c = item.get("counter")?;
            Some((c["name"].as_str()?.to_string(), c["packets"].as_u64()?))
        })
        .collect()
}
