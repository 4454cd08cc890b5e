//! `[[pool]]`: pools and their backends, and what each VIP's pools (listed,
//! steered to, fallback) must satisfy.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::ops::Range;

use toml::Spanned;

use super::monitor::{applies, monitor_difference, monitor_keys, resolve_monitor};
use super::values::{bounded, fraction, parse_ip, parse_weight, tunnel_source_key, unique_name, usable};
use super::{CheckedPool, CheckedVip, Result};
use crate::config::raw::RawPool;
use crate::config::{
    effective_weights, BackendConfig, Edge, Monitor, Policy, Pool, Source, Vip, DEFAULT_MAX_UTILIZATION,
};

pub(super) fn check_pools(
    src: &Source,
    edge: &Edge,
    vips: &[CheckedVip],
    raws: &[Spanned<RawPool>],
) -> Result<Vec<CheckedPool>> {
    let mut vip_addresses: HashMap<IpAddr, &CheckedVip> = HashMap::new();
    for vip in vips {
        vip_addresses.entry(vip.vip.address).or_insert(vip);
    }
    let backend_limit = edge.max_backends - 1;
    let mut distinct: HashSet<IpAddr> = HashSet::new();
    // The first pool each address is in, with its monitor and second_chance
    // there.
    let mut monitored: HashMap<IpAddr, (&str, usize, Monitor, bool)> = HashMap::new();
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut pools = Vec::new();
    for raw_pool in raws {
        let span = raw_pool.span();
        let raw = raw_pool.get_ref();
        let name = unique_name(src, &mut names, &raw.name, &span, "pool")?;
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

        let pool_second_chance = raw.second_chance.as_ref().is_some_and(|v| *v.get_ref());

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
            let second_chance = raw_backend.second_chance.as_ref().map_or(pool_second_chance, |v| *v.get_ref());
            match monitored.get(&address) {
                Some((first_pool, line, first, _)) if *first != monitor => {
                    return Err(src.error(
                        at,
                        format!(
                            "backend {address} is monitored differently in pools {first_pool:?} (line {line}) and \
                             {name:?}: {}; an address has one health state, so give it the same monitor in every pool",
                            monitor_difference(first, &monitor, first_pool, name)
                        ),
                    ));
                }
                Some((first_pool, line, _, first)) if *first != second_chance => {
                    return Err(src.error(
                        at,
                        format!(
                            "backend {address} has second_chance = {first} in pool {first_pool:?} (line {line}) but \
                             {second_chance} in pool {name:?}: whether its decap understands hop lists is one fact \
                             about the machine, so give it the same second_chance in every pool"
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    monitored.insert(address, (name, src.line(&at), monitor.clone(), second_chance));
                }
            }
            backends.push(BackendConfig { address, weight, monitor, second_chance });
            backend_spans.push(at);
        }
        pools.push(CheckedPool {
            pool: Pool {
                name: name.to_string(),
                weight,
                backends,
                max_latency_ms,
                capacity,
                max_utilization,
                second_chance: pool_second_chance,
            },
            backend_spans,
        });
    }
    Ok(pools)
}

/// What each VIP's pools must satisfy: they exist, their backends can be
/// reached from the VIP's address family, and some backend takes new flows.
pub(super) fn check_vip_pools(src: &Source, edge: &Edge, vips: &[CheckedVip], pools: &[CheckedPool]) -> Result<()> {
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
pub(super) fn use_pool<'a>(
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
pub(super) fn min_healthy(src: &Source, checked: &CheckedVip, pool: &CheckedPool, at: &Range<usize>) -> Result<()> {
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
pub(super) fn some_weight<'a>(
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

#[cfg(test)]
mod tests {
    use crate::config::fixtures::*;
    use crate::config::*;

    #[test]
    fn vip_pool_references() {
        refused(&minimal_with(11, "pools = [] # here"), "at least one pool");
        refused(&minimal_with(11, "pools = [\"p\", \"nope\"] # here"), "no [[pool]] has that name");
        let err = refused(&minimal_with(11, "pools = [\"p\", \"p\"] # here"), "listed twice");
        assert_eq!(err.column, 15);
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

    #[test]
    fn second_chance_on_pools_and_backends() {
        let config = parse_str(MINIMAL).unwrap();
        assert!(!config.pools[0].second_chance && !config.pools[0].backends[0].second_chance, "never guessed");
        let two =
            "backends = [ { address = \"198.51.100.1\" }, { address = \"198.51.100.2\", second_chance = false } ]";
        let config = parse_str(&minimal_with(15, &format!("second_chance = true\n{two}"))).unwrap();
        let pool = &config.pools[0];
        assert!(pool.second_chance);
        assert_eq!(pool.backends.iter().map(|b| b.second_chance).collect::<Vec<_>>(), [true, false]);
        let one = "backends = [ { address = \"198.51.100.1\", weight = 100, second_chance = true } ]";
        let config = parse_str(&minimal_with(15, one)).unwrap();
        assert!(!config.pools[0].second_chance && config.pools[0].backends[0].second_chance);
        assert_eq!(
            config.second_chance_backends().into_iter().collect::<Vec<_>>(),
            ["198.51.100.1".parse::<IpAddr>().unwrap()]
        );

        refused(&pool_with("second_chance = 1 # here\n"), "expected a boolean");
        refused(
            &minimal_with(15, "backends = [ { address = \"198.51.100.1\", second_chance = \"yes\" } ] # here"),
            "expected a boolean",
        );
        // One machine, one answer, whatever the pool.
        let text =
            minimal_with(15, one) + "[[pool]]\nname = \"q\"\nbackends = [ { address = \"198.51.100.1\" } ] # here\n";
        refused(&text, "backend 198.51.100.1 has second_chance = true in pool \"p\" (line 15) but false in pool \"q\"");
        parse_str(&text.replace("\"198.51.100.1\" } ] # here", "\"198.51.100.1\", second_chance = true } ]")).unwrap();
    }

    #[test]
    fn failover_and_fallback() {
        let text = policies("policy = \"failover\"\nfallback_pool = \"last\"\nmax_unhealthy_fraction = 0.25")
            .replace("pools = [\"p\"]", "pools = [\"q\", \"p\"]");
        let config = parse_str(&text).unwrap();
        let vip = &config.vips[0];
        assert_eq!(vip.policy, Policy::Failover);
        assert_eq!(
            (vip.min_healthy, vip.fallback_pool.as_deref(), vip.max_unhealthy_fraction),
            (1, Some("last"), 0.25)
        );
        assert_eq!(serde_json::to_value(vip).unwrap()["policy"], "failover");
        // min_healthy up to the smallest pool's size.
        parse_str(&text.replace("policy = \"failover\"", "policy = \"failover\"\nmin_healthy = 1")).unwrap();
        let text2 =
            policies("policy = \"failover\"\nmin_healthy = 2 # here").replace("pools = [\"p\"]", "pools = [\"q\"]");
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
}
