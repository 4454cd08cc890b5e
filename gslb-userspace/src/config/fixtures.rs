//! Configs and helpers the tests share: the full and the smallest valid
//! file, variants of them, and the check that an error names the marked line.

use std::path::{Path, PathBuf};

use crate::config::{parse, Config, ConfigError};

pub(crate) const FILE: &str = "/etc/gslb/gslb.toml";

pub(crate) const FULL: &str = r#"
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

/// An `[edge]` section with only the required keys, for tests that bring
/// their own VIPs and pools.
pub(crate) const EDGE: &str = "[edge]\nname = \"edge-a\"\ninterfaces = [\"eth0\"]\ntunnel_source_v4 = \"192.0.2.10\"\n";

/// The smallest valid file; tests append sections or replace lines.
pub(crate) const MINIMAL: &str = r#"[edge]
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

pub(crate) fn parse_str(text: &str) -> Result<Config, ConfigError> {
    parse(text, Path::new(FILE))
}

/// Parses `text`, which must be refused at the line marked `# here`, with a
/// message containing `needle`; returns the error.
#[track_caller]
pub(crate) fn refused(text: &str, needle: &str) -> ConfigError {
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
pub(crate) fn minimal_with(line: usize, with: &str) -> String {
    let mut lines: Vec<&str> = MINIMAL.lines().collect();
    lines[line - 1] = with;
    lines.join("\n") + "\n"
}

/// `MINIMAL` with `extra` appended to its `[[pool]]` table (the last one).
pub(crate) fn pool_with(extra: &str) -> String {
    MINIMAL.to_string() + extra
}

/// `MINIMAL` with `extra` added to its `[[vip]]` table.
pub(crate) fn vip_with(extra: &str) -> String {
    minimal_with(11, &format!("pools = [\"p\"]\n{extra}"))
}

/// `MINIMAL` with an HTTP monitor on the pool, one backend overriding the
/// port.
pub(crate) fn monitored() -> String {
    minimal_with(
        15,
        r#"backends = [
    { address = "198.51.100.1" },
    { address = "198.51.100.2", monitor = { port = 8081, consecutive_down = 5 } },
]
[pool.monitor]
protocol = "http"
path = "/health"
expected_codes = "200,204"
host = "example.com"
interval_ms = 2000"#,
    )
}

/// Three pools: p (MINIMAL's), q and last; v6 has an IPv6 backend.
pub(crate) fn policies(vip_extra: &str) -> String {
    vip_with(vip_extra)
        + "[[pool]]\nname = \"q\"\nbackends = [ { address = \"198.51.100.2\" }, { address = \"198.51.100.3\" } ]\n"
        + "[[pool]]\nname = \"last\"\nbackends = [ { address = \"198.51.100.9\" } ]\n"
        + "[[pool]]\nname = \"v6\"\nbackends = [ { address = \"2001:db8:2::1\" } ]\n"
        + "[[pool]]\nname = \"zero\"\nweight = 0\nbackends = [ { address = \"198.51.100.8\" } ]\n"
}

/// The first TOML block of `docs/configuration.md`.
pub(crate) fn documented_example() -> String {
    let doc = include_str!("../../../docs/configuration.md");
    let start = doc.find("```toml\n").expect("the doc has a TOML example") + "```toml\n".len();
    let end = start + doc[start..].find("```").unwrap();
    doc[start..end].to_string()
}
