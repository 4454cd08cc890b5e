//! The file as written: one serde struct per section, every value wrapped
//! in `Spanned` so that validation can point at it.
//!
//! Addresses and integers are read as strings and `i64` (every TOML integer
//! fits) and checked in `validate`, so that a bad value gets a message in
//! the operator's terms rather than serde's. A new key is a new field here
//! plus its check in `validate`; a new section is a new struct.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::{Affinity, BgpDaemon, DrainStyle, MonitorProtocol, Policy, Protocol, XdpMode};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub edge: Option<Spanned<RawEdge>>,
    #[serde(default)]
    pub vip: Vec<Spanned<RawVip>>,
    #[serde(default)]
    pub pool: Vec<Spanned<RawPool>>,
    pub bgp: Option<Spanned<RawBgp>>,
    pub fleet: Option<Spanned<RawFleet>>,
}

/// `[fleet]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFleet {
    pub endpoints: Spanned<Vec<Spanned<String>>>,
    pub prefix: Option<Spanned<String>>,
    pub group: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<PathBuf>>,
    pub cert_file: Option<Spanned<PathBuf>>,
    pub key_file: Option<Spanned<PathBuf>>,
    pub user: Option<Spanned<String>>,
    pub password_file: Option<Spanned<PathBuf>>,
    pub state_file: Option<Spanned<PathBuf>>,
    /// Durations ("10s"; humantime), checked in `validate`.
    pub lease_ttl: Option<Spanned<String>>,
    pub health_grace: Option<Spanned<String>>,
    pub quorum: Option<Spanned<i64>>,
    pub withdraw_unreachable_share: Option<Spanned<f64>>,
}

/// `[bgp]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBgp {
    pub daemon: Option<Spanned<BgpDaemon>>,
    pub bird_socket: Option<Spanned<PathBuf>>,
    pub bird_include: Option<Spanned<PathBuf>>,
    pub gobgp_api: Option<Spanned<String>>,
    pub announce_after_ms: Option<Spanned<i64>>,
    pub withdraw_after_ms: Option<Spanned<i64>>,
    pub drain: Option<Spanned<DrainStyle>>,
    pub drain_wait_ms: Option<Spanned<i64>>,
    pub keep_on_total_failure: Option<Spanned<bool>>,
    pub local_as: Option<Spanned<i64>>,
    pub prepend_count: Option<Spanned<i64>>,
    pub drain_med: Option<Spanned<i64>>,
}

/// `[edge]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEdge {
    pub name: Spanned<String>,
    pub interfaces: Spanned<Vec<Spanned<String>>>,
    pub xdp_mode: Option<Spanned<XdpMode>>,
    pub tunnel_source_v4: Spanned<String>,
    pub tunnel_source_v6: Option<Spanned<String>>,
    pub admin_socket: Option<Spanned<PathBuf>>,
    pub bpffs_pin: Option<Spanned<PathBuf>>,
    pub max_flows: Option<Spanned<i64>>,
    pub max_backends: Option<Spanned<i64>>,
    pub max_vips: Option<Spanned<i64>>,
    pub table_size: Option<Spanned<i64>>,
    pub metrics_listen: Option<Spanned<String>>,
    /// A duration ("6h", "90m"; humantime), checked in `validate`.
    pub stickiness_window: Option<Spanned<String>>,
    pub gue_port: Option<Spanned<i64>>,
    pub state_file: Option<Spanned<PathBuf>>,
}

/// One `[[vip]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVip {
    pub name: Spanned<String>,
    pub address: Spanned<String>,
    pub port: Spanned<i64>,
    pub protocol: Spanned<Protocol>,
    pub affinity: Option<Spanned<Affinity>>,
    pub pools: Option<Spanned<Vec<Spanned<String>>>>,
    pub policy: Option<Spanned<Policy>>,
    pub min_healthy: Option<Spanned<i64>>,
    pub fallback_pool: Option<Spanned<String>>,
    pub max_unhealthy_fraction: Option<Spanned<f64>>,
    /// `[[vip.steer]]` tables or an inline-table array.
    #[serde(default)]
    pub steer: Vec<Spanned<RawSteer>>,
}

/// One `[[vip.steer]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSteer {
    pub client_prefix: Spanned<String>,
    pub pools: Option<Spanned<Vec<Spanned<String>>>>,
}

/// One `[[pool]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPool {
    pub name: Spanned<String>,
    pub weight: Option<Spanned<i64>>,
    /// An inline-table array or `[[pool.backends]]` tables.
    pub backends: Option<Spanned<Vec<Spanned<RawBackend>>>>,
    pub max_latency_ms: Option<Spanned<i64>>,
    pub capacity: Option<Spanned<f64>>,
    pub max_utilization: Option<Spanned<f64>>,
    /// `[pool.monitor]` or `monitor = { ... }`.
    pub monitor: Option<Spanned<RawMonitor>>,
    pub second_chance: Option<Spanned<bool>>,
}

/// One backend of a pool.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub address: Spanned<String>,
    pub weight: Option<Spanned<i64>>,
    /// Overrides of the pool's monitor, key by key.
    pub monitor: Option<Spanned<RawMonitor>>,
    /// Overrides the pool's `second_chance`.
    pub second_chance: Option<Spanned<bool>>,
}

/// A pool's `monitor`, or a backend's overrides of it: every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMonitor {
    pub protocol: Option<Spanned<MonitorProtocol>>,
    pub port: Option<Spanned<i64>>,
    pub path: Option<Spanned<String>>,
    pub expected_codes: Option<Spanned<String>>,
    pub host: Option<Spanned<String>>,
    pub tls_verify: Option<Spanned<bool>>,
    pub interval_ms: Option<Spanned<i64>>,
    pub timeout_ms: Option<Spanned<i64>>,
    pub consecutive_up: Option<Spanned<i64>>,
    pub consecutive_down: Option<Spanned<i64>>,
}
