//! The checks: from the raw file to a `Config`, or the first problem found,
//! located at the offending value.
//!
//! Order: `[edge]`, then each `[[vip]]` on its own, then each `[[pool]]`
//! (which needs the VIP addresses), then what a VIP's pools must satisfy.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::path::PathBuf;

use gslb_common::{maglev::is_prime, TABLE_GENERATIONS};
use toml::Spanned;

use super::raw::{RawConfig, RawEdge, RawPool, RawVip};
use super::{
    effective_weights, BackendConfig, Config, ConfigError, Edge, Pool, Source, Vip, DEFAULT_ADMIN_SOCKET,
    DEFAULT_BPFFS_PIN, DEFAULT_MAX_BACKENDS, DEFAULT_MAX_FLOWS, DEFAULT_MAX_VIPS, DEFAULT_TABLE_SIZE, DEFAULT_WEIGHT,
    MAX_WEIGHT,
};

type Result<T> = std::result::Result<T, ConfigError>;

/// A VIP and where its parts are in the file.
struct CheckedVip {
    vip: Vip,
    span: Range<usize>,
    pools_span: Range<usize>,
    /// One per entry of `vip.pools`.
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
    Ok(Config {
        edge,
        vips: vips.into_iter().map(|v| v.vip).collect(),
        pools: pools.into_iter().map(|p| p.pool).collect(),
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

        vips.push(CheckedVip {
            vip: Vip {
                name: name.to_string(),
                address,
                port,
                protocol,
                affinity: raw.affinity.as_ref().map(|a| *a.get_ref()).unwrap_or_default(),
                pools: pools.get_ref().iter().map(|p| p.get_ref().clone()).collect(),
                policy: raw.policy.as_ref().map(|p| *p.get_ref()).unwrap_or_default(),
            },
            span: span.clone(),
            pools_span: pools.span(),
            pool_spans: pools.get_ref().iter().map(|p| p.span()).collect(),
        });
    }
    Ok(vips)
}

fn check_pools(src: &Source, edge: &Edge, vips: &[CheckedVip], raws: &[Spanned<RawPool>]) -> Result<Vec<CheckedPool>> {
    let mut vip_addresses: HashMap<IpAddr, &CheckedVip> = HashMap::new();
    for vip in vips {
        vip_addresses.entry(vip.vip.address).or_insert(vip);
    }
    let backend_limit = edge.max_backends - 1;
    let mut distinct: HashSet<IpAddr> = HashSet::new();
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
            backends.push(BackendConfig { address, weight });
            backend_spans.push(at);
        }
        pools.push(CheckedPool { pool: Pool { name: name.to_string(), weight, backends }, backend_spans });
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
            let Some(pool) = by_name.get(pool_name.as_str()) else {
                return Err(src.error(
                    at.clone(),
                    format!("VIP {:?} uses pool {pool_name:?}, but no [[pool]] has that name", vip.name),
                ));
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
                                "VIP {:?} uses pool {pool_name:?}, whose backend {} (line {line}) is IPv6, but \
                                 edge.tunnel_source_v6 is not set: set it to tunnel to IPv6 backends",
                                vip.name, backend.address
                            ),
                        ));
                    }
                    _ => {}
                }
            }
            used.push(&pool.pool);
        }
        let total: u64 = effective_weights(used).values().sum();
        if total == 0 {
            return Err(src.error(
                checked.pools_span.clone(),
                format!(
                    "VIP {:?} would have no backend for new flows: every backend of its pools has an effective \
                     weight (pool weight x backend weight) of 0",
                    vip.name
                ),
            ));
        }
        if total > u32::MAX as u64 {
            return Err(src.error(
                checked.pools_span.clone(),
                format!(
                    "the effective weights (pool weight x backend weight) of VIP {:?}'s backends add up to \
                     {total}, more than {}; lower some weights",
                    vip.name,
                    u32::MAX
                ),
            ));
        }
    }
    Ok(())
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
