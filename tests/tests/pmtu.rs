//! Path MTU end to end, through the lab's real kernels, with DF set by
//! real TCP stacks. Each test would hang without the feature it covers (a
//! path-MTU black hole), so a complete answer within the bound is the proof.
//!
//! - Toward backends: edge-a's route to the backends is locked to a
//!   1400-byte MTU, so a client's full-size segments no longer fit the
//!   tunnel. `steer` answers them with "fragmentation needed" /
//!   "packet too big" and the client resends smaller.
//! - Toward clients: the router's link to client-1 is narrowed to 1400
//!   bytes. The router's ICMP errors about a backend's full-size replies go
//!   to the VIP, and so to edge-a, which must tunnel them to the backend
//!   that sent the replies, so it resends smaller.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use gslb_tests::checks::{web_v4, web_v6};
use gslb_tests::deploy::{Deployment, Setup};
use gslb_tests::lab::{ClientNode, EdgeNode, Node};
use gslb_tests::traffic::one_request;

static SERIAL: Mutex<()> = Mutex::new(());
const LAB_BINARY: &str = env!("CARGO_BIN_EXE_gslb-lab");
/// Room for a retransmission timeout or two after the ICMP answer.
const WITHIN: Duration = Duration::from_secs(10);
const NARROW_MTU: u32 = 1400;

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn deploy() -> Deployment {
    Deployment::start(LAB_BINARY.as_ref(), &Setup::default()).expect("deploying gslb on the lab")
}

/// The answer's backend name, after any filler dots.
fn backend_name(answer: &[u8]) -> String {
    String::from_utf8_lossy(answer).trim_start_matches('.').to_string()
}

#[test]
fn clients_sending_full_size_packets_learn_the_tunnel_mtu_from_steer() {
    let _serial = serial();
    let d = deploy();
    let edge = d.lab.edge(EdgeNode::EdgeA);
    // Backends live in 10.11-13.x.x and fd00:11-13::/32.
    let mut script =
        format!("route add 10.8.0.0/13 via {} dev {} mtu lock {NARROW_MTU}\n", edge.gateway_v4, edge.iface);
    for region in 11..=13 {
        script.push_str(&format!(
            "-6 route add fd00:{region}::/32 via {} dev {} mtu lock {NARROW_MTU}\n",
            edge.gateway_v6, edge.iface
        ));
    }
    for line in script.lines() {
        let args: Vec<&str> = line.split_whitespace().collect();
        d.lab.exec(Node::Edge(EdgeNode::EdgeA), &[&["ip"][..], &args].concat()).expect("narrowing edge-a's routes");
    }

    let mut answered = 0;
    for target in [web_v4(), web_v6()] {
        // One request line of 30,000 bytes: full-size segments.
        let mut request = vec![b'x'; 30_000];
        request.push(b'\n');
        let answer = one_request(&d.lab, ClientNode::Client1, target, request, WITHIN)
            .unwrap_or_else(|e| panic!("{target}: a large request through the narrow tunnel: {e:#}"));
        assert!(!backend_name(&answer).is_empty(), "{target}: empty answer");
        let counters = d.status(EdgeNode::EdgeA).unwrap().counters;
        assert!(counters.too_big_answered > answered, "{target}: no ICMP answer counted: {counters:?}");
        answered = counters.too_big_answered;
    }
}

#[test]
fn icmp_errors_about_replies_reach_the_backend_that_sent_them() {
    let _serial = serial();
    let d = deploy();
    // Narrow only the router's side: the client still offers a 1460-byte
    // MSS, so backends send full-size replies the router cannot forward.
    let dev = Node::Client(ClientNode::Client1).router_iface().unwrap();
    d.lab.exec(Node::Router, &["ip", "link", "set", dev, "mtu", &NARROW_MTU.to_string()]).expect("narrowing c1");

    let check = |target: SocketAddr| {
        let size = 200_000;
        let answer = one_request(&d.lab, ClientNode::Client1, target, format!("bulk {size}\n").into_bytes(), WITHIN)
            .unwrap_or_else(|e| panic!("{target}: a large answer through the narrow client link: {e:#}"));
        assert_eq!(answer.iter().take_while(|&&b| b == b'.').count(), size, "{target}: answer cut short");
        assert!(!backend_name(&answer).is_empty(), "{target}: no backend name");
    };
    check(web_v4());
    let status = d.status(EdgeNode::EdgeA).unwrap();
    assert!(status.counters.icmp_errors > 0, "no ICMP error steered: {:?}", status.counters);
    check(web_v6());
    let after = d.status(EdgeNode::EdgeA).unwrap();
    assert!(after.counters.icmp_errors > status.counters.icmp_errors, "no ICMPv6 error steered: {:?}", after.counters);
}
