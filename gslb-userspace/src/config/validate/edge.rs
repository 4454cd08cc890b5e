//! `[edge]`: the edge's identity, interfaces, tunnel sources, map sizes,
//! pin directory, admin socket and metrics address.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;

use gslb_common::maglev::is_prime;
use gslb_common::TABLE_GENERATIONS;
use toml::Spanned;

use super::values::{absolute_path, bounded, duration_secs, hint, limit, next_prime, socket_address, span_or, usable};
use super::Result;
use crate::config::raw::RawEdge;
use crate::config::{
    Edge, Source, DEFAULT_ADMIN_SOCKET, DEFAULT_BPFFS_PIN, DEFAULT_FLEET_STATE_DIR, DEFAULT_GUE_PORT,
    DEFAULT_MAX_BACKENDS, DEFAULT_MAX_FLOWS, DEFAULT_MAX_VIPS, DEFAULT_METRICS_LISTEN, DEFAULT_STICKINESS_WINDOW,
    DEFAULT_TABLE_SIZE, MAX_STICKINESS_WINDOW_DAYS,
};

pub(super) fn check_edge(src: &Source, raw: &RawEdge, span: Range<usize>) -> Result<Edge> {
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

    let metrics_listen = socket_address(
        src,
        raw.metrics_listen.as_ref(),
        DEFAULT_METRICS_LISTEN,
        "edge.metrics_listen",
        "\"127.0.0.1:9477\" or \"[::1]:9477\"",
    )?;

    let stickiness_window_secs = duration_secs(
        src,
        raw.stickiness_window.as_ref(),
        DEFAULT_STICKINESS_WINDOW,
        "edge.stickiness_window",
        MAX_STICKINESS_WINDOW_DAYS,
    )?;
    let gue_port = match &raw.gue_port {
        None => DEFAULT_GUE_PORT,
        Some(port) => bounded(src, port, "edge.gue_port", 1, u16::MAX as i64)? as u16,
    };

    // Named after the edge, so edges sharing a host keep apart. With
    // [fleet], `validate` may put fleet.state_file's default in its place.
    let default_state_file = format!("{DEFAULT_FLEET_STATE_DIR}/{name}.json");
    let state_file = absolute_path(src, raw.state_file.as_ref(), &default_state_file, "edge.state_file")?;

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
        stickiness_window_secs,
        gue_port,
        state_file,
    })
}

pub(super) fn check_interfaces(src: &Source, list: &Spanned<Vec<Spanned<String>>>) -> Result<Vec<String>> {
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
pub(super) fn bad_interface_name(name: &str) -> Option<&'static str> {
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use crate::config::fixtures::*;

    #[test]
    fn edge_checks() {
        refused(&minimal_with(2, "name = \"\" # here"), "edge.name must not be empty");
        refused(&minimal_with(3, "interfaces = [] # here"), "at least one interface");
        refused(&minimal_with(3, "interfaces = [\"eth0\", \"a-very-long-name0\"] # here"), "at most 15 bytes");
        refused(&minimal_with(3, "interfaces = [\"eth/0\"] # here"), "'/'");
        refused(&minimal_with(3, "interfaces = [\"eth 0\"] # here"), "whitespace");
        refused(&minimal_with(3, "interfaces = [\"\"] # here"), "empty");
        refused(&minimal_with(3, "interfaces = [\"eth0\", \"eth0\"] # here"), "listed twice");
        refused(&minimal_with(3, "interfaces = [\"eth0\"]\nxdp_mode = \"offload\" # here"), "offload");
        refused(&minimal_with(4, "tunnel_source_v4 = \"2001:db8::1\" # here"), "not an IPv4 address");
        refused(&minimal_with(4, "tunnel_source_v4 = \"0.0.0.0\" # here"), "unspecified");
        refused(
            &minimal_with(4, "tunnel_source_v4 = \"192.0.2.10\"\ntunnel_source_v6 = \"192.0.2.11\" # here"),
            "not an IPv6 address",
        );
        refused(&minimal_with(4, "tunnel_source_v4 = \"192.0.2.10/24\" # here"), "prefix length");
        refused(&minimal_with(4, "tunnel_source_v4 = \"192.0.2.10\"\nbpffs_pin = \"gslb\" # here"), "absolute path");
        refused(
            &minimal_with(4, "tunnel_source_v4 = \"192.0.2.10\"\nadmin_socket = \"run/gslb.sock\" # here"),
            "absolute path",
        );
    }

    #[test]
    fn limit_checks() {
        let edge = |extra: &str| minimal_with(4, &format!("tunnel_source_v4 = \"192.0.2.10\"\n{extra}"));
        refused(&edge("max_flows = 0 # here"), "max_flows must be at least 1");
        refused(&edge("max_flows = 5000000000 # here"), "at most");
        refused(&edge("max_backends = 1 # here"), "at least 2");
        refused(&edge("max_vips = 0 # here"), "at least 1");
        refused(&edge("table_size = 65536 # here"), "must be a prime").message.contains("65537").then_some(()).unwrap();
        refused(&edge("max_backends = 70000 # here"), "at least edge.max_backends (70000)");
        refused(&edge("max_backends = 70000\ntable_size = 65537 # here"), "at least edge.max_backends");
        refused(&edge("max_vips = 40000 # here"), "lower max_vips or table_size");

        // VIP count: the VIP past the limit is reported.
        let two_vips = edge("max_vips = 1")
            + "[[vip]] # here\nname = \"b\"\naddress = \"203.0.113.11\"\nport = 80\nprotocol = \"tcp\"\npools = [\"p\"]\n";
        refused(&two_vips, "too many VIPs");

        // Distinct backends: max_backends - 1 of them fit.
        let text = edge("max_backends = 3")
            + "[[pool]]\nname = \"q\"\nbackends = [ { address = \"198.51.100.1\" }, { address = \"198.51.100.2\" } ]\n";
        parse_str(&text).unwrap();
        let text = edge("max_backends = 3")
            + "[[pool]]\nname = \"q\"\nbackends = [\n { address = \"198.51.100.2\" },\n { address = \"198.51.100.3\" } # here\n]\n";
        refused(&text, "too many backends");
    }

    #[test]
    fn metrics_listen() {
        let edge = |extra: &str| minimal_with(4, &format!("tunnel_source_v4 = \"192.0.2.10\"\n{extra}"));
        let config = parse_str(&edge("metrics_listen = \"[::]:9100\"")).unwrap();
        assert_eq!(config.edge.metrics_listen, "[::]:9100".parse().unwrap());
        refused(&edge("metrics_listen = \"127.0.0.1\" # here"), "is not an address and port");
        refused(&edge("metrics_listen = \"localhost:9477\" # here"), "is not an address and port");
        refused(&edge("metrics_listen = \"0.0.0.0:0\" # here"), "port other than 0");
        refused(&edge("metrics_listen = 9477 # here"), "expected a string");
    }

    #[test]
    fn second_chance_keys() {
        let edge = |extra: &str| minimal_with(4, &format!("tunnel_source_v4 = \"192.0.2.10\"\n{extra}"));
        let window = |text: &str| parse_str(&edge(&format!("stickiness_window = \"{text}\""))).unwrap().edge;
        assert_eq!(window("90m").stickiness_window_secs, 5400);
        assert_eq!(window("1h 30m").stickiness_window_secs, 5400);
        assert_eq!(window("0s").stickiness_window_secs, 0, "0s turns hop lists off");
        assert_eq!(window("44days").stickiness_window_secs, 44 * 86_400);
        let config = parse_str(&edge("gue_port = 7000")).unwrap();
        assert_eq!(config.edge.gue_port, 7000);

        assert_eq!(window("6 hours").stickiness_window_secs, 21_600);
        refused(
            &edge("stickiness_window = \"six hours\" # here"),
            "edge.stickiness_window \"six hours\" is not a duration",
        );
        refused(&edge("stickiness_window = \"6\" # here"), "write e.g. \"6h\"");
        refused(&edge("stickiness_window = \"-1h\" # here"), "is not a duration");
        refused(&edge("stickiness_window = \"1500ms\" # here"), "whole number of seconds");
        refused(&edge("stickiness_window = \"45days\" # here"), "must be less than 45 days, not \"45days\"");
        refused(&edge("stickiness_window = \"1000000000000h\" # here"), "");
        refused(&edge("stickiness_window = 3600 # here"), "expected a string");
        refused(&edge("gue_port = 0 # here"), "edge.gue_port must be at least 1, not 0");
        refused(&edge("gue_port = 65536 # here"), "edge.gue_port must be at most 65535");
        refused(&edge("gue_port = -5 # here"), "edge.gue_port must be a positive integer");
        refused(&edge("gue_port = \"6080\" # here"), "expected an integer");
    }

    #[test]
    fn state_file() {
        let edge = |extra: &str| minimal_with(4, &format!("tunnel_source_v4 = \"192.0.2.10\"\n{extra}"));
        assert_eq!(parse_str(MINIMAL).unwrap().edge.state_file, PathBuf::from("/var/lib/gslb/edge-a.json"));
        let config = parse_str(&edge("state_file = \"/srv/gslb/a.json\"")).unwrap();
        assert_eq!(config.edge.state_file, PathBuf::from("/srv/gslb/a.json"));
        refused(&edge("state_file = \"a.json\" # here"), "edge.state_file must be an absolute path");

        // With [fleet]: one file, under either name; fleet's default stays.
        let fleet = |edge_key: &str, fleet_key: &str| {
            let text = format!(
                "{}{edge_key}\n[fleet]\nendpoints = [\"http://10.0.0.1:2379\"]\n{fleet_key}\n",
                crate::config::fixtures::EDGE
            );
            parse_str(&text).map(|c| (c.edge.state_file, c.fleet.unwrap().state_file))
        };
        let both = |path: &str| (PathBuf::from(path), PathBuf::from(path));
        assert_eq!(fleet("", "").unwrap(), both("/var/lib/gslb/fleet-edge-a.json"));
        assert_eq!(fleet("state_file = \"/s/e.json\"", "").unwrap(), both("/s/e.json"));
        assert_eq!(fleet("", "state_file = \"/s/f.json\"").unwrap(), both("/s/f.json"));
        assert_eq!(fleet("state_file = \"/s/e.json\"", "state_file = \"/s/e.json\"").unwrap(), both("/s/e.json"));
        let err = fleet("state_file = \"/s/e.json\"", "state_file = \"/s/f.json\"").unwrap_err();
        assert!(err.message.contains("differ") && err.line == 8, "{err}");
    }

    #[test]
    fn documented_keys() {
        let doc = include_str!("../../../../docs/configuration.md");
        let section = &doc[doc.find("## `[edge]`").unwrap()..doc.find("## `[[vip]]`").unwrap()];
        for key in [
            "name",
            "interfaces",
            "xdp_mode",
            "tunnel_source_v4",
            "tunnel_source_v6",
            "admin_socket",
            "bpffs_pin",
            "metrics_listen",
            "max_flows",
            "max_backends",
            "max_vips",
            "table_size",
            "stickiness_window",
            "gue_port",
            "state_file",
        ] {
            assert!(section.contains(&format!("| `{key}` |")), "docs/configuration.md does not describe edge.{key}");
        }
    }
}
