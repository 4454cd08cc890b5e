//! The lab's etcd cluster (three real members in the router's namespace):
//! it starts, the edges reach every member, writes replicate, a dead
//! leader is replaced, and the data survives restarting every member.
//! Times are printed, never asserted: this machine is shared.

use std::time::{Duration, Instant};

use gslb_tests::etcd::{EtcdCluster, MEMBERS};
use gslb_tests::lab::{EdgeNode, Lab};

/// How long a follower's local copy may lag behind a committed write.
const REPLICATION_TIMEOUT: Duration = Duration::from_secs(5);

fn lab_and_cluster() -> (Lab, EtcdCluster) {
    let lab = Lab::new().unwrap();
    let etcd = EtcdCluster::start(&lab).unwrap();
    eprintln!("etcd cluster healthy {:?} after start", etcd.started_in());
    (lab, etcd)
}

/// The value of `key` (linearizable `get`, any running member), if any.
fn get(etcd: &EtcdCluster, key: &str) -> Option<String> {
    let out = etcd.ctl(&["get", key, "--print-value-only"]).unwrap();
    Some(out.trim_end().to_string()).filter(|v| !v.is_empty())
}

/// Waits until `member`'s own copy (a serializable read, served locally
/// without asking the leader) holds `value` under `key`.
fn wait_local_value(etcd: &EtcdCluster, member: usize, key: &str, value: &str) {
    let deadline = Instant::now() + REPLICATION_TIMEOUT;
    loop {
        let out = etcd.ctl_on(member, &["get", key, "--print-value-only", "--consistency=s"]);
        if matches!(&out, Ok(v) if v.trim_end() == value) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} has no {key}={value} within {REPLICATION_TIMEOUT:?}: {out:?}\n{}",
            EtcdCluster::name(member),
            etcd.log_tails()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn cluster_starts_and_both_edges_reach_every_member() {
    let (lab, etcd) = lab_and_cluster();
    let endpoints = etcd.endpoints();
    assert_eq!(endpoints, ["http://10.250.0.1:2379", "http://10.250.0.2:2379", "http://10.250.0.3:2379"]);
    let leader = etcd.leader().unwrap();
    assert!(leader < MEMBERS);

    for edge in EdgeNode::ALL {
        // A quorum read through each member, from the edge's namespace.
        let out = lab
            .exec(edge, &["etcdctl", "--endpoints", &endpoints.join(","), "endpoint", "health", "-w", "json"])
            .unwrap_or_else(|e| panic!("etcd from {edge}: {e:#}"));
        let health: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        assert_eq!(health.len(), MEMBERS, "{edge}: {out}");
        for h in &health {
            assert_eq!(h["health"], true, "{edge}: {h}");
        }
    }
}

#[test]
fn a_write_to_one_member_is_read_on_the_others() {
    let (_lab, etcd) = lab_and_cluster();
    etcd.ctl_on(0, &["put", "/gslb/test/key", "from-etcd-1"]).unwrap();
    for member in 1..MEMBERS {
        let out = etcd.ctl_on(member, &["get", "/gslb/test/key", "--print-value-only"]).unwrap();
        assert_eq!(out.trim_end(), "from-etcd-1", "linearizable read on {}", EtcdCluster::name(member));
        wait_local_value(&etcd, member, "/gslb/test/key", "from-etcd-1");
    }
}

#[test]
fn killing_the_leader_elects_another_and_writes_go_on() {
    let (_lab, etcd) = lab_and_cluster();
    etcd.ctl(&["put", "/gslb/test/before", "1"]).unwrap();
    let old = etcd.wait_leader().unwrap();

    let killed = Instant::now();
    etcd.kill(old).unwrap();
    let new = etcd.wait_leader().unwrap();
    let elected_in = killed.elapsed();
    assert_ne!(new, old, "the dead leader cannot lead");
    etcd.ctl(&["put", "/gslb/test/after", "2"]).unwrap();
    let written_in = killed.elapsed();
    eprintln!(
        "leader {} killed: {} leads after {elected_in:?}, first write done after {written_in:?}",
        EtcdCluster::name(old),
        EtcdCluster::name(new)
    );
    assert_eq!(get(&etcd, "/gslb/test/before").as_deref(), Some("1"));
    assert_eq!(get(&etcd, "/gslb/test/after").as_deref(), Some("2"));

    // The old leader comes back as a follower and catches up.
    etcd.restart(old).unwrap();
    let rejoined_in = etcd.wait_healthy().unwrap();
    eprintln!("{} healthy again {rejoined_in:?} after its restart", EtcdCluster::name(old));
    wait_local_value(&etcd, old, "/gslb/test/after", "2");
}

#[test]
fn data_survives_killing_and_restarting_every_member() {
    let (_lab, etcd) = lab_and_cluster();
    for i in 0..10 {
        etcd.ctl(&["put", &format!("/gslb/test/{i}"), &format!("value-{i}")]).unwrap();
    }
    etcd.kill_all();
    assert!(etcd.running().is_empty());
    assert!(etcd.ctl(&["get", "/gslb/test/0"]).is_err(), "nothing runs");

    let restarted = Instant::now();
    for member in 0..MEMBERS {
        etcd.restart(member).unwrap();
    }
    etcd.wait_healthy().unwrap();
    let leader = etcd.wait_leader().unwrap();
    eprintln!("all members restarted: healthy, {} leads, after {:?}", EtcdCluster::name(leader), restarted.elapsed());
    let out = etcd.ctl(&["get", "/gslb/test/", "--prefix", "--keys-only"]).unwrap();
    assert_eq!(out.lines().filter(|l| !l.is_empty()).count(), 10, "{out}");
    for i in 0..10 {
        assert_eq!(get(&etcd, &format!("/gslb/test/{i}")), Some(format!("value-{i}")));
    }
}
