//! Prometheus metrics: the agent's [`Status`] as OpenMetrics text (the
//! HTTP endpoint that serves it is `serve::metrics`).
//!
//! Every scrape builds a fresh [`Registry`] from one [`Status`] snapshot.
//! The data plane's counters are already totals (read from BPF maps), so
//! each is set to its absolute value with `inc_by` on a new counter; nothing
//! is kept between scrapes.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::view::status::Status;

/// What [`render`] produces (OpenMetrics text, ending in `# EOF`).
pub const CONTENT_TYPE_OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Buckets of `gslb_failover_seconds`: first failed probe to new tables live.
pub const FAILOVER_BUCKETS: [f64; 8] = [0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0];

/// Buckets of `gslb_failover_apply_seconds`: declared down to new tables live.
pub const FAILOVER_APPLY_BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// Health states a backend can be in, as `Status` spells them.
const HEALTH_STATES: [&str; 4] = ["up", "suspect", "down", "unmonitored"];

type Labels = Vec<(&'static str, String)>;
type CounterFamily = Family<Labels, Counter>;
type IntGaugeFamily = Family<Labels, Gauge>;
type FloatGaugeFamily = Family<Labels, Gauge<f64, AtomicU64>>;

pub(super) fn counter_family(registry: &mut Registry, name: &str, help: &str) -> CounterFamily {
    let family = CounterFamily::default();
    registry.register(name, help, family.clone());
    family
}

fn int_gauge_family(registry: &mut Registry, name: &str, help: &str) -> IntGaugeFamily {
    let family = IntGaugeFamily::default();
    registry.register(name, help, family.clone());
    family
}

fn float_gauge_family(registry: &mut Registry, name: &str, help: &str, unit: Option<Unit>) -> FloatGaugeFamily {
    let family = FloatGaugeFamily::default();
    match unit {
        Some(unit) => registry.register_with_unit(name, help, unit, family.clone()),
        None => registry.register(name, help, family.clone()),
    }
    family
}

pub(super) fn set_counter(family: &CounterFamily, labels: Labels, value: u64) {
    family.get_or_create(&labels).inc_by(value);
}

/// Registers a counter without labels, at `value`.
pub(super) fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let counter = Counter::<u64>::default();
    counter.inc_by(value);
    registry.register(name, help, counter);
}

/// A registry as OpenMetrics text.
pub(super) fn text(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, registry);
    out
}

fn set_int(family: &IntGaugeFamily, labels: Labels, value: i64) {
    family.get_or_create(&labels).set(value);
}

fn set_float(family: &FloatGaugeFamily, labels: Labels, value: f64) {
    family.get_or_create(&labels).set(value);
}

fn saturating_i64(value: impl TryInto<i64>) -> i64 {
    value.try_into().unwrap_or(i64::MAX)
}

/// The status as OpenMetrics text. Counter names end in `_total`, seconds
/// metrics in `_seconds`; all start with `gslb_`.
pub fn render(status: &Status) -> String {
    let mut registry = Registry::default();
    let r = &mut registry;

    // The edge.
    r.register(
        "gslb",
        "The edge this agent runs, as its config names it",
        Info::new(vec![("edge", status.edge.clone())]),
    );

    // Packets, whole data plane.
    let packets = counter_family(
        r,
        "gslb_packets",
        "Packets seen by the XDP program on the steered interfaces, by what became of them",
    );
    let c = &status.counters;
    for (result, value) in [
        ("received", c.received),
        ("forwarded", c.forwarded),
        ("passed", c.passed),
        ("dropped", c.dropped),
        ("malformed", c.parse_failures),
        ("fib_failure", c.fib_failures),
        ("neighbour_pending", c.neighbour_pending),
        ("fragment", c.fragments),
        ("too_big_answered", c.too_big_answered),
        ("too_big_dropped", c.too_big_dropped),
        ("icmp_error_steered", c.icmp_errors),
    ] {
        set_counter(&packets, vec![("result", result.to_string())], value);
    }

    // Second chance, whole edge.
    counter(
        r,
        "gslb_hop_list_packets",
        "Mid-flow packets sent with a hop list of their table slot's recent previous owners (second chance)",
        c.hop_list_packets,
    );
    let window = Gauge::<f64, AtomicU64>::default();
    window.set(status.second_chance.stickiness_window_secs.into());
    r.register_with_unit(
        "gslb_stickiness_window",
        "How long a table slot's previous owners get its mid-flow packets in a hop list; 0: hop lists off",
        Unit::Seconds,
        window,
    );
    let gue_port = Gauge::<i64>::default();
    gue_port.set(status.second_chance.gue_port.into());
    r.register("gslb_gue_port", "UDP port hop-list (GUE) packets are sent to", gue_port);

    // Per VIP.
    let vip_packets = counter_family(r, "gslb_vip_packets", "Packets steered for the VIP");
    let vip_bytes = counter_family(r, "gslb_vip_bytes", "Bytes steered for the VIP");
    let vip_new_flows = counter_family(r, "gslb_vip_new_flows", "Flows of the VIP that were assigned a backend");
    let vip_flow_hits =
        counter_family(r, "gslb_vip_flow_hits", "Packets of the VIP that found their flow in the flow table");
    let vip_flow_misses = counter_family(
        r,
        "gslb_vip_flow_misses",
        "Packets of the VIP that had no flow entry and were looked up in the VIP's table",
    );
    let vip_panic = int_gauge_family(
        r,
        "gslb_vip_panic",
        "1 when the VIP ignores its health checks (panic): its listed pools' backends stay in rotation, down ones included",
    );
    let vip_fallback = int_gauge_family(
        r,
        "gslb_vip_fallback",
        "1 when the VIP's new flows go to its fallback pool: its listed pools have no backend up",
    );
    let vip_n_plus_one = int_gauge_family(
        r,
        "gslb_vip_n_plus_one_ok",
        "1 when the other pools can absorb the loss of the busiest at current shares (only with pool capacities)",
    );
    let vip_backends_down = int_gauge_family(
        r,
        "gslb_vip_backends_down",
        "Backends of the VIP's listed pools (not its fallback pool) that are down",
    );
    let vip_backends = int_gauge_family(
        r,
        "gslb_vip_backends",
        "Backends of the VIP's listed pools (not its fallback pool), up or down",
    );
    let vip_backend_share = float_gauge_family(
        r,
        "gslb_vip_backend_share",
        "Fraction of the VIP's lookup table (its default, non-steered table) given to the backend",
        None,
    );
    let vip_backend_weight = int_gauge_family(
        r,
        "gslb_vip_backend_weight",
        "Effective weight of the backend in the VIP: pool weight x backend weight, summed over the VIP's pools",
    );
    let steer_fallback = int_gauge_family(
        r,
        "gslb_vip_steer_fallback",
        "1 when new flows of the VIP's clients in the prefix go to the fallback pool",
    );
    let steer_share = float_gauge_family(
        r,
        "gslb_vip_steer_backend_share",
        "Fraction of the lookup table for the VIP's clients in the prefix given to the backend",
        None,
    );
    for vip in &status.vips {
        let labels = || vec![("vip", vip.name.clone())];
        set_counter(&vip_packets, labels(), vip.packets);
        set_counter(&vip_bytes, labels(), vip.bytes);
        set_counter(&vip_new_flows, labels(), vip.new_flows);
        set_counter(&vip_flow_hits, labels(), vip.flow_hits);
        set_counter(&vip_flow_misses, labels(), vip.flow_misses);
        set_int(&vip_panic, labels(), vip.panic.into());
        set_int(&vip_fallback, labels(), vip.fallback.into());
        if let Some(capacity) = &vip.capacity {
            set_int(&vip_n_plus_one, labels(), capacity.ok.into());
        }
        set_int(&vip_backends_down, labels(), saturating_i64(vip.backends_down));
        set_int(&vip_backends, labels(), saturating_i64(vip.backends_total));
        for b in &vip.backends {
            let labels = || vec![("vip", vip.name.clone()), ("backend", b.address.to_string())];
            set_float(&vip_backend_share, labels(), b.share);
            set_int(&vip_backend_weight, labels(), saturating_i64(b.effective_weight));
        }
        for rule in &vip.steer {
            let prefix = || vec![("vip", vip.name.clone()), ("client_prefix", rule.client_prefix.clone())];
            set_int(&steer_fallback, prefix(), rule.fallback.into());
            for b in &rule.backends {
                let mut labels = prefix();
                labels.push(("backend", b.address.to_string()));
                set_float(&steer_share, labels, b.share);
            }
        }
    }

    // Per backend of each pool.
    let backend_packets = counter_family(r, "gslb_backend_packets", "Packets steered to the backend (over all VIPs)");
    let backend_bytes = counter_family(r, "gslb_backend_bytes", "Bytes steered to the backend (over all VIPs)");
    let backend_up = int_gauge_family(
        r,
        "gslb_backend_up",
        "1 when the backend is up, suspect or unmonitored; 0 when its health checks have declared it down",
    );
    let backend_health =
        int_gauge_family(r, "gslb_backend_health", "1 for the backend's current health state, 0 for the others");
    let backend_drained =
        int_gauge_family(r, "gslb_backend_drained", "1 when the backend is drained: it takes no new flows");
    let backend_dead = int_gauge_family(
        r,
        "gslb_backend_dead",
        "1 when the backend is marked dead in the data plane: its recorded flows pick a new backend",
    );
    let backend_second_chance = int_gauge_family(
        r,
        "gslb_backend_second_chance",
        "1 when the backend's decap understands hop lists (second_chance in the config)",
    );
    let backend_hop_lists = counter_family(
        r,
        "gslb_backend_hop_list_packets",
        "Packets steered to the backend with a hop list (over all VIPs)",
    );
    let backend_latency_factor = float_gauge_family(
        r,
        "gslb_backend_latency_factor",
        "Fraction of the backend's weight kept at its probe latency (1 = all of it)",
        None,
    );
    let backend_rtt = float_gauge_family(
        r,
        "gslb_backend_probe_rtt",
        "Round-trip time of the backend's health probes, average and 99th percentile; absent until measured",
        Some(Unit::Seconds),
    );
    for pool in &status.pools {
        for b in &pool.backends {
            let labels = || vec![("pool", pool.name.clone()), ("backend", b.address.to_string())];
            set_counter(&backend_packets, labels(), b.packets);
            set_counter(&backend_bytes, labels(), b.bytes);
            set_int(&backend_up, labels(), (b.health != "down").into());
            let known = HEALTH_STATES.contains(&b.health.as_str());
            let states = HEALTH_STATES.iter().copied().chain((!known).then_some(b.health.as_str()));
            for state in states {
                let mut with_state = labels();
                with_state.push(("state", state.to_string()));
                set_int(&backend_health, with_state, (state == b.health).into());
            }
            set_int(&backend_drained, labels(), b.drained.into());
            set_int(&backend_dead, labels(), b.dead.into());
            set_int(&backend_second_chance, labels(), b.second_chance.into());
            set_counter(&backend_hop_lists, labels(), b.hop_list_packets);
            set_float(&backend_latency_factor, labels(), b.latency_factor);
            for (stat, ms) in [("avg", b.rtt_avg_ms), ("p99", b.rtt_p99_ms)] {
                if let Some(ms) = ms {
                    let mut with_stat = labels();
                    with_stat.push(("stat", stat.to_string()));
                    set_float(&backend_rtt, with_stat, ms / 1000.0);
                }
            }
        }
    }

    // Edge interfaces.
    let interface_up = int_gauge_family(
        r,
        "gslb_interface_up",
        "1 when the edge interface is up with a carrier; 0 when down or missing",
    );
    let interface_attached =
        int_gauge_family(r, "gslb_interface_attached", "1 when steer is attached to the edge interface");
    let interface_reattaches = counter_family(
        r,
        "gslb_interface_reattach",
        "Times the agent attached steer again to an interface that was recreated (or lost its pinned link)",
    );
    for link in &status.links {
        let labels = || vec![("interface", link.name.clone())];
        set_int(&interface_up, labels(), (link.state == "up").into());
        set_int(&interface_attached, labels(), link.attached.into());
        set_counter(&interface_reattaches, labels(), link.reattaches);
    }

    // ICMP errors about tunnel packets, per backend (once, whatever its
    // pools); every kind, zeros included, so rates work from the start.
    let tunnel_errors = counter_family(
        r,
        "gslb_backend_tunnel_errors",
        "ICMP errors about tunnel packets to the backend, by kind (protocol_unreachable: is decap attached?)",
    );
    let next_hop = int_gauge_family(
        r,
        "gslb_backend_next_hop_resolved",
        "1 when steer sends to the backend by a next hop the agent resolved; 0 when it asks the kernel's routing table per packet",
    );
    let mut reported = std::collections::BTreeSet::new();
    for b in status.pools.iter().flat_map(|p| &p.backends) {
        if !reported.insert(b.address) {
            continue;
        }
        set_int(&next_hop, vec![("backend", b.address.to_string())], b.next_hop.is_some().into());
        for kind in crate::sys::tunnel_errors::Kind::ALL {
            let labels = vec![("backend", b.address.to_string()), ("kind", kind.name().to_string())];
            set_counter(&tunnel_errors, labels, b.tunnel_errors.get(kind.name()).copied().unwrap_or(0));
        }
    }

    let over_budget = Counter::<u64>::default();
    over_budget.inc_by(status.failovers_over_budget);
    r.register(
        "gslb_failovers_over_budget",
        "Failovers since the agent started that took longer than their pool's worst-case failover time",
        over_budget,
    );

    // The program steering.
    let program = int_gauge_family(r, "gslb_program_info", "Always 1: the version of the steer program steering");
    set_int(&program, vec![("version", status.program.version.clone())], 1);
    let loaded = prometheus_client::metrics::gauge::Gauge::<i64, std::sync::atomic::AtomicI64>::default();
    loaded.set(status.program.loaded_unix as i64);
    r.register(
        "gslb_program_loaded_timestamp_seconds",
        "When the kernel loaded the steer program steering (Unix time)",
        loaded,
    );

    // Config reloads.
    let reloads =
        counter_family(r, "gslb_config_reloads", "Config reloads since the agent started: applied (ok) or refused");
    set_counter(&reloads, vec![("result", "ok".to_string())], status.reloads.saturating_sub(status.reloads_failed));
    set_counter(&reloads, vec![("result", "refused".to_string())], status.reloads_failed);

    // Failovers the agent remembers.
    let failover = Histogram::new(FAILOVER_BUCKETS);
    let failover_apply = Histogram::new(FAILOVER_APPLY_BUCKETS);
    for f in &status.failovers {
        failover.observe(f.total_ms as f64 / 1000.0);
        failover_apply.observe(f.apply_ms as f64 / 1000.0);
    }
    r.register_with_unit(
        "gslb_failover",
        "Failovers the agent remembers (its most recent ones): first failed probe to the new tables being live",
        Unit::Seconds,
        failover,
    );
    r.register_with_unit(
        "gslb_failover_apply",
        "Failovers the agent remembers (its most recent ones): backend declared down to the new tables being live",
        Unit::Seconds,
        failover_apply,
    );

    if let Some(bgp) = &status.bgp {
        bgp_metrics(r, bgp);
    }
    if let Some(fleet) = &status.fleet {
        fleet.metrics(r);
    }
    text(&registry)
}

/// BGP announcements (`[bgp]`).
fn bgp_metrics(r: &mut Registry, bgp: &crate::view::bgp::BgpStatus) {
    let announced = int_gauge_family(r, "gslb_vip_announced", "1 while this edge announces the VIP's address over BGP");
    for route in &bgp.routes {
        for vip in &route.vips {
            let labels = vec![("vip", vip.clone()), ("address", route.address.to_string())];
            set_int(&announced, labels, route.announced as i64);
        }
    }
    let labels = || vec![("daemon", bgp.daemon.clone())];
    let up = int_gauge_family(r, "gslb_bgp_daemon_up", "1 while the BGP daemon answers the agent");
    set_int(&up, labels(), bgp.reachable as i64);
    let sessions =
        int_gauge_family(r, "gslb_bgp_sessions_established", "BGP sessions the daemon reports as established");
    set_int(&sessions, labels(), saturating_i64(bgp.sessions_established));
    let guard = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
    guard.set(bgp.guard as i64);
    r.register(
        "gslb_announce_guard",
        "1 while every health check fails at once and the agent holds its announcements (the guard)",
        guard,
    );
    let drained = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
    drained.set(match bgp.edge_drain.as_deref() {
        Some("draining") => 1,
        Some(_) => 2,
        None => 0,
    });
    r.register("gslb_edge_drained", "Edge drain: 0 none, 1 announced less preferred, 2 withdrawn", drained);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::status::sample_status as status;

    fn assert_lines(text: &str, expected: &[&str]) {
        let lines: Vec<&str> = text.lines().collect();
        for line in expected {
            assert!(lines.contains(line), "missing line {line:?} in:\n{text}");
        }
    }

    #[test]
    fn renders_every_metric() {
        let mut status = status();
        status.links = serde_json::from_value(serde_json::json!([
            {"name": "eth0", "state": "up", "ifindex": 2, "attached": true, "mode": "native",
             "reattaches": 0, "last_event": null},
            {"name": "eth1", "state": "missing", "ifindex": null, "attached": false, "mode": null,
             "reattaches": 3, "last_event": {"at_unix_ms": 0, "kind": "vanished", "detail": ""}}
        ]))
        .expect("the fixture matches InterfaceStatus");
        status.failovers_over_budget = 2;
        status.program.version = "0.1.0+abc".into();
        status.program.loaded_unix = 1_700_000_123;
        let text = render(&status);
        assert_lines(
            &text,
            &[
                r#"gslb_program_info{version="0.1.0+abc"} 1"#,
                "gslb_program_loaded_timestamp_seconds 1700000123",
                "gslb_failovers_over_budget_total 2",
            ],
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_lines(
            &text,
            &[
                "# TYPE gslb info",
                r#"gslb_info{edge="fra1"} 1"#,
                "# TYPE gslb_packets counter",
                r#"gslb_packets_total{result="received"} 1000"#,
                r#"gslb_packets_total{result="forwarded"} 970"#,
                r#"gslb_packets_total{result="passed"} 10"#,
                r#"gslb_packets_total{result="dropped"} 5"#,
                r#"gslb_packets_total{result="malformed"} 3"#,
                r#"gslb_packets_total{result="fib_failure"} 1"#,
                r#"gslb_packets_total{result="neighbour_pending"} 4"#,
                r#"gslb_packets_total{result="fragment"} 2"#,
                "# TYPE gslb_hop_list_packets counter",
                "gslb_hop_list_packets_total 12",
                "# UNIT gslb_stickiness_window_seconds seconds",
                "gslb_stickiness_window_seconds 21600.0",
                "gslb_gue_port 6080",
                r#"gslb_vip_packets_total{vip="web"} 900"#,
                r#"gslb_vip_bytes_total{vip="web"} 123456"#,
                r#"gslb_vip_new_flows_total{vip="web"} 40"#,
                r#"gslb_vip_flow_hits_total{vip="web"} 850"#,
                r#"gslb_vip_flow_misses_total{vip="web"} 50"#,
                r#"gslb_vip_panic{vip="web"} 0"#,
                r#"gslb_vip_fallback{vip="web"} 1"#,
                r#"gslb_vip_backends_down{vip="web"} 1"#,
                r#"gslb_vip_backends{vip="web"} 2"#,
                r#"gslb_vip_backend_share{vip="web",backend="10.0.0.1"} 0.75"#,
                r#"gslb_vip_backend_share{vip="web",backend="2001:db8::2"} 0.25"#,
                r#"gslb_vip_backend_weight{vip="web",backend="10.0.0.1"} 10000"#,
                r#"gslb_vip_backend_weight{vip="web",backend="2001:db8::2"} 3333"#,
                r#"gslb_vip_steer_fallback{vip="web",client_prefix="198.51.100.0/24"} 0"#,
                r#"gslb_vip_steer_backend_share{vip="web",client_prefix="198.51.100.0/24",backend="10.0.0.1"} 1.0"#,
                r#"gslb_backend_packets_total{pool="a",backend="10.0.0.1"} 600"#,
                r#"gslb_backend_bytes_total{pool="a",backend="2001:db8::2"} 43456"#,
                r#"gslb_backend_up{pool="a",backend="10.0.0.1"} 1"#,
                r#"gslb_backend_up{pool="a",backend="2001:db8::2"} 0"#,
                r#"gslb_backend_health{pool="a",backend="10.0.0.1",state="up"} 1"#,
                r#"gslb_backend_health{pool="a",backend="10.0.0.1",state="down"} 0"#,
                r#"gslb_backend_health{pool="a",backend="2001:db8::2",state="down"} 1"#,
                r#"gslb_backend_health{pool="a",backend="2001:db8::2",state="up"} 0"#,
                r#"gslb_backend_drained{pool="a",backend="10.0.0.1"} 0"#,
                r#"gslb_backend_drained{pool="a",backend="2001:db8::2"} 1"#,
                r#"gslb_backend_dead{pool="a",backend="2001:db8::2"} 1"#,
                r#"gslb_backend_second_chance{pool="a",backend="10.0.0.1"} 1"#,
                r#"gslb_backend_second_chance{pool="a",backend="2001:db8::2"} 0"#,
                r#"gslb_backend_hop_list_packets_total{pool="a",backend="10.0.0.1"} 12"#,
                r#"gslb_backend_hop_list_packets_total{pool="a",backend="2001:db8::2"} 0"#,
                r#"gslb_backend_latency_factor{pool="a",backend="2001:db8::2"} 0.5"#,
                "# UNIT gslb_backend_probe_rtt_seconds seconds",
                r#"gslb_backend_probe_rtt_seconds{pool="a",backend="10.0.0.1",stat="avg"} 0.0125"#,
                r#"gslb_backend_probe_rtt_seconds{pool="a",backend="10.0.0.1",stat="p99"} 0.04"#,
                r#"gslb_interface_up{interface="eth0"} 1"#,
                r#"gslb_interface_up{interface="eth1"} 0"#,
                r#"gslb_interface_attached{interface="eth0"} 1"#,
                r#"gslb_interface_attached{interface="eth1"} 0"#,
                r#"gslb_interface_reattach_total{interface="eth0"} 0"#,
                r#"gslb_interface_reattach_total{interface="eth1"} 3"#,
                r#"gslb_backend_tunnel_errors_total{backend="10.0.0.1",kind="protocol_unreachable"} 7"#,
                r#"gslb_backend_tunnel_errors_total{backend="10.0.0.1",kind="unreachable"} 0"#,
                r#"gslb_backend_tunnel_errors_total{backend="2001:db8::2",kind="protocol_unreachable"} 0"#,
                r#"gslb_backend_next_hop_resolved{backend="10.0.0.1"} 1"#,
                r#"gslb_backend_next_hop_resolved{backend="2001:db8::2"} 0"#,
                r#"gslb_config_reloads_total{result="ok"} 3"#,
                r#"gslb_config_reloads_total{result="refused"} 2"#,
                "# TYPE gslb_failover_seconds histogram",
                "gslb_failover_seconds_count 2",
                "gslb_failover_seconds_sum 5.8",
                r#"gslb_failover_seconds_bucket{le="1.0"} 0"#,
                r#"gslb_failover_seconds_bucket{le="2.0"} 1"#,
                r#"gslb_failover_seconds_bucket{le="5.0"} 2"#,
                r#"gslb_failover_seconds_bucket{le="+Inf"} 2"#,
                "gslb_failover_apply_seconds_count 2",
                r#"gslb_failover_apply_seconds_bucket{le="0.005"} 1"#,
                r#"gslb_failover_apply_seconds_bucket{le="0.025"} 2"#,
            ],
        );
        // No RTT for a backend that has none measured.
        assert!(!text.contains(r#"gslb_backend_probe_rtt_seconds{pool="a",backend="2001:db8::2""#), "{text}");
        // Every metric says what it is.
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split(' ').nth(2).unwrap();
            assert!(text.contains(&format!("# HELP {name} ")), "no HELP for {name}");
        }
    }

    #[test]
    fn renders_bgp_announcements() {
        let mut status = status();
        assert!(!render(&status).contains("gslb_bgp"), "no [bgp], no BGP metrics");
        status.bgp = Some(
            serde_json::from_value(serde_json::json!({
                "daemon": "bird", "reachable": true, "in_sync": true,
                "sessions": [{"name": "uplink", "state": "Established", "established": true}],
                "sessions_established": 1, "last_change_unix_ms": 1, "last_error": null, "last_error_unix_ms": null,
                "guard": true, "edge_drain": "draining", "edge_drain_until_unix_ms": null,
                "routes": [{
                    "address": "192.0.2.10", "vips": ["web", "web-udp"], "announced": true, "drain": true,
                    "reason_code": "edge-draining", "reason": "edge draining", "since_unix_ms": 1
                }]
            }))
            .unwrap(),
        );
        assert_lines(
            &render(&status),
            &[
                r#"gslb_vip_announced{vip="web",address="192.0.2.10"} 1"#,
                r#"gslb_vip_announced{vip="web-udp",address="192.0.2.10"} 1"#,
                r#"gslb_bgp_daemon_up{daemon="bird"} 1"#,
                r#"gslb_bgp_sessions_established{daemon="bird"} 1"#,
                "gslb_announce_guard 1",
                "gslb_edge_drained 1",
            ],
        );
    }

    #[test]
    fn unknown_health_state_is_reported() {
        let mut status = status();
        status.pools[0].backends[0].health = "starting".into();
        let text = render(&status);
        assert_lines(
            &text,
            &[
                r#"gslb_backend_health{pool="a",backend="10.0.0.1",state="starting"} 1"#,
                r#"gslb_backend_health{pool="a",backend="10.0.0.1",state="up"} 0"#,
                r#"gslb_backend_up{pool="a",backend="10.0.0.1"} 1"#,
            ],
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut status = status();
        status.edge = "a\"b\\c".into();
        let text = render(&status);
        assert_lines(&text, &[r#"gslb_info{edge="a\"b\\c"} 1"#]);
    }
}
