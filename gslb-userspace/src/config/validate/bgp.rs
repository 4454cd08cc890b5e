//! `[bgp]`: the daemon that announces the VIPs, and its timers.

use std::ops::Range;

use toml::Spanned;

use super::values::{absolute_path, bounded, socket_address};
use super::Result;
use crate::config::raw::RawBgp;
use crate::config::{
    Bgp, BgpDaemon, DrainStyle, Source, DEFAULT_ANNOUNCE_AFTER_MS, DEFAULT_BIRD_SOCKET, DEFAULT_DRAIN_MED,
    DEFAULT_DRAIN_WAIT_MS, DEFAULT_GOBGP_API, DEFAULT_PREPEND_COUNT, DEFAULT_WITHDRAW_AFTER_MS,
};

pub(super) fn check_bgp(src: &Source, raw: &RawBgp, span: Range<usize>) -> Result<Bgp> {
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
    let gobgp_api =
        socket_address(src, raw.gobgp_api.as_ref(), DEFAULT_GOBGP_API, "bgp.gobgp_api", "\"127.0.0.1:50051\"")?;
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

#[cfg(test)]
mod tests {
    use crate::config::fixtures::*;
    use crate::config::*;

    #[test]
    fn bgp_is_optional_and_off_by_default() {
        let config = parse_str(MINIMAL).unwrap();
        assert_eq!(config.bgp, Bgp::default());
        assert_eq!(config.bgp.daemon, BgpDaemon::None);
        assert_eq!(config.bgp.drain, DrainStyle::GracefulShutdown);
        assert!(config.bgp.keep_on_total_failure);
    }

    #[test]
    fn bgp_section_with_every_key() {
        let text = format!(
            "{MINIMAL}\n[bgp]\ndaemon = \"bird\"\nbird_socket = \"/run/bird/edge.ctl\"\nbird_include = \"/etc/bird/gslb-vips.conf\"\n\
             gobgp_api = \"127.0.0.1:50052\"\nannounce_after_ms = 1000\nwithdraw_after_ms = 100\ndrain = \"prepend\"\n\
             drain_wait_ms = 3000\nkeep_on_total_failure = false\nlocal_as = 65001\nprepend_count = 2\ndrain_med = 50\n"
        );
        let bgp = parse_str(&text).unwrap().bgp;
        assert_eq!(
            bgp,
            Bgp {
                daemon: BgpDaemon::Bird,
                bird_socket: "/run/bird/edge.ctl".into(),
                bird_include: Some("/etc/bird/gslb-vips.conf".into()),
                gobgp_api: "127.0.0.1:50052".parse().unwrap(),
                announce_after_ms: 1000,
                withdraw_after_ms: 100,
                drain: DrainStyle::Prepend,
                drain_wait_ms: 3000,
                keep_on_total_failure: false,
                local_as: Some(65001),
                prepend_count: 2,
                drain_med: 50,
            }
        );
        let gobgp = parse_str(&format!("{MINIMAL}\n[bgp]\ndaemon = \"gobgp\"\ndrain = \"med\"\n")).unwrap().bgp;
        assert_eq!(
            (gobgp.daemon, gobgp.gobgp_api.to_string(), gobgp.drain),
            (BgpDaemon::Gobgp, DEFAULT_GOBGP_API.into(), DrainStyle::Med)
        );
    }

    #[test]
    fn bgp_errors_are_located() {
        let bgp = |body: &str| format!("{MINIMAL}\n[bgp]\n{body}\n");
        refused(&bgp("daemon = \"quagga\" # here"), "unknown variant `quagga`");
        let err = parse_str(&bgp("daemon = \"bird\"")).unwrap_err();
        assert!(err.message.contains("bgp.bird_include is required"), "{err}");
        assert_eq!(err.line, MINIMAL.lines().count() + 2);
        refused(&bgp("daemon = \"bird\"\nbird_include = \"gslb.conf\" # here"), "must be an absolute path");
        refused(&bgp("gobgp_api = \"localhost\" # here"), "is not an address and port");
        refused(&bgp("gobgp_api = \"127.0.0.1:0\" # here"), "port other than 0");
        refused(&bgp("announce_after_ms = -1 # here"), "bgp.announce_after_ms must be a non-negative integer");
        refused(&bgp("withdraw_after_ms = 4000000 # here"), "at most 3600000");
        refused(&bgp("drain = \"shout\" # here"), "unknown variant `shout`");
        refused(&bgp("daemon = \"gobgp\"\ndrain = \"prepend\" # here"), "needs bgp.local_as");
        refused(&bgp("local_as = 0 # here"), "bgp.local_as must be at least 1");
        refused(&bgp("prepend_count = 11 # here"), "at most 10");
        refused(&bgp("keep_on_total_failure = \"yes\" # here"), "invalid type");
        refused(&bgp("announce_after = 5 # here"), "unknown field `announce_after`");
    }

    #[test]
    fn documented_bgp_example_is_valid() {
        let doc = include_str!("../../../../docs/configuration.md");
        let start = doc.find("```\n[bgp]\n").expect("the doc has a [bgp] example") + "```\n".len();
        let end = start + doc[start..].find("```").unwrap();
        let bgp = parse_str(&format!("{MINIMAL}\n{}", &doc[start..end])).unwrap().bgp;
        assert_eq!((bgp.daemon, bgp.drain, bgp.local_as), (BgpDaemon::Bird, DrainStyle::Prepend, Some(65001)));
        // Every key of the section is in the doc's table.
        for key in [
            "daemon",
            "bird_socket",
            "bird_include",
            "gobgp_api",
            "announce_after_ms",
            "withdraw_after_ms",
            "drain",
            "drain_wait_ms",
            "keep_on_total_failure",
            "local_as",
            "prepend_count",
            "drain_med",
        ] {
            assert!(doc.contains(&format!("| `{key}` |")), "docs/configuration.md does not describe bgp.{key}");
        }
    }
}
