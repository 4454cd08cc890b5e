//! Whole-file behaviour: the full and documented examples, defaults, key
//! order, syntax and unknown or missing keys, loading and error display.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use super::fixtures::*;
use super::*;

#[test]
fn full_example() {
    let config = parse_str(FULL).unwrap();
    assert_eq!(
        config.edge,
        Edge {
            name: "edge-a".into(),
            interfaces: vec!["eth0".into(), "eth1".into()],
            xdp_mode: XdpMode::Native,
            tunnel_source_v4: Ipv4Addr::new(192, 0, 2, 10),
            tunnel_source_v6: Some("2001:db8::10".parse().unwrap()),
            admin_socket: "/run/gslb/admin.sock".into(),
            bpffs_pin: "/sys/fs/bpf/edge-a".into(),
            max_flows: 2_000_000,
            max_backends: 1024,
            max_vips: 16,
            table_size: 4099,
            metrics_listen: "127.0.0.1:9477".parse().unwrap(),
            stickiness_window_secs: 6 * 3600,
            gue_port: 6080,
            state_file: "/var/lib/gslb/edge-a.json".into(),
        }
    );
    assert_eq!(
        config.vips,
        vec![
            Vip {
                name: "web".into(),
                address: "203.0.113.10".parse().unwrap(),
                port: 80,
                protocol: Protocol::Tcp,
                affinity: Affinity::Flow,
                pools: vec!["us-east".into(), "eu-west".into()],
                policy: Policy::Weighted,
                min_healthy: 1,
                fallback_pool: None,
                max_unhealthy_fraction: 0.5,
                steer: vec![],
            },
            Vip {
                name: "dns".into(),
                address: "2001:db8:1::53".parse().unwrap(),
                port: 0,
                protocol: Protocol::Udp,
                affinity: Affinity::SourceIp,
                pools: vec!["v6".into()],
                policy: Policy::Weighted,
                min_healthy: 1,
                fallback_pool: None,
                max_unhealthy_fraction: 0.5,
                steer: vec![],
            },
        ]
    );
    let b = |a: &str, weight| BackendConfig {
        address: a.parse().unwrap(),
        weight,
        monitor: Monitor::default(),
        second_chance: false,
    };
    let pool = |name: &str, weight, backends| Pool {
        name: name.into(),
        weight,
        backends,
        max_latency_ms: None,
        capacity: None,
        max_utilization: 0.75,
        second_chance: false,
    };
    assert_eq!(
        config.pools,
        vec![
            pool("us-east", 100, vec![b("198.51.100.1", 100), b("198.51.100.2", 50)]),
            pool("eu-west", 0, vec![b("198.51.100.1", 100), b("2001:db8:2::1", 0)]),
            pool("v6", 100, vec![b("2001:db8:2::1", 100)]),
        ]
    );
    assert_eq!(config.pool("eu-west").unwrap().weight, 0);
    assert!(config.pool("nope").is_none());
    assert_eq!(Protocol::Tcp.number(), 6);
    assert_eq!(Protocol::Udp.number(), 17);
    assert_eq!(
        config.edge.limits(),
        Limits { max_vips: 16, max_backends: 1024, max_flows: 2_000_000, table_size: 4099 }
    );

    // The operator-facing JSON uses the file's spelling.
    let json = serde_json::to_value(&config).unwrap();
    assert_eq!(json["edge"]["xdp_mode"], "native");
    assert_eq!(json["vips"][1]["affinity"], "source-ip");
    assert_eq!(json["vips"][1]["protocol"], "udp");
    assert_eq!(json["pools"][0]["backends"][1]["address"], "198.51.100.2");
}

#[test]
fn defaults() {
    let config = parse_str(MINIMAL).unwrap();
    let edge = &config.edge;
    assert_eq!(edge.xdp_mode, XdpMode::Auto);
    assert_eq!(edge.tunnel_source_v6, None);
    assert_eq!(edge.admin_socket, PathBuf::from("/run/gslb/gslb.sock"));
    assert_eq!(edge.bpffs_pin, PathBuf::from("/sys/fs/bpf/gslb"));
    assert_eq!((edge.max_flows, edge.max_backends, edge.max_vips, edge.table_size), (1 << 20, 4096, 64, 65537));
    assert_eq!(config.vips[0].affinity, Affinity::Flow);
    assert_eq!(config.vips[0].policy, Policy::Weighted);
    assert_eq!(config.pools[0].weight, 100);
    assert_eq!(config.pools[0].backends[0].weight, 100);
    // Second chance: remembered for 6 hours, but no backend is assumed to
    // understand hop lists.
    assert_eq!((edge.stickiness_window_secs, edge.gue_port), (21_600, 6080));
    assert!(config.second_chance_backends().is_empty());
}

#[test]
fn no_vips_or_pools_is_valid() {
    let config =
        parse_str("[edge]\nname = \"e\"\ninterfaces = [\"eth0\"]\ntunnel_source_v4 = \"192.0.2.1\"\n").unwrap();
    assert!(config.vips.is_empty() && config.pools.is_empty());
}

#[test]
fn effective_weights_combine_pools() {
    let config = parse_str(FULL).unwrap();
    // us-east (100): .1 x100, .2 x50; eu-west (0): .1, ::1 contribute 0.
    let weights: Vec<(IpAddr, u64)> = config.effective_weights(&config.vips[0]).into_iter().collect();
    assert_eq!(
        weights,
        vec![
            ("198.51.100.1".parse().unwrap(), 100 * 100),
            ("198.51.100.2".parse().unwrap(), 100 * 50),
            ("2001:db8:2::1".parse().unwrap(), 0),
        ]
    );
    let text = FULL.replace("name = \"eu-west\"\nweight = 0", "name = \"eu-west\"\nweight = 3");
    let config = parse_str(&text).unwrap();
    let weights = config.effective_weights(&config.vips[0]);
    assert_eq!(weights[&"198.51.100.1".parse::<IpAddr>().unwrap()], 100 * 100 + 3 * 100);
}

#[test]
fn key_order_does_not_matter() {
    let reordered = r#"[[pool]]
backends = [ { weight = 100, address = "198.51.100.1" } ]
name = "p"

[[vip]]
pools = ["p"]
protocol = "tcp"
port = 80
address = "203.0.113.10"
name = "web"

[edge]
tunnel_source_v4 = "192.0.2.10"
interfaces = ["eth0"]
name = "edge-a"
"#;
    assert_eq!(parse_str(reordered).unwrap(), parse_str(MINIMAL).unwrap());
}

#[test]
fn error_display() {
    let err = refused(&minimal_with(2, "name = 5 # here"), "string");
    assert_eq!((err.line, err.column), (2, 8));
    assert_eq!(err.to_string(), format!("{FILE}:2:8: {}", err.message));

    let err = load(Path::new("/nonexistent/gslb.toml")).unwrap_err();
    assert_eq!(err.line, 0);
    assert!(err.to_string().starts_with("/nonexistent/gslb.toml: cannot read"), "{err}");
}

#[test]
fn load_reads_the_file() {
    let path = std::env::temp_dir().join(format!("gslb-config-test-{}.toml", std::process::id()));
    std::fs::write(&path, MINIMAL).unwrap();
    let loaded = load(&path);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(loaded.unwrap(), parse_str(MINIMAL).unwrap());
}

#[test]
fn syntax_and_type_errors() {
    refused(&minimal_with(9, "port = 80 80 # here"), "");
    refused(&minimal_with(13, "[[pool] # here"), "");
    refused(&minimal_with(9, "port = \"80\" # here"), "expected an integer");
    refused(&minimal_with(11, "pools = \"p\" # here"), "expected an array");
    refused(&minimal_with(6, "[vip] # here"), "double brackets");
    refused(&minimal_with(15, "backends = [ \"198.51.100.1\" ] # here"), "expected a table");
    refused(&minimal_with(10, "protocol = \"sctp\" # here"), "sctp");
    refused(&(MINIMAL.to_string() + "[[pool]]\nname = \"unterminated # here\n"), "string");
    refused(&minimal_with(2, "name = \"edge-a\"\nname = \"again\" # here"), "duplicate key `name`");
}

#[test]
fn unknown_keys() {
    let err = refused(&minimal_with(3, "interface = [\"eth0\"] # here"), "unknown field `interface`");
    assert_eq!(err.column, 1);
    refused(&minimal_with(11, "pools = [\"p\"]\nfallback = \"q\" # here"), "unknown field `fallback`");
    let err = refused(
        &minimal_with(15, "backends = [ { address = \"198.51.100.1\", wieght = 1 } ] # here"),
        "unknown field `wieght`",
    );
    assert_eq!(err.column, 42);
    refused(&(MINIMAL.to_string() + "[bgp]\nasn = 1 # here\n"), "unknown field `asn`");
    refused(&minimal_with(5, "[[vips]] # here"), "unknown field `vips`");
}

/// A missing key is reported at the start of its table.
#[test]
fn missing_keys() {
    let check = |line: usize, header_line: usize, needle: &str| {
        let err = parse_str(&minimal_with(line, "# removed")).unwrap_err();
        assert_eq!(err.line, header_line, "{err}");
        assert!(err.message.contains(needle), "{err}");
    };
    check(4, 1, "missing field `tunnel_source_v4`");
    check(3, 1, "missing field `interfaces`");
    check(9, 6, "missing field `port`");
    check(11, 6, "VIP \"web\" lists no pools");
    check(15, 13, "pool \"p\" has no backends");
    let err = parse_str("# only a comment\n").unwrap_err();
    assert_eq!((err.line, err.column), (1, 1));
    assert!(err.message.contains("missing [edge] section"), "{err}");
}

#[test]
fn new_defaults() {
    let config = parse_str(MINIMAL).unwrap();
    assert_eq!(config.edge.metrics_listen, "127.0.0.1:9477".parse().unwrap());
    let vip = &config.vips[0];
    assert_eq!((vip.min_healthy, vip.fallback_pool.as_deref(), vip.max_unhealthy_fraction), (1, None, 0.5));
    assert!(vip.steer.is_empty());
    let pool = &config.pools[0];
    assert_eq!((pool.max_latency_ms, pool.capacity, pool.max_utilization), (None, None, 0.75));
    let monitor = &pool.backends[0].monitor;
    assert_eq!(*monitor, Monitor::default());
    assert_eq!(monitor.protocol, MonitorProtocol::None);
    assert_eq!(monitor.port, 0);
    assert!(!monitor.is_enabled());
    let monitors = config.monitored_backends();
    assert_eq!(monitors.len(), 1);
    assert_eq!(monitors[&"198.51.100.1".parse::<IpAddr>().unwrap()], Monitor::default());
}

#[test]
fn documented_example_is_valid() {
    let config = parse_str(&documented_example()).unwrap();
    assert_eq!(config.vips.len(), 3);
    let web = &config.vips[0];
    // The shares in the doc's weight table.
    let weights: Vec<u64> = config.effective_weights(web).into_values().collect();
    assert_eq!(weights, vec![10000, 5000, 5000, 5000]);
    // It shows a steer rule, a failover VIP and monitors.
    assert_eq!(web.steer[0].client_prefix.to_string(), "100.64.0.0/10");
    let api = &config.vips[1];
    assert_eq!((api.policy, api.min_healthy, api.fallback_pool.as_deref()), (Policy::Failover, 2, Some("last-resort")));
    let monitors = config.monitored_backends();
    let monitor = |a: &str| &monitors[&a.parse::<IpAddr>().unwrap()];
    assert_eq!((monitor("198.51.100.1").protocol, monitor("198.51.100.1").port), (MonitorProtocol::Http, 8080));
    assert_eq!(monitor("198.51.100.2").port, 8081);
    assert_eq!(monitor("198.51.100.1").worst_case_failover_ms(), 4500);
    assert_eq!((monitor("198.51.100.3").protocol, monitor("198.51.100.3").port), (MonitorProtocol::Tcp, 443));
    assert!(!monitor("198.51.100.5").is_enabled());
    // Second chance for us-east's backends, with the default window.
    let second_chance: Vec<IpAddr> = config.second_chance_backends().into_iter().collect();
    assert_eq!(second_chance, vec![ip("198.51.100.1"), ip("198.51.100.2")]);
    assert_eq!((config.edge.stickiness_window_secs, config.edge.gue_port), (21_600, 6080));
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
fn documented_error_is_real() {
    let text = documented_example().replace("pools = [\"eu-west-v6\"]", "pools = [\"us-east\"]");
    let err = parse_str(&text).unwrap_err();
    let doc = include_str!("../../../docs/configuration.md");
    assert!(doc.contains(&err.to_string()), "the doc should show: {err}");
}
