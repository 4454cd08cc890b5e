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
fn a_fallback_pool_with_nothing_up_is_no_fallback() {
    // Every listed backend down but 10.0.2.2, and the fallback down: no
    // pool has min_healthy up, the fallback cannot serve, and the cap
    // (3 of 4) keeps the listed pools, by the policy, in rotation.
    let everything_down = with(&[("10.0.1.1", DOWN), ("10.0.1.2", DOWN), ("10.0.2.1", DOWN), ("10.0.3.1", DOWN)]);
    let failover = vip(&plan_with(&everything_down), "failover");
    assert!(!failover.default.fallback && failover.panic, "{failover:?}");
    assert_eq!(failover.default.pools, vec!["east".to_string()]);
    assert_eq!(in_table(&failover.default), vec![ip("10.0.1.1"), ip("10.0.1.2")]);
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

/// Two VIPs with the fallback pool `spare`, on pools of their own and the
/// default panic cap: `web` weighted, sending one client prefix to `west`
/// alone; `api` failover with `min_healthy = 2`. Follows `fixtures::EDGE`.
const FALLBACK: &str = r#"
[[vip]]
name = "web"
address = "203.0.113.20"
port = 80
protocol = "tcp"
pools = ["east", "west"]
fallback_pool = "spare"
[[vip.steer]]
client_prefix = "198.51.100.0/24"
pools = ["west"]

[[vip]]
name = "api"
address = "203.0.113.21"
port = 443
protocol = "tcp"
policy = "failover"
min_healthy = 2
pools = ["north", "south"]
fallback_pool = "spare"

[[pool]]
name = "east"
backends = [ { address = "10.0.1.1" }, { address = "10.0.1.2" } ]

[[pool]]
name = "west"
backends = [ { address = "10.0.2.1" }, { address = "10.0.2.2" } ]

[[pool]]
name = "north"
backends = [ { address = "10.1.1.1" }, { address = "10.1.1.2" } ]

[[pool]]
name = "south"
backends = [ { address = "10.1.2.1" }, { address = "10.1.2.2" } ]

[[pool]]
name = "spare"
backends = [ { address = "10.0.9.1" }, { address = "10.0.9.2" }, { address = "10.0.9.3", weight = 0 } ]
"#;

fn plan_fallback(conditions: &Conditions) -> Plan {
    plan(&parse(&format!("{EDGE}{FALLBACK}")), &BTreeMap::new(), 4096, 4099, conditions).unwrap()
}

const EAST: [&str; 2] = ["10.0.1.1", "10.0.1.2"];
const WEST: [&str; 2] = ["10.0.2.1", "10.0.2.2"];
const LISTED: [&str; 4] = ["10.0.1.1", "10.0.1.2", "10.0.2.1", "10.0.2.2"];

/// `condition` on each of `backends`, then `more`.
fn all(backends: &[&str], condition: Condition, more: &[(&str, Condition)]) -> Conditions {
    let mut conditions: Conditions = backends.iter().map(|a| (ip(a), condition)).collect();
    conditions.extend(with(more));
    conditions
}

fn ips(addresses: &[&str]) -> Vec<IpAddr> {
    addresses.iter().map(|a| ip(a)).collect()
}

fn rule(v: &PlannedVip) -> &PlannedTable {
    &v.client_tables[&(ip("198.51.100.0"), 24)]
}

#[test]
fn every_listed_backend_down_and_the_fallback_up_the_fallback_serves_without_panic() {
    // Four of four failing trips the default cap; the fallback still wins.
    let p = plan_fallback(&all(&LISTED, DOWN, &[]));
    let web = vip(&p, "web");
    assert!(!web.panic, "{web:?}");
    assert_eq!((web.down, web.failing, web.total), (4, 4, 4));
    for table in [&web.default, rule(&web)] {
        assert!(table.fallback, "{table:?}");
        assert_eq!(table.pools, vec!["spare".to_string()]);
        // Weight 0 takes no new flows, in the fallback as anywhere.
        assert_eq!(in_table(table), ips(&["10.0.9.1", "10.0.9.2"]));
    }
    // Recorded flows to the dead pools move (to the fallback).
    assert_eq!(p.dead, ips(&LISTED).into_iter().collect());
    assert!(!vip(&p, "api").default.fallback, "api's pools are healthy");
}

#[test]
fn checks_failing_everywhere_fallback_included_keep_the_listed_pools_in_rotation() {
    let listed_in_panic = |conditions: &Conditions, what: &str| {
        let p = plan_fallback(conditions);
        let web = vip(&p, "web");
        assert!(web.panic, "{what}: {web:?}");
        assert!(!web.default.fallback && !rule(&web).fallback, "{what}: {web:?}");
        assert_eq!(in_table(&web.default), ips(&LISTED), "{what}");
        assert_eq!(in_table(rule(&web)), ips(&WEST), "{what}");
        assert!(p.dead.is_empty(), "{what}: nothing is dead in panic: {:?}", p.dead);
    };
    // As checks fail everywhere, the first listed backend to go down finds
    // the others suspect: the cap holds before anything is taken out.
    listed_in_panic(
        &all(&LISTED, SUSPECT, &[("10.0.1.1", DOWN), ("10.0.9.1", SUSPECT), ("10.0.9.2", SUSPECT)]),
        "first down",
    );
    // The last listed backend goes down with the fallback only suspect:
    // suspect is no proof while the cap is tripped, so no move.
    listed_in_panic(&all(&LISTED, DOWN, &[("10.0.9.1", SUSPECT), ("10.0.9.2", SUSPECT)]), "fallback suspect");
    listed_in_panic(&all(&LISTED, DOWN, &[("10.0.9.1", DOWN), ("10.0.9.2", SUSPECT)]), "fallback down and suspect");
    listed_in_panic(&all(&LISTED, DOWN, &[("10.0.9.1", DOWN), ("10.0.9.2", DOWN)]), "fallback down");

    // Checks pass again on one fallback backend: it takes over.
    let p = plan_fallback(&all(&LISTED, DOWN, &[("10.0.9.1", DOWN)]));
    let web = vip(&p, "web");
    assert!(!web.panic && web.default.fallback, "{web:?}");
    assert_eq!(in_table(&web.default), ips(&["10.0.9.2"]));
}

#[test]
fn a_partly_down_fallback_serves_with_its_up_backends_only() {
    // One fallback backend passing is enough, however many others fail.
    let p = plan_fallback(&all(&LISTED, DOWN, &[("10.0.9.1", DOWN)]));
    let web = vip(&p, "web");
    assert!(!web.panic && web.default.fallback);
    assert_eq!(in_table(&web.default), ips(&["10.0.9.2"]));
    assert!(p.dead.contains(&ip("10.0.9.1")), "a down fallback backend is dead like any other");

    // Suspect backends stay in service until declared down, in the
    // fallback as anywhere, once one backend passes outright.
    let p = plan_fallback(&all(&LISTED, DOWN, &[("10.0.9.1", SUSPECT)]));
    assert_eq!(in_table(&vip(&p, "web").default), ips(&["10.0.9.1", "10.0.9.2"]));

    // With the cap not tripped (west down: 2 of 4), the checks are not in
    // doubt: the steer rule's table moves to a fallback that is suspect.
    let p = plan_fallback(&all(&WEST, DOWN, &[("10.0.9.1", SUSPECT), ("10.0.9.2", DOWN)]));
    let web = vip(&p, "web");
    assert!(!web.panic, "{web:?}");
    assert!(!web.default.fallback && in_table(&web.default) == ips(&EAST), "{web:?}");
    assert!(rule(&web).fallback && in_table(rule(&web)) == ips(&["10.0.9.1"]), "{web:?}");
    assert_eq!(p.dead, ips(&["10.0.2.1", "10.0.2.2", "10.0.9.2"]).into_iter().collect());
}

#[test]
fn drained_fallback_backends_do_not_count_and_take_no_new_flows() {
    let p = plan_fallback(&all(&LISTED, DOWN, &[("10.0.9.1", DRAINED)]));
    let web = vip(&p, "web");
    assert!(!web.panic && web.default.fallback);
    assert_eq!(in_table(&web.default), ips(&["10.0.9.2"]));

    // Drained, or of weight 0, is not serving: with every fallback backend
    // out, the cap keeps the listed pools.
    let p = plan_fallback(&all(&LISTED, DOWN, &[("10.0.9.1", DRAINED), ("10.0.9.2", DRAINED)]));
    let web = vip(&p, "web");
    assert!(web.panic && !web.default.fallback, "{web:?}");
    assert_eq!(in_table(&web.default), ips(&LISTED));
    assert!(p.dead.is_empty());
}

#[test]
fn failover_moves_to_the_fallback_when_no_pool_has_min_healthy_up() {
    // One down in each pool: neither has 2 up, the cap (2 of 4) is not
    // tripped, and the fallback serves.
    let p = plan_fallback(&with(&[("10.1.1.1", DOWN), ("10.1.2.2", DOWN)]));
    let api = vip(&p, "api");
    assert!(!api.panic && api.default.fallback, "{api:?}");
    assert_eq!(in_table(&api.default), ips(&["10.0.9.1", "10.0.9.2"]));

    // Both pools gone, the default cap tripped: still the fallback, which
    // needs only one backend passing (min_healthy is for the listed pools).
    let conditions = all(&["10.1.1.1", "10.1.1.2", "10.1.2.1", "10.1.2.2"], DOWN, &[("10.0.9.2", DOWN)]);
    let p = plan_fallback(&conditions);
    let api = vip(&p, "api");
    assert!(!api.panic && api.default.fallback, "{api:?}");
    assert_eq!(in_table(&api.default), ips(&["10.0.9.1"]));
    assert_eq!(p.dead, ips(&["10.0.9.2", "10.1.1.1", "10.1.1.2", "10.1.2.1", "10.1.2.2"]).into_iter().collect());

    // The fallback failing too: panic, the first pool in rotation, as the
    // cap always did.
    let conditions =
        all(&["10.1.1.1", "10.1.1.2", "10.1.2.1", "10.1.2.2"], DOWN, &[("10.0.9.1", SUSPECT), ("10.0.9.2", DOWN)]);
    let api = vip(&plan_fallback(&conditions), "api");
    assert!(api.panic && !api.default.fallback, "{api:?}");
    assert_eq!(api.default.pools, vec!["north".to_string()]);
    assert_eq!(in_table(&api.default), ips(&["10.1.1.1", "10.1.1.2"]));
}

#[test]
fn with_nothing_up_and_no_fallback_that_can_serve_every_listed_backend_stays() {
    // One down in each pool (2 of 4: the cap is not tripped), neither pool
    // with min_healthy up, the fallback down: as with no fallback pool,
    // every listed backend, regardless of health.
    let p = plan_fallback(&with(&[("10.1.1.1", DOWN), ("10.1.2.2", DOWN), ("10.0.9.1", DOWN), ("10.0.9.2", DOWN)]));
    let api = vip(&p, "api");
    assert!(api.panic && !api.default.fallback, "{api:?}");
    assert_eq!(api.default.pools, vec!["north".to_string(), "south".to_string()]);
    assert_eq!(in_table(&api.default), ips(&["10.1.1.1", "10.1.1.2", "10.1.2.1", "10.1.2.2"]));
    assert!(p.dead.is_empty(), "{:?}", p.dead);

    // Every listed backend drained: the fallback pool is the last resort,
    // whatever its health.
    let conditions =
        all(&["10.1.1.1", "10.1.1.2", "10.1.2.1", "10.1.2.2"], DRAINED, &[("10.0.9.1", DOWN), ("10.0.9.2", DOWN)]);
    let api = vip(&plan_fallback(&conditions), "api");
    assert!(api.panic && api.default.fallback, "{api:?}");
    assert_eq!(in_table(&api.default), ips(&["10.0.9.1", "10.0.9.2"]));
}

#[test]
fn steer_rules_follow_the_same_rule_per_table() {
    // Clients of the rule lose west; the others keep east and west's
    // remains. 3 of 4 failing trips the cap: the default table is in panic
    // (east is up), the rule's table on the fallback is not.
    let p = plan_fallback(&all(&WEST, DOWN, &[("10.0.1.1", SUSPECT)]));
    let web = vip(&p, "web");
    assert!(web.panic, "the default table is in panic: {web:?}");
    assert_eq!(in_table(&web.default), ips(&LISTED));
    assert!(rule(&web).fallback, "{web:?}");
    assert_eq!(in_table(rule(&web)), ips(&["10.0.9.1", "10.0.9.2"]));
    // West stays in the panicking default table's rotation: not dead.
    assert!(p.dead.is_empty(), "{:?}", p.dead);

    // Without the steer rule's pools failing, nothing changes for it.
    let p = plan_fallback(&all(&EAST, DOWN, &[]));
    let web = vip(&p, "web");
    assert!(!web.panic && !web.default.fallback && !rule(&web).fallback, "{web:?}");
    assert_eq!(in_table(&web.default), ips(&WEST));
    assert_eq!(in_table(rule(&web)), ips(&WEST));
}

#[test]
fn failover_skips_a_pool_of_weight_zero() {
    // A pool of weight 0 gives its backends an effective weight of 0: they
    // do not count as up, so failover does not pick an empty table.
    let text = format!("{EDGE}{FALLBACK}").replacen("name = \"north\"\n", "name = \"north\"\nweight = 0\n", 1);
    let p = plan(&parse(&text), &BTreeMap::new(), 4096, 4099, &Conditions::new()).unwrap();
    let api = vip(&p, "api");
    assert_eq!(api.default.pools, vec!["south".to_string()]);
    assert_eq!(in_table(&api.default), ips(&["10.1.2.1", "10.1.2.2"]));
}
