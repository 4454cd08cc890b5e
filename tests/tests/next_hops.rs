//! Next hops resolved by the agent (`NEXT_HOPS`): the edge agent resolves
//! every backend to the router's MAC on its interface, follows a change of
//! that MAC from the kernel's notifications while long-lived connections
//! carry on, and invalidates the entries when the route to the backends or
//! the interface goes away.
//!
//! The lab tests share the machine's two cores, so they run one at a time.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gslb_tests::checks::{assert_untouched, wait_for_progress, web_v4, web_v6};
use gslb_tests::deploy::{Deployment, Setup};
use gslb_tests::lab::{ClientNode, EdgeNode, Lab, Node, INNER_MTU, LEAF_IFACE};
use gslb_tests::traffic::{short_connections, LongLived};
use gslb_userspace::view::status::{NextHopStatus, Status};

static SERIAL: Mutex<()> = Mutex::new(());

const LAB_BINARY: &str = env!("CARGO_BIN_EXE_gslb-lab");
/// Long-lived connections send a request this often.
const INTERVAL: Duration = Duration::from_millis(10);
/// How long a change may take to reach `NEXT_HOPS`: notifications make it
/// milliseconds; the agent's periodic re-check (30 s) would be far later.
const FOLLOW: Duration = Duration::from_secs(5);
/// The MAC the router's end of the edge's link takes.
const NEW_ROUTER_MAC: &str = "02:00:5e:10:00:01";

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

type Hops = BTreeMap<IpAddr, Option<NextHopStatus>>;

/// Every configured backend's next hop, as status reads it from `NEXT_HOPS`.
fn next_hops(status: &Status) -> Hops {
    status.pools.iter().flat_map(|p| &p.backends).map(|b| (b.address, b.next_hop.clone())).collect()
}

/// Waits until `edge`'s next hops satisfy `want`; returns how long it took.
fn wait_for_hops(d: &Deployment, edge: EdgeNode, what: &str, want: impl Fn(&Hops) -> bool) -> Duration {
    let started = Instant::now();
    loop {
        let hops = next_hops(&d.status(edge).expect("status"));
        if want(&hops) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < FOLLOW,
            "{edge}: next hops did not become {what} within {FOLLOW:?}; they are {hops:#?}\nagent log:\n{}",
            d.agent_log(edge)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every backend sent by `mac` out of the edge's link.
fn all_via(mac: &str, ifindex: u32) -> impl Fn(&Hops) -> bool + '_ {
    move |hops| {
        hops.len() == 12
            && hops.values().all(|hop| {
                hop.as_ref().is_some_and(|h| {
                    h.mac == mac && h.ifindex == ifindex && h.interface == LEAF_IFACE && h.mtu as u32 == INNER_MTU
                })
            })
    }
}

fn none_resolved(hops: &Hops) -> bool {
    !hops.is_empty() && hops.values().all(Option::is_none)
}

/// A link's MAC and ifindex, as `ip -o link` shows them.
fn link(lab: &Lab, node: Node, dev: &str) -> (String, u32) {
    let out = lab.exec(node, &["ip", "-o", "link", "show", "dev", dev]).unwrap();
    let ifindex = out.split(':').next().unwrap().trim().parse().unwrap();
    let mac = out.split_whitespace().skip_while(|w| *w != "link/ether").nth(1).unwrap().to_string();
    (mac, ifindex)
}

/// New connections over IPv4 and IPv6: they succeed, and sending them
/// makes the edge's kernel resolve its gateways where it has not yet.
fn new_connections(d: &Deployment, what: &str) {
    for target in [web_v4(), web_v6()] {
        let report = short_connections(&d.lab, ClientNode::Client2, target, 40, 8).unwrap();
        assert_eq!(report.failures, 0, "{what}: new connections to {target} failed: {:?}", report.errors);
    }
}

#[test]
fn next_hops_follow_the_routers_mac_and_go_with_the_route_and_the_interface() {
    let _serial = serial();
    let d = Deployment::start(LAB_BINARY.as_ref(), &Setup::default()).expect("deploying gslb on the lab");
    let edge = EdgeNode::EdgeA;
    let node = Node::Edge(edge);
    let router_if = node.router_iface().unwrap();
    let (router_mac, _) = link(&d.lab, Node::Router, router_if);
    let (_, edge_if) = link(&d.lab, node, LEAF_IFACE);
    let (gw4, gw6) = (node.gateway_v4().unwrap().to_string(), node.gateway_v6().unwrap().to_string());

    new_connections(&d, "at the start");
    wait_for_hops(&d, edge, "the router's MAC", all_via(&router_mac, edge_if));
    let (_, text, _) = Deployment::run_gslb(
        LAB_BINARY.as_ref(),
        &["status", "--socket", &gslb_tests::deploy::admin_socket(&d.lab, edge).display().to_string()],
    )
    .unwrap();
    assert!(text.contains("next hops: 12 of 12 backends resolved by the agent"), "gslb status says:\n{text}");
    assert!(text.contains(&format!("{LEAF_IFACE} {router_mac}")), "gslb status says:\n{text}");
    let metrics = d.metrics(edge).unwrap();
    let line = format!("gslb_backend_next_hop_resolved{{backend=\"{}\"}} 1", node_backend_v4());
    assert!(metrics.lines().any(|l| l == line), "metrics lack {line:?}:\n{metrics}");

    // The router's end of the link takes a new MAC and the edge learns it:
    // the next hops follow, and connections through the edge carry on.
    let traffic = LongLived::start(&d.lab, ClientNode::Client1, web_v4(), 30, INTERVAL).unwrap();
    d.lab.exec(Node::Router, &["ip", "link", "set", "dev", router_if, "address", NEW_ROUTER_MAC]).unwrap();
    for gateway in [&gw4, &gw6] {
        let learn =
            ["ip", "neigh", "replace", gateway, "lladdr", NEW_ROUTER_MAC, "dev", LEAF_IFACE, "nud", "reachable"];
        d.lab.exec(node, &learn).unwrap();
    }
    let took = wait_for_hops(&d, edge, "the router's new MAC", all_via(NEW_ROUTER_MAC, edge_if));
    println!("the next hops followed the router's new MAC within {took:?}");
    let now = traffic.snapshot();
    wait_for_progress(&traffic, &now, 20, "after the router's MAC changed");
    assert_untouched(&traffic.stop(), "across the router's MAC change");

    // No route to the backends: no next hop (steer asks the kernel, which
    // has no route either).
    d.lab.exec(node, &["ip", "route", "del", "default"]).unwrap();
    d.lab.exec(node, &["ip", "-6", "route", "del", "default"]).unwrap();
    wait_for_hops(&d, edge, "invalid without a route", none_resolved);
    d.lab.exec(node, &["ip", "route", "replace", "default", "via", &gw4]).unwrap();
    d.lab.exec(node, &["ip", "-6", "route", "replace", "default", "via", &gw6]).unwrap();
    wait_for_hops(&d, edge, "resolved with the route back", all_via(NEW_ROUTER_MAC, edge_if));

    // The interface goes down: no next hop. Back up, new connections work
    // (the kernel resolves the router again) and the next hops return.
    d.lab.set_edge_link(edge, false).unwrap();
    wait_for_hops(&d, edge, "invalid with the interface down", none_resolved);
    d.lab.set_edge_link(edge, true).unwrap();
    new_connections(&d, "after the interface came back up");
    wait_for_hops(&d, edge, "resolved with the interface up", all_via(NEW_ROUTER_MAC, edge_if));
    let log = d.agent_log(edge);
    assert!(log.contains("next hop resolved") && log.contains("next hop not resolved"), "agent log:\n{log}");
}

/// The IPv4 address of a backend the lab config always has.
fn node_backend_v4() -> IpAddr {
    gslb_tests::lab::BackendNode::UsEast1.v4().into()
}
