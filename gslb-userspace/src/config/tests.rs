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
            },
            Vip {
                name: "dns".into(),
                address: "2001:db8:1::53".parse().unwrap(),
                port: 0,
                protocol: Protocol::Udp,
                affinity: Affinity::SourceIp,
                pools: vec!["v6".into()],
                policy: Policy::Weighted,
            },
        ]
    );
    let b = |a: &str, weight| BackendConfig { address: a.parse().unwrap(), weight };
    assert_eq!(
        config.pools,
        vec![
            Pool { name: "us-east".into(), weight: 100, backends: vec![b("198.51.100.1", 100), b("198.51.100.2", 50)] },
            Pool { name: "eu-west".into(), weight: 0, backends: vec![b("198.51.100.1", 100), b("2001:db8:2::1", 0)] },
            Pool { name: "v6".into(), weight: 100, backends: vec![b("2001:db8:2::1", 100)] },
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
    refused(&(MINIMAL.to_string() + "[bgp] # here\nasn = 1\n"), "unknown field `bgp`");
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
    assert_eq!(config.vips.len(), 2);
    let web = &config.vips[0];
    // The shares in the doc's weight table.
    let weights: Vec<u64> = config.effective_weights(web).into_values().collect();
    assert_eq!(weights, vec![10000, 5000, 5000, 5000]);
}

#[test]
fn documented_error_is_real() {
    let text = documented_example().replace("pools = [\"eu-west-v6\"]", "pools = [\"us-east\"]");
    let err = parse_str(&text).unwrap_err();
    let doc = include_str!("../../../docs/configuration.md");
    assert!(doc.contains(&err.to_string()), "the doc should show: {err}");
}
