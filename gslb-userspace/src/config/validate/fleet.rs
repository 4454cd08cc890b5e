//! `[fleet]`: etcd endpoints and credentials, this edge's rollout group,
//! and the rules for shared health verdicts.

use std::path::PathBuf;

use toml::Spanned;

use super::values::{bounded, duration_secs, fraction};
use super::Result;
use crate::config::raw::RawFleet;
use crate::config::{
    Edge, Fleet, Source, DEFAULT_FLEET_GROUP, DEFAULT_FLEET_HEALTH_GRACE, DEFAULT_FLEET_LEASE_TTL,
    DEFAULT_FLEET_PREFIX, DEFAULT_FLEET_STATE_DIR,
};

pub(super) fn check_fleet(src: &Source, raw: &RawFleet, edge: &Edge) -> Result<Fleet> {
    if raw.endpoints.get_ref().is_empty() {
        return Err(src.error(
            raw.endpoints.span(),
            "fleet.endpoints must list at least one etcd client URL, e.g. [\"http://10.0.0.1:2379\"]",
        ));
    }
    let mut endpoints = Vec::new();
    for endpoint in raw.endpoints.get_ref() {
        let url = endpoint.get_ref();
        let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
        if rest.is_none_or(|r| r.is_empty() || r.contains('/')) {
            return Err(src.error(
                endpoint.span(),
                format!("fleet.endpoints: {url:?} is not an etcd client URL: write e.g. \"http://10.0.0.1:2379\""),
            ));
        }
        endpoints.push(url.clone());
    }

    let prefix = raw.prefix.as_ref().map_or(DEFAULT_FLEET_PREFIX, |p| p.get_ref().as_str());
    if !prefix.starts_with('/') || prefix.ends_with('/') || prefix.contains("//") {
        let at = raw.prefix.as_ref().map(|p| p.span()).unwrap_or(0..0);
        return Err(src.error(
            at,
            format!("fleet.prefix must start with '/' and not end with one, like \"/gslb\", not {prefix:?}"),
        ));
    }
    let group = match &raw.group {
        None => DEFAULT_FLEET_GROUP.to_string(),
        Some(group) => {
            let name = group.get_ref();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                return Err(src.error(
                    group.span(),
                    format!("fleet.group {name:?} must be a non-empty name of letters, digits, '-', '_' and '.'"),
                ));
            }
            name.clone()
        }
    };

    let path = |value: &Option<Spanned<PathBuf>>, key: &str| -> Result<Option<PathBuf>> {
        match value {
            None => Ok(None),
            Some(p) if p.get_ref().is_absolute() => Ok(Some(p.get_ref().clone())),
            Some(p) => Err(src.error(p.span(), format!("{key} must be an absolute path, not {:?}", p.get_ref()))),
        }
    };
    let ca_file = path(&raw.ca_file, "fleet.ca_file")?;
    let cert_file = path(&raw.cert_file, "fleet.cert_file")?;
    let key_file = path(&raw.key_file, "fleet.key_file")?;
    if let (Some(_), None) | (None, Some(_)) = (&raw.cert_file, &raw.key_file) {
        let at = raw.cert_file.as_ref().or(raw.key_file.as_ref()).map(|p| p.span()).unwrap_or(0..0);
        return Err(src.error(at, "fleet.cert_file and fleet.key_file go together: give both or neither"));
    }
    if (ca_file.is_some() || cert_file.is_some()) && endpoints.iter().any(|e| e.starts_with("http://")) {
        return Err(src.error(
            raw.endpoints.span(),
            "fleet.endpoints: with TLS (ca_file or cert_file) every endpoint must be https://",
        ));
    }
    let password_file = path(&raw.password_file, "fleet.password_file")?;
    let user = raw.user.as_ref().map(|u| u.get_ref().clone());
    if user.is_some() != password_file.is_some() {
        let at = raw.user.as_ref().map(|u| u.span()).or(raw.password_file.as_ref().map(|p| p.span())).unwrap_or(0..0);
        return Err(src.error(at, "fleet.user and fleet.password_file go together: give both or neither"));
    }
    let state_file = path(&raw.state_file, "fleet.state_file")?
        .unwrap_or_else(|| PathBuf::from(format!("{DEFAULT_FLEET_STATE_DIR}/fleet-{}.json", edge.name)));

    let lease_ttl_secs = duration_secs(src, raw.lease_ttl.as_ref(), DEFAULT_FLEET_LEASE_TTL, "fleet.lease_ttl", 1)?;
    if lease_ttl_secs < 2 {
        let at = raw.lease_ttl.as_ref().map(|v| v.span()).unwrap_or(0..0);
        return Err(src.error(at, "fleet.lease_ttl must be at least \"2s\" (etcd's leases count whole seconds)"));
    }
    let health_grace_secs =
        duration_secs(src, raw.health_grace.as_ref(), DEFAULT_FLEET_HEALTH_GRACE, "fleet.health_grace", 1)?;
    let quorum = match &raw.quorum {
        None => None,
        Some(q) => Some(bounded(src, q, "fleet.quorum", 1, 1000)? as u32),
    };
    let withdraw_unreachable_share = match &raw.withdraw_unreachable_share {
        None => None,
        Some(_) => {
            Some(fraction(src, raw.withdraw_unreachable_share.as_ref(), 1.0, "fleet.withdraw_unreachable_share")?)
        }
    };
    Ok(Fleet {
        endpoints,
        prefix: prefix.to_string(),
        group,
        ca_file,
        cert_file,
        key_file,
        user,
        password_file,
        state_file,
        lease_ttl_secs,
        health_grace_secs,
        quorum,
        withdraw_unreachable_share,
    })
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use crate::config::fixtures::*;
    use crate::config::{parse_fleet_document, Edge};

    fn fleet(lines: &str) -> String {
        format!("{EDGE}\n[fleet]\nendpoints = [\"http://10.0.0.1:2379\"]\n{lines}\n")
    }

    #[test]
    fn defaults_and_keys() {
        let f = parse_str(&fleet("")).unwrap().fleet.unwrap();
        assert_eq!((f.prefix.as_str(), f.group.as_str()), ("/gslb", "default"));
        assert_eq!((f.lease_ttl_secs, f.health_grace_secs, f.quorum), (10, 30, None));
        assert_eq!(f.state_file, PathBuf::from("/var/lib/gslb/fleet-edge-a.json"));
        assert_eq!(f.withdraw_unreachable_share, None);
        let f = parse_str(&fleet(
            "group = \"canary\"\nquorum = 2\nhealth_grace = \"0s\"\nwithdraw_unreachable_share = 0.5",
        ))
        .unwrap()
        .fleet
        .unwrap();
        assert_eq!((f.group.as_str(), f.quorum, f.health_grace_secs), ("canary", Some(2), 0));
        assert_eq!(f.withdraw_unreachable_share, Some(0.5));
        assert!(parse_str(MINIMAL).unwrap().fleet.is_none(), "no [fleet], no fleet");
    }

    #[test]
    fn refusals() {
        refused(&format!("{EDGE}\n[fleet]\nendpoints = [] # here\n"), "at least one");
        refused(
            &fleet("").replace("[\"http://10.0.0.1:2379\"]", "[\"10.0.0.1:2379\"] # here"),
            "not an etcd client URL",
        );
        refused(&fleet("prefix = \"gslb/\" # here"), "fleet.prefix");
        refused(&fleet("group = \"a b\" # here"), "fleet.group");
        refused(&fleet("cert_file = \"/c.pem\" # here"), "go together");
        let plain_with_tls =
            format!("{EDGE}\n[fleet]\nendpoints = [\"http://10.0.0.1:2379\"] # here\nca_file = \"/ca.pem\"\n");
        refused(&plain_with_tls, "https://");
        refused(&fleet("user = \"edge\" # here"), "go together");
        refused(&fleet("lease_ttl = \"1s\" # here"), "at least");
        refused(&fleet("quorum = 0 # here"), "fleet.quorum");
        refused(&fleet("withdraw_unreachable_share = 1.5 # here"), "at most 1");
        refused(&fleet("state_file = \"relative\" # here"), "absolute");
        refused(&fleet("colour = 1 # here"), "unknown field");
        // VIPs and pools belong to the fleet document.
        let text =
            format!("{}\n[[pool]] # here\nname = \"p\"\nbackends = [ {{ address = \"198.51.100.1\" }} ]\n", fleet(""));
        refused(&text, "fleet document");
    }

    #[test]
    fn fleet_documents() {
        let document = &MINIMAL[MINIMAL.find("[[vip]]").unwrap()..];
        let (vips, pools) = parse_fleet_document(document, Path::new("doc.toml"), &Edge::permissive()).unwrap();
        assert_eq!((vips.len(), pools.len()), (1, 1));
        for section in ["[edge]\nname = \"x\"\n", "[bgp]\n", "[fleet]\nendpoints = []\n"] {
            let text = format!("{document}\n{section}");
            let err = parse_fleet_document(&text, Path::new("doc.toml"), &Edge::permissive()).unwrap_err();
            assert!(err.message.contains("in a fleet document"), "{err}");
            assert_eq!(err.line, document.lines().count() + 2, "{err}");
        }
        // Each edge checks again against its own [edge].
        let edge = parse_str(MINIMAL).unwrap().edge;
        let v6 = document.replace("198.51.100.1", "2001:db8::1");
        assert!(parse_fleet_document(&v6, Path::new("doc.toml"), &Edge::permissive()).is_ok());
        let err = parse_fleet_document(&v6, Path::new("doc.toml"), &edge).unwrap_err();
        assert!(err.message.contains("tunnel_source_v6"), "{err}");
    }

    #[test]
    fn documented_fleet_example_is_valid() {
        let doc = include_str!("../../../../docs/configuration.md");
        let start = doc.find("```\n[fleet]\n").expect("the doc has a [fleet] example") + "```\n".len();
        let end = start + doc[start..].find("```").unwrap();
        let fleet = parse_str(&format!("{EDGE}\n{}", &doc[start..end])).unwrap().fleet.unwrap();
        assert_eq!(fleet.endpoints.len(), 3);
        for key in [
            "endpoints",
            "prefix",
            "group",
            "ca_file",
            "state_file",
            "lease_ttl",
            "health_grace",
            "quorum",
            "withdraw_unreachable_share",
        ] {
            assert!(doc.contains(&format!("| `{key}` |")), "docs/configuration.md does not describe fleet.{key}");
        }
        for key in ["cert_file", "user"] {
            assert!(doc.contains(&format!("| `{key}`")), "docs/configuration.md does not describe fleet.{key}");
        }
    }
}
