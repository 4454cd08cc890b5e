//! Health monitors: the keys of a `monitor` table, and each backend's
//! monitor resolved from its pool's and its own.

use std::ops::Range;

use toml::Spanned;

use super::values::bounded;
use super::Result;
use crate::config::raw::RawMonitor;
use crate::config::{
    ExpectedCodes, Monitor, MonitorProtocol, Source, DEFAULT_CONSECUTIVE_DOWN, DEFAULT_CONSECUTIVE_UP,
    DEFAULT_MONITOR_INTERVAL_MS, DEFAULT_MONITOR_PATH, DEFAULT_MONITOR_TIMEOUT_MS, MAX_MONITOR_INTERVAL_MS,
};

/// A value from the file and where it is.
type At<T> = Option<(T, Range<usize>)>;

/// A `monitor` table's keys, each checked on its own.
#[derive(Default)]
pub(super) struct MonitorKeys {
    pub(super) protocol: At<MonitorProtocol>,
    pub(super) port: At<u16>,
    pub(super) path: At<String>,
    pub(super) expected_codes: At<ExpectedCodes>,
    pub(super) host: At<String>,
    pub(super) tls_verify: At<bool>,
    pub(super) interval_ms: At<u32>,
    pub(super) timeout_ms: At<u32>,
    pub(super) consecutive_up: At<u32>,
    pub(super) consecutive_down: At<u32>,
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
pub(super) fn monitor_keys(src: &Source, raw: &RawMonitor, who: &str) -> Result<MonitorKeys> {
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
pub(super) fn applies(
    src: &Source,
    keys: &MonitorKeys,
    protocol: MonitorProtocol,
    who: &str,
    from: &str,
) -> Result<()> {
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
pub(super) enum Origin {
    Default,
    Pool,
    Backend,
}

/// A backend's monitor: its pool's `monitor` (`pool`) with the backend's
/// own `monitor` (`overrides`, and where that table is) on top.
/// `backend_who` names the backend in messages.
pub(super) fn resolve_monitor(
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
pub(super) fn monitor_difference(a: &Monitor, b: &Monitor, pool_a: &str, pool_b: &str) -> String {
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

#[cfg(test)]
mod tests {
    use crate::config::fixtures::*;
    use crate::config::*;

    #[test]
    fn monitor_merge() {
        let config = parse_str(&monitored()).unwrap();
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
        let tcp = monitored()
            .replace("monitor = { port = 8081, consecutive_down = 5 }", "monitor = { protocol = \"tcp\", port = 22 }");
        let config = parse_str(&tcp).unwrap();
        let tcp_monitor = &config.pools[0].backends[1].monitor;
        assert_eq!(
            *tcp_monitor,
            Monitor { protocol: MonitorProtocol::Tcp, port: 22, interval_ms: 2000, ..Monitor::default() }
        );
        // ... or turn monitoring off.
        let none =
            monitored().replace("monitor = { port = 8081, consecutive_down = 5 }", "monitor = { protocol = \"none\" }");
        assert_eq!(parse_str(&none).unwrap().pools[0].backends[1].monitor, Monitor::default());

        // HTTPS defaults to port 443 and may verify certificates.
        let https = monitored().replace("protocol = \"http\"", "protocol = \"https\"\ntls_verify = true");
        let config = parse_str(&https).unwrap();
        let monitor = &config.pools[0].backends[0].monitor;
        assert_eq!((monitor.protocol, monitor.port, monitor.tls_verify), (MonitorProtocol::Https, 443, true));

        // The JSON uses the file's spelling.
        let json = serde_json::to_value(parse_str(&monitored()).unwrap()).unwrap();
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
        refused(
            &monitor("path = \"health\" # here"),
            "monitor.path must start with '/', like \"/health\", not \"health\"",
        );
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
        refused(
            &tcp("path = \"/\" # here"),
            "monitor.path applies only to http and https monitors, and this one is tcp",
        );
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
            minimal_with(
                15,
                &format!("backends = [ {{ address = \"198.51.100.1\", monitor = {{ {monitor} }} }} ] # here"),
            )
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
                + &format!(
                    "[[pool]]\nname = \"q\"\nbackends = [ {{ address = \"198.51.100.1\" }} ] # here\n{q_monitor}\n"
                )
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
}
