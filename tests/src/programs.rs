//! The test and bench XDP objects (gslb-ebpf-testing, built by build.rs),
//! apart from the agent's object (`gslb_userspace::sys::OBJECT`, `steer`
//! and `decap` only). Their map layouts and names are
//! `gslb_common::testing`.

/// `bench_restore` (restores a frame, tail-calls the program under test),
/// `bench_pass`, `bench_drop`, `bench_reflect`, `bench_forward`.
pub static BENCH: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench"));
/// `live_gen` (live-frames generator), `live_reflect`, `live_sink`,
/// `live_pass`.
pub static LIVE: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/live"));
/// `flood_syn` (live-frames SYN-flood generator).
pub static FLOOD: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flood"));

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    use gslb_common::{names, testing};

    /// Program and map names of an object (`.rodata` holds its globals).
    fn contents(object: &[u8]) -> (BTreeSet<String>, BTreeSet<String>) {
        let object = aya_obj::Object::parse(object).expect("an eBPF object");
        (object.programs.into_keys().collect(), object.maps.into_keys().collect())
    }

    fn set<const N: usize>(names: [&str; N]) -> BTreeSet<String> {
        names.into_iter().map(String::from).collect()
    }

    #[test]
    fn the_agents_object_holds_steer_and_decap_and_their_maps_only() {
        let (programs, maps) = contents(gslb_userspace::sys::OBJECT);
        assert_eq!(programs, set(["steer", "decap"]));
        let product = [
            names::VIPS,
            names::VIP_FILTER,
            names::FRAGMENT_VIPS,
            names::BACKENDS,
            names::NEXT_HOPS,
            names::MAGLEV,
            names::FLOWS,
            names::EDGE_CONFIG,
            names::GLOBAL_STATS,
            names::VIP_STATS,
            names::BACKEND_STATS,
            names::STEER_PREFIXES,
            names::DECAP_ADDRS,
            names::DECAP_STATS,
            names::OWNER_HISTORY,
            names::DECAP_EDGES,
            names::DECAP_PEERS,
            names::GSLB_META,
            "FIB_SCRATCH",
            "HOPS_SCRATCH",
            ".rodata",
        ];
        assert_eq!(maps, set(product));
    }

    #[test]
    fn each_test_object_holds_its_programs_and_the_shared_map_names() {
        use testing::names::*;
        let (programs, maps) = contents(super::BENCH);
        assert_eq!(programs, set(["bench_restore", "bench_pass", "bench_drop", "bench_reflect", "bench_forward"]));
        assert_eq!(maps, set([BENCH_FRAME, BENCH_COUNTER, BENCH_PROGS]));
        let (programs, maps) = contents(super::LIVE);
        assert_eq!(programs, set(["live_gen", "live_reflect", "live_sink", "live_pass"]));
        assert_eq!(maps, set([LIVE_GEN_CONFIG, LIVE_GEN_SEQ, LIVE_SINK]));
        let (programs, maps) = contents(super::FLOOD);
        assert_eq!(programs, set(["flood_syn"]));
        assert_eq!(maps, set([FLOOD_CONFIG, FLOOD_SENT]));
    }

    /// gslb-ebpf's modules (library and agent object alike) import each
    /// other without a cycle: peeling off modules that import nothing left
    /// leaves none.
    #[test]
    fn the_datapath_modules_import_each_other_without_a_cycle() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../gslb-ebpf/src");
        let mut imports: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for entry in std::fs::read_dir(&src).unwrap() {
            let path = entry.unwrap().path();
            let module = path.file_stem().unwrap().to_str().unwrap().to_string();
            if matches!(module.as_str(), "lib" | "main") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let mut named = BTreeSet::new();
            for prefix in ["crate::", "gslb_ebpf::"] {
                for (at, _) in text.match_indices(prefix) {
                    let rest = &text[at + prefix.len()..];
                    // `use crate::{a, b::c}` names every module in the braces.
                    let list = rest.strip_prefix('{').map(|r| &r[..r.find("};").unwrap_or(r.len())]);
                    for item in list.map(|l| l.split(',').collect()).unwrap_or_else(|| vec![rest]) {
                        let name: String =
                            item.trim().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                        if !name.is_empty() && name != module {
                            named.insert(name);
                        }
                    }
                }
            }
            imports.insert(module, named);
        }
        assert!(imports.len() >= 10, "read too few modules: {imports:?}");
        assert!(imports["steer"].contains("pmtu") && imports["pmtu"].contains("route"), "{imports:?}");
        loop {
            let leaves: Vec<String> = imports
                .iter()
                .filter(|(_, named)| named.iter().all(|n| !imports.contains_key(n)))
                .map(|(m, _)| m.clone())
                .collect();
            if leaves.is_empty() {
                break;
            }
            for leaf in leaves {
                imports.remove(&leaf);
            }
        }
        assert!(imports.is_empty(), "import cycle among {imports:?}");
    }
}
