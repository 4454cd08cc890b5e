//! GoBGP: routes through the `gobgp` client (`global rib add/del`),
//! sessions from `gobgp neighbor -j`. The client speaks GoBGP's gRPC API at
//! `bgp.gobgp_api`; using it spares this crate a protobuf code generator.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::{Daemon, Route, Session};
use crate::config::{Bgp, DrainStyle};

/// GoBGP's `session_state` for an established session.
const ESTABLISHED: u64 = 6;

pub struct Gobgp {
    api: SocketAddr,
    bgp: Bgp,
}

impl Gobgp {
    pub fn new(bgp: &Bgp) -> Gobgp {
        Gobgp { api: bgp.gobgp_api, bgp: bgp.clone() }
    }

    fn run(&self, args: &[String]) -> Result<String> {
        let mut command = Command::new("gobgp");
        command.args(["-u", &self.api.ip().to_string(), "-p", &self.api.port().to_string()]).args(args);
        let output = command.output().context("running `gobgp` (the GoBGP client; install it next to gobgpd)")?;
        if !output.status.success() {
            bail!(
                "`gobgp {}` failed against {}: {}",
                args.join(" "),
                self.api,
                String::from_utf8_lossy(&output.stderr).trim().to_string()
                    + String::from_utf8_lossy(&output.stdout).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

impl Daemon for Gobgp {
    fn announce(&mut self, routes: &BTreeSet<Route>, held: &BTreeSet<Route>, full: bool) -> Result<()> {
        let wanted: BTreeSet<_> = routes.iter().map(|r| r.address).collect();
        for gone in held.iter().filter(|r| !wanted.contains(&r.address)) {
            self.run(&del_args(gone))?;
        }
        // `rib add` replaces the path of the same prefix.
        for route in routes.iter().filter(|r| full || !held.contains(r)) {
            self.run(&add_args(route, &self.bgp))?;
        }
        Ok(())
    }

    fn sessions(&mut self) -> Result<Vec<Session>> {
        parse_neighbors(&self.run(&["neighbor".into(), "-j".into()])?)
    }
}

fn family(route: &Route) -> &'static str {
    if route.address.is_ipv4() {
        "ipv4"
    } else {
        "ipv6"
    }
}

fn prefix(route: &Route) -> String {
    format!("{}/{}", route.address, if route.address.is_ipv4() { 32 } else { 128 })
}

pub fn add_args(route: &Route, bgp: &Bgp) -> Vec<String> {
    let mut args: Vec<String> =
        ["global", "rib", "add", "-a", family(route), &prefix(route)].iter().map(|s| s.to_string()).collect();
    if route.drain {
        match bgp.drain {
            DrainStyle::GracefulShutdown => args.extend(["community".into(), "65535:0".into()]),
            DrainStyle::Med => args.extend(["med".into(), bgp.drain_med.to_string()]),
            DrainStyle::Prepend => {
                let asn = bgp.local_as.expect("validation requires local_as with drain = \"prepend\"").to_string();
                args.extend(["aspath".into(), vec![asn; bgp.prepend_count as usize].join(",")]);
            }
        }
    }
    args
}

pub fn del_args(route: &Route) -> Vec<String> {
    ["global", "rib", "del", "-a", family(route), &prefix(route)].iter().map(|s| s.to_string()).collect()
}

/// `gobgp neighbor -j`: an array of peers.
pub fn parse_neighbors(json: &str) -> Result<Vec<Session>> {
    let peers: serde_json::Value = serde_json::from_str(json).context("`gobgp neighbor -j` printed no JSON")?;
    let peers = peers.as_array().map(Vec::as_slice).unwrap_or_default();
    Ok(peers
        .iter()
        .map(|peer| {
            let state = &peer["state"];
            let name = state["neighbor_address"].as_str().or(peer["conf"]["neighbor_address"].as_str());
            let code = state["session_state"].as_u64().unwrap_or(0);
            let word = ["unknown", "Idle", "Connect", "Active", "OpenSent", "OpenConfirm", "Established"]
                .get(code as usize)
                .copied()
                .unwrap_or("unknown");
            Session { name: name.unwrap_or("?").to_string(), state: word.to_string(), established: code == ESTABLISHED }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_carry_the_drain_attribute() {
        let bgp = Bgp { local_as: Some(65002), prepend_count: 3, drain: DrainStyle::Prepend, ..Bgp::default() };
        let route = Route { address: "203.0.113.10".parse().unwrap(), drain: true };
        assert_eq!(add_args(&route, &bgp).join(" "), "global rib add -a ipv4 203.0.113.10/32 aspath 65002,65002,65002");
        let plain = Route { address: "2001:db8::53".parse().unwrap(), drain: false };
        assert_eq!(add_args(&plain, &bgp).join(" "), "global rib add -a ipv6 2001:db8::53/128");
        assert_eq!(del_args(&plain).join(" "), "global rib del -a ipv6 2001:db8::53/128");
        let bgp = Bgp { drain: DrainStyle::GracefulShutdown, ..Bgp::default() };
        assert!(add_args(&route, &bgp).join(" ").ends_with("community 65535:0"));
    }

    #[test]
    fn neighbors_parse() {
        let json = r#"[{"conf":{"neighbor_address":"10.0.0.9","peer_asn":65000},"state":{"neighbor_address":"10.0.0.9","session_state":6}},
                      {"conf":{"neighbor_address":"10.0.0.8"},"state":{"session_state":3}}]"#;
        let sessions = parse_neighbors(json).unwrap();
        assert_eq!(
            sessions,
            vec![
                Session { name: "10.0.0.9".into(), state: "Established".into(), established: true },
                Session { name: "10.0.0.8".into(), state: "Active".into(), established: false },
            ]
        );
        assert!(parse_neighbors("context deadline exceeded").is_err());
    }
}
