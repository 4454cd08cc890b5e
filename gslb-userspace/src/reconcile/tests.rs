//! The write order of an apply, on a recording stand-in for the maps: a
//! packet arriving between any two writes finds every slot of its table
//! naming a live backend, tables are written only while idle and flipped
//! with one write, and removed backends go last.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use rand::{Rng, SeedableRng};

use gslb_common::SlotHistory;

use super::recording::{RecordingMaps, Write};
use super::*;
use crate::config::fixtures::EDGE;
use crate::config::{self, Limits};
use crate::decide::plan::{Condition, EdgeSettings};

const LIMITS: Limits = Limits { max_vips: 8, max_backends: 64, max_flows: 1024, table_size: 251 };

/// Two VIPs over two pools of two backends; `web` sends one client prefix
/// to `west` alone. `extra` is appended (more VIPs or pools).
fn config(extra: &str) -> Config {
    let text = format!(
        r#"{EDGE}max_vips = 8
max_backends = 64
table_size = 251

[[vip]]
name = "web"
address = "203.0.113.10"
port = 80
protocol = "tcp"
pools = ["east", "west"]
max_unhealthy_fraction = 1.0
[[vip.steer]]
client_prefix = "198.51.100.0/24"
pools = ["west"]

[[vip]]
name = "dns"
address = "203.0.113.10"
port = 53
protocol = "udp"
pools = ["west"]
max_unhealthy_fraction = 1.0

[[pool]]
name = "east"
backends = [ {{ address = "10.0.1.1" }}, {{ address = "10.0.1.2" }} ]

[[pool]]
name = "west"
backends = [ {{ address = "10.0.2.1" }}, {{ address = "10.0.2.2" }} ]
{extra}"#
    );
    config::parse(&text, Path::new("reconcile.toml")).unwrap()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn down(addresses: &[&str]) -> Conditions {
    addresses.iter().map(|a| (ip(a), Condition { down: true, failing: true, ..Condition::default() })).collect()
}

/// Applies `config` under `conditions` and returns the writes it made;
/// fails the test on any unsafe intermediate state.
fn step(config: &Config, conditions: &Conditions, installed: &mut Installed, maps: &mut RecordingMaps) -> Vec<Write> {
    reconcile(config, conditions, installed, maps).unwrap();
    assert!(maps.violations.is_empty(), "unsafe write order: {:#?}\nwrites: {:#?}", maps.violations, maps.log);
    maps.take_log()
}

/// Where the first write matching `f` stands in `log`.
fn position(log: &[Write], f: impl Fn(&Write) -> bool) -> usize {
    log.iter().position(f).unwrap_or_else(|| panic!("no such write in {log:#?}"))
}

fn web() -> VipMatch {
    VipMatch { address: ip("203.0.113.10"), port: 80, proto: 6 }
}

#[test]
fn a_first_apply_writes_backends_then_both_generations_then_the_vip() {
    let (mut installed, mut maps) = (Installed::default(), RecordingMaps::new(LIMITS));
    let log = step(&config(""), &Conditions::new(), &mut installed, &mut maps);

    let last_backend = log.iter().rposition(|w| matches!(w, Write::Backend { .. })).unwrap();
    let first_table = position(&log, |w| matches!(w, Write::Table { .. }));
    assert!(last_backend < first_table, "a table was written before its backends: {log:#?}");
    let entry = position(&log, |w| matches!(w, Write::VipEntry { vip, .. } if *vip == web()));
    let table_id = installed.vips[&web()].default.table_id;
    for generation in [0, 1] {
        let written = position(
            &log,
            |w| matches!(w, Write::Table { table_id: t, generation: g, .. } if *t == table_id && g & 1 == generation),
        );
        assert!(written < entry, "generation {generation} written after the VIP went live: {log:#?}");
    }
    // The client-prefix table is in place before the VIP's flag sends
    // packets looking for it.
    let prefix = position(&log, |w| matches!(w, Write::ClientPrefix { .. }));
    assert!(prefix < entry, "{log:#?}");
    assert_eq!(installed.vips[&web()].name, "web");
}

#[test]
fn the_same_plan_again_writes_no_map_but_the_edge_config() {
    let (mut installed, mut maps) = (Installed::default(), RecordingMaps::new(LIMITS));
    let config = config("");
    step(&config, &Conditions::new(), &mut installed, &mut maps);
    let table_id = installed.vips[&web()].default.table_id;
    let history = maps.history(table_id).to_vec();
    maps.now += 60;
    let log = step(&config, &Conditions::new(), &mut installed, &mut maps);
    assert_eq!(log, vec![Write::EdgeConfig(EdgeSettings::of(&config.edge))]);
    assert_eq!(maps.history(table_id), history, "an unchanged reload changes no slot's history");
}

#[test]
fn the_edge_config_carries_the_stickiness_window_and_gue_port() {
    let (mut installed, mut maps) = (Installed::default(), RecordingMaps::new(LIMITS));
    let config = config("").edge;
    assert_eq!((config.stickiness_window_secs, config.gue_port), (6 * 3600, 6080));
    let text = format!("{EDGE}stickiness_window = \"90m\"\ngue_port = 7000\n");
    let config = config::parse(&text, Path::new("reconcile.toml")).unwrap();
    let log = step(&config, &Conditions::new(), &mut installed, &mut maps);
    let Write::EdgeConfig(edge) = log[0] else { panic!("{log:#?}") };
    assert_eq!((edge.stickiness_window_secs, edge.gue_port), (5400, 7000));
}

/// A weight change flips the table: before the flip, exactly the slots
/// that change owner remember the owner they lose, and when.
#[test]
fn a_changed_table_remembers_the_owners_its_slots_lose() {
    let (mut installed, mut maps) = (Installed::default(), RecordingMaps::new(LIMITS));
    step(&config(""), &Conditions::new(), &mut installed, &mut maps);
    let table_id = installed.vips[&web()].default.table_id;
    assert!(maps.history(table_id).iter().all(|h| *h == SlotHistory::default()), "a new table has no history");
    let before = maps.live_table(&web()).unwrap().clone();

    maps.now = 5_000;
    let mut heavier = config("");
    heavier.pools[0].backends[0].weight = 300;
    let log = step(&heavier, &Conditions::new(), &mut installed, &mut maps);
    let after = maps.live_table(&web()).unwrap().clone();
    let changed: Vec<usize> = (0..before.len()).filter(|&i| before[i] != after[i]).collect();
    assert!(!changed.is_empty() && changed.len() < before.len(), "the weight change moves some slots");

    let live = installed.vips[&web()].default.generation;
    let noted = position(
        &log,
        |w| matches!(w, Write::History { table_id: t, changed: n, .. } if *t == table_id && *n == changed.len()),
    );
    let flip =
        position(&log, |w| matches!(w, Write::VipEntry { vip, value } if *vip == web() && value.generation == live));
    assert!(noted < flip, "history is noted before the flip: {log:#?}");
    for (slot, history) in maps.history(table_id).iter().enumerate() {
        if changed.contains(&slot) {
            assert_eq!(*history, SlotHistory { owners: [before[slot], 0], superseded: [5_000, 0] }, "slot {slot}");
        } else {
            assert_eq!(*history, SlotHistory::default(), "slot {slot} kept its owner");
        }
    }
}

#[test]
fn second_chance_alone_rewrites_the_backend_and_keeps_its_dead_mark() {
    let (mut installed, mut maps) = (Installed::default(), RecordingMaps::new(LIMITS));
    let plain = config("");
    let log = step(&plain, &down(&["10.0.2.1"]), &mut installed, &mut maps);
    assert!(log.iter().all(|w| !matches!(w, Write::Backend { second_chance: true, .. })), "never guessed");
    let (east, west) = (installed.backend_ids[&ip("10.0.1.1")], installed.backend_ids[&ip("10.0.2.1")]);

    // The flag alone: only west's backends are rewritten, west 1 still dead.
    let mut flagged = config("");
    let west_pool = flagged.pools.iter_mut().find(|p| p.name == "west").unwrap();
    west_pool.backends.iter_mut().for_each(|b| b.second_chance = true);
    let log = step(&flagged, &down(&["10.0.2.1"]), &mut installed, &mut maps);
    let backends: Vec<&Write> = log.iter().filter(|w| matches!(w, Write::Backend { .. })).collect();
    assert_eq!(backends.len(), 2, "{log:#?}");
    assert!(backends.contains(&&Write::Backend { id: west, address: ip("10.0.2.1"), dead: true, second_chance: true }));
    assert!(!log.iter().any(|w| matches!(w, Write::Backend { id, .. } if *id == east)));
    assert!(installed.second_chance.contains(&ip("10.0.2.2")));

    // Nothing changes, nothing is written; then revived, it keeps its flag.
    let log = step(&flagged, &down(&["10.0.2.1"]), &mut installed, &mut maps);
    assert!(!log.iter().any(|w| matches!(w, Write::Backend { .. })), "{log:#?}");
    let log = step(&flagged, &Conditions::new(), &mut installed, &mut maps);
    assert!(log.contains(&Write::Backend { id: west, address: ip("10.0.2.1"), dead: false, second_chance: true }));

    // And off again.
    let log = step(&plain, &Conditions::new(), &mut installed, &mut maps);
    assert!(log.contains(&Write::Backend { id: west, address: ip("10.0.2.1"), dead: false, second_chance: false }));
    assert!(installed.second_chance.is_empty());
}

#[test]
fn a_backend_going_down_leaves_the_table_before_it_is_marked_dead() {
    let (mut installed, mut maps) = (Installed::default(), RecordingMaps::new(LIMITS));
    let config = config("");
    step(&config, &Conditions::new(), &mut installed, &mut maps);
    let live = installed.vips[&web()].default.generation;

    let log = step(&config, &down(&["10.0.1.1"]), &mut installed, &mut maps);
    let id = installed.backend_ids[&ip("10.0.1.1")];
    let idle_write =
        position(&log, |w| matches!(w, Write::Table { generation, patch: true, .. } if *generation == live ^ 1));
    let flip = position(
        &log,
        |w| matches!(w, Write::VipEntry { vip, value } if *vip == web() && value.generation == live ^ 1),
    );
    let dead = position(&log, |w| matches!(w, Write::Backend { id: i, dead: true, .. } if *i == id));
    assert!(idle_write < flip && flip < dead, "want idle write, flip, dead mark: {log:#?}");
    assert!(!maps.live_table(&web()).unwrap().contains(&id));
    assert!(maps.is_dead(id));

    // Back up: written alive before any table names it again.
    let log = step(&config, &Conditions::new(), &mut installed, &mut maps);
    let revived = position(&log, |w| matches!(w, Write::Backend { id: i, dead: false, .. } if *i == id));
    let flip = position(&log, |w| matches!(w, Write::VipEntry { vip, .. } if *vip == web()));
    assert!(revived < flip, "{log:#?}");
    assert!(maps.live_table(&web()).unwrap().contains(&id));
}

#[test]
fn a_removed_backend_is_cleared_after_every_table_has_dropped_it() {
    let (mut installed, mut maps) = (Installed::default(), RecordingMaps::new(LIMITS));
    let with_extra = config(
        "\n[[vip]]\nname = \"api\"\naddress = \"203.0.113.11\"\nport = 443\nprotocol = \"tcp\"\npools = [\"south\"]\n\n[[pool]]\nname = \"south\"\nbackends = [ { address = \"10.0.3.1\" }, { address = \"10.0.3.2\" } ]\n",
    );
    step(&with_extra, &Conditions::new(), &mut installed, &mut maps);
    let api = VipMatch { address: ip("203.0.113.11"), port: 443, proto: 6 };
    let gone = [installed.backend_ids[&ip("10.0.3.1")], installed.backend_ids[&ip("10.0.3.2")]];

    let log = step(&config(""), &Conditions::new(), &mut installed, &mut maps);
    let removed_vip = position(&log, |w| *w == Write::RemoveVip(api));
    let first_clear = position(&log, |w| matches!(w, Write::ClearBackend(_)));
    assert!(removed_vip < first_clear, "{log:#?}");
    assert_eq!(&log[first_clear..], &gone.map(Write::ClearBackend)[..], "removed backends go last: {log:#?}");
    assert!(!installed.vips.contains_key(&api));
}

#[test]
fn a_removed_vip_is_gone_before_a_new_vip_reuses_its_table() {
    let (mut installed, mut maps) = (Installed::default(), RecordingMaps::new(LIMITS));
    let vip = |name: &str, port: u16| {
        format!("\n[[vip]]\nname = \"{name}\"\naddress = \"203.0.113.20\"\nport = {port}\nprotocol = \"tcp\"\npools = [\"east\"]\n")
    };
    step(&config(&vip("old", 8080)), &Conditions::new(), &mut installed, &mut maps);
    let old = VipMatch { address: ip("203.0.113.20"), port: 8080, proto: 6 };
    let old_table = installed.vips[&old].default.table_id;
    step(&config(&vip("old", 8080)), &down(&["10.0.1.1"]), &mut installed, &mut maps);
    assert!(maps.history(old_table).iter().any(|h| *h != SlotHistory::default()), "the change left history");

    let log = step(&config(&vip("new", 8443)), &Conditions::new(), &mut installed, &mut maps);
    let new = VipMatch { address: ip("203.0.113.20"), port: 8443, proto: 6 };
    assert_eq!(installed.vips[&new].default.table_id, old_table, "the freed table is reused");
    let removed = position(&log, |w| *w == Write::RemoveVip(old));
    let reused = position(&log, |w| matches!(w, Write::Table { table_id, .. } if *table_id == old_table));
    assert!(removed < reused, "{log:#?}");
    // The new VIP's table starts without the old one's history.
    let cleared = position(&log, |w| *w == Write::ClearHistory(old_table));
    assert!(removed < cleared && cleared < reused, "{log:#?}");
    assert!(maps.history(old_table).iter().all(|h| *h == SlotHistory::default()));
}

#[test]
fn changes_name_what_was_added_changed_and_removed() {
    let (mut installed, mut maps) = (Installed::default(), RecordingMaps::new(LIMITS));
    let (_, added) = reconcile(&config(""), &Conditions::new(), &mut installed, &mut maps).unwrap();
    assert_eq!(added.vips_added, vec!["dns", "web"]);
    assert_eq!(added.backends_added.len(), 4);

    let only_web = config("").vips.into_iter().filter(|v| v.name == "web").collect();
    let config = Config { vips: only_web, ..config("") };
    let (_, changes) = reconcile(&config, &down(&["10.0.2.1"]), &mut installed, &mut maps).unwrap();
    assert_eq!(changes.vips_removed, vec!["dns"]);
    assert_eq!(changes.vips_changed, vec!["web"]);
    assert_eq!(changes.backends_dead, vec![ip("10.0.2.1")]);
    assert!(maps.violations.is_empty(), "{:#?}", maps.violations);
}

#[test]
fn random_health_and_config_changes_never_expose_an_unsafe_state() {
    let seed = rand::random::<u64>();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let backends = ["10.0.1.1", "10.0.1.2", "10.0.2.1", "10.0.2.2", "10.0.3.1"];
    let extras = [
        String::new(),
        "\n[[vip]]\nname = \"api\"\naddress = \"203.0.113.11\"\nport = 0\nprotocol = \"udp\"\npools = [\"south\", \"east\"]\n\n[[pool]]\nname = \"south\"\nbackends = [ { address = \"10.0.3.1\" } ]\n".to_string(),
    ];
    let (mut installed, mut maps) = (Installed::default(), RecordingMaps::new(LIMITS));
    let mut last_chosen = BTreeSet::new();
    for round in 0..200 {
        let config = config(&extras[rng.gen_range(0..extras.len())]);
        let mut conditions = Conditions::new();
        for address in backends {
            let (down, drained) = (rng.gen_bool(0.3), rng.gen_bool(0.1));
            let drain_expired = drained && rng.gen_bool(0.5);
            conditions.insert(ip(address), Condition { down, failing: down, drained, drain_expired, rtt_avg_ms: None });
        }
        // Until its tables flip, the last plan's choice is still live too.
        let chosen = dead_in_tables(&config, &conditions, &installed);
        maps.expect_dead_in_tables(chosen.union(&last_chosen).copied().collect());
        last_chosen = chosen;
        let (plan, _) = reconcile(&config, &conditions, &mut installed, &mut maps).unwrap();
        assert!(
            maps.violations.is_empty(),
            "seed {seed}, round {round}: {:#?}\nwrites: {:#?}",
            maps.violations,
            maps.log
        );
        for (matcher, planned) in &plan.vips {
            let live = maps.live_table(matcher).unwrap();
            assert_eq!(live, &planned.default.build(), "seed {seed}, round {round}");
            let slots = &installed.vips[matcher].default.slots;
            assert_eq!(slots.values().sum::<u32>(), LIMITS.table_size, "seed {seed}, round {round}");
            for (id, count) in slots {
                assert_eq!(live.iter().filter(|&s| s == id).count() as u32, *count, "seed {seed}, round {round}");
            }
        }
        maps.take_log();
    }
}

/// Backends the plan for `config` keeps in a table while marking them dead.
fn dead_in_tables(config: &Config, conditions: &Conditions, installed: &Installed) -> BTreeSet<u32> {
    let plan = plan(config, &installed.backend_ids, LIMITS.max_backends, LIMITS.table_size, conditions).unwrap();
    let tables = plan.vips.values().flat_map(|v| std::iter::once(&v.default).chain(v.client_tables.values()));
    let in_tables: BTreeSet<u32> = tables.flat_map(|t| t.build()).collect();
    plan.dead.iter().map(|a| plan.backend_ids[a]).filter(|id| in_tables.contains(id)).collect()
}

#[test]
fn a_plan_that_does_not_fit_writes_nothing() {
    let (mut installed, mut maps) = (Installed::default(), RecordingMaps::new(Limits { max_backends: 3, ..LIMITS }));
    assert!(reconcile(&config(""), &Conditions::new(), &mut installed, &mut maps).is_err());
    assert!(maps.log.is_empty(), "{:#?}", maps.log);
}
