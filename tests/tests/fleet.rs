//! The fleet end to end: a real three-member etcd cluster on the router,
//! both edges' agents with `[fleet]` (edge-a in the "canary" group), the
//! config pushed with `gslb fleet push`, and real TCP through the edges.
//!
//! - A push reaches every edge: the same revision, the same tables (read
//!   from the pinned maps); a refused file changes nothing; a staged
//!   rollout reaches the canary first and the rest after the bake; a canary
//!   that cannot apply a revision halts the rollout; a rollback restores
//!   the earlier tables everywhere, with no established connection broken.
//! - Health by quorum: one edge's probes to a backend blocked keep the
//!   backend in every table, and that edge reports the disagreement; both
//!   edges' probes blocked take it out of every table.
//! - etcd away: the leader killed during traffic breaks nothing and pushes
//!   work after the election; every member killed, the edges steer on,
//!   say so, a restarted agent comes back with its saved revision, and all
//!   resynchronise when etcd returns.
//!
//! The tests share the machine's two cores, so they run one at a time.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gslb_tests::checks::{assert_untouched, short_from_both, wait_for_progress, web_v4};
use gslb_tests::deploy::{fleet_document, Deployment, FleetSetup, Setup, Weights};
use gslb_tests::lab::{BackendNode, ClientNode, EdgeNode, Region};
use gslb_tests::traffic::LongLived;
use gslb_userspace::sys::steer::Steer;
use gslb_userspace::view::fleet::FleetMemberStatus;

static SERIAL: Mutex<()> = Mutex::new(());

const LAB_BINARY: &str = env!("CARGO_BIN_EXE_gslb-lab");
/// How long an edge may take to apply what etcd says.
const APPLY_TIMEOUT: Duration = Duration::from_secs(20);

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn fleet_setup(extra: &str) -> Setup {
    let groups = BTreeMap::from([(EdgeNode::EdgeA, "canary".to_string())]);
    Setup {
        monitor: true,
        fleet: Some(FleetSetup { groups, extra: extra.into(), ..FleetSetup::default() }),
        ..Setup::default()
    }
}

fn member(d: &Deployment, edge: EdgeNode) -> FleetMemberStatus {
    d.status(edge).expect("agent status").fleet.expect("a fleet member reports its fleet")
}

/// Polls `check` until it holds, at most `timeout`; fails with `what`.
fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    loop {
        if check() {
            return started.elapsed();
        }
        assert!(started.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_for_revision(d: &Deployment, edge: EdgeNode, revision: u64) -> Duration {
    wait_until(&format!("{edge} applies revision {revision}"), APPLY_TIMEOUT, || {
        member(d, edge).applied_revision == Some(revision)
    })
}

/// Every VIP's installed table on `edge`, slot by slot, as backend
/// addresses (ids may differ between edges; addresses must not).
fn tables(d: &Deployment, edge: EdgeNode) -> BTreeMap<String, Vec<Option<IpAddr>>> {
    let steer = Steer::open_pinned(&d.lab.bpffs_dir(edge)).expect("open the pins");
    let backends: BTreeMap<u32, IpAddr> =
        steer.installed_backends().unwrap().into_iter().map(|(id, addr, _)| (id, addr)).collect();
    let status = d.status(edge).unwrap();
    status
        .vips
        .iter()
        .map(|vip| {
            let matcher = gslb_userspace::decide::plan::VipMatch {
                address: vip.address,
                port: vip.port,
                proto: if vip.protocol == "udp" { 17 } else { 6 },
            };
            let table = steer.vip_table(matcher).expect("the VIP's table");
            (vip.name.clone(), table.iter().map(|id| backends.get(id).copied()).collect())
        })
        .collect()
}

fn fleet_status(d: &Deployment) -> serde_json::Value {
    let (ok, stdout, stderr) = d.fleet(&["status", "--json"]).unwrap();
    assert!(ok, "gslb fleet status failed: {stderr}");
    serde_json::from_str(&stdout).expect("fleet status is JSON")
}

fn heavier_east() -> Weights {
    let mut weights = Weights::default();
    weights.pools.insert(Region::UsEast, 300);
    weights
}

/// A document every edge accepts but for its `edge.max_vips` (64 in the
/// lab): 70 VIPs.
fn too_many_vips(base: &str) -> String {
    let mut text = base.to_string();
    for port in 0..70 {
        text += &format!(
            "[[vip]]\nname = \"extra{port}\"\naddress = \"203.0.113.10\"\nport = {}\nprotocol = \"tcp\"\npools = [\"us-east\"]\n\n",
            10_000 + port
        );
    }
    text
}

#[test]
fn pushes_roll_out_to_every_edge_and_roll_back() {
    let _serial = serial();
    let setup = fleet_setup("");
    let d = Deployment::start(LAB_BINARY.as_ref(), &setup).expect("deploying gslb with a fleet");
    assert_eq!(member(&d, EdgeNode::EdgeA).applied_revision, None, "nothing pushed yet");

    // Revision 1, every edge at once.
    let first = fleet_document(&setup);
    d.push("rev1.toml", &first, &["--all-at-once", "--wait", "30s"]).unwrap();
    for edge in EdgeNode::ALL {
        wait_for_revision(&d, edge, 1);
    }
    let rev1_tables = tables(&d, EdgeNode::EdgeA);
    assert_eq!(rev1_tables, tables(&d, EdgeNode::EdgeB), "both edges hold the same tables");
    assert_eq!(member(&d, EdgeNode::EdgeA).tables_digest, member(&d, EdgeNode::EdgeB).tables_digest);
    let report = short_from_both(&d, web_v4(), 40);
    assert_eq!(report.failures, 0, "connections through the fleet's config failed: {:?}", report.errors);

    // A refused file names its line and stores nothing.
    let broken = first.replacen("protocol = \"tcp\"", "protocol = \"sctp\"", 1);
    let path = d.lab.run_dir().join("broken.toml");
    std::fs::write(&path, &broken).unwrap();
    let (ok, stdout, stderr) = d.fleet(&["push", path.to_str().unwrap(), "--all-at-once"]).unwrap();
    assert!(!ok, "a broken document was accepted: {stdout}");
    assert!(stderr.contains("broken.toml:") && stderr.contains("sctp"), "the refusal names no line: {stderr}");
    assert_eq!(fleet_status(&d)["revisions"], serde_json::json!([1]), "a refused push stored something");
    let (ok, text, _) = d.fleet(&["status"]).unwrap();
    assert!(ok && text.contains("revision 1") && text.contains("tables identical"), "gslb fleet status:\n{text}");
    assert!(EdgeNode::ALL.iter().all(|e| text.contains(e.name())), "gslb fleet status lists every edge:\n{text}");

    let v4 = LongLived::start(&d.lab, ClientNode::Client1, web_v4(), 40, Duration::from_millis(20)).unwrap();
    wait_for_progress(&v4, &v4.snapshot(), 3, "before the rollout");

    // Revision 2, staged: the canary (edge-a) first, edge-b after the bake.
    let second = fleet_document(&Setup { weights: heavier_east(), ..setup.clone() });
    d.push("rev2.toml", &second, &["--canary", "canary", "--bake", "4s"]).unwrap();
    wait_for_revision(&d, EdgeNode::EdgeA, 2);
    let canary_at = Instant::now();
    assert_eq!(member(&d, EdgeNode::EdgeB).applied_revision, Some(1), "edge-b took revision 2 before the bake");
    let status = fleet_status(&d);
    assert!(status["rollout"]["phase"] == "canary" || status["rollout"]["phase"] == "baking", "{status}");
    wait_for_revision(&d, EdgeNode::EdgeB, 2);
    let behind = canary_at.elapsed();
    assert!(behind >= Duration::from_secs(3), "edge-b followed the canary after {behind:?}, before the 4 s bake");
    let rev2_tables = tables(&d, EdgeNode::EdgeA);
    assert_ne!(rev1_tables, rev2_tables, "revision 2 changed no table: the test proves nothing");
    assert_eq!(rev2_tables, tables(&d, EdgeNode::EdgeB));

    // Revision 3 is refused by the canary: the rollout halts, edge-b never
    // sees it.
    d.push("rev3.toml", &too_many_vips(&second), &["--canary", "canary", "--bake", "1s"]).unwrap();
    wait_until("the rollout halts on the canary's refusal", APPLY_TIMEOUT, || {
        fleet_status(&d)["rollout"]["phase"] == "halted"
    });
    let status = fleet_status(&d);
    assert!(status["rollout"]["reason"].as_str().unwrap().contains("could not apply"), "{status}");
    assert_eq!(member(&d, EdgeNode::EdgeA).apply_error.map(|e| e.revision), Some(3));
    for edge in EdgeNode::ALL {
        assert_eq!(member(&d, edge).applied_revision, Some(2), "{edge} left revision 2");
    }
    let (ok, _, stderr) = d.fleet(&["push", "/nonexistent.toml"]).unwrap();
    assert!(!ok && stderr.contains("nonexistent"), "{stderr}");

    // Revision 4 replaces three VIPs with 63 others: 64 VIPs, as many as
    // the edges hold (each edge makes room before it adds).
    let (vips, pools) = second.split_at(second.find("[[pool]]").expect("pools"));
    let web: Vec<&str> = vips.split("[[vip]]").filter(|v| v.contains("name = \"web\"")).collect();
    let web_only = format!("[[vip]]{}\n{pools}", web.concat());
    let mut crowded = web_only.clone();
    for i in 0..63 {
        crowded += &format!("[[vip]]\nname = \"many{i}\"\naddress = \"198.18.1.{}\"\nport = 80\nprotocol = \"tcp\"\npools = [\"us-east\"]\n\n", i + 1);
    }
    d.push("rev4.toml", &crowded, &["--all-at-once", "--wait", "30s"]).expect("a full revision replacing VIPs");
    for edge in EdgeNode::ALL {
        assert_eq!(d.status(edge).unwrap().vips.len(), 64, "{edge}");
    }
    // Revision 5, too big for the edges, all at once: `--wait` says so.
    let path = d.lab.run_dir().join("rev5.toml");
    std::fs::write(&path, too_many_vips(&second)).unwrap();
    let (ok, stdout, stderr) = d.fleet(&["push", path.to_str().unwrap(), "--all-at-once", "--wait", "30s"]).unwrap();
    assert!(!ok && stderr.contains("refused revision 5"), "a refused revision was not reported: {stdout}{stderr}");
    assert_eq!(member(&d, EdgeNode::EdgeB).applied_revision, Some(4));

    // Rollback to revision 1: every edge, the same tables as before.
    let (ok, stdout, stderr) = d.fleet(&["rollback", "--to", "1"]).unwrap();
    assert!(ok, "rollback failed: {stdout}{stderr}");
    for edge in EdgeNode::ALL {
        wait_for_revision(&d, edge, 1);
        assert_eq!(tables(&d, edge), rev1_tables, "{edge} did not return to revision 1's tables");
    }
    let before = v4.snapshot();
    wait_for_progress(&v4, &before, 5, "after the rollback");
    assert_untouched(&v4.stop(), "long-lived connections through the rollout and rollback");
}

/// nftables in `edge`'s namespace: drop its health checks to `backends`.
fn block_checks(d: &Deployment, edge: EdgeNode, backends: &[BackendNode]) {
    let mut script = String::from("table inet fleet_test {\n chain out {\n  type filter hook output priority 0;\n");
    for b in backends {
        script += &format!("  ip daddr {} tcp dport 8080 drop\n", b.v4());
        script += &format!("  ip6 daddr {} tcp dport 8080 drop\n", b.v6());
    }
    script += " }\n}\n";
    let path = d.lab.run_dir().join(format!("block-{edge}.nft"));
    std::fs::write(&path, script).unwrap();
    d.lab.exec(edge, &["nft", "-f", path.to_str().unwrap()]).expect("nft");
}

fn in_tables(d: &Deployment, edge: EdgeNode, backend: BackendNode) -> bool {
    let status = d.status(edge).unwrap();
    let web = status.vips.iter().find(|v| v.name == "web").expect("web VIP");
    web.backends.iter().any(|b| b.address == IpAddr::from(backend.v4()))
}

#[test]
fn health_by_quorum() {
    let _serial = serial();
    let setup = fleet_setup("");
    let d = Deployment::start(LAB_BINARY.as_ref(), &setup).expect("deploying gslb with a fleet");
    d.push("rev1.toml", &fleet_document(&setup), &["--all-at-once", "--wait", "30s"]).unwrap();
    let target = BackendNode::UsEast1;
    let address = IpAddr::from(target.v4());

    // Only edge-a's checks fail: one vote of two, the fleet keeps it.
    block_checks(&d, EdgeNode::EdgeA, &[target]);
    wait_until("edge-a reports its disagreement with the fleet", APPLY_TIMEOUT, || {
        let disagreements = member(&d, EdgeNode::EdgeA).disagreements;
        disagreements.len() == 2 && disagreements.iter().any(|x| x.backend == address)
    });
    for edge in EdgeNode::ALL {
        assert!(in_tables(&d, edge, target), "{edge} took {target} out on one edge's word");
    }
    assert_eq!(tables(&d, EdgeNode::EdgeA), tables(&d, EdgeNode::EdgeB), "the edges' tables differ");
    let metrics = d.metrics(EdgeNode::EdgeA).unwrap();
    assert!(metrics.contains("gslb_fleet_health_disagreements 2"), "disagreement metric:\n{metrics}");
    assert!(member(&d, EdgeNode::EdgeB).disagreements.is_empty());

    // Both edges' checks fail: a quorum, every edge takes it out.
    block_checks(&d, EdgeNode::EdgeB, &[target]);
    let took = wait_until("every edge takes the backend out", APPLY_TIMEOUT, || {
        EdgeNode::ALL.iter().all(|&edge| !in_tables(&d, edge, target))
    });
    println!("both edges dropped {target} {took:?} after edge-b's checks were blocked");
    // Its IPv6 address is checked on its own schedule: wait for that verdict
    // too, then the tables must be the same everywhere.
    wait_until("every edge takes the backend's IPv6 address out too", APPLY_TIMEOUT, || {
        EdgeNode::ALL.iter().all(|&edge| {
            member(&d, edge).verdicts.get(&IpAddr::from(target.v6())).is_some_and(|v| v.health.as_str() == "down")
        })
    });
    wait_until("the edges' tables are identical", APPLY_TIMEOUT, || {
        tables(&d, EdgeNode::EdgeA) == tables(&d, EdgeNode::EdgeB)
    });
    let report = short_from_both(&d, web_v4(), 40);
    assert_eq!(report.failures, 0, "{:?}", report.errors);
    assert!(!report.per_backend.contains_key(target.name()), "new flows still reach {target}");
}

#[test]
fn etcd_away_and_back() {
    let _serial = serial();
    let setup = fleet_setup("health_grace = \"2s\"\n");
    let d = Deployment::start(LAB_BINARY.as_ref(), &setup).expect("deploying gslb with a fleet");
    d.push("rev1.toml", &fleet_document(&setup), &["--all-at-once", "--wait", "30s"]).unwrap();
    let etcd = d.etcd.as_ref().unwrap();
    let v4 = LongLived::start(&d.lab, ClientNode::Client1, web_v4(), 40, Duration::from_millis(20)).unwrap();
    wait_for_progress(&v4, &v4.snapshot(), 3, "before etcd's trouble");

    // The leader dies: an election, nothing else.
    let leader = etcd.leader().unwrap();
    etcd.kill(leader).unwrap();
    etcd.wait_leader().unwrap();
    let second = fleet_document(&Setup { weights: heavier_east(), ..setup.clone() });
    d.push("rev2.toml", &second, &["--all-at-once", "--wait", "30s"]).expect("a push after the election");
    etcd.restart(leader).unwrap();
    etcd.wait_healthy().unwrap();
    let members = etcd.running();
    assert_eq!(members.len(), gslb_tests::etcd::MEMBERS);

    // Every member dies: the edges steer on and say so.
    etcd.kill_all();
    for edge in EdgeNode::ALL {
        wait_until(&format!("{edge} reports etcd away"), APPLY_TIMEOUT, || !member(&d, edge).connected);
    }
    wait_until("edge-a goes by its own checks after the grace", APPLY_TIMEOUT, || {
        member(&d, EdgeNode::EdgeA).health_source.starts_with("local")
    });
    let metrics = d.metrics(EdgeNode::EdgeA).unwrap();
    assert!(metrics.contains("gslb_fleet_connected 0"), "{metrics}");
    let report = short_from_both(&d, web_v4(), 40);
    assert_eq!(report.failures, 0, "steering stopped with etcd away: {:?}", report.errors);

    // A restarted agent comes back with its saved revision.
    let tables_before = tables(&d, EdgeNode::EdgeA);
    d.kill_agent(EdgeNode::EdgeA).unwrap();
    d.start_agent(EdgeNode::EdgeA).unwrap();
    let restarted = member(&d, EdgeNode::EdgeA);
    assert_eq!(restarted.applied_revision, Some(2), "the restarted agent lost its revision");
    assert!(!restarted.connected);
    assert_eq!(tables(&d, EdgeNode::EdgeA), tables_before, "the restart changed edge-a's tables");

    // etcd returns: everyone resynchronises.
    for member in members {
        etcd.restart(member).unwrap();
    }
    etcd.wait_healthy().unwrap();
    for edge in EdgeNode::ALL {
        wait_until(&format!("{edge} reconnects"), Duration::from_secs(30), || {
            let m = member(&d, edge);
            m.connected && m.health_source == "fleet"
        });
    }
    d.push("rev3.toml", &fleet_document(&setup), &["--all-at-once", "--wait", "30s"])
        .expect("a push after etcd returned");
    let before = v4.snapshot();
    wait_for_progress(&v4, &before, 5, "after etcd returned");
    let reports = v4.stop();
    assert!(reports.iter().all(|r| !r.broken()), "connections broke while etcd was away: {reports:?}");
}

#[test]
fn an_edge_that_cannot_reach_what_the_fleet_reaches_withdraws() {
    use gslb_tests::bgp::{lab_vips, wait_for_edges, BgpSetup};
    let _serial = serial();
    let bgp = BgpSetup { agent_config: true, ..BgpSetup::default() };
    let setup = Setup { bgp: Some(bgp), ..fleet_setup("withdraw_unreachable_share = 0.3\n") };
    let d = Deployment::start(LAB_BINARY.as_ref(), &setup).expect("deploying gslb with a fleet and BGP");
    d.push("rev1.toml", &fleet_document(&setup), &["--all-at-once", "--wait", "30s"]).unwrap();
    let routes = Duration::from_secs(20);
    for vip in lab_vips() {
        wait_for_edges(&d.lab, vip, &EdgeNode::ALL, routes).expect("both edges announce");
    }

    // edge-a's checks to two of six backends fail (4 of 12 monitored
    // addresses, above 0.3): the fleet keeps them, edge-a withdraws.
    block_checks(&d, EdgeNode::EdgeA, &[BackendNode::UsEast1, BackendNode::EuWest1]);
    for vip in lab_vips() {
        wait_for_edges(&d.lab, vip, &[EdgeNode::EdgeB], routes).expect("edge-a withdraws, edge-b stays");
    }
    let a = member(&d, EdgeNode::EdgeA);
    assert!(a.withdrawn_unreachable, "edge-a does not say why it withdrew: {a:?}");
    assert_eq!(a.disagreements.len(), 4);
    assert!(EdgeNode::ALL.iter().all(|&e| in_tables(&d, e, BackendNode::UsEast1)), "the fleet took the backend out");
    let report = short_from_both(&d, web_v4(), 40);
    assert_eq!(report.failures, 0, "traffic did not continue through edge-b: {:?}", report.errors);

    // Its checks pass again: it announces again.
    d.lab.exec(EdgeNode::EdgeA, &["nft", "delete", "table", "inet", "fleet_test"]).unwrap();
    for vip in lab_vips() {
        wait_for_edges(&d.lab, vip, &EdgeNode::ALL, routes).expect("edge-a announces again");
    }
    assert!(!member(&d, EdgeNode::EdgeA).withdrawn_unreachable);
}

#[test]
fn drains_are_fleet_wide_and_survive_restarts() {
    let _serial = serial();
    let setup = fleet_setup("");
    let d = Deployment::start(LAB_BINARY.as_ref(), &setup).expect("deploying gslb with a fleet");
    d.push("rev1.toml", &fleet_document(&setup), &["--all-at-once", "--wait", "30s"]).unwrap();
    let target = BackendNode::EuWest2;

    // Drained on edge-a: out of every edge's tables.
    d.drain(EdgeNode::EdgeA, &target.v4().to_string(), None).unwrap();
    wait_until("every edge drains the backend", APPLY_TIMEOUT, || {
        EdgeNode::ALL.iter().all(|&edge| !in_tables(&d, edge, target))
    });
    let status = fleet_status(&d);
    assert!(status["drains"].get(target.v4().to_string()).is_some(), "the drain is not in etcd: {status}");

    // Both agents killed and started again, with etcd away: the drain
    // stays (saved beside the revision); with etcd back, still.
    let etcd = d.etcd.as_ref().unwrap();
    let members = etcd.running();
    etcd.kill_all();
    for edge in EdgeNode::ALL {
        d.kill_agent(edge).unwrap();
        d.start_agent(edge).unwrap();
        assert!(!member(&d, edge).connected);
        assert!(!in_tables(&d, edge, target), "{edge} forgot the drain over a restart without etcd");
    }
    for member_index in members {
        etcd.restart(member_index).unwrap();
    }
    etcd.wait_healthy().unwrap();
    for edge in EdgeNode::ALL {
        wait_until(&format!("{edge} reconnects"), Duration::from_secs(30), || member(&d, edge).connected);
        assert!(!in_tables(&d, edge, target), "{edge} forgot the drain over a restart");
    }

    // Undrained on edge-b: back everywhere.
    d.undrain(EdgeNode::EdgeB, &target.v4().to_string()).unwrap();
    wait_until("every edge takes the backend back", APPLY_TIMEOUT, || {
        EdgeNode::ALL.iter().all(|&edge| in_tables(&d, edge, target))
    });
}

#[test]
fn a_member_cut_off_from_its_majority_is_left_for_the_others() {
    let _serial = serial();
    let setup = fleet_setup("");
    let d = Deployment::start(LAB_BINARY.as_ref(), &setup).expect("deploying gslb with a fleet");
    d.push("rev1.toml", &fleet_document(&setup), &["--all-at-once", "--wait", "30s"]).unwrap();
    let etcd = d.etcd.as_ref().unwrap();
    let v4 = LongLived::start(&d.lab, ClientNode::Client1, web_v4(), 20, Duration::from_millis(20)).unwrap();

    // Agents try the endpoints in order: both started on member 0. Cut it
    // off from the other two; it still answers its clients.
    let sessions_before: Vec<usize> =
        EdgeNode::ALL.iter().map(|&e| d.agent_log(e).matches("fleet: connected to etcd").count()).collect();
    etcd.partition(&d.lab, 0).unwrap();
    for (i, &edge) in EdgeNode::ALL.iter().enumerate() {
        let took =
            wait_until(&format!("{edge} leaves the cut-off member for another"), Duration::from_secs(30), || {
                d.agent_log(edge).matches("fleet: connected to etcd").count() > sessions_before[i]
                    && member(&d, edge).connected
            });
        println!("{edge} left the cut-off member within {took:?} of the partition");
    }
    // The fleet works through the majority: a push, and a verdict.
    let second = fleet_document(&Setup { weights: heavier_east(), ..setup.clone() });
    d.push("rev2.toml", &second, &["--all-at-once", "--wait", "30s"]).expect("a push with a member cut off");
    for edge in EdgeNode::ALL {
        wait_for_revision(&d, edge, 2);
    }
    let target = BackendNode::ApSouth1;
    for edge in EdgeNode::ALL {
        block_checks(&d, edge, &[target]);
    }
    wait_until("every edge takes the backend out", APPLY_TIMEOUT, || {
        EdgeNode::ALL.iter().all(|&edge| !in_tables(&d, edge, target))
    });
    etcd.heal(&d.lab, 0).unwrap();
    etcd.wait_healthy().unwrap();
    let before = v4.snapshot();
    wait_for_progress(&v4, &before, 5, "after the partition healed");
    // Connections on the backend taken out are cut (it is down to the
    // fleet); no other may break.
    let reports = v4.stop();
    let broken: Vec<_> =
        reports.iter().filter(|r| r.broken() && !r.backends().contains(&target.name().to_string())).collect();
    assert!(broken.is_empty(), "connections broke during the partition: {broken:?}");
}

#[test]
fn a_fleet_over_tls_with_client_certificates() {
    let _serial = serial();
    let mut setup = fleet_setup("");
    setup.fleet.as_mut().unwrap().tls = true;
    let d = Deployment::start(LAB_BINARY.as_ref(), &setup).expect("deploying gslb with a fleet over TLS");
    d.push("rev1.toml", &fleet_document(&setup), &["--all-at-once", "--wait", "30s"]).expect("a push over TLS");
    for edge in EdgeNode::ALL {
        wait_for_revision(&d, edge, 1);
        assert!(member(&d, edge).endpoints.iter().all(|e| e.starts_with("https://")));
    }
    let report = short_from_both(&d, web_v4(), 40);
    assert_eq!(report.failures, 0, "{:?}", report.errors);
    assert_eq!(fleet_status(&d)["edges"].as_array().map(Vec::len), Some(2));

    // A client that trusts another CA, or has no certificate, is refused.
    let other = gslb_tests::etcd::TlsFiles::generate(&d.lab.run_dir().join("other-ca")).unwrap();
    let config = std::fs::read_to_string(gslb_tests::deploy::config_path(&d.lab, EdgeNode::EdgeA)).unwrap();
    let tls = gslb_tests::deploy::tls_files(&d.lab);
    let wrong_ca = config.replace(&tls.ca().display().to_string(), &other.ca().display().to_string());
    let no_cert: String = config
        .lines()
        .filter(|l| !l.starts_with("cert_file") && !l.starts_with("key_file"))
        .map(|l| format!("{l}\n"))
        .collect();
    // Over TLS 1.3 etcd refuses a missing certificate after the client's
    // handshake is done: the client sees etcd's alert ("received fatal
    // alert: BadCertificate"), a broken pipe or a closed connection,
    // whichever comes first, so only the refusal is checked.
    let refusals = [("wrong-ca", wrong_ca, Some("invalid peer certificate: BadSignature")), ("no-cert", no_cert, None)];
    for (name, text, reason) in refusals {
        let path = d.lab.run_dir().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        let (ok, _, stderr) = d.fleet_with(&path, &["status"]).unwrap();
        assert!(!ok, "{name}: gslb fleet status worked");
        assert!(
            stderr.contains("no etcd member answers") && reason.is_none_or(|r| stderr.contains(r)),
            "{name}: unclear refusal: {stderr}"
        );
        println!("{name}: {}", stderr.trim());
    }

    // An edge that trusts another CA steers on with its saved revision and
    // says why etcd is away.
    let edge = EdgeNode::EdgeB;
    let path = gslb_tests::deploy::config_path(&d.lab, edge);
    let good = std::fs::read_to_string(&path).unwrap();
    d.stop_agent(edge).unwrap();
    std::fs::write(&path, good.replace(&tls.ca().display().to_string(), &other.ca().display().to_string())).unwrap();
    d.start_agent(edge).unwrap();
    wait_until("edge-b says why etcd refuses it", APPLY_TIMEOUT, || {
        member(&d, edge).error.is_some_and(|e| e.contains("invalid peer certificate"))
    });
    let refused = member(&d, edge);
    assert!(!refused.connected && refused.applied_revision == Some(1), "{refused:?}");
    println!("edge-b with another CA: {}", refused.error.unwrap());
    let report = short_from_both(&d, web_v4(), 40);
    assert_eq!(report.failures, 0, "{:?}", report.errors);
    // The right CA again: back in the fleet.
    d.stop_agent(edge).unwrap();
    std::fs::write(&path, &good).unwrap();
    d.start_agent(edge).unwrap();
    wait_until("edge-b reconnects over TLS", APPLY_TIMEOUT, || member(&d, edge).connected);

    // etcd's auth on: with no password, etcd takes the user from the
    // client certificate's common name ("gslb-edge"), here limited to /gslb/.
    let etcd = d.etcd.as_ref().unwrap();
    for args in [
        vec!["user", "add", "root:root-secret"],
        vec!["role", "add", "gslb"],
        vec!["role", "grant-permission", "gslb", "--prefix=true", "readwrite", "/gslb/"],
        vec!["user", "add", "gslb-edge", "--no-password"],
        vec!["user", "grant-role", "gslb-edge", "gslb"],
        vec!["auth", "enable"],
    ] {
        etcd.ctl(&args).unwrap_or_else(|e| panic!("etcdctl {args:?}: {e:#}"));
    }
    let second = fleet_document(&Setup { weights: heavier_east(), ..setup.clone() });
    d.push("rev2.toml", &second, &["--all-at-once", "--wait", "30s"]).expect("a push as the certificate's user");
    for edge in EdgeNode::ALL {
        wait_for_revision(&d, edge, 2);
    }
    let outside = d.lab.run_dir().join("outside-prefix.toml");
    std::fs::write(&outside, good.replace("[fleet]\n", "[fleet]\nprefix = \"/elsewhere\"\n")).unwrap();
    let (ok, _, stderr) = d.fleet_with(&outside, &["status"]).unwrap();
    assert!(!ok && stderr.contains("permission denied"), "outside its role's prefix: {stderr}");
    println!("outside the role's prefix: {}", stderr.trim());
}

/// etcd's `--auth-token-ttl` in `a_fleet_with_an_etcd_user_and_password`.
const TOKEN_TTL: Duration = Duration::from_secs(2);

#[test]
fn a_fleet_with_an_etcd_user_and_password() {
    use gslb_tests::deploy::{FLEET_PASSWORD, FLEET_USER};
    let _serial = serial();
    let mut setup = fleet_setup("");
    let fleet = setup.fleet.as_mut().unwrap();
    fleet.user = true;
    // etcd forgets a token unused for this long (300 s by default).
    fleet.etcd_flags = vec!["--auth-token-ttl".into(), TOKEN_TTL.as_secs().to_string()];
    let d = Deployment::start(LAB_BINARY.as_ref(), &setup).expect("deploying gslb with a fleet");
    // The edges have credentials before etcd's auth is on: they go
    // without them meanwhile.
    for edge in EdgeNode::ALL {
        wait_until(&format!("{edge} connects while etcd's auth is off"), APPLY_TIMEOUT, || member(&d, edge).connected);
    }
    // etcd's auth on: root, and a user that may use /gslb/ only. The
    // sessions without a user end at their next call; the next ones log in.
    let etcd = d.etcd.as_ref().unwrap();
    for args in [
        vec!["user", "add", "root:root-secret"],
        vec!["role", "add", "gslb"],
        vec!["role", "grant-permission", "gslb", "--prefix=true", "readwrite", "/gslb/"],
        vec!["user", "add", &format!("{FLEET_USER}:{FLEET_PASSWORD}")],
        vec!["user", "grant-role", FLEET_USER, "gslb"],
        vec!["auth", "enable"],
    ] {
        etcd.ctl(&args).unwrap_or_else(|e| panic!("etcdctl {args:?}: {e:#}"));
    }
    d.push("rev1.toml", &fleet_document(&setup), &["--all-at-once", "--wait", "30s"]).expect("a push as the etcd user");
    for edge in EdgeNode::ALL {
        wait_for_revision(&d, edge, 1);
    }

    // The agents' tokens expire while the fleet is quiet (the lease's
    // keep-alives do not use them); the next revision still comes through
    // without a session lost on the way.
    let logs: Vec<usize> = EdgeNode::ALL.iter().map(|&edge| d.agent_log(edge).len()).collect();
    std::thread::sleep(TOKEN_TTL * 3);
    let second = fleet_document(&Setup { weights: heavier_east(), ..setup.clone() });
    d.push("rev2.toml", &second, &["--all-at-once", "--wait", "30s"]).expect("a push after the tokens expired");
    for (&edge, &from) in EdgeNode::ALL.iter().zip(&logs) {
        wait_for_revision(&d, edge, 2);
        let log = d.agent_log(edge);
        assert!(
            !log[from..].contains("etcd is away"),
            "{edge} lost its session to an expired token:\n{}",
            &log[from..]
        );
        assert!(member(&d, edge).connected);
    }

    // A wrong password: refused, and said so.
    let config = std::fs::read_to_string(gslb_tests::deploy::config_path(&d.lab, EdgeNode::EdgeA)).unwrap();
    let wrong = d.lab.run_dir().join("wrong-password");
    std::fs::write(&wrong, "not-it\n").unwrap();
    let start = config.find("password_file = ").unwrap();
    let end = start + config[start..].find('\n').unwrap();
    let text = format!("{}password_file = \"{}\"{}", &config[..start], wrong.display(), &config[end..]);
    let path = d.lab.run_dir().join("wrong-password.toml");
    std::fs::write(&path, text).unwrap();
    let (ok, _, stderr) = d.fleet_with(&path, &["status"]).unwrap();
    assert!(!ok && stderr.contains("authentication failed"), "unclear refusal: {stderr}");
}
