//! The status contract: what `gslb status --json`, the admin socket and
//! the metrics endpoint report about an agent. Plain data: the agent fills
//! it in (`agent::snapshot`), `render` and `metrics` read it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub edge: String,
    pub config: String,
    /// Whether this agent adopted a data plane pinned by an earlier one.
    pub adopted: bool,
    pub started_unix: u64,
    /// The `steer` program steering: its version and when it was loaded.
    #[serde(default)]
    pub program: ProgramStatus,
    /// Interface -> how `steer` is attached: "native", "generic",
    /// "adopted", or "detached" (the interface is gone or attaching failed).
    pub interfaces: BTreeMap<String, String>,
    /// Each configured interface in detail (`sys::interfaces`).
    #[serde(default)]
    pub links: Vec<InterfaceStatus>,
    pub limits: Limits,
    /// Second chance as `EDGE_CONFIG` holds it.
    #[serde(default)]
    pub second_chance: SecondChanceStatus,
    pub counters: Counters,
    pub vips: Vec<VipStatus>,
    pub pools: Vec<PoolStatus>,
    pub reloads: u64,
    pub reloads_failed: u64,
    pub last_reload: Option<LastReload>,
    /// Backends that went down: how long detection and the data plane took.
    pub failovers: Vec<FailoverStatus>,
    /// Failovers since the agent started that took longer than their
    /// pool's worst case.
    #[serde(default)]
    pub failovers_over_budget: u64,
    /// BGP announcements; absent without `[bgp]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<super::bgp::BgpStatus>,
    /// The fleet; absent without `[fleet]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<super::fleet::FleetMemberStatus>,
    /// The state file (`edge.state_file`); absent from older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_file: Option<StateFileStatus>,
}

/// The state file: what the agent's start found and restored, and whether
/// writing it works.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StateFileStatus {
    pub path: std::path::PathBuf,
    /// At the start: "missing" (a first start), "read", or "bad" (unreadable
    /// or not a state file: set aside and ignored).
    pub found: String,
    /// Why it was bad.
    pub error: Option<String>,
    /// Where the bad file was moved (`{path}.bad`).
    pub moved_to: Option<std::path::PathBuf>,
    /// Backend drains restored at the start.
    pub restored_drains: usize,
    pub restored_edge_drain: bool,
    /// Saved decisions left out at the start, and why.
    pub dropped: Vec<String>,
    /// The last write's error, while writes fail.
    pub write_error: Option<String>,
}

/// One configured interface: its state and `steer`'s attachment.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InterfaceStatus {
    pub name: String,
    /// "up", "down" (admin down or no carrier) or "missing" (no interface
    /// of this name).
    pub state: String,
    pub ifindex: Option<u32>,
    pub attached: bool,
    /// "native", "generic" or "adopted" while attached.
    pub mode: Option<String>,
    /// Times the agent attached `steer` again after the interface was
    /// recreated (or its pinned link was lost).
    pub reattaches: u64,
    pub last_event: Option<InterfaceEvent>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InterfaceEvent {
    pub at_unix_ms: u64,
    /// "down", "up", "vanished", "reattached" or "reattach-failed".
    pub kind: String,
    pub detail: String,
}

/// One backend going down, measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FailoverStatus {
    pub backend: IpAddr,
    pub first_failure_unix_ms: u64,
    pub declared_down_unix_ms: u64,
    pub table_live_unix_ms: u64,
    /// First failed probe to the new table being live.
    pub total_ms: u64,
    /// Declared down to the new table being live.
    pub apply_ms: u64,
    /// `(consecutive_down + 1) x interval + timeout` of its monitor.
    pub worst_case_ms: u64,
}

/// Whether the other pools can absorb the loss of the busiest one.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CapacityStatus {
    pub ok: bool,
    pub message: String,
}

/// A client-prefix rule of a VIP, as it stands.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClientRuleStatus {
    pub client_prefix: String,
    pub pools: Vec<String>,
    pub active_pools: Vec<String>,
    pub fallback: bool,
    pub backends: Vec<VipBackend>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Limits {
    pub max_vips: u32,
    pub max_backends: u32,
    pub max_flows: u32,
    pub table_size: u32,
}

/// Second chance on this edge (`[edge]` `stickiness_window`, `gue_port`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecondChanceStatus {
    /// How long a table slot's previous owners get its mid-flow packets in
    /// a hop list; 0: hop lists are off.
    pub stickiness_window_secs: u32,
    /// UDP port hop-list (GUE) packets are sent to.
    pub gue_port: u16,
}

/// The data plane's global counters, as `steer` keeps them.
pub type Counters = gslb_common::GlobalStats;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VipStatus {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: String,
    pub affinity: String,
    pub pools: Vec<String>,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub flow_hits: u64,
    pub flow_misses: u64,
    pub policy: String,
    /// Health checks are ignored (panic): the listed pools' backends stay
    /// in rotation, down ones included, because checks would take out more
    /// than `max_unhealthy_fraction` of them or nothing is up, and no
    /// fallback pool can serve. In any of its tables.
    pub panic: bool,
    /// New flows (of clients no steer rule matches) go to the fallback
    /// pool: the listed pools have no backend up.
    pub fallback: bool,
    pub active_pools: Vec<String>,
    /// Backends of the listed pools and steer rules' pools (not of the
    /// fallback pool), down and in all.
    pub backends_down: usize,
    pub backends_total: usize,
    pub backends: Vec<VipBackend>,
    /// Its `[[vip.steer]]` client-prefix rules.
    pub steer: Vec<ClientRuleStatus>,
    pub capacity: Option<CapacityStatus>,
}

/// A backend as one VIP uses it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VipBackend {
    pub address: IpAddr,
    /// Pool weight x backend weight, summed over the VIP's pools.
    pub effective_weight: u64,
    /// Slots of the VIP's lookup table, and their fraction of it.
    pub slots: u32,
    pub share: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PoolStatus {
    pub name: String,
    pub weight: u32,
    /// `(consecutive_down + 1) x interval + timeout` of the pool's monitor.
    pub worst_case_failover_ms: Option<u64>,
    pub capacity: Option<f64>,
    pub max_utilization: f64,
    pub backends: Vec<BackendStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackendStatus {
    pub address: IpAddr,
    pub weight: u32,
    pub id: u32,
    pub packets: u64,
    pub bytes: u64,
    /// "up", "suspect", "down", or "unmonitored".
    pub health: String,
    /// Why it is in that state (the last failure), if anything failed.
    pub reason: Option<String>,
    pub rtt_avg_ms: Option<f64>,
    pub rtt_p99_ms: Option<f64>,
    /// Fraction of its weight kept at its probe latency (1 = all).
    pub latency_factor: f64,
    pub drained: bool,
    pub drain_until_unix: Option<u64>,
    /// Marked dead in the data plane: its recorded flows re-select.
    pub dead: bool,
    /// Its `decap` understands hop lists (`second_chance`), as written to
    /// the data plane.
    #[serde(default)]
    pub second_chance: bool,
    /// Of `packets`, those sent with a hop list.
    #[serde(default)]
    pub hop_list_packets: u64,
    pub transitions: Vec<TransitionStatus>,
    /// ICMP errors about tunnel packets to it, by kind
    /// (`crate::sys::tunnel_errors::Kind`): reported, never acted on.
    #[serde(default)]
    pub tunnel_errors: BTreeMap<String, u64>,
    /// Where `steer` sends its tunnel packets without a route lookup;
    /// `None`: it asks the kernel's routing table per packet.
    #[serde(default)]
    pub next_hop: Option<NextHopStatus>,
}

/// A backend's next hop as the agent resolved it (`NEXT_HOPS`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextHopStatus {
    pub interface: String,
    pub ifindex: u32,
    /// The next hop's MAC (the gateway's, or the backend's on-link).
    pub mac: String,
    /// The largest tunnel packet sent this way; bigger ones take the
    /// kernel's route lookup (and its path-MTU answers).
    pub mtu: u16,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TransitionStatus {
    pub at_unix_ms: u64,
    pub from: String,
    pub to: String,
    pub reason: String,
}

/// The `steer` program steering (`sys::upgrade`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramStatus {
    /// `<package version>+<object hash>`, as `GSLB_META` records it.
    pub version: String,
    /// When the kernel loaded it (an adopting agent did not).
    pub loaded_unix: u64,
    /// The version this agent replaced in place at its start, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgraded_from: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LastReload {
    pub at_unix: u64,
    pub ok: bool,
    pub error: Option<String>,
}

/// A small status for tests: one VIP with a steer rule, a pool with one
/// backend up and one down, two failovers; JSON from before second chance.
#[cfg(test)]
pub(crate) fn sample_status() -> Status {
    let mut status: Status = serde_json::from_value(serde_json::json!({
        "edge": "fra1",
        "config": "/etc/gslb/gslb.toml",
        "adopted": false,
        "started_unix": 1_700_000_000u64,
        "interfaces": {"eth0": "driver"},
        "limits": {"max_vips": 64, "max_backends": 1024, "max_flows": 1_000_000, "table_size": 65537},
        "counters": {
            "received": 1000, "passed": 10, "parse_failures": 3, "fragments": 2,
            "fib_failures": 1, "neighbour_pending": 4, "forwarded": 970, "dropped": 5
        },
        "vips": [{
            "name": "web", "address": "192.0.2.10", "port": 443, "protocol": "tcp",
            "affinity": "five-tuple", "pools": ["a", "b"],
            "packets": 900, "bytes": 123_456, "new_flows": 40, "flow_hits": 850, "flow_misses": 50,
            "policy": "weighted", "panic": false, "fallback": true, "active_pools": ["b"],
            "backends_down": 1, "backends_total": 2,
            "backends": [
                {"address": "10.0.0.1", "effective_weight": 10000, "slots": 49152, "share": 0.75},
                {"address": "2001:db8::2", "effective_weight": 3333, "slots": 16385, "share": 0.25}
            ],
            "steer": [{
                "client_prefix": "198.51.100.0/24", "pools": ["a"], "active_pools": ["a"], "fallback": false,
                "backends": [{"address": "10.0.0.1", "effective_weight": 100, "slots": 65537, "share": 1.0}]
            }],
            "capacity": null
        }],
        "pools": [{
            "name": "a", "weight": 100, "worst_case_failover_ms": 3500, "capacity": null,
            "max_utilization": 0.75,
            "backends": [
                {
                    "address": "10.0.0.1", "weight": 100, "id": 1, "packets": 600, "bytes": 80_000,
                    "health": "up", "reason": null, "rtt_avg_ms": 12.5, "rtt_p99_ms": 40.0,
                    "latency_factor": 1.0, "drained": false, "drain_until_unix": null, "dead": false,
                    "transitions": [], "tunnel_errors": {"protocol_unreachable": 7},
                    "next_hop": {"interface": "eth0", "ifindex": 2, "mac": "02:00:5e:00:01:01", "mtu": 1520}
                },
                {
                    "address": "2001:db8::2", "weight": 100, "id": 2, "packets": 300, "bytes": 43_456,
                    "health": "down", "reason": "connect refused", "rtt_avg_ms": null, "rtt_p99_ms": null,
                    "latency_factor": 0.5, "drained": true, "drain_until_unix": null, "dead": true,
                    "transitions": []
                }
            ]
        }],
        "reloads": 5,
        "reloads_failed": 2,
        "last_reload": null,
        "failovers": [
            {
                "backend": "2001:db8::2", "first_failure_unix_ms": 0, "declared_down_unix_ms": 0,
                "table_live_unix_ms": 0, "total_ms": 1800, "apply_ms": 3, "worst_case_ms": 3500
            },
            {
                "backend": "10.0.0.1", "first_failure_unix_ms": 0, "declared_down_unix_ms": 0,
                "table_live_unix_ms": 0, "total_ms": 4000, "apply_ms": 20, "worst_case_ms": 3500
            }
        ]
    }))
    .expect("the fixture matches Status");
    // Second chance (set here: one more level of JSON passes the macro's
    // recursion limit): 10.0.0.1 takes hop lists.
    status.second_chance = SecondChanceStatus { stickiness_window_secs: 6 * 3600, gue_port: 6080 };
    status.counters.hop_list_packets = 12;
    let backend = &mut status.pools[0].backends[0];
    (backend.second_chance, backend.hop_list_packets) = (true, 12);
    status
}
