//! Checks of single values the sections share: addresses, integers in
//! range, fractions, weights, paths.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::PathBuf;

use gslb_common::maglev::is_prime;
use toml::Spanned;

use super::Result;
use crate::config::{Edge, Source, DEFAULT_WEIGHT, MAX_WEIGHT};

pub(super) fn parse_ip(src: &Source, value: &Spanned<String>, what: &str) -> Result<IpAddr> {
    value.get_ref().parse().map_err(|_| {
        src.error(value.span(), format!("{what} {:?} is not an IP address{}", value.get_ref(), hint(value)))
    })
}

/// A hint for a common way of writing an address wrongly.
pub(super) fn hint(value: &Spanned<String>) -> &'static str {
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
pub(super) fn usable(src: &Source, address: IpAddr, at: Range<usize>, what: &str) -> Result<()> {
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
pub(super) fn tunnel_source_key(edge: &Edge, address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(a) if a == edge.tunnel_source_v4 => Some("tunnel_source_v4"),
        IpAddr::V6(a) if Some(a) == edge.tunnel_source_v6 => Some("tunnel_source_v6"),
        _ => None,
    }
}

pub(super) fn integer(src: &Source, value: &Spanned<i64>, what: &str, min: i64, max: i64) -> Result<i64> {
    let n = *value.get_ref();
    if (min..=max).contains(&n) {
        Ok(n)
    } else {
        Err(src.error(value.span(), format!("{what} must be between {min} and {max}, not {n}")))
    }
}

/// An integer key that must be within `min..=max`, with a plain message for
/// negative numbers where only positive ones make sense.
pub(super) fn bounded(src: &Source, value: &Spanned<i64>, key: &str, min: i64, max: i64) -> Result<i64> {
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

/// A duration key written as humantime does ("6h", "90m", "1h 30m", "0s"),
/// in whole seconds, less than `max_days` days.
pub(super) fn duration_secs(
    src: &Source,
    value: Option<&Spanned<String>>,
    default: &str,
    key: &str,
    max_days: u64,
) -> Result<u32> {
    let text = value.map_or(default, |v| v.get_ref().as_str());
    let at = || value.map(|v| v.span()).unwrap_or(0..0);
    let duration = humantime::parse_duration(text).map_err(|e| {
        src.error(at(), format!("{key} {text:?} is not a duration ({e}): write e.g. \"6h\", \"90m\" or \"0s\""))
    })?;
    if duration.subsec_nanos() != 0 {
        return Err(src.error(at(), format!("{key} {text:?} must be a whole number of seconds")));
    }
    let secs = duration.as_secs();
    if secs >= max_days * 86_400 {
        return Err(src.error(at(), format!("{key} must be less than {max_days} days, not {text:?}")));
    }
    Ok(secs as u32)
}

/// A fraction key: above 0, at most 1.
pub(super) fn fraction(src: &Source, value: Option<&Spanned<f64>>, default: f64, key: &str) -> Result<f64> {
    let Some(value) = value else { return Ok(default) };
    let x = *value.get_ref();
    if x > 0.0 && x <= 1.0 {
        Ok(x)
    } else {
        Err(src.error(value.span(), format!("{key} must be above 0 and at most 1, not {x}")))
    }
}

pub(super) fn parse_weight(src: &Source, value: Option<&Spanned<i64>>, what: &str) -> Result<u32> {
    match value {
        None => Ok(DEFAULT_WEIGHT),
        Some(v) => Ok(integer(src, v, what, 0, MAX_WEIGHT as i64)? as u32),
    }
}

/// A map size: at least `min`, at most `u32::MAX`.
pub(super) fn limit(src: &Source, value: Option<&Spanned<i64>>, default: u32, min: u32, key: &str) -> Result<u32> {
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

pub(super) fn absolute_path(
    src: &Source,
    value: Option<&Spanned<PathBuf>>,
    default: &str,
    key: &str,
) -> Result<PathBuf> {
    match value {
        None => Ok(PathBuf::from(default)),
        Some(path) if path.get_ref().is_absolute() => Ok(path.get_ref().clone()),
        Some(path) => Err(src.error(
            path.span(),
            format!("{key} must be an absolute path (starting with '/'), not {:?}", path.get_ref()),
        )),
    }
}

pub(super) fn span_or<T>(value: Option<&Spanned<T>>, fallback: &Range<usize>) -> Range<usize> {
    value.map_or_else(|| fallback.clone(), |v| v.span())
}

/// The smallest prime >= `n`, if one fits a `u32`.
pub(super) fn next_prime(n: u32) -> Option<u32> {
    (n..=u32::MAX).find(|&p| is_prime(p))
}

/// A name that is not empty and not taken by an earlier `what` (`names`:
/// each name seen so far, with its line).
pub(super) fn unique_name<'a>(
    src: &Source,
    names: &mut HashMap<&'a str, usize>,
    name: &'a Spanned<String>,
    span: &Range<usize>,
    what: &str,
) -> Result<&'a str> {
    let text = name.get_ref().as_str();
    if text.is_empty() {
        return Err(src.error(name.span(), format!("{what} name must not be empty")));
    }
    if let Some(line) = names.get(text) {
        return Err(
            src.error(name.span(), format!("{what} name {text:?} is already used by the {what} at line {line}"))
        );
    }
    names.insert(text, src.line(span));
    Ok(text)
}

/// An address and port to listen on or connect to (`key` in messages,
/// `example` in the advice); the port must not be 0.
pub(super) fn socket_address(
    src: &Source,
    value: Option<&Spanned<String>>,
    default: &str,
    key: &str,
    example: &str,
) -> Result<SocketAddr> {
    let Some(value) = value else { return Ok(default.parse().expect("the default is a socket address")) };
    let text = value.get_ref();
    let address: SocketAddr = text.parse().map_err(|_| {
        src.error(value.span(), format!("{key} {text:?} is not an address and port: write e.g. {example}"))
    })?;
    if address.port() == 0 {
        return Err(src.error(value.span(), format!("{key} must give a port other than 0")));
    }
    Ok(address)
}

#[cfg(test)]
mod tests {
    use crate::config::fixtures::*;

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
        let text = minimal_with(8, "address = \"2001:db8:1::80\"")
            .replace("pools = [\"p\"]", "pools = [\"p\"] # here")
            .replace(
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
}
