//! The Prometheus alert rules and the Grafana dashboard in packaging/:
//! promtool checks the rules and runs their unit tests, and every metric
//! either uses is one the agent (or decap) exports.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn packaging(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging").join(file)
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(packaging("prometheus"))
        .output()
        .expect("running promtool (Debian's prometheus package; `cargo xtask setup` installs it)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    println!("promtool {args:?}:\n{text}");
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    promtool(&["check", "rules", "gslb-alerts.yml"]);
    promtool(&["test", "rules", "gslb-alerts.test.yml"]);
}

/// Every `gslb_...` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("gslb_") {
        let tail = &rest[start..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// The names the agent's and decap's metrics code registers (quoted in
/// gslb-userspace/src/view/).
fn registered() -> BTreeSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../gslb-userspace/src/view");
    let mut names = BTreeSet::from(["gslb".to_string()]);
    for entry in std::fs::read_dir(dir).unwrap() {
        let source = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        names.extend(metric_names(&source).into_iter().filter(|n| source.contains(&format!("\"{n}\""))));
    }
    names
}

/// Whether `used` is how Prometheus sees a registered metric: itself, or
/// with the suffix OpenMetrics gives its type (and unit).
fn exported(used: &str, registered: &BTreeSet<String>) -> bool {
    const SUFFIXES: [&str; 9] =
        ["", "_total", "_info", "_bucket", "_sum", "_count", "_seconds_bucket", "_seconds_sum", "_seconds_count"];
    SUFFIXES.iter().any(|suffix| used.strip_suffix(suffix).is_some_and(|name| registered.contains(name)))
}

#[test]
fn the_dashboard_and_the_rules_use_only_exported_metrics() {
    let registered = registered();
    assert!(registered.contains("gslb_vip_panic") && registered.contains("gslb_failover"), "{registered:?}");
    let dashboard = std::fs::read_to_string(packaging("grafana/gslb.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let panels = json["panels"].as_array().expect("panels");
    assert!(panels.len() > 20, "{} panels", panels.len());
    let exprs: Vec<&str> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    assert!(exprs.len() >= panels.len() - 10, "panels without queries");
    let rules = std::fs::read_to_string(packaging("prometheus/gslb-alerts.yml")).unwrap();
    for (what, text) in [("the dashboard", exprs.join("\n")), ("the alert rules", rules)] {
        let used = metric_names(&text);
        assert!(!used.is_empty(), "{what} uses no gslb metric");
        let unknown: Vec<&String> = used.iter().filter(|n| !exported(n, &registered)).collect();
        assert!(unknown.is_empty(), "{what} uses metrics the agent does not export: {unknown:?}");
    }
    // The check itself: a name nobody exports is caught.
    assert!(!exported("gslb_vip_packet_total", &registered));
}
