//! The agent's configuration file (TOML): parsing and validation.
//!
//! `load` / `parse` turn the file into a [`Config`] of plain values, or
//! refuse it with a [`ConfigError`] naming the file, line and column of the
//! offending value. The file format is the public contract and is described
//! for operators in `docs/configuration.md`; keep the two in step.
//!
//! Layout: `raw` holds the serde structs that mirror the file (one per
//! section, every value `Spanned`); `validate` checks them, one file per
//! section (`validate/edge.rs`, `vip.rs`, `pool.rs`, `monitor.rs`,
//! `bgp.rs`, with the single-value checks they share in `values.rs`), each
//! with its tests, and builds the types below; `monitor` (health monitors,
//! expected HTTP codes) and `prefix` (client prefixes) hold the value types
//! that have their own parsing; `limits` the map sizes. `fixtures` holds the
//! configs every test module shares; `tests` the whole-file tests.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[cfg(test)]
pub(crate) mod fixtures;
mod limits;
mod monitor;
mod prefix;
mod raw;
#[cfg(test)]
mod tests;
mod validate;

pub use limits::Limits;

pub use monitor::{
    ExpectedCodes, Monitor, MonitorProtocol, DEFAULT_CONSECUTIVE_DOWN, DEFAULT_CONSECUTIVE_UP,
    DEFAULT_MONITOR_INTERVAL_MS, DEFAULT_MONITOR_PATH, DEFAULT_MONITOR_TIMEOUT_MS, MAX_MONITOR_INTERVAL_MS,
};
pub use prefix::{Prefix, PrefixError};

/// Default `edge.admin_socket`.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/gslb/gslb.sock";
/// Default `edge.bpffs_pin`.
pub const DEFAULT_BPFFS_PIN: &str = "/sys/fs/bpf/gslb";
/// Default `edge.max_flows`.
pub const DEFAULT_MAX_FLOWS: u32 = 1 << 20;
/// Default `edge.max_backends`.
pub const DEFAULT_MAX_BACKENDS: u32 = 4096;
/// Default `edge.max_vips`.
pub const DEFAULT_MAX_VIPS: u32 = 64;
/// Default `edge.table_size`.
pub const DEFAULT_TABLE_SIZE: u32 = gslb_common::DEFAULT_TABLE_SIZE;
/// Default pool and backend weight.
pub const DEFAULT_WEIGHT: u32 = 100;
/// Largest pool or backend weight.
pub const MAX_WEIGHT: u32 = 10_000;
/// Default `edge.metrics_listen`.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9477";
/// Default `edge.stickiness_window`.
pub const DEFAULT_STICKINESS_WINDOW: &str = "6h";
/// `edge.stickiness_window` must be shorter than this many days (it is kept
/// in seconds in a `u32`, and compared with a boot clock in seconds).
pub const MAX_STICKINESS_WINDOW_DAYS: u64 = 45;
/// Default `edge.gue_port`.
pub const DEFAULT_GUE_PORT: u16 = gslb_common::DEFAULT_GUE_PORT;
/// Default `pool.max_utilization`.
pub const DEFAULT_MAX_UTILIZATION: f64 = 0.75;
/// Default `vip.min_healthy`.
pub const DEFAULT_MIN_HEALTHY: u32 = 1;
/// Default `vip.max_unhealthy_fraction`.
pub const DEFAULT_MAX_UNHEALTHY_FRACTION: f64 = 0.5;
/// Default `bgp.bird_socket`.
pub const DEFAULT_BIRD_SOCKET: &str = "/run/bird/bird.ctl";
/// Default `bgp.gobgp_api`.
pub const DEFAULT_GOBGP_API: &str = "127.0.0.1:50051";
/// Default `bgp.announce_after_ms`.
pub const DEFAULT_ANNOUNCE_AFTER_MS: u32 = 2000;
/// Default `bgp.withdraw_after_ms`.
pub const DEFAULT_WITHDRAW_AFTER_MS: u32 = 300;
/// Default `bgp.drain_wait_ms`.
pub const DEFAULT_DRAIN_WAIT_MS: u32 = 5000;
/// Default `bgp.prepend_count`.
pub const DEFAULT_PREPEND_COUNT: u32 = 3;
/// Default `bgp.drain_med`.
pub const DEFAULT_DRAIN_MED: u32 = 1000;

/// A validated configuration. VIPs and pools are in file order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub edge: Edge,
    pub vips: Vec<Vip>,
    pub pools: Vec<Pool>,
    /// `[bgp]`; `daemon = None` when the section is absent.
    pub bgp: Bgp,
    /// `[fleet]`: VIPs and pools come from the fleet document in etcd, and
    /// health verdicts are shared. `None`: this file is the whole config.
    pub fleet: Option<Fleet>,
}

/// Default `fleet.prefix`.
pub const DEFAULT_FLEET_PREFIX: &str = "/gslb";
/// Default `fleet.group`.
pub const DEFAULT_FLEET_GROUP: &str = "default";
/// Default `fleet.lease_ttl`.
pub const DEFAULT_FLEET_LEASE_TTL: &str = "10s";
/// Default `fleet.health_grace`.
pub const DEFAULT_FLEET_HEALTH_GRACE: &str = "30s";
/// Where `edge.state_file` (and `fleet.state_file`) go by default, named
/// after the edge.
pub const DEFAULT_FLEET_STATE_DIR: &str = "/var/lib/gslb";

/// `[fleet]`: this edge's membership of a fleet that shares its config,
/// health verdicts and drains through etcd.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fleet {
    /// etcd client URLs (`http://` or `https://`), at least one.
    pub endpoints: Vec<String>,
    /// Every key the fleet uses starts with this (no trailing '/').
    pub prefix: String,
    /// This edge's rollout group (`gslb fleet push --canary GROUP`).
    pub group: String,
    /// TLS: the CA that signed etcd's certificates, and this edge's client
    /// certificate and key (both or neither). Absolute paths.
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// etcd user; its password is the first line of `password_file`.
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    /// The last applied fleet revision, kept for a start without etcd: the
    /// edge's one state file (`edge.state_file` names the same file).
    pub state_file: PathBuf,
    /// This edge's verdicts and report expire this long after it stops.
    pub lease_ttl_secs: u32,
    /// With etcd away this long, the edge goes by its own health checks.
    pub health_grace_secs: u32,
    /// Down-votes that take a backend out; `None`: a majority of the live
    /// edges that probe it. Never more than the edges that probe it.
    pub quorum: Option<u32>,
    /// Withdraw this edge's routes when its own checks fail more than this
    /// share of the backends the fleet sees up; `None`: never.
    pub withdraw_unreachable_share: Option<f64>,
}

/// `[bgp]`: announcing the VIPs through a local BGP daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bgp {
    pub daemon: BgpDaemon,
    /// Absolute.
    pub bird_socket: PathBuf,
    /// Absolute; always set when `daemon` is `Bird`.
    pub bird_include: Option<PathBuf>,
    pub gobgp_api: SocketAddr,
    pub announce_after_ms: u32,
    pub withdraw_after_ms: u32,
    pub drain: DrainStyle,
    pub drain_wait_ms: u32,
    /// The guard: keep announcing when every check fails at once.
    pub keep_on_total_failure: bool,
    /// This edge's AS number; always set when `drain` is `Prepend`.
    pub local_as: Option<u32>,
    /// 1..=10.
    pub prepend_count: u32,
    pub drain_med: u32,
}

impl Default for Bgp {
    fn default() -> Bgp {
        Bgp {
            daemon: BgpDaemon::None,
            bird_socket: PathBuf::from(DEFAULT_BIRD_SOCKET),
            bird_include: None,
            gobgp_api: DEFAULT_GOBGP_API.parse().expect("the default is a socket address"),
            announce_after_ms: DEFAULT_ANNOUNCE_AFTER_MS,
            withdraw_after_ms: DEFAULT_WITHDRAW_AFTER_MS,
            drain: DrainStyle::default(),
            drain_wait_ms: DEFAULT_DRAIN_WAIT_MS,
            keep_on_total_failure: true,
            local_as: None,
            prepend_count: DEFAULT_PREPEND_COUNT,
            drain_med: DEFAULT_DRAIN_MED,
        }
    }
}

/// Which BGP daemon announces the VIPs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BgpDaemon {
    /// No announcements: the VIPs are routed by other means.
    #[default]
    None,
    Bird,
    Gobgp,
}

/// How a draining edge makes its routes less preferred before withdrawing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DrainStyle {
    /// The GRACEFUL_SHUTDOWN community 65535:0 (RFC 8326).
    #[default]
    GracefulShutdown,
    /// `prepend_count` more copies of `local_as` in the AS path.
    Prepend,
    /// MED `drain_med`.
    Med,
}

/// `[edge]`: this machine and the sizes of the data plane's maps.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Edge {
    pub name: String,
    /// At least one; valid, distinct Linux interface names.
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    pub tunnel_source_v4: Ipv4Addr,
    pub tunnel_source_v6: Option<Ipv6Addr>,
    /// Absolute.
    pub admin_socket: PathBuf,
    /// Absolute.
    pub bpffs_pin: PathBuf,
    /// Flow-table entries (> 0).
    pub max_flows: u32,
    /// Backend ids run from 1 to `max_backends - 1`.
    pub max_backends: u32,
    pub max_vips: u32,
    /// Maglev slots per VIP: prime and >= `max_backends`.
    pub table_size: u32,
    /// Where the Prometheus metrics endpoint listens; port not 0.
    pub metrics_listen: SocketAddr,
    /// Second chance: how long, in seconds, a table slot's previous owners
    /// still get the slot's mid-flow packets in a hop list; 0 = off. Less
    /// than `MAX_STICKINESS_WINDOW_DAYS`.
    pub stickiness_window_secs: u32,
    /// UDP port hop-list (GUE) packets are sent to; not 0.
    pub gue_port: u16,
    /// Where the agent keeps the operator's decisions (drains, the edge
    /// drain) and, with `[fleet]`, the applied revision, for its next
    /// start. Absolute; with `[fleet]`, the same as `fleet.state_file`.
    pub state_file: PathBuf,
}

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode if the driver supports it, else generic.
    #[default]
    Auto,
    Native,
    Generic,
}

/// One `[[vip]]`: an (address, port, protocol) steered to some pools.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Vip {
    pub name: String,
    pub address: IpAddr,
    /// 0 = every port of the address.
    pub port: u16,
    pub protocol: Protocol,
    pub affinity: Affinity,
    /// Names of existing pools; at least one, none twice.
    pub pools: Vec<String>,
    pub policy: Policy,
    /// `Failover`: a pool is usable with at least this many up backends.
    /// >= 1; always 1 under `Weighted`.
    pub min_healthy: u32,
    /// An existing pool that takes the new flows when no pool the VIP
    /// would use has a backend in service and it has one (one passing its
    /// checks while the panic cap is tripped): see `decide::plan`. It may
    /// also be in `pools`; at least one of its backends has an effective
    /// weight above 0.
    pub fallback_pool: Option<String>,
    /// The panic cap: 0 < x <= 1. If health checks would take more than
    /// this fraction of the VIP's backends out at once, none are taken out
    /// (unless the fallback pool takes over).
    pub max_unhealthy_fraction: f64,
    /// Client-prefix rules, in file order; no prefix twice. A client in
    /// several prefixes follows the longest.
    pub steer: Vec<SteerRule>,
}

/// One `[[vip.steer]]`: clients in `client_prefix` use `pools` instead of the
/// VIP's `pools`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SteerRule {
    /// Same address family as the VIP.
    pub client_prefix: Prefix,
    /// Names of existing pools; at least one, none twice.
    pub pools: Vec<String>,
}

impl Vip {
    /// The steer rule for a client at `client`: the one with the longest
    /// prefix containing it, if any.
    pub fn steer_rule(&self, client: IpAddr) -> Option<&SteerRule> {
        self.steer.iter().filter(|r| r.client_prefix.contains(client)).max_by_key(|r| r.client_prefix.len)
    }

    /// The pools a client at `client` is served by, before health: its steer
    /// rule's pools, else the VIP's.
    pub fn pools_for(&self, client: IpAddr) -> &[String] {
        self.steer_rule(client).map_or(&self.pools, |r| &r.pools)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => gslb_common::proto::TCP,
            Protocol::Udp => gslb_common::proto::UDP,
        }
    }
}

/// What keeps a client on one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Affinity {
    /// The 5-tuple.
    #[default]
    Flow,
    /// The client's source address alone.
    SourceIp,
}

/// How a VIP chooses among its pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Every backend of every pool, by effective weight.
    #[default]
    Weighted,
    /// The first pool, in the listed order, with at least `min_healthy` up
    /// backends; its backends by effective weight.
    Failover,
}

/// One `[[pool]]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pool {
    pub name: String,
    /// 0..=10_000.
    pub weight: u32,
    /// At least one; no address twice.
    pub backends: Vec<BackendConfig>,
    /// The pool's latency objective in milliseconds; > 0.
    pub max_latency_ms: Option<u32>,
    /// What the pool can carry, in any unit shared by the pools; finite, > 0.
    pub capacity: Option<f64>,
    /// The fraction of `capacity` the pool should run at most: 0 < x <= 1.
    pub max_utilization: f64,
    /// The pool's backends understand hop lists (their `decap` is run with
    /// `--edge`), unless a backend says otherwise.
    pub second_chance: bool,
}

/// One backend of a pool.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackendConfig {
    pub address: IpAddr,
    /// 0..=10_000; 0 = no new flows.
    pub weight: u32,
    /// The pool's monitor with this backend's overrides.
    pub monitor: Monitor,
    /// Its `decap` understands hop lists: the backend's own
    /// `second_chance`, else its pool's. The same in every pool it is in.
    pub second_chance: bool,
}

impl Config {
    /// The pool called `name`.
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// The effective weight of each backend of `vip`'s pools: pool weight x
    /// backend weight, summed over the VIP's pools when an address is in
    /// several. Backends of weight 0 are included; unknown pool names are
    /// skipped. Validation guarantees the total fits a `u32`.
    pub fn effective_weights(&self, vip: &Vip) -> BTreeMap<IpAddr, u64> {
        effective_weights(vip.pools.iter().filter_map(|name| self.pool(name)))
    }

    /// Backends whose `decap` understands hop lists (`second_chance`).
    pub fn second_chance_backends(&self) -> BTreeSet<IpAddr> {
        let backends = self.pools.iter().flat_map(|p| &p.backends);
        backends.filter(|b| b.second_chance).map(|b| b.address).collect()
    }

    /// Every distinct backend address, over all pools, with its monitor.
    /// Validation guarantees an address in several pools is monitored the
    /// same way in each.
    pub fn monitored_backends(&self) -> BTreeMap<IpAddr, Monitor> {
        let mut monitors = BTreeMap::new();
        for backend in self.pools.iter().flat_map(|p| &p.backends) {
            monitors.entry(backend.address).or_insert_with(|| backend.monitor.clone());
        }
        monitors
    }
}

/// Effective weight per backend address over `pools`, without overflow.
fn effective_weights<'a>(pools: impl IntoIterator<Item = &'a Pool>) -> BTreeMap<IpAddr, u64> {
    let mut weights = BTreeMap::new();
    for pool in pools {
        for backend in &pool.backends {
            *weights.entry(backend.address).or_insert(0u64) += pool.weight as u64 * backend.weight as u64;
        }
    }
    weights
}

impl Edge {
    /// The data plane's map sizes.
    pub fn limits(&self) -> Limits {
        Limits {
            max_vips: self.max_vips,
            max_backends: self.max_backends,
            max_flows: gslb_common::flow_capacity(self.max_flows),
            table_size: self.table_size,
        }
    }
}

/// A refused configuration: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the file could not be read at all.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}:{}:{}: {}", self.file.display(), self.line, self.column, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Reads and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: 0,
        column: 0,
        message: format!("cannot read the configuration file: {e}"),
    })?;
    parse(&text, path)
}

/// Validates a fleet document (`gslb fleet push`): `[[vip]]` and `[[pool]]`
/// only, checked exactly as in an edge's file, against `edge` (each edge
/// checks again against its own `[edge]` when it applies the document).
pub fn parse_fleet_document(text: &str, file: &Path, edge: &Edge) -> Result<(Vec<Vip>, Vec<Pool>), ConfigError> {
    let source = Source::new(text, file);
    // Host sections first: their own required keys would otherwise be what
    // the refusal talks about.
    if let Ok(table) = text.parse::<toml::Table>() {
        if let Some(section) = ["edge", "bgp", "fleet"].into_iter().find(|s| table.contains_key(*s)) {
            let at = text.find(&format!("[{section}]")).unwrap_or(0);
            return Err(source.error(
                at..at,
                format!(
                    "[{section}] in a fleet document: it belongs in each edge's own file; a fleet document holds only [[vip]] and [[pool]]"
                ),
            ));
        }
    }
    let raw = raw_config(&source)?;
    validate::validate_document(&source, raw, edge)
}

impl Config {
    /// This edge's file with the VIPs and pools of a fleet document.
    pub fn with_document(&self, vips: Vec<Vip>, pools: Vec<Pool>) -> Config {
        Config { vips, pools, ..self.clone() }
    }
}

impl Edge {
    /// An `[edge]` that accepts any document another edge could: the limits
    /// at their largest, and tunnel sources no VIP or backend can have.
    pub fn permissive() -> Edge {
        Edge {
            name: "fleet".into(),
            interfaces: vec!["lo".into()],
            xdp_mode: XdpMode::Auto,
            tunnel_source_v4: Ipv4Addr::UNSPECIFIED,
            tunnel_source_v6: Some(Ipv6Addr::UNSPECIFIED),
            admin_socket: PathBuf::from(DEFAULT_ADMIN_SOCKET),
            bpffs_pin: PathBuf::from(DEFAULT_BPFFS_PIN),
            max_flows: DEFAULT_MAX_FLOWS,
            max_backends: u32::MAX,
            max_vips: u32::MAX,
            table_size: u32::MAX,
            metrics_listen: DEFAULT_METRICS_LISTEN.parse().expect("the default is a socket address"),
            stickiness_window_secs: 0,
            gue_port: DEFAULT_GUE_PORT,
            state_file: PathBuf::from(format!("{DEFAULT_FLEET_STATE_DIR}/fleet.json")),
        }
    }
}

/// Validates the configuration `text`; `file` is only used in errors.
pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
    let source = Source::new(text, file);
    let raw = raw_config(&source)?;
    validate::validate(&source, raw)
}

/// The file as written, or where TOML or serde refused it.
fn raw_config(source: &Source) -> Result<raw::RawConfig, ConfigError> {
    let text = source.text;
    toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let mut message = plain_message(e.message().trim_end());
        if message == "invalid type: table, expected an array"
            && text.get(span.clone()).is_some_and(|s| s.starts_with('['))
        {
            message.push_str(" (each [[vip]], [[pool]] and [[vip.steer]] needs double brackets)");
        }
        source.error(span, message)
    })
}

/// serde's words for TOML types, in TOML's words.
fn plain_message(message: &str) -> String {
    if message == "wanted string or table" {
        return "invalid type: expected a string".to_string();
    }
    let mut message = message
        .replace("invalid type: map", "invalid type: table")
        .replace("expected a sequence", "expected an array")
        .replace("expected i64", "expected an integer")
        .replace("expected f64", "expected a number")
        .replace("expected path string", "expected a string");
    // "expected struct RawPool" and the like: a raw type's name means a table.
    while let Some(start) = message.find("expected struct Raw") {
        let name_end = message[start + "expected struct ".len()..]
            .find(|c: char| !c.is_alphanumeric())
            .map_or(message.len(), |i| start + "expected struct ".len() + i);
        message.replace_range(start..name_end, "expected a table");
    }
    message
}

/// The text being parsed, to turn byte spans into positions.
struct Source<'a> {
    text: &'a str,
    file: &'a Path,
    /// Where each line starts: the validators ask for the line of every
    /// VIP and backend, and counting from the start of the file each time
    /// took seconds for a file of 512 VIPs.
    line_starts: Vec<usize>,
}

impl<'a> Source<'a> {
    fn new(text: &'a str, file: &'a Path) -> Source<'a> {
        let line_starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        Source { text, file, line_starts }
    }

    /// 1-based line and column (in characters) of byte `offset`.
    fn position(&self, offset: usize) -> (usize, usize) {
        let mut end = offset.min(self.text.len());
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        // The last line starting at or before `end`.
        let line = self.line_starts.partition_point(|&start| start <= end);
        let column = self.text[self.line_starts[line - 1]..end].chars().count() + 1;
        (line, column)
    }

    /// The line `span` starts on.
    fn line(&self, span: &Range<usize>) -> usize {
        self.position(span.start).0
    }

    fn error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let (line, column) = self.position(span.start);
        ConfigError { file: self.file.to_path_buf(), line, column, message: message.into() }
    }
}
