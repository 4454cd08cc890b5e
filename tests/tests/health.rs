//! The health-driven control plane end to end: backends that die, come
//! back, drain, slow down or fail their checks all at once, with real
//! connections running through both edges.
//!
//! Monitors probe every 200 ms (`deploy::LAB_MONITOR`): a backend is down
//! after 3 failed probes, worst case (3 + 1) x 200 + 150 = 950 ms.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use gslb_tests::checks::{answered_by, assert_untouched, short_from_both, wait_for_health, wait_for_progress, web_v4};
use gslb_tests::deploy::{Deployment, Setup};
use gslb_tests::lab::{BackendNode, ClientNode, EdgeNode, Region};
use gslb_tests::server::HealthMode;
use gslb_tests::traffic::{short_connections, ConnReport, LongLived};
use gslb_userspace::view::status::VipStatus;

static SERIAL: Mutex<()> = Mutex::new(());
const LAB_BINARY: &str = env!("CARGO_BIN_EXE_gslb-lab");
const INTERVAL: Duration = Duration::from_millis(10);
/// Room for detection (950 ms worst case) plus the status polls.
const DETECTION: Duration = Duration::from_secs(5);

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn deploy(tune: impl FnOnce(&mut Setup)) -> Deployment {
    let mut setup = Setup { monitor: true, ..Setup::default() };
    tune(&mut setup);
    Deployment::start(LAB_BINARY.as_ref(), &setup).expect("deploying gslb on the lab")
}

fn addr(b: BackendNode) -> IpAddr {
    b.v4().into()
}

fn on(backend: BackendNode) -> impl Fn(&ConnReport) -> bool {
    move |r| r.runs.first().is_some_and(|(b, _)| b == backend.name())
}

fn in_region(region: Region) -> Vec<String> {
    region.backends().iter().map(|b| b.name().to_string()).collect()
}

#[test]
fn a_dead_backend_gets_no_new_flows_within_the_budget_and_comes_back() {
    let _serial = serial();
    let mut d = deploy(|_| {});
    let traffic = LongLived::start(&d.lab, ClientNode::Client1, web_v4(), 60, INTERVAL).unwrap();
    let victim = BackendNode::UsEast1;
    assert!(traffic.snapshot().iter().any(on(victim)), "no connection on {victim}");

    d.servers.kill(victim);
    let detected = wait_for_health(&d, addr(victim), "down", DETECTION);
    let report = short_from_both(&d, web_v4(), 600);
    assert_eq!(report.failures, 0, "{:?}", report.errors);
    assert!(!report.per_backend.contains_key(victim.name()), "new connections still reach {victim}");

    // Connections on the other backends never noticed.
    let before = traffic.snapshot();
    wait_for_progress(&traffic, &before, 10, "after the failover");
    let (theirs, others): (Vec<_>, Vec<_>) = traffic.stop().into_iter().partition(on(victim));
    assert_untouched(&others, "connections on healthy backends");
    assert!(theirs.iter().all(|r| r.broken()), "connections on the dead server should have been closed");

    for edge in EdgeNode::ALL {
        let status = d.status(edge).unwrap();
        let record = status.failovers.iter().find(|f| f.backend == addr(victim)).expect("a failover record");
        println!(
            "{edge}: {victim} down after {} ms from its first failed probe (tables live {} ms after the decision); worst case {} ms; seen by the test after {} ms",
            record.total_ms,
            record.apply_ms,
            record.worst_case_ms,
            detected.as_millis()
        );
        let log = d.agent_log(edge);
        println!("{}", log.lines().rfind(|l| l.contains("replanned")).unwrap_or(""));
        // Times are reported here and measured in `cargo xtask bench`, not
        // asserted: this machine is shared.
        let backend = status.pools.iter().flat_map(|p| &p.backends).find(|b| b.address == addr(victim)).unwrap();
        assert!(backend.dead, "{edge} did not mark {victim} dead");
        assert!(backend.reason.as_deref().unwrap_or("").contains("refused"), "reason: {:?}", backend.reason);
    }

    // A restarted agent does not bring the dead backend back before it has
    // proven itself.
    d.kill_agent(EdgeNode::EdgeA).unwrap();
    d.start_agent(EdgeNode::EdgeA).unwrap();
    let status = d.status(EdgeNode::EdgeA).unwrap();
    let backend = status.pools.iter().flat_map(|p| &p.backends).find(|b| b.address == addr(victim)).unwrap();
    assert!(status.adopted && backend.health == "down" && backend.dead, "after a restart: {backend:?}");
    let report = short_from_both(&d, web_v4(), 300);
    assert!(!report.per_backend.contains_key(victim.name()), "a restarted agent sent new flows to {victim}");

    // Back up after consecutive_up good probes, and in rotation again.
    let (lab, servers) = (&d.lab, &mut d.servers);
    servers.start(lab, victim).unwrap();
    let recovered = wait_for_health(&d, addr(victim), "up", DETECTION);
    println!("{victim} back up after {} ms", recovered.as_millis());
    let report = short_from_both(&d, web_v4(), 600);
    assert_eq!(report.failures, 0, "{:?}", report.errors);
    assert!(report.per_backend.get(victim.name()).copied().unwrap_or(0) > 30, "{victim} got too few: {report:?}");
}

#[test]
fn a_drained_backend_keeps_its_connections_and_gets_no_new_ones() {
    let _serial = serial();
    let d = deploy(|_| {});
    let traffic = LongLived::start(&d.lab, ClientNode::Client1, web_v4(), 90, INTERVAL).unwrap();
    let drained = BackendNode::EuWest2;
    assert!(traffic.snapshot().iter().any(on(drained)), "no connection on {drained}");

    for edge in EdgeNode::ALL {
        assert_eq!(d.drain(edge, &addr(drained).to_string(), None).unwrap(), vec![addr(drained)]);
    }
    let report = short_from_both(&d, web_v4(), 600);
    assert_eq!(report.failures, 0, "{:?}", report.errors);
    assert!(!report.per_backend.contains_key(drained.name()), "a drained backend got new connections");
    let before = traffic.snapshot();
    wait_for_progress(&traffic, &before, 20, "while draining");
    assert_untouched(&traffic.snapshot(), "connections while a backend drains");

    // Undrain: back in rotation.
    for edge in EdgeNode::ALL {
        d.undrain(edge, &addr(drained).to_string()).unwrap();
    }
    let report = short_from_both(&d, web_v4(), 600);
    assert!(report.per_backend.get(drained.name()).copied().unwrap_or(0) > 30, "{report:?}");

    // A pool drained for a while: once the time is over its remaining
    // connections are cut (they re-select, and the new backend resets them).
    for edge in EdgeNode::ALL {
        assert_eq!(d.drain(edge, "eu-west", Some(Duration::from_millis(300))).unwrap().len(), 2);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !traffic.snapshot().iter().filter(|r| in_region(Region::EuWest).contains(&r.runs[0].0)).all(|r| r.broken()) {
        assert!(std::time::Instant::now() < deadline, "drained connections were not cut after the drain time");
        std::thread::sleep(Duration::from_millis(50));
    }
    let reports = traffic.stop();
    let others: Vec<_> = reports.into_iter().filter(|r| !in_region(Region::EuWest).contains(&r.runs[0].0)).collect();
    assert_untouched(&others, "connections outside the drained pool");
}

#[test]
fn failover_policy_moves_to_the_next_pool_then_the_fallback() {
    let _serial = serial();
    let mut d = deploy(|s| {
        s.web_pools = Some(vec![Region::UsEast, Region::EuWest]);
        // The default panic cap: the fallback pool takes over all the same.
        s.web_extra = "policy = \"failover\"\nfallback_pool = \"ap-south\"\n".into();
    });
    let only = |report: &gslb_tests::traffic::ShortReport, region: Region, what: &str| {
        assert_eq!(report.failures, 0, "{what}: {:?}", report.errors);
        let answered = answered_by(report);
        assert!(answered.iter().all(|b| in_region(region).contains(b)), "{what}: answered by {answered:?}");
        assert_eq!(answered.len(), 2, "{what}: both backends of {region:?} should serve: {answered:?}");
    };
    only(&short_from_both(&d, web_v4(), 300), Region::UsEast, "all healthy");

    for victim in Region::UsEast.backends() {
        d.servers.kill(victim);
    }
    for victim in Region::UsEast.backends() {
        wait_for_health(&d, addr(victim), "down", DETECTION);
    }
    only(&short_from_both(&d, web_v4(), 300), Region::EuWest, "us-east down");

    for victim in Region::EuWest.backends() {
        d.servers.kill(victim);
    }
    for victim in Region::EuWest.backends() {
        wait_for_health(&d, addr(victim), "down", DETECTION);
    }
    only(&short_from_both(&d, web_v4(), 300), Region::ApSouth, "every listed pool down");
    let web = d.status(EdgeNode::EdgeA).unwrap().vips.into_iter().find(|v| v.name == "web").unwrap();
    assert!(web.fallback && web.active_pools == vec!["ap-south".to_string()], "{web:?}");
    let metrics = d.metrics(EdgeNode::EdgeA).unwrap();
    assert!(metrics.contains("gslb_vip_fallback{vip=\"web\"} 1"), "metrics:\n{metrics}");
}

/// Polls both edges' status until the `web` VIP satisfies `done`, for at
/// most `DETECTION`; fails with what each edge last reported.
fn wait_for_web(d: &Deployment, what: &str, done: impl Fn(&VipStatus) -> bool) {
    let deadline = std::time::Instant::now() + DETECTION;
    loop {
        let webs: Vec<Option<VipStatus>> = EdgeNode::ALL
            .iter()
            .map(|&edge| d.status(edge).ok().and_then(|s| s.vips.into_iter().find(|v| v.name == "web")))
            .collect();
        if webs.iter().all(|w| w.as_ref().is_some_and(&done)) {
            return;
        }
        let seen = |w: &Option<VipStatus>| {
            w.as_ref().map(|w| {
                (w.panic, w.fallback, w.active_pools.clone(), w.backends.iter().map(|b| b.address).collect::<Vec<_>>())
            })
        };
        assert!(
            std::time::Instant::now() < deadline,
            "web: {what} not within {DETECTION:?}; (panic, fallback, pools, backends) per edge: {:?}",
            webs.iter().map(seen).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Both edges' metrics give the `web` VIP these panic and fallback flags.
fn metrics_say(d: &Deployment, panic: u8, fallback: u8, what: &str) {
    for edge in EdgeNode::ALL {
        let metrics = d.metrics(edge).unwrap();
        for line in
            [format!("gslb_vip_panic{{vip=\"web\"}} {panic}"), format!("gslb_vip_fallback{{vip=\"web\"}} {fallback}")]
        {
            assert!(metrics.lines().any(|l| l == line), "{what}: {edge}'s metrics lack {line:?}");
        }
    }
}

#[test]
fn a_fallback_pool_passing_its_checks_takes_over_and_the_panic_cap_waits_for_it_to_fail() {
    let _serial = serial();
    let mut d = deploy(|s| {
        s.web_pools = Some(vec![Region::UsEast, Region::EuWest]);
        // The default panic cap (max_unhealthy_fraction = 0.5).
        s.web_extra = "fallback_pool = \"ap-south\"\n".into();
    });
    let listed: Vec<BackendNode> = [Region::UsEast, Region::EuWest].iter().flat_map(|r| r.backends()).collect();
    let names = |backends: &[BackendNode]| backends.iter().map(|b| b.name().to_string()).collect::<Vec<_>>();
    let answered_only_by = |report: &gslb_tests::traffic::ShortReport, backends: &[BackendNode], what: &str| {
        assert_eq!(report.failures, 0, "{what}: {} connections failed: {:?}", report.failures, report.errors);
        assert_eq!(answered_by(report), names(backends), "{what}: answered by {:?}", report.per_backend);
    };
    let mut sorted = listed.clone();
    sorted.sort_by_key(|b| b.name());
    answered_only_by(&short_from_both(&d, web_v4(), 300), &sorted, "all healthy");
    metrics_say(&d, 0, 0, "all healthy");

    // Every listed backend dies (its server with it: connections refused):
    // more than half fail at once, which trips the cap while they go down,
    // but once none is up the fallback pool, passing its checks, serves.
    for &victim in &listed {
        d.servers.kill(victim);
    }
    wait_for_web(&d, "the fallback pool serving, not in panic", |web| {
        web.fallback && !web.panic && web.active_pools == ["ap-south"] && web.backends.len() == 2
    });
    answered_only_by(&short_from_both(&d, web_v4(), 300), &Region::ApSouth.backends(), "listed pools dead");
    metrics_say(&d, 0, 1, "listed pools dead");
    for edge in EdgeNode::ALL {
        let web = d.status(edge).unwrap().vips.into_iter().find(|v| v.name == "web").unwrap();
        assert_eq!((web.backends_down, web.backends_total), (4, 4), "{edge}: {web:?}");
    }

    // A monitoring fault: the listed servers come back but their checks
    // keep failing (they stay down, and the fallback keeps serving)...
    for &backend in &listed {
        d.servers.set_health(backend, HealthMode::Failing);
        let (lab, servers) = (&d.lab, &mut d.servers);
        servers.start(lab, backend).unwrap();
    }
    answered_only_by(&short_from_both(&d, web_v4(), 200), &Region::ApSouth.backends(), "listed checks failing");
    // ...then the fallback's fail too: every check fails. Panic: the cap
    // keeps every listed backend in rotation, and they do serve.
    for backend in Region::ApSouth.backends() {
        d.servers.set_health(backend, HealthMode::Failing);
    }
    wait_for_web(&d, "in panic with the listed pools in rotation", |web| {
        web.panic && !web.fallback && web.backends.len() == 4
    });
    answered_only_by(&short_from_both(&d, web_v4(), 300), &sorted, "every check failing");
    metrics_say(&d, 1, 0, "every check failing");
}

#[test]
fn when_every_check_fails_at_once_the_fleet_stays_in_rotation() {
    let _serial = serial();
    let d = deploy(|_| {});
    let traffic = LongLived::start(&d.lab, ClientNode::Client1, web_v4(), 60, INTERVAL).unwrap();
    for backend in BackendNode::ALL {
        d.servers.set_health(backend, HealthMode::Failing);
    }
    for backend in BackendNode::ALL {
        wait_for_health(&d, addr(backend), "down", DETECTION);
    }
    for edge in EdgeNode::ALL {
        let web = d.status(edge).unwrap().vips.into_iter().find(|v| v.name == "web").unwrap();
        assert!(web.panic, "{edge} is not in panic with every check failing");
        assert_eq!(web.backends.len(), 6, "{edge} took backends out: {:?}", web.backends);
        let metrics = d.metrics(edge).unwrap();
        assert!(metrics.contains("gslb_vip_panic{vip=\"web\"} 1"), "metrics:\n{metrics}");
    }
    let report = short_from_both(&d, web_v4(), 600);
    assert_eq!(report.failures, 0, "{:?}", report.errors);
    assert_eq!(report.per_backend.len(), 6, "new flows must still reach every backend: {report:?}");
    let before = traffic.snapshot();
    wait_for_progress(&traffic, &before, 20, "in panic");
    assert_untouched(&traffic.stop(), "connections while every check fails");
}

#[test]
fn clients_in_different_prefixes_land_in_different_pools_through_either_edge() {
    let _serial = serial();
    let d = deploy(|s| {
        s.web_pools = Some(vec![Region::UsEast, Region::EuWest]);
        s.web_extra = "[[vip.steer]]\nclient_prefix = \"10.1.2.0/24\"\npools = [\"ap-south\"]\n".into();
    });
    for edge in [EdgeNode::EdgeA, EdgeNode::EdgeB] {
        d.lab.route_vips_to(edge).unwrap();
        let first = short_connections(&d.lab, ClientNode::Client1, web_v4(), 300, 16).unwrap();
        let second = short_connections(&d.lab, ClientNode::Client2, web_v4(), 300, 16).unwrap();
        assert_eq!(first.failures + second.failures, 0);
        let (a, b) = (answered_by(&first), answered_by(&second));
        assert!(a.iter().all(|x| !in_region(Region::ApSouth).contains(x)), "via {edge}: client-1 reached {a:?}");
        assert!(a.len() >= 3, "via {edge}: client-1 reached only {a:?}");
        assert!(b.iter().all(|x| in_region(Region::ApSouth).contains(x)), "via {edge}: client-2 reached {b:?}");
        assert_eq!(b.len(), 2, "via {edge}: client-2 reached {b:?}");
    }
}

#[test]
fn a_slow_backend_loses_share_gradually_not_all_of_it() {
    let _serial = serial();
    let d = deploy(|s| s.max_latency_ms = Some(40));
    let slow = BackendNode::ApSouth1;
    d.servers.set_health(slow, HealthMode::Slow(Duration::from_millis(120)));

    // The decaying average climbs over a few probes: the factor steps down.
    let mut factors = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = d.status(EdgeNode::EdgeA).unwrap();
        let b = status.pools.iter().flat_map(|p| &p.backends).find(|b| b.address == addr(slow)).unwrap().clone();
        if factors.last() != Some(&b.latency_factor) {
            factors.push(b.latency_factor);
        }
        if b.latency_factor <= 0.4 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "latency factor stuck at {factors:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("latency factor of {slow} over time: {factors:?}");
    assert!(factors.len() >= 3, "the weight fell as a cliff, not gradually: {factors:?}");
    assert!(factors.iter().all(|&f| f >= 0.1), "{factors:?}");

    let report = short_from_both(&d, web_v4(), 1200);
    assert_eq!(report.failures, 0, "{:?}", report.errors);
    let got = report.per_backend.get(slow.name()).copied().unwrap_or(0);
    let others = (report.per_backend.values().sum::<u64>() - got) / 5;
    println!("{slow}: {got} new connections; the others {others} each");
    assert!(got > 0, "a slow backend must keep some traffic");
    assert!(got * 2 < others, "{slow} kept too much: {got} vs {others}");
}

#[test]
fn bad_health_and_policy_values_are_refused_with_their_line() {
    let dir = std::env::temp_dir().join(format!("gslb-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = "[edge]\nname = \"e\"\ninterfaces = [\"eth0\"]\ntunnel_source_v4 = \"192.0.2.1\"\n\n[[vip]]\nname = \"web\"\naddress = \"203.0.113.1\"\nport = 80\nprotocol = \"tcp\"\npools = [\"p\"]\n";
    let pool = "\n[[pool]]\nname = \"p\"\nbackends = [ { address = \"198.51.100.1\" } ]\n";
    let cases = [
        ("negative interval", format!("{base}{pool}[pool.monitor]\nprotocol = \"tcp\"\nport = 80\ninterval_ms = -5\n"), 19, "interval_ms"),
        ("zero consecutive_down", format!("{base}{pool}[pool.monitor]\nprotocol = \"tcp\"\nport = 80\nconsecutive_down = 0\n"), 19, "consecutive_down"),
        ("unknown fallback pool", format!("{base}fallback_pool = \"nowhere\"\n{pool}"), 12, "nowhere"),
        (
            "the same prefix twice",
            format!("{base}[[vip.steer]]\nclient_prefix = \"10.0.0.0/8\"\npools = [\"p\"]\n[[vip.steer]]\nclient_prefix = \"10.0.0.0/8\"\npools = [\"q\"]\n{pool}\n[[pool]]\nname = \"q\"\nbackends = [ {{ address = \"198.51.100.2\" }} ]\n"),
            16,
            "10.0.0.0/8",
        ),
    ];
    for (what, text, line, needle) in cases {
        let path = dir.join("gslb.toml");
        std::fs::write(&path, &text).unwrap();
        let (ok, _, stderr) =
            Deployment::run_gslb(LAB_BINARY.as_ref(), &["check", "--config", path.to_str().unwrap()]).unwrap();
        assert!(!ok, "{what}: accepted");
        assert!(stderr.contains(&format!("gslb.toml:{line}:")), "{what}: wrong line in {stderr:?}");
        assert!(stderr.contains(needle), "{what}: {stderr:?} does not mention {needle}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
