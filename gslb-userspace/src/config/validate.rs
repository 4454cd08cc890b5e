//! The checks: from the raw file to a `Config`, or the first problem found,
//! located at the offending value.
//!
//! Order: `[edge]`, then each `[[vip]]` on its own, then each `[[pool]]`
//! (which needs the VIP addresses) with its backends' monitors, then what a
//! VIP's pools (listed, steered to and fallback) must satisfy.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::path::PathBuf;

use gslb_common::{maglev::is_prime, TABLE_GENERATIONS};
use toml::Spanned;

use super::raw::{RawBgp, RawConfig, RawEdge, RawMonitor, RawPool, RawSteer, RawVip};
use super::{
    effective_weights, BackendConfig, Bgp, BgpDaemon, Config, ConfigError, DrainStyle, Edge, ExpectedCodes, Monitor,
    MonitorProtocol, Policy, Pool, Prefix, PrefixError, Source, SteerRule, Vip, DEFAULT_ADMIN_SOCKET,
    DEFAULT_ANNOUNCE_AFTER_MS, DEFAULT_BIRD_SOCKET, DEFAULT_BPFFS_PIN, DEFAULT_CONSECUTIVE_DOWN,
    DEFAULT_CONSECUTIVE_UP, DEFAULT_DRAIN_MED, DEFAULT_DRAIN_WAIT_MS, DEFAULT_GOBGP_API, DEFAULT_MAX_BACKENDS,
    DEFAULT_MAX_FLOWS, DEFAULT_MAX_UNHEALTHY_FRACTION, DEFAULT_MAX_UTILIZATION, DEFAULT_MAX_VIPS,
    DEFAULT_METRICS_LISTEN, DEFAULT_MIN_HEALTHY, DEFAULT_MONITOR_INTERVAL_MS, DEFAULT_MONITOR_PATH,
    DEFAULT_MONITOR_TIMEOUT_MS, DEFAULT_PREPEND_COUNT, DEFAULT_TABLE_SIZE, DEFAULT_WEIGHT, DEFAULT_WITHDRAW_AFTER_MS,
    MAX_MONITOR_INTERVAL_MS, MAX_WEIGHT,
};

type Result<T> = std::result::Result<T, ConfigError>;

/// A VIP and where its parts are in the file.
struct CheckedVip {
    vip: Vip,
    span: Range<usize>,
    pools_span: Range<usize>,
    /// One per entry of `vip.pools`.
    pool_spans: Vec<Range<usize>>,
    /// One per entry of `vip.steer`.
    steer: Vec<CheckedSteer>,
    fallback_span: Option<Range<usize>>,
    min_healthy_span: Option<Range<usize>>,
}

/// Where a steer rule's parts are in the file.
struct CheckedSteer {
    pools_span: Range<usize>,
    /// One per entry of the rule's pools.
    pool_spans: Vec<Range<usize>>,
}

/// A pool and where its backends are in the file.
struct CheckedPool {
    pool: Pool,
    /// One per backend: the span of its address.
    backend_spans: Vec<Range<usize>>,
}

pub(super) fn validate(src: &Source, raw: RawConfig) -> Result<Config> {
    let Some(edge) = raw.edge else {
        return Err(
            src.error(0..0, "missing [edge] section: it must give at least name, interfaces and tunnel_source_v4")
        );
    };
    let edge = check_edge(src, edge.get_ref(), edge.span())?;
    let vips = check_vips(src, &edge, &raw.vip)?;
    let pools = check_pools(src, &edge, &vips, &raw.pool)?;
    check_vip_pools(src, &edge, &vips, &pools)?;
    let bgp = match &raw.bgp {
        None => Bgp::default(),
        Some(bgp) => check_bgp(src, bgp.get_ref(), bgp.span())?,
    };
    Ok(Config {
        edge,
        vips: vips.into_iter().map(|v| v.vip).collect(),
        pools: pools.into_iter().map(|p| p.pool).collect(),
        bgp,
    })
}

fn check_bgp(src: &Source, raw: &RawBgp, span: Range<usize>) -> Result<Bgp> {
    let daemon = raw.daemon.as_ref().map(|d| *d.get_ref()).unwrap_or_default();
    let bird_socket = absolute_path(src, raw.bird_socket.as_ref(), DEFAULT_BIRD_SOCKET, "bgp.bird_socket")?;
    let bird_include =
        match &raw.bird_include {
            None if daemon == BgpDaemon::Bird => return Err(src.error(
                span,
                "bgp.bird_include is required with daemon = \"bird\": give the file the agent writes its routes to \
                 (e.g. \"/etc/bird/gslb-vips.conf\"), which bird.conf includes",
            )),
            None => None,
            Some(_) => Some(absolute_path(src, raw.bird_include.as_ref(), "", "bgp.bird_include")?),
        };
    let gobgp_api = match &raw.gobgp_api {
        None => DEFAULT_GOBGP_API.parse().expect("the default is a socket address"),
        Some(value) => {
            let text = value.get_ref();
            let address: SocketAddr = text.parse().map_err(|_| {
                src.error(
                    value.span(),
                    format!("bgp.gobgp_api {text:?} is not an address and port: write e.g. \"127.0.0.1:50051\""),
                )
            })?;
            if address.port() == 0 {
                return Err(src.error(value.span(), "bgp.gobgp_api must give a port other than 0"));
            }
            address
        }
    };
    let ms = |value: &Option<Spanned<i64>>, default: u32, key: &str| -> Result<u32> {
        match value {
            None => Ok(default),
            Some(v) => Ok(bounded(src, v, key, 0, 3_600_000)? as u32),
        }
    };
    let drain = raw.drain.as_ref().map(|d| *d.get_ref()).unwrap_or_default();
    let local_as = match &raw.local_as {
        None => None,
        Some(v) => Some(bounded(src, v, "bgp.local_as", 1, u32::MAX as i64)? as u32),
    };
    if drain == DrainStyle::Prepend && local_as.is_none() && daemon != BgpDaemon::None {
        let at = raw.drain.as_ref().map_or(span, |d| d.span());
        return Err(src.error(
            at,
            "bgp.drain = \"prepend\" needs bgp.local_as, this edge's AS number (the one prepended); \
             add it, or choose drain = \"graceful-shutdown\" or \"med\"",
        ));
    }
    let prepend_count = match &raw.prepend_count {
        None => DEFAULT_PREPEND_COUNT,
        Some(v) => bounded(src, v, "bgp.prepend_count", 1, 10)? as u32,
    };
    let drain_med = match &raw.drain_med {
        None => DEFAULT_DRAIN_MED,
        Some(v) => bounded(src, v, "bgp.drain_med", 1, u32::MAX as i64)? as u32,
    };
    Ok(Bgp {
        daemon,
        bird_socket,
        bird_include,
        gobgp_api,
        announce_after_ms: ms(&raw.announce_after_ms, DEFAULT_ANNOUNCE_AFTER_MS, "bgp.announce_after_ms")?,
        withdraw_after_ms: ms(&raw.withdraw_after_ms, DEFAULT_WITHDRAW_AFTER_MS, "bgp.withdraw_after_ms")?,
        drain,
        drain_wait_ms: ms(&raw.drain_wait_ms, DEFAULT_DRAIN_WAIT_MS, "bgp.drain_wait_ms")?,
        keep_on_total_failure: raw.keep_on_total_failure.as_ref().is_none_or(|k| *k.get_ref()),
        local_as,
        prepend_count,
        drain_med,
    })
}

fn check_edge(src: &Source, raw: &RawEdge, span: Range<usize>) -> Result<Edge> {
    let name = raw.name.get_ref();
    if name.is_empty() {
        return Err(src.error(raw.name.span(), "edge.name must not be empty"));
    }
    let interfaces = check_interfaces(src, &raw.interfaces)?;

    let v4 = &raw.tunnel_source_v4;
    let tunnel_source_v4: Ipv4Addr = v4.get_ref().parse().map_err(|_| {
        src.error(v4.span(), format!("edge.tunnel_source_v4 {:?} is not an IPv4 address{}", v4.get_ref(), hint(v4)))
    })?;
    usable(src, tunnel_source_v4.into(), v4.span(), "edge.tunnel_source_v4")?;
    let tunnel_source_v6 = match &raw.tunnel_source_v6 {
        None => None,
        Some(v6) => {
            let addr: Ipv6Addr = v6.get_ref().parse().map_err(|_| {
                src.error(
                    v6.span(),
                    format!("edge.tunnel_source_v6 {:?} is not an IPv6 address{}", v6.get_ref(), hint(v6)),
                )
            })?;
            usable(src, addr.into(), v6.span(), "edge.tunnel_source_v6")?;
            Some(addr)
        }
    };

    let admin_socket = absolute_path(src, raw.admin_socket.as_ref(), DEFAULT_ADMIN_SOCKET, "edge.admin_socket")?;
    let bpffs_pin = absolute_path(src, raw.bpffs_pin.as_ref(), DEFAULT_BPFFS_PIN, "edge.bpffs_pin")?;

    let max_flows = limit(src, raw.max_flows.as_ref(), DEFAULT_MAX_FLOWS, 1, "edge.max_flows")?;
    let max_backends = limit(src, raw.max_backends.as_ref(), DEFAULT_MAX_BACKENDS, 2, "edge.max_backends")?;
    let max_vips = limit(src, raw.max_vips.as_ref(), DEFAULT_MAX_VIPS, 1, "edge.max_vips")?;
    let table_size = limit(src, raw.table_size.as_ref(), DEFAULT_TABLE_SIZE, 2, "edge.table_size")?;

    if !is_prime(table_size) {
        let suggestion = next_prime(table_size).map(|p| format!("; the next prime is {p}")).unwrap_or_default();
        return Err(src.error(
            span_or(raw.table_size.as_ref(), &span),
            format!("edge.table_size must be a prime number (Maglev needs one), and {table_size} is not{suggestion}"),
        ));
    }
    if table_size < max_backends {
        let at = raw.table_size.as_ref().or(raw.max_backends.as_ref());
        let suggestion = next_prime(max_backends).map(|p| format!(", e.g. {p}")).unwrap_or_default();
        let default = if raw.table_size.is_none() { ", the default" } else { "" };
        return Err(src.error(
            span_or(at, &span),
            format!(
                "edge.table_size ({table_size}{default}) must be at least edge.max_backends ({max_backends}) so that every \
                 backend can have a slot; choose a prime >= {max_backends}{suggestion}"
            ),
        ));
    }
    let slots = max_vips as u64 * TABLE_GENERATIONS as u64 * table_size as u64;
    if slots > u32::MAX as u64 {
        let at = raw.table_size.as_ref().or(raw.max_vips.as_ref());
        return Err(src.error(
            span_or(at, &span),
            format!(
                "edge.max_vips x 2 x edge.table_size = {slots} table slots, more than one map can hold ({}); \
                 lower max_vips or table_size",
                u32::MAX
            ),
        ));
    }

    let metrics_listen = match &raw.metrics_listen {
        None => DEFAULT_METRICS_LISTEN.parse().expect("the default is a socket address"),
        Some(value) => {
            let text = value.get_ref();
            let address: SocketAddr = text.parse().map_err(|_| {
                src.error(
                    value.span(),
                    format!(
                        "edge.metrics_listen {text:?} is not an address and port: write e.g. \"127.0.0.1:9477\" \
                         or \"[::1]:9477\""
                    ),
                )
            })?;
            if address.port() == 0 {
                return Err(src.error(value.span(), "edge.metrics_listen must give a port other than 0"));
            }
            address
        }
    };

    Ok(Edge {
        name: name.clone(),
        interfaces,
        xdp_mode: raw.xdp_mode.as_ref().map(|m| *m.get_ref()).unwrap_or_default(),
        tunnel_source_v4,
        tunnel_source_v6,
        admin_socket,
        bpffs_pin,
        max_flows,
        max_backends,
        max_vips,
        table_size,
        metrics_listen,
    })
}

fn check_interfaces(src: &Source, list: &Spanned<Vec<Spanned<String>>>) -> Result<Vec<String>> {
    if list.get_ref().is_empty() {
        return Err(src.error(list.span(), "edge.interfaces must list at least one interface"));
    }
    let mut seen = HashSet::new();
    let mut interfaces = Vec::new();
    for name in list.get_ref() {
        if let Some(why) = bad_interface_name(name.get_ref()) {
            return Err(src.error(name.span(), format!("invalid interface name {:?}: {why}", name.get_ref())));
        }
        if !seen.insert(name.get_ref().as_str()) {
            return Err(src.error(name.span(), format!("interface {:?} is listed twice", name.get_ref())));
        }
        interfaces.push(name.get_ref().clone());
    }
    Ok(interfaces)
}

/// Why Linux would refuse `name` as an interface name, if it would.
fn bad_interface_name(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 15 {
        Some("Linux interface names are at most 15 bytes long")
    } else if name == "." || name == ".." {
        Some("'.' and '..' cannot be interface names")
    } else if name.contains('/') {
        Some("it contains '/'")
    } else if name.contains(':') {
        Some("it contains ':'")
    } else if name.chars().any(char::is_whitespace) {
        Some("it contains whitespace")
    } else if name.chars().any(char::is_control) {
        Some("it contains a control character")
    } else {
        None
    }
}

fn check_vips(src: &Source, edge: &Edge, raws: &[Spanned<RawVip>]) -> Result<Vec<CheckedVip>> {
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut identities: HashMap<(IpAddr, u16, super::Protocol), (&str, usize)> = HashMap::new();
    let mut vips = Vec::new();
    for (index, raw_vip) in raws.iter().enumerate() {
        let span = raw_vip.span();
        let raw = raw_vip.get_ref();
        if index >= edge.max_vips as usize {
            return Err(src.error(
                span,
                format!(
                    "too many VIPs: edge.max_vips is {} and this is VIP number {}; raise max_vips or remove VIPs",
                    edge.max_vips,
                    index + 1
                ),
            ));
        }

        let name = raw.name.get_ref().as_str();
        if name.is_empty() {
            return Err(src.error(raw.name.span(), "VIP name must not be empty"));
        }
        if let Some(line) = names.get(name) {
            return Err(
                src.error(raw.name.span(), format!("VIP name {name:?} is already used by the VIP at line {line}"))
            );
        }
        names.insert(name, src.line(&span));

        let address = parse_ip(src, &raw.address, "VIP address")?;
        usable(src, address, raw.address.span(), "VIP address")?;
        if let Some(key) = tunnel_source_key(edge, address) {
            return Err(src.error(
                raw.address.span(),
                format!(
                    "VIP address {address} is the edge's {key}, the source of its tunnelled packets; \
                     it cannot also be a VIP"
                ),
            ));
        }
        let port = integer(src, &raw.port, "port", 0, u16::MAX as i64)? as u16;
        let protocol = *raw.protocol.get_ref();
        if let Some((other, line)) = identities.get(&(address, port, protocol)) {
            return Err(src.error(
                raw.address.span(),
                format!(
                    "VIP {name:?} has the same address, port and protocol as VIP {other:?} (line {line}); \
                     each (address, port, protocol) can belong to one VIP only"
                ),
            ));
        }
        identities.insert((address, port, protocol), (name, src.line(&span)));

        let Some(pools) = &raw.pools else {
            return Err(src.error(span, format!("VIP {name:?} lists no pools: add pools = [\"<pool name>\"]")));
        };
        if pools.get_ref().is_empty() {
            return Err(src.error(pools.span(), format!("VIP {name:?} must list at least one pool")));
        }
        let mut listed = HashSet::new();
        for pool in pools.get_ref() {
            if !listed.insert(pool.get_ref().as_str()) {
                return Err(
                    src.error(pool.span(), format!("pool {:?} is listed twice by VIP {name:?}", pool.get_ref()))
                );
            }
        }

        let policy = raw.policy.as_ref().map(|p| *p.get_ref()).unwrap_or_default();
        let min_healthy = match &raw.min_healthy {
            None => DEFAULT_MIN_HEALTHY,
            Some(value) => {
                let n = bounded(src, value, &format!("VIP {name:?}: min_healthy"), 1, u32::MAX as i64)? as u32;
                if policy != Policy::Failover {
                    return Err(src.error(
                        value.span(),
                        format!(
                            "VIP {name:?}: min_healthy only applies to policy = \"failover\", and this VIP's \
                             policy is weighted"
                        ),
                    ));
                }
                n
            }
        };
        let max_unhealthy_fraction = fraction(
            src,
            raw.max_unhealthy_fraction.as_ref(),
            DEFAULT_MAX_UNHEALTHY_FRACTION,
            &format!("VIP {name:?}: max_unhealthy_fraction"),
        )?;
        if let Some(fallback) = &raw.fallback_pool {
            if fallback.get_ref().is_empty() {
                return Err(src.error(fallback.span(), format!("VIP {name:?}: fallback_pool must not be empty")));
            }
        }
        let (steer, steer_spans) = check_steer(src, name, address, &raw.steer)?;

        vips.push(CheckedVip {
            vip: Vip {
                name: name.to_string(),
                address,
                port,
                protocol,
                affinity: raw.affinity.as_ref().map(|a| *a.get_ref()).unwrap_or_default(),
                pools: pools.get_ref().iter().map(|p| p.get_ref().clone()).collect(),
                policy,
                min_healthy,
                fallback_pool: raw.fallback_pool.as_ref().map(|f| f.get_ref().clone()),
                max_unhealthy_fraction,
                steer,
            },
            span: span.clone(),
            pools_span: pools.span(),
            pool_spans: pools.get_ref().iter().map(|p| p.span()).collect(),
            steer: steer_spans,
            fallback_span: raw.fallback_pool.as_ref().map(|f| f.span()),
            min_healthy_span: raw.min_healthy.as_ref().map(|m| m.span()),
        });
    }
    Ok(vips)
}

/// A VIP's `[[vip.steer]]` rules, on their own: prefixes and pool lists.
fn check_steer(
    src: &Source,
    vip: &str,
    vip_address: IpAddr,
    raws: &[Spanned<RawSteer>],
) -> Result<(Vec<SteerRule>, Vec<CheckedSteer>)> {
    let mut prefixes: HashMap<Prefix, usize> = HashMap::new();
    let mut rules = Vec::new();
    let mut spans = Vec::new();
    for raw_rule in raws {
        let raw = raw_rule.get_ref();
        let client_prefix = check_prefix(src, vip, vip_address, &raw.client_prefix)?;
        let at = raw.client_prefix.span();
        if let Some(line) = prefixes.get(&client_prefix) {
            return Err(src.error(
                at,
                format!(
                    "VIP {vip:?} already has a steer rule for {client_prefix} (line {line}): each prefix may \
                     appear once per VIP. Prefixes of the same length overlap only when they are identical, and \
                     the edge could not choose between two rules' pools"
                ),
            ));
        }
        prefixes.insert(client_prefix, src.line(&at));

        let Some(pools) = &raw.pools else {
            return Err(src.error(
                raw_rule.span(),
                format!(
                    "VIP {vip:?}: the steer rule for {client_prefix} lists no pools: add pools = [\"<pool name>\"]"
                ),
            ));
        };
        if pools.get_ref().is_empty() {
            return Err(src.error(
                pools.span(),
                format!("VIP {vip:?}: the steer rule for {client_prefix} must list at least one pool"),
            ));
        }
        let mut listed = HashSet::new();
        for pool in pools.get_ref() {
            if !listed.insert(pool.get_ref().as_str()) {
                return Err(src.error(
                    pool.span(),
                    format!(
                        "pool {:?} is listed twice by VIP {vip:?}'s steer rule for {client_prefix}",
                        pool.get_ref()
                    ),
                ));
            }
        }
        rules.push(SteerRule { client_prefix, pools: pools.get_ref().iter().map(|p| p.get_ref().clone()).collect() });
        spans.push(CheckedSteer {
            pools_span: pools.span(),
            pool_spans: pools.get_ref().iter().map(|p| p.span()).collect(),
        });
    }
    Ok((rules, spans))
}

/// A steer rule's `client_prefix`: `address/length`, no host bits, the VIP's
/// address family.
fn check_prefix(src: &Source, vip: &str, vip_address: IpAddr, value: &Spanned<String>) -> Result<Prefix> {
    let text = value.get_ref();
    let at = value.span();
    let example = if vip_address.is_ipv4() { "198.51.100.0/24" } else { "2001:db8::/32" };
    let prefix = match text.parse::<Prefix>() {
        Ok(prefix) => prefix,
        Err(PrefixError::Syntax) => {
            let why = if text.contains('/') { "" } else { " (the /length is missing)" };
            return Err(src.error(
                at,
                format!("client_prefix {text:?} is not a prefix{why}: write address/length, like {example}"),
            ));
        }
        Err(PrefixError::TooLong { max }) => {
            let family = if max == 32 { "IPv4" } else { "IPv6" };
            return Err(
                src.error(at, format!("client_prefix {text:?}: the length of an {family} prefix is at most {max}"))
            );
        }
        Err(PrefixError::HostBits { suggestion }) => {
            return Err(src.error(
                at,
                format!(
                    "client_prefix {text:?} has bits set past its length /{}: did you mean {suggestion}?",
                    suggestion.len
                ),
            ));
        }
    };
    if prefix.is_ipv4() != vip_address.is_ipv4() {
        let (family, vip_family) = if prefix.is_ipv4() { ("IPv4", "IPv6") } else { ("IPv6", "IPv4") };
        return Err(src.error(
            at,
            format!(
                "client_prefix {prefix} is {family} but VIP {vip:?} ({vip_address}) is {vip_family}: a VIP only \
                 sees clients of its own address family"
            ),
        ));
    }
    if let IpAddr::V6(a) = prefix.address {
        if prefix.len >= 96 && a.to_ipv4_mapped().is_some() {
            return Err(src.error(
                at,
                format!(
                    "client_prefix {prefix} is an IPv4-mapped IPv6 prefix, which no client address matches: \
                     steer IPv4 clients in an IPv4 VIP"
                ),
            ));
        }
    }
    Ok(prefix)
}

fn check_pools(src: &Source, edge: &Edge, vips: &[CheckedVip], raws: &[Spanned<RawPool>]) -> Result<Vec<CheckedPool>> {
    let mut vip_addresses: HashMap<IpAddr, &CheckedVip> = HashMap::new();
    for vip in vips {
        vip_addresses.entry(vip.vip.address).or_insert(vip);
    }
    let backend_limit = edge.max_backends - 1;
    let mut distinct: HashSet<IpAddr> = HashSet::new();
    // The first pool each address is in, with its monitor there.
    let mut monitored: HashMap<IpAddr, (&str, usize, Monitor)> = HashMap::new();
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut pools = Vec::new();
    for raw_pool in raws {
        let span = raw_pool.span();
        let raw = raw_pool.get_ref();
        let name = raw.name.get_ref().as_str();
        if name.is_empty() {
            return Err(src.error(raw.name.span(), "pool name must not be empty"));
        }
        if let Some(line) = names.get(name) {
            return Err(
                src.error(raw.name.span(), format!("pool name {name:?} is already used by the pool at line {line}"))
            );
        }
        names.insert(name, src.line(&span));
        let weight = parse_weight(src, raw.weight.as_ref(), "pool weight")?;
        let who = format!("pool {name:?}");
        let max_latency_ms = match &raw.max_latency_ms {
            None => None,
            Some(value) => Some(bounded(src, value, &format!("{who}: max_latency_ms"), 1, u32::MAX as i64)? as u32),
        };
        let capacity = match &raw.capacity {
            None => None,
            Some(value) => {
                let x = *value.get_ref();
                if !(x.is_finite() && x > 0.0) {
                    return Err(src.error(value.span(), format!("{who}: capacity must be a positive number, not {x}")));
                }
                Some(x)
            }
        };
        let max_utilization =
            fraction(src, raw.max_utilization.as_ref(), DEFAULT_MAX_UTILIZATION, &format!("{who}: max_utilization"))?;
        let pool_monitor = match &raw.monitor {
            None => None,
            Some(table) => {
                let keys = monitor_keys(src, table.get_ref(), &who)?;
                let Some((protocol, _)) = &keys.protocol else {
                    return Err(src.error(
                        table.span(),
                        format!("{who}: the monitor must set protocol (\"tcp\", \"http\", \"https\" or \"none\")"),
                    ));
                };
                applies(src, &keys, *protocol, &who, "")?;
                Some(keys)
            }
        };

        let Some(raw_backends) = &raw.backends else {
            return Err(
                src.error(span, format!("pool {name:?} has no backends: add backends = [{{ address = \"...\" }}]"))
            );
        };
        if raw_backends.get_ref().is_empty() {
            return Err(src.error(raw_backends.span(), format!("pool {name:?} must have at least one backend")));
        }
        let mut seen: HashMap<IpAddr, usize> = HashMap::new();
        let mut backends = Vec::new();
        let mut backend_spans = Vec::new();
        for raw_backend in raw_backends.get_ref() {
            let raw_backend = raw_backend.get_ref();
            let at = raw_backend.address.span();
            let address = parse_ip(src, &raw_backend.address, "backend address")?;
            usable(src, address, at.clone(), "backend address")?;
            if let Some(vip) = vip_addresses.get(&address) {
                return Err(src.error(
                    at,
                    format!(
                        "backend address {address} is the address of VIP {:?} (line {}): packets sent to it \
                         would come back to the edge",
                        vip.vip.name,
                        src.line(&vip.span)
                    ),
                ));
            }
            if let Some(key) = tunnel_source_key(edge, address) {
                return Err(src.error(
                    at,
                    format!("backend address {address} is the edge's own {key}: packets would never leave the edge"),
                ));
            }
            if let Some(line) = seen.get(&address) {
                return Err(
                    src.error(at, format!("backend {address} is listed twice in pool {name:?} (first at line {line})"))
                );
            }
            seen.insert(address, src.line(&at));
            if distinct.insert(address) && distinct.len() as u64 > backend_limit as u64 {
                return Err(src.error(
                    at,
                    format!(
                        "too many backends: edge.max_backends = {} allows {backend_limit} distinct backend \
                         addresses over all pools, and {address} is one more",
                        edge.max_backends
                    ),
                ));
            }
            let weight = parse_weight(src, raw_backend.weight.as_ref(), "backend weight")?;

            let backend_who = format!("backend {address} (pool {name:?})");
            let overrides = match &raw_backend.monitor {
                None => None,
                Some(table) => Some((monitor_keys(src, table.get_ref(), &backend_who)?, table.span())),
            };
            let monitor = resolve_monitor(
                src,
                name,
                pool_monitor.as_ref(),
                overrides.as_ref().map(|(keys, span)| (keys, span.clone())),
                &backend_who,
            )?;
            match monitored.get(&address) {
                Some((first_pool, line, first)) if *first != monitor => {
                    return Err(src.error(
                        at,
                        format!(
                            "backend {address} is monitored differently in pools {first_pool:?} (line {line}) and \
                             {name:?}: {}; an address has one health state, so give it the same monitor in every pool",
                            monitor_difference(first, &monitor, first_pool, name)
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    monitored.insert(address, (name, src.line(&at), monitor.clone()));
                }
            }
            backends.push(BackendConfig { address, weight, monitor });
            backend_spans.push(at);
        }
        pools.push(CheckedPool {
            pool: Pool { name: name.to_string(), weight, backends, max_latency_ms, capacity, max_utilization },
            backend_spans,
        });
    }
    Ok(pools)
}

/// What each VIP's pools must satisfy: they exist, their backends can be
/// reached from the VIP's address family, and some backend takes new flows.
fn check_vip_pools(src: &Source, edge: &Edge, vips: &[CheckedVip], pools: &[CheckedPool]) -> Result<()> {
    let by_name: HashMap<&str, &CheckedPool> = pools.iter().map(|p| (p.pool.name.as_str(), p)).collect();
    for checked in vips {
        let vip = &checked.vip;
        let mut used = Vec::new();
        for (pool_name, at) in vip.pools.iter().zip(&checked.pool_spans) {
            let pool = use_pool(src, edge, vip, &by_name, pool_name, at, "uses pool")?;
            min_healthy(src, checked, pool, at)?;
            used.push(&pool.pool);
        }
        some_weight(src, vip, used, &checked.pools_span, "")?;

        for (rule, spans) in vip.steer.iter().zip(&checked.steer) {
            let uses = format!("steers {} to pool", rule.client_prefix);
            let mut used = Vec::new();
            for (pool_name, at) in rule.pools.iter().zip(&spans.pool_spans) {
                let pool = use_pool(src, edge, vip, &by_name, pool_name, at, &uses)?;
                min_healthy(src, checked, pool, at)?;
                used.push(&pool.pool);
            }
            let whose = format!("'s steer rule for {}", rule.client_prefix);
            some_weight(src, vip, used, &spans.pools_span, &whose)?;
        }

        if let (Some(fallback), Some(at)) = (&vip.fallback_pool, &checked.fallback_span) {
            let pool = &use_pool(src, edge, vip, &by_name, fallback, at, "has the fallback_pool")?.pool;
            if !pool.backends.iter().any(|b| pool.weight as u64 * b.weight as u64 > 0) {
                return Err(src.error(
                    at.clone(),
                    format!(
                        "VIP {:?}'s fallback_pool {fallback:?} has no backend for new flows: every backend has an \
                         effective weight (pool weight x backend weight) of 0",
                        vip.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The pool `pool_name` that `vip` `uses` (a phrase ending in "pool", for
/// messages), written at `at`: it exists and the VIP can reach its backends.
fn use_pool<'a>(
    src: &Source,
    edge: &Edge,
    vip: &Vip,
    by_name: &HashMap<&str, &'a CheckedPool>,
    pool_name: &str,
    at: &Range<usize>,
    uses: &str,
) -> Result<&'a CheckedPool> {
    let Some(pool) = by_name.get(pool_name) else {
        return Err(
            src.error(at.clone(), format!("VIP {:?} {uses} {pool_name:?}, but no [[pool]] has that name", vip.name))
        );
    };
    for (backend, backend_at) in pool.pool.backends.iter().zip(&pool.backend_spans) {
        let line = src.line(backend_at);
        match (vip.address, backend.address) {
            (IpAddr::V6(_), IpAddr::V4(_)) => {
                return Err(src.error(
                    at.clone(),
                    format!(
                        "VIP {:?} is IPv6 but pool {pool_name:?} has the IPv4 backend {} (line {line}): \
                         IPv6 packets can only be tunnelled to IPv6 backends",
                        vip.name, backend.address
                    ),
                ));
            }
            (_, IpAddr::V6(_)) if edge.tunnel_source_v6.is_none() => {
                return Err(src.error(
                    at.clone(),
                    format!(
                        "VIP {:?} {uses} {pool_name:?}, whose backend {} (line {line}) is IPv6, but \
                         edge.tunnel_source_v6 is not set: set it to tunnel to IPv6 backends",
                        vip.name, backend.address
                    ),
                ));
            }
            _ => {}
        }
    }
    Ok(pool)
}

/// Under failover, a pool with fewer backends than `min_healthy` could never
/// be chosen.
fn min_healthy(src: &Source, checked: &CheckedVip, pool: &CheckedPool, at: &Range<usize>) -> Result<()> {
    let vip = &checked.vip;
    let count = pool.pool.backends.len();
    if vip.policy == Policy::Failover && (count as u64) < vip.min_healthy as u64 {
        let set_at = checked.min_healthy_span.as_ref().map(|s| format!(" (line {})", src.line(s))).unwrap_or_default();
        return Err(src.error(
            at.clone(),
            format!(
                "pool {:?} has {count} backend(s), fewer than VIP {:?}'s min_healthy = {}{set_at}: failover \
                 could never choose it",
                pool.pool.name, vip.name, vip.min_healthy
            ),
        ));
    }
    Ok(())
}

/// Some backend of `pools` takes new flows, and the effective weights fit a
/// `u32`. `whose` follows the VIP's name in messages.
fn some_weight<'a>(
    src: &Source,
    vip: &Vip,
    pools: impl IntoIterator<Item = &'a Pool>,
    at: &Range<usize>,
    whose: &str,
) -> Result<()> {
    let total: u64 = effective_weights(pools).values().sum();
    if total == 0 {
        return Err(src.error(
            at.clone(),
            format!(
                "VIP {:?}{whose} would have no backend for new flows: every backend of its pools has an effective \
                 weight (pool weight x backend weight) of 0",
                vip.name
            ),
        ));
    }
    if total > u32::MAX as u64 {
        return Err(src.error(
            at.clone(),
            format!(
                "the effective weights (pool weight x backend weight) of VIP {:?}{whose}'s backends add up to \
                 {total}, more than {}; lower some weights",
                vip.name,
                u32::MAX
            ),
        ));
    }
    Ok(())
}

/// A value from the file and where it is.
type At<T> = Option<(T, Range<usize>)>;

/// A `monitor` table's keys, each checked on its own.
#[derive(Default)]
struct MonitorKeys {
    protocol: At<MonitorProtocol>,
    port: At<u16>,
    path: At<String>,
    expected_codes: At<ExpectedCodes>,
    host: At<String>,
    tls_verify: At<bool>,
    interval_ms: At<u32>,
    timeout_ms: At<u32>,
    consecutive_up: At<u32>,
    consecutive_down: At<u32>,
}

impl MonitorKeys {
    /// The keys set, other than `protocol`, in file-format order.
    fn set(&self) -> Vec<(&'static str, Range<usize>)> {
        fn at<T>(key: &'static str, value: &At<T>) -> Option<(&'static str, Range<usize>)> {
            value.as_ref().map(|(_, span)| (key, span.clone()))
        }
        [
            at("port", &self.port),
            at("path", &self.path),
            at("expected_codes", &self.expected_codes),
            at("host", &self.host),
            at("tls_verify", &self.tls_verify),
            at("interval_ms", &self.interval_ms),
            at("timeout_ms", &self.timeout_ms),
            at("consecutive_up", &self.consecutive_up),
            at("consecutive_down", &self.consecutive_down),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// Checks each key of a `monitor` table of `who` (a pool or a backend).
fn monitor_keys(src: &Source, raw: &RawMonitor, who: &str) -> Result<MonitorKeys> {
    let key = |name: &str| format!("{who}: monitor.{name}");
    let count = |value: &Option<Spanned<i64>>, name: &str, max: i64| -> Result<At<u32>> {
        match value {
            None => Ok(None),
            Some(v) => Ok(Some((bounded(src, v, &key(name), 1, max)? as u32, v.span()))),
        }
    };
    let port = match &raw.port {
        None => None,
        Some(v) => Some((bounded(src, v, &key("port"), 1, u16::MAX as i64)? as u16, v.span())),
    };
    let path = match &raw.path {
        None => None,
        Some(v) => {
            let path = v.get_ref();
            if !path.starts_with('/') {
                return Err(
                    src.error(v.span(), format!("{} must start with '/', like \"/health\", not {path:?}", key("path")))
                );
            }
            if !path.chars().all(|c| c.is_ascii_graphic()) {
                return Err(src.error(
                    v.span(),
                    format!(
                        "{} {path:?} may only hold printable ASCII, without spaces: percent-encode other \
                         characters",
                        key("path")
                    ),
                ));
            }
            Some((path.clone(), v.span()))
        }
    };
    let expected_codes = match &raw.expected_codes {
        None => None,
        Some(v) => {
            let text = v.get_ref();
            if text.trim().is_empty() {
                return Err(src.error(
                    v.span(),
                    format!("{} must not be empty: write e.g. \"2xx\" or \"200,204\"", key("expected_codes")),
                ));
            }
            let codes: ExpectedCodes = text
                .parse()
                .map_err(|why| src.error(v.span(), format!("{} {text:?}: {why}", key("expected_codes"))))?;
            Some((codes, v.span()))
        }
    };
    let host = match &raw.host {
        None => None,
        Some(v) => {
            let host = v.get_ref();
            let why = if host.is_empty() {
                Some("it is empty")
            } else if host.contains('/') {
                Some("it contains '/' (give the name alone, the path goes in monitor.path)")
            } else if !host.chars().all(|c| c.is_ascii_graphic()) {
                Some("it must be printable ASCII without spaces (write international names in punycode)")
            } else {
                None
            };
            if let Some(why) = why {
                return Err(src.error(v.span(), format!("{} {host:?} is not a host name: {why}", key("host"))));
            }
            Some((host.clone(), v.span()))
        }
    };
    let max_interval = MAX_MONITOR_INTERVAL_MS as i64;
    Ok(MonitorKeys {
        protocol: raw.protocol.as_ref().map(|p| (*p.get_ref(), p.span())),
        port,
        path,
        expected_codes,
        host,
        tls_verify: raw.tls_verify.as_ref().map(|t| (*t.get_ref(), t.span())),
        interval_ms: count(&raw.interval_ms, "interval_ms", max_interval)?,
        timeout_ms: count(&raw.timeout_ms, "timeout_ms", max_interval)?,
        consecutive_up: count(&raw.consecutive_up, "consecutive_up", u32::MAX as i64)?,
        consecutive_down: count(&raw.consecutive_down, "consecutive_down", u32::MAX as i64)?,
    })
}

/// Refuses keys of `keys` that a `protocol` monitor would ignore; `from`
/// says where the protocol comes from, for messages ("" for `keys` itself).
fn applies(src: &Source, keys: &MonitorKeys, protocol: MonitorProtocol, who: &str, from: &str) -> Result<()> {
    for (key, at) in keys.set() {
        let why = match protocol {
            MonitorProtocol::None => {
                format!("has no effect: the monitor's protocol is \"none\"{from}, so nothing is checked")
            }
            MonitorProtocol::Tcp if matches!(key, "path" | "expected_codes" | "host" | "tls_verify") => {
                format!("applies only to http and https monitors, and this one is tcp{from}")
            }
            MonitorProtocol::Http if key == "tls_verify" => {
                format!("applies only to https monitors, and this one is http{from}")
            }
            _ => continue,
        };
        return Err(src.error(at, format!("{who}: monitor.{key} {why}")));
    }
    Ok(())
}

/// Where a monitor value comes from.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Origin {
    Default,
    Pool,
    Backend,
}

/// A backend's monitor: its pool's `monitor` (`pool`) with the backend's
/// own `monitor` (`overrides`, and where that table is) on top.
/// `backend_who` names the backend in messages.
fn resolve_monitor(
    src: &Source,
    pool_name: &str,
    pool: Option<&MonitorKeys>,
    overrides: Option<(&MonitorKeys, Range<usize>)>,
    backend_who: &str,
) -> Result<Monitor> {
    let empty = MonitorKeys::default();
    let pool_keys = pool.unwrap_or(&empty);
    let (own, own_span) = match &overrides {
        Some((keys, span)) => (*keys, Some(span.clone())),
        None => (&empty, None),
    };
    // Problems of a backend without overrides are the pool table's.
    let per_backend = own_span.is_some();
    let pool_who = format!("pool {pool_name:?}");
    let who = if per_backend { backend_who } else { pool_who.as_str() };

    let (protocol, protocol_at) = match (&own.protocol, &pool_keys.protocol) {
        (Some((protocol, at)), _) => {
            applies(src, own, *protocol, backend_who, "")?;
            (*protocol, at.clone())
        }
        (None, Some((protocol, at))) => {
            applies(src, own, *protocol, backend_who, &format!(" (from pool {pool_name:?}'s monitor)"))?;
            (*protocol, at.clone())
        }
        (None, None) => {
            if let Some(span) = own_span {
                return Err(src.error(
                    span,
                    format!(
                        "{backend_who}: the monitor sets no protocol, and pool {pool_name:?} has no monitor to \
                         take one from: add protocol = \"tcp\", \"http\" or \"https\""
                    ),
                ));
            }
            return Ok(Monitor::default());
        }
    };
    if protocol == MonitorProtocol::None {
        return Ok(Monitor::default());
    }

    /// The backend's value, else the pool's, else none.
    fn pick<'k, T>(own: &'k At<T>, pool: &'k At<T>) -> Option<(&'k T, &'k Range<usize>, Origin)> {
        own.as_ref()
            .map(|(v, at)| (v, at, Origin::Backend))
            .or_else(|| pool.as_ref().map(|(v, at)| (v, at, Origin::Pool)))
    }
    let value = |picked: Option<(&u32, &Range<usize>, Origin)>, default: u32| {
        picked.map_or((default, None, Origin::Default), |(v, at, origin)| (*v, Some(at.clone()), origin))
    };

    let port = match pick(&own.port, &pool_keys.port) {
        Some((port, _, _)) => *port,
        None if protocol == MonitorProtocol::Tcp => {
            let at = own.protocol.as_ref().map(|(_, at)| at.clone()).or(own_span).unwrap_or(protocol_at);
            return Err(src.error(
                at,
                format!(
                    "{who}: a tcp monitor needs a port: set port in pool {pool_name:?}'s monitor{}",
                    if per_backend { " or in the backend's" } else { "" }
                ),
            ));
        }
        None => protocol.default_port(),
    };

    let interval = value(pick(&own.interval_ms, &pool_keys.interval_ms), DEFAULT_MONITOR_INTERVAL_MS);
    let timeout = value(pick(&own.timeout_ms, &pool_keys.timeout_ms), DEFAULT_MONITOR_TIMEOUT_MS);
    if timeout.0 > interval.0 {
        let describe = |origin: Origin| match origin {
            Origin::Default => ", the default".to_string(),
            Origin::Pool if per_backend => format!(", from pool {pool_name:?}'s monitor"),
            _ => String::new(),
        };
        // Point at the value written closest to the backend; timeout first.
        // (The defaults agree, so at least one was written.)
        let at = if timeout.2 >= interval.2 { timeout.1.clone() } else { interval.1.clone() };
        return Err(src.error(
            at.unwrap_or(protocol_at),
            format!(
                "{who}: monitor.timeout_ms ({}{}) is longer than monitor.interval_ms ({}{}): a check must end \
                 before the next one starts",
                timeout.0,
                describe(timeout.2),
                interval.0,
                describe(interval.2)
            ),
        ));
    }

    let http = protocol.is_http();
    let path = pick(&own.path, &pool_keys.path).filter(|_| http).map(|(p, _, _)| p.clone());
    let expected_codes =
        pick(&own.expected_codes, &pool_keys.expected_codes).filter(|_| http).map(|(c, _, _)| c.clone());
    Ok(Monitor {
        protocol,
        port,
        path: path.unwrap_or_else(|| DEFAULT_MONITOR_PATH.to_string()),
        expected_codes: expected_codes.unwrap_or_default(),
        host: pick(&own.host, &pool_keys.host).filter(|_| http).map(|(h, _, _)| h.clone()),
        tls_verify: protocol == MonitorProtocol::Https
            && pick(&own.tls_verify, &pool_keys.tls_verify).is_some_and(|(t, _, _)| *t),
        interval_ms: interval.0,
        timeout_ms: timeout.0,
        consecutive_up: value(pick(&own.consecutive_up, &pool_keys.consecutive_up), DEFAULT_CONSECUTIVE_UP).0,
        consecutive_down: value(pick(&own.consecutive_down, &pool_keys.consecutive_down), DEFAULT_CONSECUTIVE_DOWN).0,
    })
}

/// The first way monitor `a` (in pool `pool_a`) differs from `b` (in `pool_b`).
fn monitor_difference(a: &Monitor, b: &Monitor, pool_a: &str, pool_b: &str) -> String {
    let host = |m: &Monitor| m.host.as_ref().map_or_else(|| "unset".to_string(), |h| format!("{h:?}"));
    let fields = [
        ("protocol", a.protocol.to_string(), b.protocol.to_string()),
        ("port", a.port.to_string(), b.port.to_string()),
        ("path", format!("{:?}", a.path), format!("{:?}", b.path)),
        ("expected_codes", format!("\"{}\"", a.expected_codes), format!("\"{}\"", b.expected_codes)),
        ("host", host(a), host(b)),
        ("tls_verify", a.tls_verify.to_string(), b.tls_verify.to_string()),
        ("interval_ms", a.interval_ms.to_string(), b.interval_ms.to_string()),
        ("timeout_ms", a.timeout_ms.to_string(), b.timeout_ms.to_string()),
        ("consecutive_up", a.consecutive_up.to_string(), b.consecutive_up.to_string()),
        ("consecutive_down", a.consecutive_down.to_string(), b.consecutive_down.to_string()),
    ];
    fields
        .into_iter()
        .find(|(_, x, y)| x != y)
        .map(|(key, x, y)| format!("{key} is {x} in {pool_a:?} and {y} in {pool_b:?}"))
        .unwrap_or_default()
}

fn parse_ip(src: &Source, value: &Spanned<String>, what: &str) -> Result<IpAddr> {
    value.get_ref().parse().map_err(|_| {
        src.error(value.span(), format!("{what} {:?} is not an IP address{}", value.get_ref(), hint(value)))
    })
}

/// A hint for a common way of writing an address wrongly.
fn hint(value: &Spanned<String>) -> &'static str {
    let text = value.get_ref();
    if text.contains('/') {
        " (write a single address, without a prefix length)"
    } else if text.trim() != text {
        " (remove the spaces)"
    } else {
        ""
    }
}

/// Refuses addresses that packets cannot usefully be sent to or from.
fn usable(src: &Source, address: IpAddr, at: Range<usize>, what: &str) -> Result<()> {
    let why = match address {
        IpAddr::V4(a) if a.is_unspecified() => "it is the unspecified address".to_string(),
        IpAddr::V4(a) if a.is_broadcast() => "it is the broadcast address".to_string(),
        IpAddr::V4(a) if a.is_multicast() => "it is a multicast address".to_string(),
        IpAddr::V4(a) if a.is_loopback() => "it is a loopback address".to_string(),
        IpAddr::V6(a) if a.is_unspecified() => "it is the unspecified address".to_string(),
        IpAddr::V6(a) if a.is_multicast() => "it is a multicast address".to_string(),
        IpAddr::V6(a) if a.is_loopback() => "it is a loopback address".to_string(),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => format!("it is an IPv4-mapped IPv6 address; write it as {v4}"),
            None => return Ok(()),
        },
        IpAddr::V4(_) => return Ok(()),
    };
    Err(src.error(at, format!("{what} {address} cannot be used: {why}")))
}

/// Which tunnel source `address` is, if it is one.
fn tunnel_source_key(edge: &Edge, address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(a) if a == edge.tunnel_source_v4 => Some("tunnel_source_v4"),
        IpAddr::V6(a) if Some(a) == edge.tunnel_source_v6 => Some("tunnel_source_v6"),
        _ => None,
    }
}

fn integer(src: &Source, value: &Spanned<i64>, what: &str, min: i64, max: i64) -> Result<i64> {
    let n = *value.get_ref();
    if (min..=max).contains(&n) {
        Ok(n)
    } else {
        Err(src.error(value.span(), format!("{what} must be between {min} and {max}, not {n}")))
    }
}

/// An integer key that must be within `min..=max`, with a plain message for
/// negative numbers where only positive ones make sense.
fn bounded(src: &Source, value: &Spanned<i64>, key: &str, min: i64, max: i64) -> Result<i64> {
    let n = *value.get_ref();
    if (min..=max).contains(&n) {
        return Ok(n);
    }
    let range = if max >= u32::MAX as i64 { String::new() } else { format!(" ({min} to {max})") };
    let message = if n < 0 && min >= 0 {
        let kind = if min > 0 { "a positive" } else { "a non-negative" };
        format!("{key} must be {kind} integer{range}, not {n}")
    } else if n < min {
        format!("{key} must be at least {min}, not {n}")
    } else {
        format!("{key} must be at most {max}, not {n}")
    };
    Err(src.error(value.span(), message))
}

/// A fraction key: above 0, at most 1.
fn fraction(src: &Source, value: Option<&Spanned<f64>>, default: f64, key: &str) -> Result<f64> {
    let Some(value) = value else { return Ok(default) };
    let x = *value.get_ref();
    if x > 0.0 && x <= 1.0 {
        Ok(x)
    } else {
        Err(src.error(value.span(), format!("{key} must be above 0 and at most 1, not {x}")))
    }
}

fn parse_weight(src: &Source, value: Option<&Spanned<i64>>, what: &str) -> Result<u32> {
    match value {
        None => Ok(DEFAULT_WEIGHT),
        Some(v) => Ok(integer(src, v, what, 0, MAX_WEIGHT as i64)? as u32),
    }
}

/// A map size: at least `min`, at most `u32::MAX`.
fn limit(src: &Source, value: Option<&Spanned<i64>>, default: u32, min: u32, key: &str) -> Result<u32> {
    let Some(value) = value else { return Ok(default) };
    let n = *value.get_ref();
    if n < min as i64 {
        Err(src.error(value.span(), format!("{key} must be at least {min}, not {n}")))
    } else if n > u32::MAX as i64 {
        Err(src.error(value.span(), format!("{key} must be at most {}, not {n}", u32::MAX)))
    } else {
        Ok(n as u32)
    }
}

fn absolute_path(src: &Source, value: Option<&Spanned<PathBuf>>, default: &str, key: &str) -> Result<PathBuf> {
    match value {
        None => Ok(PathBuf::from(default)),
        Some(path) if path.get_ref().is_absolute() => Ok(path.get_ref().clone()),
        Some(path) => Err(src.error(
            path.span(),
            format!("{key} must be an absolute path (starting with '/'), not {:?}", path.get_ref()),
        )),
    }
}

fn span_or<T>(value: Option<&Spanned<T>>, fallback: &Range<usize>) -> Range<usize> {
    value.map_or_else(|| fallback.clone(), |v| v.span())
}

/// The smallest prime >= `n`, if one fits a `u32`.
fn next_prime(n: u32) -> Option<u32> {
    (n..=u32::MAX).find(|&p| is_prime(p))
}
