//! `gslb decap` resolves the next hop of every `--peer` itself, so handing
//! a hop-list packet on needs neither a route lookup nor IP forwarding: a
//! peer on the backend's own segment that it never talked to is resolved
//! within seconds of the start (the real process, a real neighbour).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gslb_tests::netns::{in_scratch_netns, sh};

/// The peer's namespace, removed even if the test fails.
struct PeerNamespace(String);

impl Drop for PeerNamespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Kills `gslb decap` when the test ends.
struct Decap(Child);

impl Drop for Decap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn neighbour(address: &str) -> String {
    let out = Command::new("ip").args(["neigh", "show", address]).output().expect("ip neigh");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_peer_on_the_same_segment_is_resolved_without_traffic() {
    in_scratch_netns(|| {
        let peer_ns = PeerNamespace(format!("gslb-peer-{}", std::process::id()));
        sh(&format!("ip netns add {}", peer_ns.0));
        sh(&format!("ip link add b0 type veth peer name p0 netns {}", peer_ns.0));
        sh("ip addr add 10.77.0.1/24 dev b0 && ip link set b0 up");
        sh(&format!("ip -n {0} addr add 10.77.0.2/24 dev p0 && ip -n {0} link set p0 up", peer_ns.0));
        assert_eq!(neighbour("10.77.0.2"), "", "the peer is known before decap starts");

        let child = Command::new(env!("CARGO_BIN_EXE_gslb-lab"))
            .args(["gslb", "decap", "--iface", "b0", "--address", "10.77.0.1"])
            .args(["--edge", "192.0.2.10", "--peer", "10.77.0.2"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start gslb decap");
        let _decap = Decap(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let entry = neighbour("10.77.0.2");
            if entry.contains("lladdr") {
                break;
            }
            assert!(Instant::now() < deadline, "the peer was not resolved within 10 s: {entry:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    });
}
