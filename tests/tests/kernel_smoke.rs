//! The whole path, kept small for the kernel matrix (`cargo xtask test
//! --kernels` runs it in every kernel, under emulation): real TCP over IPv4
//! and IPv6 from a client, through `steer` attached natively to edge-a's
//! veth, tunnelled to `decap` (also in the driver) on the backends, and
//! answered directly to the client; long-lived connections stay where they
//! are. On this host it runs with the other tests.

use std::collections::BTreeMap;
use std::time::Duration;

use gslb_tests::checks::{assert_untouched, web_v4, web_v6};
use gslb_tests::deploy::{Deployment, Setup};
use gslb_tests::lab::{BackendNode, ClientNode, EdgeNode};
use gslb_tests::traffic::{short_connections, LongLived};

const LAB_BINARY: &str = env!("CARGO_BIN_EXE_gslb-lab");

#[test]
fn tcp_through_native_steer_and_decap() {
    let d = Deployment::start(std::path::Path::new(LAB_BINARY), &Setup::default()).expect("deploying the lab");

    // edge-a carries the VIPs, in the veth driver; decap is in the driver
    // of every backend's veth (`xdp`, where the generic path shows
    // `xdpgeneric`).
    let status = d.status(EdgeNode::EdgeA).unwrap();
    assert_eq!(status.interfaces["eth0"], "native", "steer attached as {:?}", status.interfaces);
    for backend in BackendNode::ALL {
        let link = d.lab.exec(backend, &["ip", "-details", "link", "show", "dev", "eth0"]).unwrap();
        assert!(
            link.contains("prog/xdp ") && !link.contains("xdpgeneric"),
            "decap on {backend} is not attached in the driver:\n{link}"
        );
    }

    let long = LongLived::start(&d.lab, ClientNode::Client2, web_v4(), 10, Duration::from_millis(20)).unwrap();
    let mut per_backend: BTreeMap<String, u64> = BTreeMap::new();
    for target in [web_v4(), web_v6()] {
        let report = short_connections(&d.lab, ClientNode::Client1, target, 100, 16).expect("short connections");
        assert_eq!(report.failures, 0, "connections to {target} failed: {:?}", report.errors);
        assert!(report.per_backend.len() >= 3, "connections to {target} reached only {:?}", report.per_backend);
        for (backend, n) in report.per_backend {
            *per_backend.entry(backend).or_default() += n;
        }
    }
    assert_untouched(&long.stop(), "long-lived connections through edge-a");

    // Through steer, not around it: edge-a tunnelled at least every SYN.
    let forwarded = d.status(EdgeNode::EdgeA).unwrap().counters.forwarded;
    assert!(forwarded >= 200, "edge-a forwarded {forwarded} packets for 200 connections ({per_backend:?})");
}
