//! Planning: determinism, ids, and how health, drains, policies and the
//! panic cap shape the tables.

use super::*;
use crate::config;
use crate::config::fixtures::EDGE;
use std::path::Path;

const CONFIG: &str = r#"
[edge]
name = "edge-a"
interfaces = ["eth0"]
tunnel_source_v4 = "192.0.2.10"
tunnel_source_v6 = "2001:db8::10"

[[vip]]
name = "web"
address = "203.0.113.10"
port = 80
protocol = "tcp"
pools = ["us-east", "eu-west"]

[[vip]]
name = "dns"
address = "203.0.113.10"
port = 53
protocol = "udp"
affinity = "source-ip"
pools = ["eu-west"]

[[pool]]
name = "us-east"
weight = 100
backends = [ { address = "198.51.100.1", weight = 100 }, { address = "198.51.100.2", weight = 50 } ]

[[pool]]
name = "eu-west"
weight = 50
backends = [ { address = "198.51.100.3" }, { address = "2001:db8:100::4", weight = 10 } ]
"#;

/// The same config with every list reversed and another edge's
/// identity.
const SHUFFLED: &str = r#"
[[pool]]
backends = [ { weight = 10, address = "2001:db8:100::4" }, { address = "198.51.100.3" } ]
weight = 50
name = "eu-west"

[[pool]]
name = "us-east"
weight = 100
backends = [ { address = "198.51.100.2", weight = 50 }, { address = "198.51.100.1", weight = 100 } ]

[[vip]]
name = "dns"
address = "203.0.113.10"
port = 53
protocol = "udp"
affinity = "source-ip"
pools = ["eu-west"]

[[vip]]
name = "web"
address = "203.0.113.10"
port = 80
protocol = "tcp"
pools = ["eu-west", "us-east"]

[edge]
name = "edge-b"
interfaces = ["ens5", "ens6"]
tunnel_source_v4 = "192.0.2.10"
tunnel_source_v6 = "2001:db8::10"
"#;

fn parse(text: &str) -> Config {
    config::parse(text, Path::new("test.toml")).unwrap()
}

#[test]
fn same_config_same_plan_whatever_the_order_and_edge() {
    let a = plan(&parse(CONFIG), &BTreeMap::new(), 4096, 4099, &Conditions::new()).unwrap();
    let b = plan(&parse(SHUFFLED), &BTreeMap::new(), 4096, 4099, &Conditions::new()).unwrap();
    assert_eq!(a.backend_ids, b.backend_ids);
    for (vip, planned) in &a.vips {
        assert_eq!(planned.default.build(), b.vips[vip].default.build(), "{vip:?}");
        assert_eq!(planned.default.weights, b.vips[vip].default.weights, "{vip:?}");
    }
    let web = VipMatch { address: "203.0.113.10".parse().unwrap(), port: 80, proto: 6 };
    let weights: Vec<u64> = a.vips[&web].default.weights.values().copied().collect();
    // 198.51.100.1..3, then the IPv6 backend.
    assert_eq!(weights, vec![100 * 100, 100 * 50, 50 * 100, 50 * 10]);
}

#[test]
fn ids_come_from_addresses_and_survive_changes() {
    let all: BTreeSet<IpAddr> = (1..=200u8).map(|i| IpAddr::from([10, 0, 0, i])).collect();
    let fresh = assign_backend_ids(&all, &BTreeMap::new(), 4096).unwrap();
    let distinct: BTreeSet<u32> = fresh.values().copied().collect();
    assert_eq!(distinct.len(), all.len());
    assert!(distinct.iter().all(|&id| (1..4096).contains(&id)));

    // Remove half and add new ones: the kept backends keep their ids,
    // the new ones take ids nobody installed holds.
    let mut next: BTreeSet<IpAddr> =
        all.iter().copied().filter(|a| matches!(a, IpAddr::V4(v) if v.octets()[3] % 2 == 0)).collect();
    next.extend((1..=50u8).map(|i| IpAddr::from([10, 0, 1, i])));
    let after = assign_backend_ids(&next, &fresh, 4096).unwrap();
    for (address, id) in &after {
        match fresh.get(address) {
            Some(old) => assert_eq!(old, id, "{address} changed id"),
            None => assert!(!fresh.values().any(|v| v == id), "{address} took an installed id"),
        }
    }
}

#[test]
fn too_many_backends_are_refused() {
    let all: BTreeSet<IpAddr> = (1..=20u8).map(|i| IpAddr::from([10, 0, 0, i])).collect();
    assert!(assign_backend_ids(&all, &BTreeMap::new(), 16).is_err());
    assert!(assign_backend_ids(&all, &BTreeMap::new(), 21).is_ok());
}

/// Three regions of two backends; a weighted VIP, a failover VIP with a
/// fallback pool, and a VIP steering one client prefix to one region.
/// Follows `fixtures::EDGE`.
const POLICIES: &str = r#"
[[vip]]
name = "weighted"
address = "203.0.113.10"
port = 80
protocol = "tcp"
pools = ["east", "west"]

[[vip]]
name = "failover"
address = "203.0.113.11"
port = 80
protocol = "tcp"
policy = "failover"
min_healthy = 2
pools = ["east", "west"]
fallback_pool = "last"
# Without this the panic cap would keep east and west in rotation long
# before all of them were down.
max_unhealthy_fraction = 1.0

[[vip]]
name = "steered"
address = "203.0.113.12"
port = 80
protocol = "tcp"
pools = ["east", "west"]
[[vip.steer]]
client_prefix = "198.51.100.0/24"
pools = ["west"]

[[pool]]
name = "east"
max_latency_ms = 100
backends = [ { address = "10.0.1.1" }, { address = "10.0.1.2" } ]

[[pool]]
name = "west"
backends = [ { address = "10.0.2.1" }, { address = "10.0.2.2" } ]

[[pool]]
name = "last"
backends = [ { address = "10.0.3.1" } ]
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn vip(p: &Plan, name: &str) -> PlannedVip {
    p.vips.values().find(|v| v.name == name).unwrap().clone()
}

fn in_table(t: &PlannedTable) -> Vec<IpAddr> {
    t.weights.keys().copied().collect()
}

fn with(entries: &[(&str, Condition)]) -> Conditions {
    entries.iter().map(|(a, c)| (ip(a), *c)).collect()
}

const DOWN: Condition = Condition { down: true, failing: true, drained: false, drain_expired: false, rtt_avg_ms: None };
const SUSPECT: Condition = Condition { failing: true, ..DOWN_FREE };
const DOWN_FREE: Condition =
    Condition { down: false, failing: false, drained: false, drain_expired: false, rtt_avg_ms: None };
const DRAINED: Condition = Condition { drained: true, ..DOWN_FREE };

fn plan_with(conditions: &Conditions) -> Plan {
    plan(&parse(&format!("{EDGE}{POLICIES}")), &BTreeMap::new(), 4096, 4099, conditions).unwrap()
}

#[test]
fn down_backends_leave_the_tables_and_are_dead() {
    let p = plan_with(&with(&[("10.0.1.1", DOWN)]));
    let weighted = vip(&p, "weighted");
    assert_eq!(in_table(&weighted.default), vec![ip("10.0.1.2"), ip("10.0.2.1"), ip("10.0.2.2")]);
    assert!(!weighted.panic);
    assert!(p.dead.contains(&ip("10.0.1.1")));
    assert_eq!(p.dead.len(), 1);
}

#[test]
fn drained_backends_take_no_new_flows_but_keep_recorded_ones() {
    let p = plan_with(&with(&[("10.0.2.2", DRAINED)]));
    assert!(!in_table(&vip(&p, "weighted").default).contains(&ip("10.0.2.2")));
    assert!(p.dead.is_empty(), "a drain must not cut recorded flows");
    let expired = Condition { drain_expired: true, ..DRAINED };
    let p = plan_with(&with(&[("10.0.2.2", expired)]));
    assert!(p.dead.contains(&ip("10.0.2.2")), "past its drain time the backend's flows are cut");
}

#[test]
fn failover_uses_the_first_pool_with_enough_healthy_backends_then_the_fallback() {
    let p = plan_with(&Conditions::new());
    let failover = vip(&p, "failover");
    assert_eq!(failover.default.pools, vec!["east".to_string()]);
    assert_eq!(in_table(&failover.default), vec![ip("10.0.1.1"), ip("10.0.1.2")]);

    // One east backend down: east has fewer than min_healthy = 2 up.
    let p = plan_with(&with(&[("10.0.1.1", DOWN)]));
    assert_eq!(vip(&p, "failover").default.pools, vec!["west".to_string()]);

    // Both regions below min_healthy: the fallback pool, flagged.
    let p = plan_with(&with(&[("10.0.1.1", DOWN), ("10.0.2.1", DOWN)]));
    let failover = vip(&p, "failover");
    assert_eq!(failover.default.pools, vec!["last".to_string()]);
    assert!(failover.default.fallback);
    assert_eq!(in_table(&failover.default), vec![ip("10.0.3.1")]);
}

#[test]
fn the_fallback_pool_serves_whatever_its_health() {
    let everything_down = with(&[("10.0.1.1", DOWN), ("10.0.1.2", DOWN), ("10.0.2.1", DOWN), ("10.0.3.1", DOWN)]);
    let failover = vip(&plan_with(&everything_down), "failover");
    assert!(failover.default.fallback);
    assert_eq!(in_table(&failover.default), vec![ip("10.0.3.1")]);
}

#[test]
fn panic_cap_keeps_the_fleet_in_rotation() {
    // Three of four (75% > 50%) would go: trust the fleet, not the check.
    let conditions = with(&[("10.0.1.1", DOWN), ("10.0.1.2", DOWN), ("10.0.2.1", DOWN)]);
    let p = plan_with(&conditions);
    let weighted = vip(&p, "weighted");
    assert!(weighted.panic);
    assert_eq!(weighted.default.weights.len(), 4, "every backend stays in rotation in panic");
    assert!(p.dead.is_empty(), "no backend of a panicking VIP is marked dead");

    // Checks failing everywhere at once: the first backend to be declared
    // down finds the others suspect, and the cap holds before anything goes.
    let p = plan_with(&with(&[("10.0.1.1", DOWN), ("10.0.1.2", SUSPECT), ("10.0.2.1", SUSPECT)]));
    assert!(vip(&p, "weighted").panic);
    assert!(p.dead.is_empty());

    // Exactly half is within the cap: the down ones go.
    let p = plan_with(&with(&[("10.0.1.1", DOWN), ("10.0.1.2", DOWN)]));
    let weighted = vip(&p, "weighted");
    assert!(!weighted.panic);
    assert_eq!(in_table(&weighted.default), vec![ip("10.0.2.1"), ip("10.0.2.2")]);
}

#[test]
fn steer_rules_get_their_own_table() {
    let p = plan_with(&Conditions::new());
    let steered = vip(&p, "steered");
    let rule = &steered.client_tables[&(ip("198.51.100.0"), 24)];
    assert_eq!(in_table(rule), vec![ip("10.0.2.1"), ip("10.0.2.2")]);
    assert_eq!(steered.default.weights.len(), 4);
    assert_ne!(rule.build(), steered.default.build());
}

#[test]
fn slow_backends_lose_weight_gradually_never_all() {
    assert_eq!(latency_factor(Some(100), Some(80.0)), 1.0);
    assert_eq!(latency_factor(Some(100), Some(200.0)), 0.5);
    assert_eq!(latency_factor(Some(100), Some(5000.0)), MIN_LATENCY_FACTOR);
    assert_eq!(latency_factor(None, Some(5000.0)), 1.0);

    let slow = Condition { rtt_avg_ms: Some(400.0), ..Condition::default() };
    let p = plan_with(&with(&[("10.0.1.1", slow)]));
    let weights = &vip(&p, "weighted").default.weights;
    assert_eq!(weights[&ip("10.0.1.1")] * 4, weights[&ip("10.0.1.2")], "400 ms against 100: a quarter");
}
