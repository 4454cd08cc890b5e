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

/// The gslb of the other build: `cargo xtask test` builds it and says
/// where (GSLB_VARIANT).
fn variant() -> PathBuf {
    let path = std::env::var_os("GSLB_VARIANT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/variant/gslb"));
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
    assert_eq!(from_unversioned.program.upgraded_from.as_deref(), Some("a gslb from before versions were recorded"));
    assert_ne!(linked_program(&d), program, "the XDP link still runs the old program");
    progress("after upgrading pins without versions");

    assert_untouched(&v4.stop(), "IPv4 across upgrade and downgrade");
    assert_untouched(&v6.stop(), "IPv6 across upgrade and downgrade");
}

/// A map of the kernel made for the migration test.
fn kernel_map(map_type: u32, key_size: u32, value_size: u32, max_entries: u32) -> MapData {
    use aya_obj::maps::{bpf_map_def, LegacyMap};
    let def = bpf_map_def { map_type, key_size, value_size, max_entries, ..Default::default() };
    let object = aya_obj::Map::Legacy(LegacyMap {
        def,
        inner_def: None,
        section_index: 0,
        section_kind: aya_obj::EbpfSectionKind::Maps,
        symbol_index: None,
        data: Vec::new(),
    });
    MapData::create(object, "migration_test", None).expect("creating a map")
}

/// The old layout's `u32` value becomes the new layout's `u64`; the entry
/// of key 3 is dropped.
fn widen(key: &[u8], value: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let value = u32::from_ne_bytes(value.try_into().unwrap());
    (key != 3u32.to_ne_bytes()).then(|| (key.to_vec(), (value as u64 * 10).to_ne_bytes().to_vec()))
}

/// The copier a layout migration runs, on real kernel maps of every kind
/// the agent pins: hash, array and per-CPU array.
#[test]
fn a_migration_converts_every_entry_of_real_maps() {
    use aya::maps::{Array, IterableMap, PerCpuArray, PerCpuValues};
    use gslb_userspace::sys::upgrade::migrate::copy_entries;
    const HASH: u32 = 1;
    const ARRAY: u32 = 2;
    const PER_CPU_ARRAY: u32 = 6;

    let (old, new) = (kernel_map(HASH, 4, 4, 16), kernel_map(HASH, 4, 8, 16));
    let mut old_hash: HashMap<MapData, u32, u32> = HashMap::try_from(Map::HashMap(old)).unwrap();
    for key in 1..=5u32 {
        old_hash.insert(key, key + 100, 0).unwrap();
    }
    let written = copy_entries(old_hash.map(), &new, widen).unwrap();
    let new_hash: HashMap<MapData, u32, u64> = HashMap::try_from(Map::HashMap(new)).unwrap();
    assert_eq!(written, 4);
    let mut entries: Vec<(u32, u64)> = new_hash.iter().map(Result::unwrap).collect();
    entries.sort();
    assert_eq!(entries, [(1, 1010), (2, 1020), (4, 1040), (5, 1050)]);

    let (old, new) = (kernel_map(ARRAY, 4, 4, 8), kernel_map(ARRAY, 4, 8, 8));
    let mut old_array: Array<MapData, u32> = Array::try_from(Map::Array(old)).unwrap();
    old_array.set(6, 7, 0).unwrap();
    assert_eq!(copy_entries(old_array.map(), &new, widen).unwrap(), 7, "every slot but the dropped one");
    let new_array: Array<MapData, u64> = Array::try_from(Map::Array(new)).unwrap();
    assert_eq!(new_array.get(&6, 0).unwrap(), 70);
    assert_eq!(new_array.get(&0, 0).unwrap(), 0);

    let cpus = aya::util::nr_cpus().unwrap();
    let (old, new) = (kernel_map(PER_CPU_ARRAY, 4, 4, 2), kernel_map(PER_CPU_ARRAY, 4, 8, 2));
    let mut old_counters: PerCpuArray<MapData, u32> = PerCpuArray::try_from(Map::PerCpuArray(old)).unwrap();
    let values = PerCpuValues::try_from((0..cpus as u32).map(|cpu| cpu + 1).collect::<Vec<_>>()).unwrap();
    old_counters.set(1, values, 0).unwrap();
    copy_entries(old_counters.map(), &new, widen).unwrap();
    let new_counters: PerCpuArray<MapData, u64> = PerCpuArray::try_from(Map::PerCpuArray(new)).unwrap();
    let got: Vec<u64> = new_counters.get(&1, 0).unwrap().iter().copied().collect();
    assert_eq!(got, (0..cpus as u64).map(|cpu| (cpu + 1) * 10).collect::<Vec<_>>(), "per CPU, each converted");
}
