//! The lab without any XDP agent: the router sends the VIPs straight to one
//! backend, and the servers and traffic generators must see only it; then
//! the route moves and new connections follow. Also checks that a lab
//! leaves nothing behind, including when a test panics.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use gslb_tests::lab::{BackendNode, ClientNode, EdgeNode, Lab, Node, TCP_PORT, UDP_PORT, VIP_V4, VIP_V6};
use gslb_tests::server::start_servers;
use gslb_tests::traffic::{short_connections, udp_flows, LongLived};

const CLIENT: ClientNode = ClientNode::Client1;

fn vips() -> [IpAddr; 2] {
    [IpAddr::V4(VIP_V4), IpAddr::V6(VIP_V6)]
}

/// Everything a lab leaves on the machine.
fn footprint(lab: &Lab) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = Node::ALL.into_iter().map(|n| lab.netns_path(n)).collect();
    paths.push(lab.run_dir());
    paths.push(lab.bpffs_dir(EdgeNode::EdgeA).parent().unwrap().to_path_buf());
    paths
}

fn assert_gone(paths: &[PathBuf]) {
    for path in paths {
        assert!(!path.exists(), "{} left behind", path.display());
    }
}

/// Every kind of traffic, both families, answered by `expected` alone.
fn check_all_traffic_reaches(lab: &Lab, expected: BackendNode) {
    let name = expected.name();
    for vip in vips() {
        let tcp = SocketAddr::new(vip, TCP_PORT);
        let udp = SocketAddr::new(vip, UDP_PORT);

        let long = LongLived::start(lab, CLIENT, tcp, 20, Duration::from_millis(10)).unwrap();
        std::thread::sleep(Duration::from_secs(1));
        let reports = long.stop();
        for r in &reports {
            assert!(!r.broken(), "{tcp}: connection broke: {r:?}");
            assert_eq!(r.backends(), [name], "{tcp}: {r:?}");
            assert_eq!(r.timeouts, 0, "{tcp}: {r:?}");
            // About 1 s at one request per 10 ms plus the answer time.
            assert!(r.ok >= 20, "{tcp}: too few answers: {r:?}");
        }

        let short = short_connections(lab, CLIENT, tcp, 200, 20).unwrap();
        assert_eq!(short.failures, 0, "{tcp}: {short:?}");
        assert_eq!(short.per_backend.into_iter().collect::<Vec<_>>(), [(name.to_string(), 200)], "{tcp}");

        let flows = udp_flows(lab, CLIENT, udp, 20, 5, Duration::from_millis(10)).unwrap();
        assert_eq!(flows.len(), 20);
        for f in &flows {
            assert!(!f.broken(), "{udp}: {f:?}");
            assert_eq!(f.timeouts, 0, "{udp}: {f:?}");
            assert_eq!(f.runs, [(name.to_string(), 5)], "{udp}: {f:?}");
        }
    }
}

#[test]
fn traffic_follows_the_vip_route() {
    let started = Instant::now();
    let lab = Lab::new().unwrap();
    eprintln!("lab created in {:?}", lab.creation_time());
    // Not created by the lab, but removed with it.
    std::fs::create_dir_all(lab.bpffs_dir(EdgeNode::EdgeA)).unwrap();
    let paths = footprint(&lab);

    let servers = start_servers(&lab).unwrap();
    lab.route_vips_to_backend(BackendNode::UsEast1).unwrap();
    check_all_traffic_reaches(&lab, BackendNode::UsEast1);

    // Long-lived connections open across the switch: they may break (the
    // new backend has no such connection), which is fine here.
    let tcp4 = SocketAddr::new(IpAddr::V4(VIP_V4), TCP_PORT);
    let long = LongLived::start(&lab, CLIENT, tcp4, 5, Duration::from_millis(10)).unwrap();
    lab.route_vips_to_backend(BackendNode::EuWest1).unwrap();
    for vip in vips() {
        let tcp = SocketAddr::new(vip, TCP_PORT);
        let short = short_connections(&lab, CLIENT, tcp, 200, 20).unwrap();
        assert_eq!(short.failures, 0, "{tcp}: {short:?}");
        assert_eq!(short.per_backend.into_iter().collect::<Vec<_>>(), [("eu-west-1".to_string(), 200)], "{tcp}");
        let flows = udp_flows(&lab, CLIENT, SocketAddr::new(vip, UDP_PORT), 5, 3, Duration::from_millis(10)).unwrap();
        assert!(flows.iter().all(|f| f.backends() == ["eu-west-1"] && f.timeouts == 0), "{flows:?}");
    }
    let switched = long.stop();
    eprintln!(
        "across the switch: {:?}",
        switched.iter().map(|r| (r.runs.clone(), r.error.clone())).collect::<Vec<_>>()
    );
    assert!(switched.iter().all(|r| r.backends().first().map(String::as_str) == Some("us-east-1")), "{switched:?}");

    drop(servers);
    drop(lab);
    assert_gone(&paths);
    eprintln!("smoke test took {:?}", started.elapsed());
}

#[test]
fn a_lab_dropped_by_a_panic_cleans_up() {
    let paths = std::sync::Mutex::new(Vec::new());
    let result = std::panic::catch_unwind(|| {
        let lab = Lab::new().unwrap();
        let _servers = start_servers(&lab).unwrap();
        *paths.lock().unwrap() = footprint(&lab);
        assert!(lab.netns_path(Node::Router).exists());
        panic!("deliberate panic with a live lab");
    });
    assert!(result.is_err());
    let paths = paths.into_inner().unwrap();
    assert!(!paths.is_empty());
    assert_gone(&paths);
}

#[test]
fn spawned_children_run_in_their_namespace_and_die_with_the_lab() {
    let lab = Lab::new().unwrap();
    // The backend's VIP is visible to a child in its namespace only.
    let addrs = lab.exec(BackendNode::ApSouth2, &["ip", "-br", "addr", "show", "dev", "lo"]).unwrap();
    assert!(addrs.contains(&VIP_V4.to_string()), "{addrs}");
    assert!(!lab.exec(ClientNode::Client2, &["ip", "-br", "addr"]).unwrap().contains(&VIP_V4.to_string()));
    // /sys/fs/bpf stays visible (ip netns exec would hide it).
    lab.exec(EdgeNode::EdgeB, &["test", "-d", "/sys/fs/bpf"]).unwrap();
    let err = lab.exec(Node::Router, &["ip", "link", "show", "no-such-link"]).unwrap_err();
    assert!(format!("{err:#}").contains("no-such-link"), "{err:#}");

    let mut sleep = lab.command(EdgeNode::EdgeA, "sleep");
    sleep.arg("600");
    let killed = lab.spawn(EdgeNode::EdgeA, sleep).unwrap();
    let mut sleep = std::process::Command::new("sleep");
    sleep.arg("600");
    let left = lab.spawn(EdgeNode::EdgeB, sleep).unwrap();
    assert!(lab.is_running(killed) && lab.is_running(left));
    lab.kill(killed).unwrap();
    assert!(!lab.is_running(killed));
    assert!(lab.kill(killed).is_err());
    drop(lab);
    // Reaped by the drop, so the pid is gone (not a zombie).
    assert!(!PathBuf::from(format!("/proc/{left}")).exists());
}
