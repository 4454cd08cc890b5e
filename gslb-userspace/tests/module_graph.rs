//! The crate's layout holds: its top-level modules import each other
//! without a cycle, and the views and servers never import the agent.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module -> the top-level modules its non-test code names as
/// `crate::NAME`.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut pending = vec![src.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let relative = path.strip_prefix(&src).unwrap();
            let top = relative.components().next().unwrap().as_os_str().to_str().unwrap().trim_end_matches(".rs");
            let name = path.file_stem().unwrap().to_str().unwrap();
            if matches!(top, "lib" | "main") || matches!(name, "tests" | "recording") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            // Test modules at the end of a file may name anything.
            let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
            let names = graph.entry(top.to_string()).or_default();
            for (at, _) in code.match_indices("crate::") {
                let rest = &code[at + "crate::".len()..];
                let used: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if used != top && !used.is_empty() {
                    names.insert(used);
                }
            }
        }
    }
    graph
}

fn reaches(graph: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> Option<Vec<String>> {
    let mut stack = vec![vec![from.to_string()]];
    let mut seen = BTreeSet::new();
    while let Some(path) = stack.pop() {
        let last = path.last().unwrap().clone();
        for next in graph.get(&last).into_iter().flatten() {
            let mut longer = path.clone();
            longer.push(next.clone());
            if next == to {
                return Some(longer);
            }
            if seen.insert(next.clone()) {
                stack.push(longer);
            }
        }
    }
    None
}

#[test]
fn top_level_modules_import_each_other_without_a_cycle() {
    let graph = imports();
    assert!(graph.len() > 8, "read too few modules: {graph:?}");
    for module in graph.keys() {
        if let Some(cycle) = reaches(&graph, module, module) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn views_and_servers_never_reach_the_agent() {
    let graph = imports();
    for module in ["view", "serve", "decide", "reconcile", "sys", "config", "health", "announce"] {
        if let Some(path) = reaches(&graph, module, "agent") {
            panic!("{module} reaches the agent: {}", path.join(" -> "));
        }
    }
}
