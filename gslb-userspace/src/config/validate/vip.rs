//! `[[vip]]`: each VIP on its own, with its `[[vip.steer]]` client-prefix
//! rules.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::ops::Range;

use toml::Spanned;

use super::values::{bounded, fraction, integer, parse_ip, tunnel_source_key, unique_name, usable};
use super::{CheckedSteer, CheckedVip, Result};
use crate::config::raw::{RawSteer, RawVip};
use crate::config::{
    Edge, Policy, Prefix, PrefixError, Protocol, Source, SteerRule, Vip, DEFAULT_MAX_UNHEALTHY_FRACTION,
    DEFAULT_MIN_HEALTHY,
};

pub(super) fn check_vips(src: &Source, edge: &Edge, raws: &[Spanned<RawVip>]) -> Result<Vec<CheckedVip>> {
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut identities: HashMap<(IpAddr, u16, Protocol), (&str, usize)> = HashMap::new();
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

        let name = unique_name(src, &mut names, &raw.name, &span, "VIP")?;

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

        let vip = format!("VIP {name:?}");
        let pools = pool_list(src, raw.pools.as_ref(), &span, &vip, &vip)?;

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
pub(super) fn check_steer(
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

        let pools = pool_list(
            src,
            raw.pools.as_ref(),
            &raw_rule.span(),
            &format!("VIP {vip:?}: the steer rule for {client_prefix}"),
            &format!("VIP {vip:?}'s steer rule for {client_prefix}"),
        )?;
        rules.push(SteerRule { client_prefix, pools: pools.get_ref().iter().map(|p| p.get_ref().clone()).collect() });
        spans.push(CheckedSteer {
            pools_span: pools.span(),
            pool_spans: pools.get_ref().iter().map(|p| p.span()).collect(),
        });
    }
    Ok((rules, spans))
}

/// The `pools` of a VIP or of a steer rule (`who` in messages, `owner` in
/// "listed twice by"): present, not empty, no pool twice.
fn pool_list<'a>(
    src: &Source,
    pools: Option<&'a Spanned<Vec<Spanned<String>>>>,
    span: &Range<usize>,
    who: &str,
    owner: &str,
) -> Result<&'a Spanned<Vec<Spanned<String>>>> {
    let Some(pools) = pools else {
        return Err(src.error(span.clone(), format!("{who} lists no pools: add pools = [\"<pool name>\"]")));
    };
    if pools.get_ref().is_empty() {
        return Err(src.error(pools.span(), format!("{who} must list at least one pool")));
    }
    let mut listed = HashSet::new();
    for pool in pools.get_ref() {
        if !listed.insert(pool.get_ref().as_str()) {
            return Err(src.error(pool.span(), format!("pool {:?} is listed twice by {owner}", pool.get_ref())));
        }
    }
    Ok(pools)
}

/// A steer rule's `client_prefix`: `address/length`, no host bits, the VIP's
/// address family.
pub(super) fn check_prefix(src: &Source, vip: &str, vip_address: IpAddr, value: &Spanned<String>) -> Result<Prefix> {
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

#[cfg(test)]
mod tests {
    use crate::config::fixtures::*;
    use crate::config::*;

    #[test]
    fn name_checks() {
        refused(&minimal_with(7, "name = \"\" # here"), "VIP name must not be empty");
        refused(&minimal_with(14, "name = \"\" # here"), "pool name must not be empty");
        let dup_vip = MINIMAL.to_string()
            + "[[vip]]\nname = \"web\" # here\naddress = \"203.0.113.11\"\nport = 80\nprotocol = \"tcp\"\npools = [\"p\"]\n";
        refused(&dup_vip, "already used by the VIP at line 6");
        let dup_pool =
            MINIMAL.to_string() + "[[pool]]\nname = \"p\" # here\nbackends = [ { address = \"198.51.100.2\" } ]\n";
        refused(&dup_pool, "already used by the pool at line 13");
    }

    #[test]
    fn vip_identity() {
        let vip = |name: &str, port: u16, proto: &str, marker: &str| {
            format!(
                "[[vip]]\nname = \"{name}\"\naddress = \"203.0.113.10\" {marker}\nport = {port}\nprotocol = \"{proto}\"\npools = [\"p\"]\n"
            )
        };
        // Port 0 next to exact ports, and TCP next to UDP, are fine.
        let ok =
            MINIMAL.to_string() + &vip("all", 0, "tcp", "") + &vip("udp", 80, "udp", "") + &vip("ssh", 22, "tcp", "");
        assert_eq!(parse_str(&ok).unwrap().vips.len(), 4);
        refused(
            &(MINIMAL.to_string() + &vip("again", 80, "tcp", "# here")),
            "same address, port and protocol as VIP \"web\"",
        );
        let two_all = MINIMAL.to_string() + &vip("all", 0, "udp", "") + &vip("all2", 0, "udp", "# here");
        refused(&two_all, "same address, port and protocol");
        refused(&minimal_with(9, "port = 65536 # here"), "between 0 and 65535");
    }

    #[test]
    fn prefixes() {
        let p = |s: &str| s.parse::<Prefix>().unwrap();
        let v4 = p("198.51.100.0/24");
        assert_eq!((v4.address, v4.len), ("198.51.100.0".parse().unwrap(), 24));
        assert_eq!(v4.to_string(), "198.51.100.0/24");
        assert!(v4.contains("198.51.100.255".parse().unwrap()));
        assert!(!v4.contains("198.51.101.0".parse().unwrap()));
        assert!(!v4.contains("::".parse().unwrap()));
        assert!(p("0.0.0.0/0").contains("203.0.113.1".parse().unwrap()));
        assert!(p("192.0.2.1/32").contains("192.0.2.1".parse().unwrap()));
        let v6 = p("2001:db8::/32");
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        assert!(!v6.contains("198.51.100.1".parse().unwrap()));
        assert!(p("::/0").contains("2001:db8::1".parse().unwrap()));
        assert_eq!(p("2001:db8::1/128").to_string(), "2001:db8::1/128");
        assert_eq!(Prefix::new("198.51.100.7".parse().unwrap(), 24), Some(v4));
        assert_eq!(Prefix::new("198.51.100.7".parse().unwrap(), 33), None);

        assert_eq!("198.51.100.7/24".parse::<Prefix>(), Err(PrefixError::HostBits { suggestion: v4 }));
        assert_eq!("198.51.100.0/33".parse::<Prefix>(), Err(PrefixError::TooLong { max: 32 }));
        assert_eq!("2001:db8::/129".parse::<Prefix>(), Err(PrefixError::TooLong { max: 128 }));
        assert_eq!("198.51.100.0/300".parse::<Prefix>(), Err(PrefixError::TooLong { max: 32 }));
        for bad in [
            "198.51.100.0",
            "198.51.100.0/",
            "198.51.100.0/x",
            "198.51.100/24",
            "/24",
            "198.51.100.0/+24",
            "198.51.100.0/ 24",
        ] {
            assert_eq!(bad.parse::<Prefix>(), Err(PrefixError::Syntax), "{bad:?}");
        }
        assert_eq!(serde_json::to_value(v4).unwrap(), "198.51.100.0/24");
    }

    #[test]
    fn steer_rules() {
        let text = policies(
            "[[vip.steer]]\nclient_prefix = \"198.51.100.0/24\"\npools = [\"q\"]\n\
             [[vip.steer]]\nclient_prefix = \"198.51.100.128/25\"\npools = [\"last\", \"p\"]\n",
        );
        let config = parse_str(&text).unwrap();
        let vip = &config.vips[0];
        assert_eq!(
            vip.steer,
            vec![
                SteerRule { client_prefix: "198.51.100.0/24".parse().unwrap(), pools: vec!["q".into()] },
                SteerRule {
                    client_prefix: "198.51.100.128/25".parse().unwrap(),
                    pools: vec!["last".into(), "p".into()]
                },
            ]
        );
        // The longest prefix wins.
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(vip.pools_for(ip("198.51.100.200")), ["last", "p"]);
        assert_eq!(vip.pools_for(ip("198.51.100.1")), ["q"]);
        assert_eq!(vip.pools_for(ip("203.0.113.1")), ["p"]);
        assert_eq!(vip.steer_rule(ip("198.51.100.1")).unwrap().client_prefix.len, 24);
        assert_eq!(serde_json::to_value(vip).unwrap()["steer"][0]["client_prefix"], "198.51.100.0/24");
        // Inline form.
        let inline = policies("steer = [ { client_prefix = \"198.51.100.0/24\", pools = [\"q\"] } ]");
        assert_eq!(parse_str(&inline).unwrap().vips[0].steer.len(), 1);

        let rule = |prefix: &str, pools: &str| {
            policies(&format!("[[vip.steer]]\nclient_prefix = \"{prefix}\"\npools = {pools}\n"))
        };
        refused(
            &rule("198.51.100.0/24", "[\"q\", \"nope\"] # here"),
            "VIP \"web\" steers 198.51.100.0/24 to pool \"nope\", but no [[pool]] has that name",
        );
        refused(
            &rule("198.51.100.0/24", "[\"q\", \"q\"] # here"),
            "pool \"q\" is listed twice by VIP \"web\"'s steer rule for 198.51.100.0/24",
        );
        refused(
            &rule("198.51.100.0/24", "[] # here"),
            "the steer rule for 198.51.100.0/24 must list at least one pool",
        );
        refused(
            &rule("198.51.100.0/24", "[\"zero\"] # here"),
            "VIP \"web\"'s steer rule for 198.51.100.0/24 would have no backend for new flows",
        );
        refused(
            &rule("198.51.100.0/24", "[\"v6\"] # here"),
            "VIP \"web\" steers 198.51.100.0/24 to pool \"v6\", whose backend 2001:db8:2::1",
        );
        refused(
            &policies("[[vip.steer]] # here\nclient_prefix = \"198.51.100.0/24\"\n"),
            "the steer rule for 198.51.100.0/24 lists no pools",
        );
        refused(&policies("[[vip.steer]] # here\npools = [\"q\"]\n"), "missing field `client_prefix`");
        refused(
            &policies("[[vip.steer]]\nclient_prefix = \"198.51.100.0/24\"\npools = [\"q\"]\nweight = 1 # here\n"),
            "unknown field `weight`",
        );
        refused(
            &policies("[vip.steer] # here\nclient_prefix = \"198.51.100.0/24\"\npools = [\"q\"]\n"),
            "[[vip.steer]] needs double brackets",
        );

        // Prefixes.
        let prefix = |p: &str| policies(&format!("[[vip.steer]]\nclient_prefix = \"{p}\" # here\npools = [\"q\"]\n"));
        refused(
            &prefix("198.51.100.7/24"),
            "client_prefix \"198.51.100.7/24\" has bits set past its length /24: did you mean 198.51.100.0/24?",
        );
        refused(&prefix("198.51.100.0/33"), "the length of an IPv4 prefix is at most 32");
        refused(
            &prefix("198.51.100.0"),
            "is not a prefix (the /length is missing): write address/length, like 198.51.100.0/24",
        );
        refused(&prefix("198.51.100/24"), "is not a prefix: write address/length");
        refused(&prefix("2001:db8::/32"), "client_prefix 2001:db8::/32 is IPv6 but VIP \"web\" (203.0.113.10) is IPv4");
        let two = |second: &str| {
            policies(&format!(
                "[[vip.steer]]\nclient_prefix = \"198.51.100.0/24\"\npools = [\"q\"]\n\
                 [[vip.steer]]\nclient_prefix = \"{second}\" # here\npools = [\"p\"]\n"
            ))
        };
        let err = refused(
            &two("198.51.100.0/24"),
            "VIP \"web\" already has a steer rule for 198.51.100.0/24 (line 13): each prefix may appear once per VIP",
        );
        assert!(err.message.contains("only when they are identical"), "{err}");
        // Prefixes of different lengths may overlap, even on the same network.
        parse_str(&two("198.51.100.0/25")).unwrap();
        parse_str(&two("198.51.0.0/16")).unwrap();
    }

    #[test]
    fn ipv6_steer_rules() {
        // An IPv6 VIP with pools v6 and v6b; `rule` is its steer rule.
        let v6 = |rule: &str| {
            minimal_with(8, "address = \"2001:db8:1::80\"")
                .replace(
                    "tunnel_source_v4 = \"192.0.2.10\"",
                    "tunnel_source_v4 = \"192.0.2.10\"\ntunnel_source_v6 = \"2001:db8::10\"",
                )
                .replace("pools = [\"p\"]", &format!("pools = [\"v6\"]\n[[vip.steer]]\n{rule}"))
                + "[[pool]]\nname = \"v6\"\nbackends = [ { address = \"2001:db8:2::1\" } ]\n"
                + "[[pool]]\nname = \"v6b\"\nbackends = [ { address = \"2001:db8:3::1\" } ]\n"
        };
        let config = parse_str(&v6("client_prefix = \"2001:db8:abcd::/48\"\npools = [\"v6b\"]")).unwrap();
        assert_eq!(config.vips[0].steer[0].client_prefix.to_string(), "2001:db8:abcd::/48");
        refused(
            &v6("client_prefix = \"2001:db8:abcd::1/48\" # here\npools = [\"v6b\"]"),
            "did you mean 2001:db8:abcd::/48?",
        );
        refused(&v6("client_prefix = \"2001:db8::/129\" # here\npools = [\"v6b\"]"), "IPv6 prefix is at most 128");
        refused(
            &v6("client_prefix = \"198.51.100.0/24\" # here\npools = [\"v6b\"]"),
            "client_prefix 198.51.100.0/24 is IPv4 but VIP \"web\" (2001:db8:1::80) is IPv6",
        );
        refused(
            &v6("client_prefix = \"2001:db8:abcd::/48\"\npools = [\"p\"] # here"),
            "VIP \"web\" is IPv6 but pool \"p\" has the IPv4 backend 198.51.100.1",
        );
        refused(&v6("client_prefix = \"::ffff:198.51.100.0/120\" # here\npools = [\"v6b\"]"), "IPv4-mapped");
    }
}
