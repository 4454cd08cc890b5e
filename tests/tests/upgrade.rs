//! Upgrading and downgrading in place: an agent of another build (another
//! XDP program) takes over the pinned maps and swaps its program into the
//! XDP link atomically, under live IPv4 and IPv6 connections; a pinned map
//! of an unknown layout is refused and leaves steering as it was.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::maps::{HashMap, Map, MapData};
use gslb_common::{names, MetaKey, MetaValue};
use gslb_tests::checks::{assert_untouched, wait_for_progress, web_v4, web_v6};
use gslb_tests::deploy::{Deployment, Setup, Weights};
use gslb_tests::lab::{ClientNode, EdgeNode};
use gslb_tests::traffic::LongLived;
use gslb_userspace::sys::{attach, upgrade};
use gslb_userspace::view::status::Status;

const LAB_BINARY: &str = env!("CARGO_BIN_EXE_gslb-lab");
const INTERVAL: Duration = Duration::from_millis(10);
const EDGE: EdgeNode = EdgeNode::EdgeA;

/// The gslb of the other build: `cargo xtask test` builds it.
fn variant() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/variant/gslb");
    assert!(path.exists(), "{} is missing: run the tests with `cargo xtask test`, which builds it", path.display());
    path
}

/// The program the edge's pinned XDP link runs.
fn linked_program(d: &Deployment) -> u32 {
    attach::pinned_link_program(&attach::link_pin(&d.lab.bpffs_dir(EDGE), "eth0")).expect("a pinned XDP link")
}

fn meta(d: &Deployment) -> HashMap<MapData, MetaKey, MetaValue> {
    let path = d.lab.bpffs_dir(EDGE).join("maps").join(names::GSLB_META);
    let data = MapData::from_pin(&path).expect("GSLB_META is pinned");
    HashMap::try_from(Map::HashMap(data)).unwrap()
}

fn set_flows_layout(d: &Deployment, version: &str) {
    let (key, value) = upgrade::meta_entry("layout:FLOWS", version);
    meta(d).insert(key, value, 0).unwrap();
}

/// Replaces the edge's agent by one from `binary` (None: the default build)
/// and checks it took over: another program on the link, every counter
/// carried on.
fn replace_agent(d: &Deployment, binary: Option<&Path>, before: &Status) -> Status {
    let program = linked_program(d);
    d.stop_agent(EDGE).unwrap();
    match binary {
        Some(binary) => d.start_agent_from(EDGE, binary).unwrap(),
        None => d.start_agent(EDGE).unwrap(),
    }
    let after = d.status(EDGE).unwrap();
    assert_ne!(after.program.version, before.program.version, "the program version did not change");
    assert_eq!(after.program.upgraded_from.as_ref(), Some(&before.program.version));
    assert!(after.adopted, "the new agent did not take over the pinned state");
    assert_ne!(linked_program(d), program, "the XDP link still runs the old program");
    assert!(
        after.counters.forwarded >= before.counters.forwarded,
        "counters restarted: forwarded {} after, {} before",
        after.counters.forwarded,
        before.counters.forwarded
    );
    assert_eq!(after.interfaces.get("eth0").map(String::as_str), Some("adopted"));
    println!(
        "{} -> {}: program {program} -> {}, forwarded {} -> {}",
        before.program.version,
        after.program.version,
        linked_program(d),
        before.counters.forwarded,
        after.counters.forwarded
    );
    after
}

#[test]
fn upgrade_and_downgrade_in_place_keep_every_connection() {
    let variant = variant();
    let d = Deployment::start(LAB_BINARY.as_ref(), &Setup::from(&Weights::default())).unwrap();
    let v4 = LongLived::start(&d.lab, ClientNode::Client1, web_v4(), 40, INTERVAL).unwrap();
    let v6 = LongLived::start(&d.lab, ClientNode::Client2, web_v6(), 20, INTERVAL).unwrap();
    let progress = |what: &str| {
        let (before_v4, before_v6) = (v4.snapshot(), v6.snapshot());
        wait_for_progress(&v4, &before_v4, 10, what);
        wait_for_progress(&v6, &before_v6, 10, what);
    };
    progress("before the upgrade");
    let first = d.status(EDGE).unwrap();
    assert!(first.program.loaded_unix > 0 && !first.program.version.is_empty(), "{:?}", first.program);

    let upgraded = replace_agent(&d, Some(&variant), &first);
    progress("after the upgrade");
    let downgraded = replace_agent(&d, None, &upgraded);
    assert_eq!(downgraded.program.version, first.program.version);
    progress("after the downgrade");

    // A pinned map of a layout this gslb does not know: refused, nothing
    // changed.
    let program = linked_program(&d);
    d.stop_agent(EDGE).unwrap();
    set_flows_layout(&d, "99");
    let error = d.start_agent_from(EDGE, &variant).expect_err("an unknown FLOWS layout was not refused");
    let error = format!("{error:#}");
    println!("refused: {}", error.lines().rev().find(|l| l.contains("FLOWS")).unwrap_or(&error));
    assert!(error.contains("FLOWS has layout version 99, this gslb uses 1"), "{error}");
    assert!(error.contains("nothing was changed"), "{error}");
    assert_eq!(linked_program(&d), program, "the refused upgrade replaced the program");
    assert_eq!(upgrade::recorded_version(&meta(&d)).as_ref(), Some(&first.program.version));
    progress("after the refused upgrade");

    // Back as it was: the default build adopts its own program as usual.
    set_flows_layout(&d, "1");
    d.start_agent(EDGE).unwrap();
    let adopted = d.status(EDGE).unwrap();
    assert_eq!(adopted.program.version, first.program.version);
    assert_eq!(adopted.program.upgraded_from, None, "an adopting agent replaced its own program");
    assert_eq!(linked_program(&d), program);
    progress("after the agent adopted its own program again");

    // Pins from before versions were recorded have no GSLB_META: they
    // count as layout 1 everywhere, and upgrade in place too.
    d.stop_agent(EDGE).unwrap();
    std::fs::remove_file(d.lab.bpffs_dir(EDGE).join("maps").join(names::GSLB_META)).unwrap();
    d.start_agent_from(EDGE, &variant).unwrap();
    let from_unversioned = d.status(EDGE).unwrap();
    assert_eq!(from_unversioned.program.version, upgraded.program.version);
    assert_eq!(
        from_unversioned.program.upgraded_from.as_deref(),
        Some("a gslb from before versions were recorded")
    );
    assert_ne!(linked_program(&d), program, "the XDP link still runs the old program");
    progress("after upgrading pins without versions");

    assert_untouched(&v4.stop(), "IPv4 across upgrade and downgrade");
    assert_untouched(&v6.stop(), "IPv6 across upgrade and downgrade");
}
