use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use super::*;

const FILE: &str = "/etc/gslb/gslb.toml";

const FULL: &str = r#"
[edge]
name = "edge-a"
interfaces = ["eth0", "eth1"]
xdp_mode = "native"
tunnel_source_v4 = "192.0.2.10"
tunnel_source_v6 = "2001:db8::10"
admin_socket = "/run/gslb/admin.sock"
bpffs_pin = "/sys/fs/bpf/edge-a"
max_flows = 2000000
max_backends = 1024
max_vips = 16
table_size = 4099

[[vip]]
name = "web"
address = "203.0.113.10"
port = 80
protocol = "tcp"
affinity = "flow"
pools = ["us-east", "eu-west"]
policy = "weighted"

[[vip]]
name = "dns"
address = "2001:db8:1::53"
port = 0
protocol = "udp"
affinity = "source-ip"
pools = ["v6"]

[[pool]]
name = "us-east"
weight = 100
backends = [ { address = "198.51.100.1", weight = 100 }, { address = "198.51.100.2", weight = 50 } ]

[[pool]]
name = "eu-west"
weight = 0

[[pool.backends]]
address = "198.51.100.1"

[[pool.backends]]
address = "2001:db8:2::1"
weight = 0

[[pool]]
name = "v6"
backends = [ { address = "2001:db8:2::1" } ]
"#;

/// The smallest valid file; tests append sections or replace lines.
const MINIMAL: &str = r#"[edge]
name = "edge-a"
interfaces = ["eth0"]
tunnel_source_v4 = "192.0.2.10"

[[vip]]
name = "web"
address = "203.0.113.10"
port = 80
protocol = "tcp"
pools = ["p"]

[[pool]]
name = "p"
backends = [ { address = "198.51.100.1" } ]
"#;

fn parse_str(text: &str) -> Result<Config, ConfigError> {
    parse(text, Path::new(FILE))
}

/// Parses `text`, which must be refused at the line marked `# here`, with a
/// message containing `needle`; returns the error.
#[track_caller]
fn refused(text: &str, needle: &str) -> ConfigError {
    let expected = text
        .lines()
        .position(|l| l.contains("# here"))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("test text has no `# here` marker:\n{text}"));
    let err = match parse_str(text) {
        Ok(config) => panic!("accepted:\n{text}\nas {config:?}"),
        Err(e) => e,
    };
    assert_eq!(err.file, PathBuf::from(FILE));
    assert_eq!(err.line, expected, "wrong line for {err}\nin:\n{text}");
    assert!(err.message.contains(needle), "message {:?} does not contain {needle:?}", err.message);
    assert!(err.column >= 1);
    err
}

/// `MINIMAL` with line `line` (1-based) replaced by `with`.
fn minimal_with(line: usize, with: &str) -> String {
    let mut lines: Vec<&str> = MINIMAL.lines().collect();
    lines[line - 1] = with;
    lines.join("\n") + "\n"
}

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
    let b = |a: &str, weight| BackendConfig { address: a.parse().unwrap(), weight, monitor: Monitor::default() };
    let pool = |name: &str, weight, backends| Pool {
        name: name.into(),
        weight,
        backends,
        max_latency_ms: None,
        capacity: None,
        max_utilization: 0.75,
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
fn edge_checks() {
    refused(&minimal_with(2, "name = \"\" # here"), "edge.name must not be empty");
    refused(&minimal_with(3, "interfaces = [] # here"), "at least one interface");
    refused(&minimal_with(3, "interfaces = [\"eth0\", \"a-very-long-name0\"] # here"), "at most 15 bytes");
    refused(&minimal_with(3, "interfaces = [\"eth/0\"] # here"), "'/'");
    refused(&minimal_with(3, "interfaces = [\"eth 0\"] # here"), "whitespace");
    refused(&minimal_with(3, "interfaces = [\"\"] # here"), "empty");
    refused(&minimal_with(3, "interfaces = [\"eth0\", \"eth0\"] # here"), "listed twice");
    refused(&minimal_with(3, "interfaces = [\"eth0\"]\nxdp_mode = \"offload\" # here"), "offload");
    refused(&minimal_with(4, "tunnel_source_v4 = \"2001:db8::1\" # here"), "not an IPv4 address");
    refused(&minimal_with(4, "tunnel_source_v4 = \"0.0.0.0\" # here"), "unspecified");
    refused(
        &minimal_with(4, "tunnel_source_v4 = \"192.0.2.10\"\ntunnel_source_v6 = \"192.0.2.11\" # here"),
        "not an IPv6 address",
    );
    refused(&minimal_with(4, "tunnel_source_v4 = \"192.0.2.10/24\" # here"), "prefix length");
    refused(&minimal_with(4, "tunnel_source_v4 = \"192.0.2.10\"\nbpffs_pin = \"gslb\" # here"), "absolute path");
    refused(
        &minimal_with(4, "tunnel_source_v4 = \"192.0.2.10\"\nadmin_socket = \"run/gslb.sock\" # here"),
        "absolute path",
    );
}

#[test]
fn limit_checks() {
    let edge = |extra: &str| minimal_with(4, &format!("tunnel_source_v4 = \"192.0.2.10\"\n{extra}"));
    refused(&edge("max_flows = 0 # here"), "max_flows must be at least 1");
    refused(&edge("max_flows = 5000000000 # here"), "at most");
    refused(&edge("max_backends = 1 # here"), "at least 2");
    refused(&edge("max_vips = 0 # here"), "at least 1");
    refused(&edge("table_size = 65536 # here"), "must be a prime").message.contains("65537").then_some(()).unwrap();
    refused(&edge("max_backends = 70000 # here"), "at least edge.max_backends (70000)");
    refused(&edge("max_backends = 70000\ntable_size = 65537 # here"), "at least edge.max_backends");
    refused(&edge("max_vips = 40000 # here"), "lower max_vips or table_size");

    // VIP count: the VIP past the limit is reported.
    let two_vips = edge("max_vips = 1")
        + "[[vip]] # here\nname = \"b\"\naddress = \"203.0.113.11\"\nport = 80\nprotocol = \"tcp\"\npools = [\"p\"]\n";
    refused(&two_vips, "too many VIPs");

    // Distinct backends: max_backends - 1 of them fit.
    let text = edge("max_backends = 3")
        + "[[pool]]\nname = \"q\"\nbackends = [ { address = \"198.51.100.1\" }, { address = \"198.51.100.2\" } ]\n";
    parse_str(&text).unwrap();
    let text = edge("max_backends = 3")
        + "[[pool]]\nname = \"q\"\nbackends = [\n { address = \"198.51.100.2\" },\n { address = \"198.51.100.3\" } # here\n]\n";
    refused(&text, "too many backends");
}

#[test]
fn name_checks() {
    refused(&minimal_with(7, "name = \"\" # here"), "VIP name must not be empty");
    refused(&minimal_with(14, "name = \"\" # here"), "pool name must not be empty");
    let dup_vip = MINIMAL.to_string()
        + "[[vip]]\nname = \"web\" # here\naddress = \"203.0.113.11\"\nport = 80\nprotocol = \"tcp\"\npools = [\"p\"]\n";
    refused(&dup_vip, "already used by the VIP at line 6");
    let dup_pool =
        MINIMAL.to_string() + "[[pool]]\nname = \"p\" # here\nbackends = [ { address = \"198.51.100.2\" } ]\n";
    refused(&dup_pool, "already used by the pool at line 13");
}

#[test]
fn vip_pool_references() {
    refused(&minimal_with(11, "pools = [] # here"), "at least one pool");
    refused(&minimal_with(11, "pools = [\"p\", \"nope\"] # here"), "no [[pool]] has that name");
    let err = refused(&minimal_with(11, "pools = [\"p\", \"p\"] # here"), "listed twice");
    assert_eq!(err.column, 15);
}

#[test]
fn vip_identity() {
    let vip = |name: &str, port: u16, proto: &str, marker: &str| {
        format!(
            "[[vip]]\nname = \"{name}\"\naddress = \"203.0.113.10\" {marker}\nport = {port}\nprotocol = \"{proto}\"\npools = [\"p\"]\n"
        )
    };
    // Port 0 next to exact ports, and TCP next to UDP, are fine.
    let ok = MINIMAL.to_string() + &vip("all", 0, "tcp", "") + &vip("udp", 80, "udp", "") + &vip("ssh", 22, "tcp", "");
    assert_eq!(parse_str(&ok).unwrap().vips.len(), 4);
    refused(
        &(MINIMAL.to_string() + &vip("again", 80, "tcp", "# here")),
        "same address, port and protocol as VIP \"web\"",
    );
    let two_all = MINIMAL.to_string() + &vip("all", 0, "udp", "") + &vip("all2", 0, "udp", "# here");
    refused(&two_all, "same address, port and protocol");
    refused(&minimal_with(9, "port = 65536 # here"), "between 0 and 65535");
}

#[test]
fn weight_checks() {
    refused(&minimal_with(14, "name = \"p\"\nweight = 10001 # here"), "pool weight must be between 0 and 10000");
    refused(&minimal_with(14, "name = \"p\"\nweight = -1 # here"), "between 0 and 10000");
    refused(
        &minimal_with(15, "backends = [ { address = \"198.51.100.1\", weight = 20000 } ] # here"),
        "backend weight must be between 0 and 10000",
    );
    let all_zero = minimal_with(11, "pools = [\"p\", \"q\"] # here")
        + "[[pool]]\nname = \"q\"\nweight = 0\nbackends = [ { address = \"198.51.100.2\" } ]\n";
    let all_zero = all_zero.replace("address = \"198.51.100.1\" }", "address = \"198.51.100.1\", weight = 0 }");
    refused(&all_zero, "would have no backend for new flows");
    // One backend with weight left is enough.
    parse_str(&all_zero.replace("weight = 0\nbackends", "weight = 1\nbackends")).unwrap();
    // A pool no VIP uses may have only weight-0 backends.
    parse_str(
        &(MINIMAL.to_string()
            + "[[pool]]\nname = \"idle\"\nweight = 0\nbackends = [ { address = \"198.51.100.9\" } ]\n"),
    )
    .unwrap();
}

#[test]
fn backend_checks() {
    refused(&minimal_with(15, "backends = [] # here"), "at least one backend");
    refused(
        &minimal_with(15, "backends = [ { address = \"198.51.100.1\" }, { address = \"198.51.100.1\" } ] # here"),
        "listed twice in pool \"p\"",
    );
    // The same address in two pools is fine.
    let shared = MINIMAL.to_string() + "[[pool]]\nname = \"q\"\nbackends = [ { address = \"198.51.100.1\" } ]\n";
    parse_str(&shared).unwrap();
    // [[pool.backends]] tables are located too.
    let tables = minimal_with(
        15,
        "[[pool.backends]]\naddress = \"198.51.100.1\"\n[[pool.backends]]\naddress = \"198.51.100.1\" # here",
    );
    refused(&tables, "listed twice");
    refused(&minimal_with(15, "backends = [ { address = \"198.51.100.300\" } ] # here"), "not an IP address");
}

#[test]
fn unusable_addresses() {
    for (addr, why) in [
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.5", "multicast"),
        ("ff02::1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:198.51.100.7", "write it as 198.51.100.7"),
    ] {
        let tunnel6 = "tunnel_source_v4 = \"192.0.2.10\"\ntunnel_source_v6 = \"2001:db8::10\"";
        let text = minimal_with(15, &format!("backends = [ {{ address = \"{addr}\" }} ] # here"));
        refused(&text.replace("tunnel_source_v4 = \"192.0.2.10\"", tunnel6), why);
        let text = minimal_with(8, &format!("address = \"{addr}\" # here"));
        refused(&text.replace("tunnel_source_v4 = \"192.0.2.10\"", tunnel6), why);
    }
}

#[test]
fn looping_addresses() {
    refused(
        &minimal_with(15, "backends = [ { address = \"203.0.113.10\" } ] # here"),
        "address of VIP \"web\" (line 6)",
    );
    refused(&minimal_with(15, "backends = [ { address = \"192.0.2.10\" } ] # here"), "tunnel_source_v4");
    refused(&minimal_with(8, "address = \"192.0.2.10\" # here"), "tunnel_source_v4");
    let v6 = |line: usize, with: &str| {
        minimal_with(line, with).replace(
            "tunnel_source_v4 = \"192.0.2.10\"",
            "tunnel_source_v4 = \"192.0.2.10\"\ntunnel_source_v6 = \"2001:db8::10\"",
        )
    };
    refused(&v6(8, "address = \"2001:db8::10\" # here"), "tunnel_source_v6");
    refused(&v6(15, "backends = [ { address = \"2001:db8::10\" } ] # here"), "tunnel_source_v6");
}

#[test]
fn address_families() {
    // IPv6 VIP with an IPv4 backend.
    let text =
        minimal_with(8, "address = \"2001:db8:1::80\"").replace("pools = [\"p\"]", "pools = [\"p\"] # here").replace(
            "tunnel_source_v4 = \"192.0.2.10\"",
            "tunnel_source_v4 = \"192.0.2.10\"\ntunnel_source_v6 = \"2001:db8::10\"",
        );
    let err = refused(&text, "is IPv6 but pool \"p\" has the IPv4 backend 198.51.100.1");
    assert_eq!(err.column, 10);
    // IPv4 VIP with an IPv6 backend: needs tunnel_source_v6.
    let text = minimal_with(15, "backends = [ { address = \"2001:db8:2::1\" } ]")
        .replace("pools = [\"p\"]", "pools = [\"p\"] # here");
    refused(&text, "edge.tunnel_source_v6 is not set");
    let with_v6 = text.replace(
        "tunnel_source_v4 = \"192.0.2.10\"",
        "tunnel_source_v4 = \"192.0.2.10\"\ntunnel_source_v6 = \"2001:db8::10\"",
    );
    parse_str(&with_v6).unwrap();
}

/// `MINIMAL` with `extra` appended to its `[[pool]]` table (the last one).
fn pool_with(extra: &str) -> String {
    MINIMAL.to_string() + extra
}

/// `MINIMAL` with `extra` added to its `[[vip]]` table.
fn vip_with(extra: &str) -> String {
    minimal_with(11, &format!("pools = [\"p\"]\n{extra}"))
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
fn metrics_listen() {
    let edge = |extra: &str| minimal_with(4, &format!("tunnel_source_v4 = \"192.0.2.10\"\n{extra}"));
    let config = parse_str(&edge("metrics_listen = \"[::]:9100\"")).unwrap();
    assert_eq!(config.edge.metrics_listen, "[::]:9100".parse().unwrap());
    refused(&edge("metrics_listen = \"127.0.0.1\" # here"), "is not an address and port");
    refused(&edge("metrics_listen = \"localhost:9477\" # here"), "is not an address and port");
    refused(&edge("metrics_listen = \"0.0.0.0:0\" # here"), "port other than 0");
    refused(&edge("metrics_listen = 9477 # here"), "expected a string");
}

#[test]
fn pool_capacity_keys() {
    let config = parse_str(&pool_with("max_latency_ms = 200\ncapacity = 1000\nmax_utilization = 1\n")).unwrap();
    let pool = &config.pools[0];
    assert_eq!((pool.max_latency_ms, pool.capacity, pool.max_utilization), (Some(200), Some(1000.0), 1.0));
    let config = parse_str(&pool_with("capacity = 2.5e3\nmax_utilization = 0.9\n")).unwrap();
    assert_eq!((config.pools[0].capacity, config.pools[0].max_utilization), (Some(2500.0), 0.9));

    refused(&pool_with("max_latency_ms = 0 # here\n"), "pool \"p\": max_latency_ms must be at least 1, not 0");
    refused(&pool_with("max_latency_ms = -200 # here\n"), "max_latency_ms must be a positive integer, not -200");
    refused(&pool_with("max_latency_ms = 5000000000 # here\n"), "at most 4294967295");
    refused(&pool_with("capacity = 0.0 # here\n"), "capacity must be a positive number, not 0");
    refused(&pool_with("capacity = -10 # here\n"), "positive number");
    refused(&pool_with("capacity = inf # here\n"), "positive number");
    refused(&pool_with("capacity = nan # here\n"), "positive number");
    refused(&pool_with("capacity = \"1000\" # here\n"), "expected a number");
    refused(&pool_with("max_utilization = 0 # here\n"), "max_utilization must be above 0 and at most 1, not 0");
    refused(&pool_with("max_utilization = 1.5 # here\n"), "at most 1");
    refused(&pool_with("max_utilization = nan # here\n"), "at most 1");
}

/// An HTTP monitor on the pool, one backend overriding the port.
const MONITORED: &str = r#"[edge]
name = "edge-a"
interfaces = ["eth0"]
tunnel_source_v4 = "192.0.2.10"

[[vip]]
name = "web"
address = "203.0.113.10"
port = 80
protocol = "tcp"
pools = ["p"]

[[pool]]
name = "p"
backends = [
    { address = "198.51.100.1" },
    { address = "198.51.100.2", monitor = { port = 8081, consecutive_down = 5 } },
]
[pool.monitor]
protocol = "http"
path = "/health"
expected_codes = "200,204"
host = "example.com"
interval_ms = 2000
"#;

#[test]
fn monitor_merge() {
    let config = parse_str(MONITORED).unwrap();
    let pool = &config.pools[0];
    let base = Monitor {
        protocol: MonitorProtocol::Http,
        port: 80,
        path: "/health".into(),
        expected_codes: "200,204".parse().unwrap(),
        host: Some("example.com".into()),
        tls_verify: false,
        interval_ms: 2000,
        timeout_ms: 500,
        consecutive_up: 2,
        consecutive_down: 3,
    };
    assert_eq!(pool.backends[0].monitor, base);
    let overridden = Monitor { port: 8081, consecutive_down: 5, ..base.clone() };
    assert_eq!(pool.backends[1].monitor, overridden);
    assert_eq!(base.worst_case_failover_ms(), 4 * 2000 + 500);
    assert_eq!(overridden.worst_case_failover_ms(), 6 * 2000 + 500);

    let monitors: Vec<(IpAddr, Monitor)> = config.monitored_backends().into_iter().collect();
    assert_eq!(
        monitors,
        vec![("198.51.100.1".parse().unwrap(), base.clone()), ("198.51.100.2".parse().unwrap(), overridden)]
    );

    // A backend can switch protocol: keys that do not apply are dropped.
    let tcp = MONITORED
        .replace("monitor = { port = 8081, consecutive_down = 5 }", "monitor = { protocol = \"tcp\", port = 22 }");
    let config = parse_str(&tcp).unwrap();
    let tcp_monitor = &config.pools[0].backends[1].monitor;
    assert_eq!(
        *tcp_monitor,
        Monitor { protocol: MonitorProtocol::Tcp, port: 22, interval_ms: 2000, ..Monitor::default() }
    );
    // ... or turn monitoring off.
    let none =
        MONITORED.replace("monitor = { port = 8081, consecutive_down = 5 }", "monitor = { protocol = \"none\" }");
    assert_eq!(parse_str(&none).unwrap().pools[0].backends[1].monitor, Monitor::default());

    // HTTPS defaults to port 443 and may verify certificates.
    let https = MONITORED.replace("protocol = \"http\"", "protocol = \"https\"\ntls_verify = true");
    let config = parse_str(&https).unwrap();
    let monitor = &config.pools[0].backends[0].monitor;
    assert_eq!((monitor.protocol, monitor.port, monitor.tls_verify), (MonitorProtocol::Https, 443, true));

    // The JSON uses the file's spelling.
    let json = serde_json::to_value(parse_str(MONITORED).unwrap()).unwrap();
    let monitor = &json["pools"][0]["backends"][0]["monitor"];
    assert_eq!(monitor["protocol"], "http");
    assert_eq!(monitor["expected_codes"], "200,204");
}

#[test]
fn monitor_table_forms_are_equivalent() {
    let table = pool_with("[pool.monitor]\nprotocol = \"tcp\"\nport = 80\ninterval_ms = 250\ntimeout_ms = 200\n");
    let inline = pool_with("monitor = { protocol = \"tcp\", port = 80, interval_ms = 250, timeout_ms = 200 }\n");
    let config = parse_str(&table).unwrap();
    assert_eq!(config, parse_str(&inline).unwrap());
    let monitor = &config.pools[0].backends[0].monitor;
    assert_eq!(
        (monitor.protocol, monitor.port, monitor.interval_ms, monitor.timeout_ms),
        (MonitorProtocol::Tcp, 80, 250, 200)
    );
    // [[pool.backends]] tables take a [pool.backends.monitor] table.
    let tables = minimal_with(
        15,
        "[[pool.backends]]\naddress = \"198.51.100.1\"\n[pool.backends.monitor]\nprotocol = \"tcp\"\nport = 81",
    );
    assert_eq!(parse_str(&tables).unwrap().pools[0].backends[0].monitor.port, 81);
}

#[test]
fn monitor_checks() {
    let monitor = |keys: &str| pool_with(&format!("[pool.monitor]\nprotocol = \"http\"\n{keys}\n"));
    refused(
        &monitor("interval_ms = -5 # here"),
        "pool \"p\": monitor.interval_ms must be a positive integer (1 to 3600000), not -5",
    );
    refused(&monitor("interval_ms = 0 # here"), "monitor.interval_ms must be at least 1, not 0");
    refused(&monitor("interval_ms = 3600001 # here"), "monitor.interval_ms must be at most 3600000");
    refused(&monitor("consecutive_down = 0 # here"), "monitor.consecutive_down must be at least 1, not 0");
    refused(&monitor("consecutive_up = -1 # here"), "monitor.consecutive_up must be a positive integer, not -1");
    refused(&monitor("port = 0 # here"), "monitor.port must be at least 1");
    refused(&monitor("port = 70000 # here"), "monitor.port must be at most 65535");
    refused(&monitor("interval_ms = 1.5 # here"), "expected an integer");
    refused(
        &monitor("timeout_ms = 1500 # here"),
        "pool \"p\": monitor.timeout_ms (1500) is longer than monitor.interval_ms (1000, the default)",
    );
    refused(
        &monitor("interval_ms = 100 # here"),
        "monitor.timeout_ms (500, the default) is longer than monitor.interval_ms (100)",
    );
    // Both written in one table: the timeout is pointed at.
    refused(&monitor("timeout_ms = 300 # here\ninterval_ms = 200"), "monitor.timeout_ms (300) is longer");
    refused(
        &monitor("expected_codes = \"2xx,abc\" # here"),
        "monitor.expected_codes \"2xx,abc\": \"abc\" is not a status code",
    );
    refused(&monitor("expected_codes = \"600\" # here"), "600 is not an HTTP status code");
    refused(&monitor("expected_codes = \"299-200\" # here"), "backwards (write 200-299)");
    refused(&monitor("expected_codes = \"200,,204\" # here"), "an entry is empty");
    refused(&monitor("expected_codes = \"\" # here"), "must not be empty");
    refused(&monitor("path = \"health\" # here"), "monitor.path must start with '/', like \"/health\", not \"health\"");
    refused(&monitor("path = \"/he alth\" # here"), "printable ASCII, without spaces");
    refused(&monitor("host = \"\" # here"), "monitor.host \"\" is not a host name: it is empty");
    refused(&monitor("host = \"example.com/x\" # here"), "contains '/'");
    refused(
        &monitor("tls_verify = true # here"),
        "monitor.tls_verify applies only to https monitors, and this one is http",
    );
    refused(&monitor("tls_verify = \"yes\" # here"), "expected a boolean");
    refused(&monitor("retries = 3 # here"), "unknown field `retries`");
    refused(&pool_with("[pool.monitor]\nprotocol = \"icmp\" # here\n"), "icmp");

    // Keys that a protocol would ignore are refused.
    let tcp = |keys: &str| pool_with(&format!("[pool.monitor]\nprotocol = \"tcp\"\nport = 22\n{keys}\n"));
    refused(&tcp("path = \"/\" # here"), "monitor.path applies only to http and https monitors, and this one is tcp");
    refused(&tcp("expected_codes = \"2xx\" # here"), "applies only to http and https");
    refused(&pool_with("[pool.monitor]\nprotocol = \"none\"\ninterval_ms = 100 # here\n"), "has no effect");
    // TCP has no default port.
    refused(&pool_with("[pool.monitor] \nprotocol = \"tcp\" # here\n"), "pool \"p\": a tcp monitor needs a port");
    // A pool's monitor names its protocol.
    refused(&pool_with("[pool.monitor] # here\nport = 80\n"), "the monitor must set protocol");
    refused(&pool_with("monitor = { port = 80 } # here\n"), "the monitor must set protocol");
    refused(&pool_with("[pool.monitor]\nprotocol = \"http\"\npath = [\"/\"] # here\n"), "expected a string");
}

#[test]
fn backend_monitor_checks() {
    let backend = |monitor: &str| {
        minimal_with(15, &format!("backends = [ {{ address = \"198.51.100.1\", monitor = {{ {monitor} }} }} ] # here"))
    };
    // Overrides are checked like the pool's keys...
    refused(
        &backend("protocol = \"tcp\", port = -1"),
        "backend 198.51.100.1 (pool \"p\"): monitor.port must be a positive integer (1 to 65535), not -1",
    );
    refused(&backend("protocol = \"http\", path = \"x\""), "must start with '/'");
    // ... and need a protocol from somewhere.
    refused(&backend("port = 8081"), "the monitor sets no protocol, and pool \"p\" has no monitor");
    refused(&backend("protocol = \"tcp\""), "backend 198.51.100.1 (pool \"p\"): a tcp monitor needs a port");
    parse_str(&backend("protocol = \"none\"")).unwrap();
    refused(
        &backend("protocol = \"none\", port = 80"),
        "monitor.port has no effect: the monitor's protocol is \"none\"",
    );
    refused(&backend("protocol = \"tcp\", port = 80, host = \"x\""), "monitor.host applies only to http and https");

    // Against the pool's monitor.
    let text = |monitor: &str, pool_monitor: &str| backend(monitor) + &format!("[pool.monitor]\n{pool_monitor}\n");
    refused(
        &text("path = \"/x\"", "protocol = \"tcp\"\nport = 22"),
        "monitor.path applies only to http and https monitors, and this one is tcp (from pool \"p\"'s monitor)",
    );
    refused(
        &text("interval_ms = 100", "protocol = \"tcp\"\nport = 22"),
        "monitor.timeout_ms (500, the default) is longer than monitor.interval_ms (100)",
    );
    refused(
        &text("timeout_ms = 800", "protocol = \"tcp\"\nport = 22\ninterval_ms = 600"),
        "monitor.timeout_ms (800) is longer than monitor.interval_ms (600, from pool \"p\"'s monitor)",
    );
    // The pool's tcp monitor without a port: each backend must give one.
    parse_str(&text("port = 22", "protocol = \"tcp\"")).unwrap();
    let text = minimal_with(
        15,
        "backends = [ { address = \"198.51.100.1\", monitor = { port = 22 } }, { address = \"198.51.100.2\" } ]\n[pool.monitor]\nprotocol = \"tcp\" # here",
    );
    refused(&text, "pool \"p\": a tcp monitor needs a port");
}

#[test]
fn an_address_has_one_monitor() {
    let two_pools = |q_monitor: &str| {
        pool_with("monitor = { protocol = \"tcp\", port = 80 }\n")
            + &format!("[[pool]]\nname = \"q\"\nbackends = [ {{ address = \"198.51.100.1\" }} ] # here\n{q_monitor}\n")
    };
    // The same monitor written in two places is fine.
    let config = parse_str(&two_pools("monitor = { protocol = \"tcp\", port = 80 }")).unwrap();
    assert_eq!(config.monitored_backends().len(), 1);
    let err = refused(
        &two_pools("monitor = { protocol = \"tcp\", port = 81 }"),
        "backend 198.51.100.1 is monitored differently in pools \"p\" (line 15) and \"q\": port is 80 in \"p\" and 81 in \"q\"",
    );
    assert_eq!(err.column, 26);
    refused(&two_pools(""), "protocol is tcp in \"p\" and none in \"q\"");
}

#[test]
fn expected_codes() {
    let codes = |s: &str| s.parse::<ExpectedCodes>().unwrap();
    for (text, canonical) in [
        ("2xx", "2xx"),
        ("2XX", "2xx"),
        ("200", "200"),
        ("200,204", "200,204"),
        ("204, 200", "200,204"),
        ("200-299", "2xx"),
        ("200-399", "2xx,3xx"),
        ("2xx,301", "2xx,301"),
        ("301,2xx,200", "2xx,301"),
        ("200-250,240-260", "200-260"),
        ("200-299,300", "200-300"),
        ("100-599", "1xx,2xx,3xx,4xx,5xx"),
    ] {
        let parsed = codes(text);
        assert_eq!(parsed.to_string(), canonical, "{text}");
        assert_eq!(codes(canonical), parsed, "{text}");
    }
    let mixed = codes("2xx,301");
    assert!(mixed.matches(200) && mixed.matches(299) && mixed.matches(301));
    assert!(!mixed.matches(300) && !mixed.matches(302) && !mixed.matches(199) && !mixed.matches(404));
    assert_eq!(ExpectedCodes::default(), codes("2xx"));
    assert_eq!(codes("204-206").ranges(), &[(204, 206)]);
    for bad in ["", "6xx", "0xx", "x", "20", "2000", "abc", "200-", "-200", "099", "200,", "2xx-3xx"] {
        assert!(bad.parse::<ExpectedCodes>().is_err(), "{bad:?} accepted");
    }
    assert_eq!(serde_json::to_value(codes("204,200")).unwrap(), "200,204");
}

#[test]
fn prefixes() {
    let p = |s: &str| s.parse::<Prefix>().unwrap();
    let v4 = p("198.51.100.0/24");
    assert_eq!((v4.address, v4.len), ("198.51.100.0".parse().unwrap(), 24));
    assert_eq!(v4.to_string(), "198.51.100.0/24");
    assert!(v4.contains("198.51.100.255".parse().unwrap()));
    assert!(!v4.contains("198.51.101.0".parse().unwrap()));
    assert!(!v4.contains("::".parse().unwrap()));
    assert!(p("0.0.0.0/0").contains("203.0.113.1".parse().unwrap()));
    assert!(p("192.0.2.1/32").contains("192.0.2.1".parse().unwrap()));
    let v6 = p("2001:db8::/32");
    assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
    assert!(!v6.contains("2001:db9::1".parse().unwrap()));
    assert!(!v6.contains("198.51.100.1".parse().unwrap()));
    assert!(p("::/0").contains("2001:db8::1".parse().unwrap()));
    assert_eq!(p("2001:db8::1/128").to_string(), "2001:db8::1/128");
    assert_eq!(Prefix::new("198.51.100.7".parse().unwrap(), 24), Some(v4));
    assert_eq!(Prefix::new("198.51.100.7".parse().unwrap(), 33), None);

    assert_eq!("198.51.100.7/24".parse::<Prefix>(), Err(PrefixError::HostBits { suggestion: v4 }));
    assert_eq!("198.51.100.0/33".parse::<Prefix>(), Err(PrefixError::TooLong { max: 32 }));
    assert_eq!("2001:db8::/129".parse::<Prefix>(), Err(PrefixError::TooLong { max: 128 }));
    assert_eq!("198.51.100.0/300".parse::<Prefix>(), Err(PrefixError::TooLong { max: 32 }));
    for bad in [
        "198.51.100.0",
        "198.51.100.0/",
        "198.51.100.0/x",
        "198.51.100/24",
        "/24",
        "198.51.100.0/+24",
        "198.51.100.0/ 24",
    ] {
        assert_eq!(bad.parse::<Prefix>(), Err(PrefixError::Syntax), "{bad:?}");
    }
    assert_eq!(serde_json::to_value(v4).unwrap(), "198.51.100.0/24");
}

/// Three pools: p (MINIMAL's), q and last; v6 has an IPv6 backend.
fn policies(vip_extra: &str) -> String {
    vip_with(vip_extra)
        + "[[pool]]\nname = \"q\"\nbackends = [ { address = \"198.51.100.2\" }, { address = \"198.51.100.3\" } ]\n"
        + "[[pool]]\nname = \"last\"\nbackends = [ { address = \"198.51.100.9\" } ]\n"
        + "[[pool]]\nname = \"v6\"\nbackends = [ { address = \"2001:db8:2::1\" } ]\n"
        + "[[pool]]\nname = \"zero\"\nweight = 0\nbackends = [ { address = \"198.51.100.8\" } ]\n"
}

#[test]
fn failover_and_fallback() {
    let text = policies("policy = \"failover\"\nfallback_pool = \"last\"\nmax_unhealthy_fraction = 0.25")
        .replace("pools = [\"p\"]", "pools = [\"q\", \"p\"]");
    let config = parse_str(&text).unwrap();
    let vip = &config.vips[0];
    assert_eq!(vip.policy, Policy::Failover);
    assert_eq!((vip.min_healthy, vip.fallback_pool.as_deref(), vip.max_unhealthy_fraction), (1, Some("last"), 0.25));
    assert_eq!(serde_json::to_value(vip).unwrap()["policy"], "failover");
    // min_healthy up to the smallest pool's size.
    parse_str(&text.replace("policy = \"failover\"", "policy = \"failover\"\nmin_healthy = 1")).unwrap();
    let text2 = policies("policy = \"failover\"\nmin_healthy = 2 # here").replace("pools = [\"p\"]", "pools = [\"q\"]");
    assert_eq!(parse_str(&text2).unwrap().vips[0].min_healthy, 2);
    // The fallback pool may also be listed.
    parse_str(&policies("fallback_pool = \"p\"")).unwrap();

    refused(&policies("min_healthy = 2 # here"), "VIP \"web\": min_healthy only applies to policy = \"failover\"");
    refused(&policies("policy = \"failover\"\nmin_healthy = 0 # here"), "min_healthy must be at least 1, not 0");
    refused(
        &policies("policy = \"failover\"\nmin_healthy = -1 # here"),
        "min_healthy must be a positive integer, not -1",
    );
    let err = refused(
        &policies("policy = \"failover\"\nmin_healthy = 2").replace("pools = [\"p\"]", "pools = [\"q\", \"p\"] # here"),
        "pool \"p\" has 1 backend(s), fewer than VIP \"web\"'s min_healthy = 2 (line 13): failover could never choose it",
    );
    assert_eq!(err.column, 15);
    refused(&policies("policy = \"random\" # here"), "random");
    refused(
        &policies("fallback_pool = \"nope\" # here"),
        "VIP \"web\" has the fallback_pool \"nope\", but no [[pool]] has that name",
    );
    refused(&policies("fallback_pool = \"\" # here"), "fallback_pool must not be empty");
    refused(
        &policies("fallback_pool = \"zero\" # here"),
        "VIP \"web\"'s fallback_pool \"zero\" has no backend for new flows",
    );
    refused(&policies("fallback_pool = \"v6\" # here"), "edge.tunnel_source_v6 is not set");
    refused(
        &policies("max_unhealthy_fraction = 0 # here"),
        "VIP \"web\": max_unhealthy_fraction must be above 0 and at most 1, not 0",
    );
    refused(&policies("max_unhealthy_fraction = 1.01 # here"), "at most 1");
    parse_str(&policies("max_unhealthy_fraction = 1")).unwrap();
}

#[test]
fn steer_rules() {
    let text = policies(
        "[[vip.steer]]\nclient_prefix = \"198.51.100.0/24\"\npools = [\"q\"]\n\
         [[vip.steer]]\nclient_prefix = \"198.51.100.128/25\"\npools = [\"last\", \"p\"]\n",
    );
    let config = parse_str(&text).unwrap();
    let vip = &config.vips[0];
    assert_eq!(
        vip.steer,
        vec![
            SteerRule { client_prefix: "198.51.100.0/24".parse().unwrap(), pools: vec!["q".into()] },
            SteerRule { client_prefix: "198.51.100.128/25".parse().unwrap(), pools: vec!["last".into(), "p".into()] },
        ]
    );
    // The longest prefix wins.
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(vip.pools_for(ip("198.51.100.200")), ["last", "p"]);
    assert_eq!(vip.pools_for(ip("198.51.100.1")), ["q"]);
    assert_eq!(vip.pools_for(ip("203.0.113.1")), ["p"]);
    assert_eq!(vip.steer_rule(ip("198.51.100.1")).unwrap().client_prefix.len, 24);
    assert_eq!(serde_json::to_value(vip).unwrap()["steer"][0]["client_prefix"], "198.51.100.0/24");
    // Inline form.
    let inline = policies("steer = [ { client_prefix = \"198.51.100.0/24\", pools = [\"q\"] } ]");
    assert_eq!(parse_str(&inline).unwrap().vips[0].steer.len(), 1);

    let rule = |prefix: &str, pools: &str| {
        policies(&format!("[[vip.steer]]\nclient_prefix = \"{prefix}\"\npools = {pools}\n"))
    };
    refused(
        &rule("198.51.100.0/24", "[\"q\", \"nope\"] # here"),
        "VIP \"web\" steers 198.51.100.0/24 to pool \"nope\", but no [[pool]] has that name",
    );
    refused(
        &rule("198.51.100.0/24", "[\"q\", \"q\"] # here"),
        "pool \"q\" is listed twice by VIP \"web\"'s steer rule for 198.51.100.0/24",
    );
    refused(&rule("198.51.100.0/24", "[] # here"), "the steer rule for 198.51.100.0/24 must list at least one pool");
    refused(
        &rule("198.51.100.0/24", "[\"zero\"] # here"),
        "VIP \"web\"'s steer rule for 198.51.100.0/24 would have no backend for new flows",
    );
    refused(
        &rule("198.51.100.0/24", "[\"v6\"] # here"),
        "VIP \"web\" steers 198.51.100.0/24 to pool \"v6\", whose backend 2001:db8:2::1",
    );
    refused(
        &policies("[[vip.steer]] # here\nclient_prefix = \"198.51.100.0/24\"\n"),
        "the steer rule for 198.51.100.0/24 lists no pools",
    );
    refused(&policies("[[vip.steer]] # here\npools = [\"q\"]\n"), "missing field `client_prefix`");
    refused(
        &policies("[[vip.steer]]\nclient_prefix = \"198.51.100.0/24\"\npools = [\"q\"]\nweight = 1 # here\n"),
        "unknown field `weight`",
    );
    refused(
        &policies("[vip.steer] # here\nclient_prefix = \"198.51.100.0/24\"\npools = [\"q\"]\n"),
        "[[vip.steer]] needs double brackets",
    );

    // Prefixes.
    let prefix = |p: &str| policies(&format!("[[vip.steer]]\nclient_prefix = \"{p}\" # here\npools = [\"q\"]\n"));
    refused(
        &prefix("198.51.100.7/24"),
        "client_prefix \"198.51.100.7/24\" has bits set past its length /24: did you mean 198.51.100.0/24?",
    );
    refused(&prefix("198.51.100.0/33"), "the length of an IPv4 prefix is at most 32");
    refused(
        &prefix("198.51.100.0"),
        "is not a prefix (the /length is missing): write address/length, like 198.51.100.0/24",
    );
    refused(&prefix("198.51.100/24"), "is not a prefix: write address/length");
    refused(&prefix("2001:db8::/32"), "client_prefix 2001:db8::/32 is IPv6 but VIP \"web\" (203.0.113.10) is IPv4");
    let two = |second: &str| {
        policies(&format!(
            "[[vip.steer]]\nclient_prefix = \"198.51.100.0/24\"\npools = [\"q\"]\n\
             [[vip.steer]]\nclient_prefix = \"{second}\" # here\npools = [\"p\"]\n"
        ))
    };
    let err = refused(
        &two("198.51.100.0/24"),
        "VIP \"web\" already has a steer rule for 198.51.100.0/24 (line 13): each prefix may appear once per VIP",
    );
    assert!(err.message.contains("only when they are identical"), "{err}");
    // Prefixes of different lengths may overlap, even on the same network.
    parse_str(&two("198.51.100.0/25")).unwrap();
    parse_str(&two("198.51.0.0/16")).unwrap();
}

#[test]
fn ipv6_steer_rules() {
    // An IPv6 VIP with pools v6 and v6b; `rule` is its steer rule.
    let v6 = |rule: &str| {
        minimal_with(8, "address = \"2001:db8:1::80\"")
            .replace(
                "tunnel_source_v4 = \"192.0.2.10\"",
                "tunnel_source_v4 = \"192.0.2.10\"\ntunnel_source_v6 = \"2001:db8::10\"",
            )
            .replace("pools = [\"p\"]", &format!("pools = [\"v6\"]\n[[vip.steer]]\n{rule}"))
            + "[[pool]]\nname = \"v6\"\nbackends = [ { address = \"2001:db8:2::1\" } ]\n"
            + "[[pool]]\nname = \"v6b\"\nbackends = [ { address = \"2001:db8:3::1\" } ]\n"
    };
    let config = parse_str(&v6("client_prefix = \"2001:db8:abcd::/48\"\npools = [\"v6b\"]")).unwrap();
    assert_eq!(config.vips[0].steer[0].client_prefix.to_string(), "2001:db8:abcd::/48");
    refused(
        &v6("client_prefix = \"2001:db8:abcd::1/48\" # here\npools = [\"v6b\"]"),
        "did you mean 2001:db8:abcd::/48?",
    );
    refused(&v6("client_prefix = \"2001:db8::/129\" # here\npools = [\"v6b\"]"), "IPv6 prefix is at most 128");
    refused(
        &v6("client_prefix = \"198.51.100.0/24\" # here\npools = [\"v6b\"]"),
        "client_prefix 198.51.100.0/24 is IPv4 but VIP \"web\" (2001:db8:1::80) is IPv6",
    );
    refused(
        &v6("client_prefix = \"2001:db8:abcd::/48\"\npools = [\"p\"] # here"),
        "VIP \"web\" is IPv6 but pool \"p\" has the IPv4 backend 198.51.100.1",
    );
    refused(&v6("client_prefix = \"::ffff:198.51.100.0/120\" # here\npools = [\"v6b\"]"), "IPv4-mapped");
}

/// The first TOML block of `docs/configuration.md`.
fn documented_example() -> String {
    let doc = include_str!("../../../docs/configuration.md");
    let start = doc.find("```toml\n").expect("the doc has a TOML example") + "```toml\n".len();
    let end = start + doc[start..].find("```").unwrap();
    doc[start..end].to_string()
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
}

#[test]
fn documented_error_is_real() {
    let text = documented_example().replace("pools = [\"eu-west-v6\"]", "pools = [\"us-east\"]");
    let err = parse_str(&text).unwrap_err();
    let doc = include_str!("../../../docs/configuration.md");
    assert!(doc.contains(&err.to_string()), "the doc should show: {err}");
}

#[test]
fn bgp_is_optional_and_off_by_default() {
    let config = parse_str(MINIMAL).unwrap();
    assert_eq!(config.bgp, Bgp::default());
    assert_eq!(config.bgp.daemon, BgpDaemon::None);
    assert_eq!(config.bgp.drain, DrainStyle::GracefulShutdown);
    assert!(config.bgp.keep_on_total_failure);
}

#[test]
fn bgp_section_with_every_key() {
    let text = format!(
        "{MINIMAL}\n[bgp]\ndaemon = \"bird\"\nbird_socket = \"/run/bird/edge.ctl\"\nbird_include = \"/etc/bird/gslb-vips.conf\"\n\
         gobgp_api = \"127.0.0.1:50052\"\nannounce_after_ms = 1000\nwithdraw_after_ms = 100\ndrain = \"prepend\"\n\
         drain_wait_ms = 3000\nkeep_on_total_failure = false\nlocal_as = 65001\nprepend_count = 2\ndrain_med = 50\n"
    );
    let bgp = parse_str(&text).unwrap().bgp;
    assert_eq!(
        bgp,
        Bgp {
            daemon: BgpDaemon::Bird,
            bird_socket: "/run/bird/edge.ctl".into(),
            bird_include: Some("/etc/bird/gslb-vips.conf".into()),
            gobgp_api: "127.0.0.1:50052".parse().unwrap(),
            announce_after_ms: 1000,
            withdraw_after_ms: 100,
            drain: DrainStyle::Prepend,
            drain_wait_ms: 3000,
            keep_on_total_failure: false,
            local_as: Some(65001),
            prepend_count: 2,
            drain_med: 50,
        }
    );
    let gobgp = parse_str(&format!("{MINIMAL}\n[bgp]\ndaemon = \"gobgp\"\ndrain = \"med\"\n")).unwrap().bgp;
    assert_eq!(
        (gobgp.daemon, gobgp.gobgp_api.to_string(), gobgp.drain),
        (BgpDaemon::Gobgp, DEFAULT_GOBGP_API.into(), DrainStyle::Med)
    );
}

#[test]
fn bgp_errors_are_located() {
    let bgp = |body: &str| format!("{MINIMAL}\n[bgp]\n{body}\n");
    refused(&bgp("daemon = \"quagga\" # here"), "unknown variant `quagga`");
    let err = parse_str(&bgp("daemon = \"bird\"")).unwrap_err();
    assert!(err.message.contains("bgp.bird_include is required"), "{err}");
    assert_eq!(err.line, MINIMAL.lines().count() + 2);
    refused(&bgp("daemon = \"bird\"\nbird_include = \"gslb.conf\" # here"), "must be an absolute path");
    refused(&bgp("gobgp_api = \"localhost\" # here"), "is not an address and port");
    refused(&bgp("gobgp_api = \"127.0.0.1:0\" # here"), "port other than 0");
    refused(&bgp("announce_after_ms = -1 # here"), "bgp.announce_after_ms must be a non-negative integer");
    refused(&bgp("withdraw_after_ms = 4000000 # here"), "at most 3600000");
    refused(&bgp("drain = \"shout\" # here"), "unknown variant `shout`");
    refused(&bgp("daemon = \"gobgp\"\ndrain = \"prepend\" # here"), "needs bgp.local_as");
    refused(&bgp("local_as = 0 # here"), "bgp.local_as must be at least 1");
    refused(&bgp("prepend_count = 11 # here"), "at most 10");
    refused(&bgp("keep_on_total_failure = \"yes\" # here"), "invalid type");
    refused(&bgp("announce_after = 5 # here"), "unknown field `announce_after`");
}

#[test]
fn documented_bgp_example_is_valid() {
    let doc = include_str!("../../../docs/configuration.md");
    let start = doc.find("```\n[bgp]\n").expect("the doc has a [bgp] example") + "```\n".len();
    let end = start + doc[start..].find("```").unwrap();
    let bgp = parse_str(&format!("{MINIMAL}\n{}", &doc[start..end])).unwrap().bgp;
    assert_eq!((bgp.daemon, bgp.drain, bgp.local_as), (BgpDaemon::Bird, DrainStyle::Prepend, Some(65001)));
    // Every key of the section is in the doc's table.
    for key in [
        "daemon",
        "bird_socket",
        "bird_include",
        "gobgp_api",
        "announce_after_ms",
        "withdraw_after_ms",
        "drain",
        "drain_wait_ms",
        "keep_on_total_failure",
        "local_as",
        "prepend_count",
        "drain_med",
    ] {
        assert!(doc.contains(&format!("| `{key}` |")), "docs/configuration.md does not describe bgp.{key}");
    }
}
