//! The text form of `gslb status`: what an operator reads. The JSON form
//! is the `status` types themselves.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use super::bgp::BgpStatus;
use super::status::{InterfaceStatus, Status, VipBackend};
use super::time::unix_ms;

impl Status {
    /// The human-readable form of `gslb status`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let interfaces: Vec<String> = self.interfaces.iter().map(|(i, m)| format!("{i} ({m})")).collect();
        let _ = writeln!(out, "edge {}  config {}", self.edge, self.config);
        let _ = writeln!(
            out,
            "interfaces: {}{}",
            interfaces.join(", "),
            if self.adopted { "  [adopted pinned state]" } else { "" }
        );
        let p = &self.program;
        let upgraded = p.upgraded_from.as_ref().map(|from| format!("  (replaced {from} in place)")).unwrap_or_default();
        let version = if p.version.is_empty() { "(version unknown)" } else { &p.version };
        let _ = writeln!(out, "program: steer {version}  loaded {}{upgraded}", loaded_ago(p.loaded_unix));
        for link in &self.links {
            let _ = writeln!(out, "{}", link.render());
        }
        let c = &self.counters;
        let _ = writeln!(
            out,
            "packets: received {}  forwarded {}  passed {}  dropped {}  malformed {}  fib failures {}",
            c.received, c.forwarded, c.passed, c.dropped, c.parse_failures, c.fib_failures
        );
        let _ = writeln!(
            out,
            "path MTU: too big answered {}  too big dropped {}  ICMP errors steered to their flow {}",
            c.too_big_answered, c.too_big_dropped, c.icmp_errors
        );
        let backends: Vec<_> = self.pools.iter().flat_map(|p| &p.backends).collect();
        let sc = &self.second_chance;
        let window = match sc.stickiness_window_secs {
            0 => "off (stickiness_window 0s)".to_string(),
            secs => format!("stickiness window {}", humantime::format_duration(Duration::from_secs(secs.into()))),
        };
        let understanding: BTreeSet<_> = backends.iter().filter(|b| b.second_chance).map(|b| b.address).collect();
        let _ = writeln!(
            out,
            "second chance: {window}  GUE port {}  hop-list packets {}  backends understanding hop lists {}",
            sc.gue_port,
            c.hop_list_packets,
            understanding.len()
        );
        let resolved = backends.iter().filter(|b| b.next_hop.is_some()).count();
        let _ = writeln!(
            out,
            "next hops: {resolved} of {} backends resolved by the agent; the rest take the kernel's route lookup per packet",
            backends.len()
        );
        if let Some(r) = &self.last_reload {
            let _ = writeln!(
                out,
                "last reload: {}{}",
                if r.ok { "applied" } else { "REFUSED" },
                r.error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
            );
        }
        if let Some(state) = &self.state_file {
            let _ = writeln!(out, "{}", state.render());
        }
        for vip in &self.vips {
            let mut flags = Vec::new();
            if vip.panic {
                flags.push("PANIC: health checks ignored, every backend in rotation".to_string());
            }
            if vip.fallback {
                flags.push("FALLBACK pool in use".to_string());
            }
            let _ = writeln!(
                out,
                "\nvip {} {}:{}/{} affinity {} policy {} pools {} (new flows to {}){}",
                vip.name,
                vip.address,
                vip.port,
                vip.protocol,
                vip.affinity,
                vip.policy,
                vip.pools.join(","),
                vip.active_pools.join(","),
                if flags.is_empty() { String::new() } else { format!("  [{}]", flags.join("; ")) }
            );
            let _ = writeln!(
                out,
                "  packets {}  bytes {}  new flows {}  flow hits {}  table lookups {}  backends down {}/{}",
                vip.packets,
                vip.bytes,
                vip.new_flows,
                vip.flow_hits,
                vip.flow_misses,
                vip.backends_down,
                vip.backends_total
            );
            render_table(&mut out, "  ", &vip.backends);
            for rule in &vip.steer {
                let _ = writeln!(
                    out,
                    "  clients in {}: pools {} (new flows to {}){}",
                    rule.client_prefix,
                    rule.pools.join(","),
                    rule.active_pools.join(","),
                    if rule.fallback { "  [FALLBACK]" } else { "" }
                );
                render_table(&mut out, "    ", &rule.backends);
            }
            if let Some(capacity) = &vip.capacity {
                let _ = writeln!(out, "  {}", capacity.message);
            }
        }
        for pool in &self.pools {
            let worst =
                pool.worst_case_failover_ms.map(|ms| format!("  worst-case failover {ms} ms")).unwrap_or_default();
            let _ = writeln!(out, "\npool {} weight {}{}", pool.name, pool.weight, worst);
            let _ = writeln!(
                out,
                "  {:<28} {:>6} {:>5} {:>11} {:>9} {:>9} {:>7} {:>12} {:>9} {:>8}  {:<26} last change",
                "backend",
                "weight",
                "id",
                "health",
                "rtt ms",
                "p99 ms",
                "factor",
                "packets",
                "hop lists",
                "tun errs",
                "next hop"
            );
            for b in &pool.backends {
                let mut health = b.health.clone();
                if b.drained {
                    health.push_str("+drain");
                }
                if b.dead {
                    health.push_str("+dead");
                }
                let ms = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into());
                let last = b.transitions.last().map(|t| {
                    let ago = unix_ms(SystemTime::now()).saturating_sub(t.at_unix_ms) / 1000;
                    format!("{} -> {} {ago}s ago: {}", t.from, t.to, t.reason)
                });
                let _ = writeln!(
                    out,
                    "  {:<28} {:>6} {:>5} {:>11} {:>9} {:>9} {:>7.2} {:>12} {:>9} {:>8}  {:<26} {}",
                    b.address.to_string(),
                    b.weight,
                    b.id,
                    health,
                    ms(b.rtt_avg_ms),
                    ms(b.rtt_p99_ms),
                    b.latency_factor,
                    b.packets,
                    // Hop-list packets, for a backend whose decap takes them.
                    if b.second_chance { b.hop_list_packets.to_string() } else { "-".to_string() },
                    b.tunnel_errors.values().sum::<u64>(),
                    b.next_hop.as_ref().map_or("route lookup".to_string(), |h| format!("{} {}", h.interface, h.mac)),
                    last.or(b.reason.clone()).unwrap_or_default()
                );
                if b.drained {
                    let now = unix_ms(SystemTime::now()) / 1000;
                    let end = match b.drain_until_unix {
                        None => "recorded flows run until they end (no --for)".to_string(),
                        Some(until) if until > now => format!(
                            "recorded flows cut in {}",
                            humantime::format_duration(Duration::from_secs(until - now))
                        ),
                        Some(_) => "recorded flows cut (its --for is over)".to_string(),
                    };
                    let _ = writeln!(out, "    drained: no new flows; {end}; `gslb undrain` ends it");
                }
                if !b.tunnel_errors.is_empty() {
                    let kinds: Vec<String> = b.tunnel_errors.iter().map(|(k, n)| format!("{k} {n}")).collect();
                    let _ = writeln!(out, "    tunnel errors (ICMP about tunnel packets): {}", kinds.join(", "));
                }
            }
        }
        if let Some(bgp) = &self.bgp {
            out.push_str(&bgp.render());
        }
        if let Some(fleet) = &self.fleet {
            fleet.render(&mut out);
        }
        if !self.failovers.is_empty() {
            let _ = writeln!(out, "\nfailovers (first failed probe -> new tables live):");
            for f in self.failovers.iter().rev().take(10) {
                let _ = writeln!(
                    out,
                    "  {:<28} total {:>6} ms (applying {:>4} ms)  worst case {} ms",
                    f.backend.to_string(),
                    f.total_ms,
                    f.apply_ms,
                    f.worst_case_ms
                );
            }
        }
        out
    }
}

impl InterfaceStatus {
    /// One line of `gslb status`.
    pub fn render(&self) -> String {
        let mut line = format!("  {}: {}", self.name, self.state);
        match &self.mode {
            Some(mode) => line += &format!(", steer attached ({mode})"),
            None => line += ", steer NOT attached",
        }
        if let Some(index) = self.ifindex {
            line += &format!(", ifindex {index}");
        }
        if self.reattaches > 0 {
            let plural = if self.reattaches == 1 { "" } else { "s" };
            line += &format!(", re-attached {} time{plural}", self.reattaches);
        }
        if let Some(event) = &self.last_event {
            let ago = unix_ms(SystemTime::now()).saturating_sub(event.at_unix_ms) / 1000;
            line += &format!("; last event {ago}s ago: {}", event.kind);
            if !event.detail.is_empty() {
                line += &format!(" ({})", event.detail);
            }
        }
        line
    }
}

impl BgpStatus {
    /// The lines of `gslb status`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let now = unix_ms(SystemTime::now());
        let daemon = if self.reachable { "reachable" } else { "UNREACHABLE" };
        let sessions: Vec<String> = self.sessions.iter().map(|s| format!("{} {}", s.name, s.state)).collect();
        let _ = writeln!(
            out,
            "\nbgp: {} {daemon}, sessions established {}/{} [{}]{}",
            self.daemon,
            self.sessions_established,
            self.sessions.len(),
            sessions.join(", "),
            self.last_change_unix_ms
                .map(|t| format!(", last change {}s ago", now.saturating_sub(t) / 1000))
                .unwrap_or_default()
        );
        if let Some(error) = &self.last_error {
            let _ = writeln!(out, "  last error: {error}");
        }
        if self.guard {
            let _ = writeln!(
                out,
                "  GUARD: every health check fails at once; announcements held (check this edge's network)"
            );
        }
        if let Some(drain) = &self.edge_drain {
            let until =
                self.edge_drain_until_unix_ms.map(|u| format!(", undrain in {}s", u.saturating_sub(now) / 1000));
            let _ = writeln!(out, "  EDGE {}{}", drain.to_uppercase(), until.unwrap_or_default());
        }
        for route in &self.routes {
            let _ = writeln!(
                out,
                "  {:<28} {:<10} {} for {}s  (vips {})",
                route.address.to_string(),
                if route.announced { "announced" } else { "withdrawn" },
                route.reason,
                now.saturating_sub(route.since_unix_ms) / 1000,
                route.vips.join(",")
            );
        }
        out
    }
}

fn render_table(out: &mut String, indent: &str, backends: &[VipBackend]) {
    let _ = writeln!(out, "{indent}{:<40} {:>10} {:>8} {:>7}", "backend", "weight", "slots", "share");
    for b in backends {
        let _ = writeln!(
            out,
            "{indent}{:<40} {:>10} {:>8} {:>6.1}%",
            b.address.to_string(),
            b.effective_weight,
            b.slots,
            b.share * 100.0
        );
    }
}

/// "42s ago" since a Unix time; "at an unknown time" for 0.
fn loaded_ago(unix: u64) -> String {
    if unix == 0 {
        return "at an unknown time".into();
    }
    let secs = unix_ms(SystemTime::now()) / 1000;
    format!("{}s ago", secs.saturating_sub(unix))
}

impl super::status::StateFileStatus {
    /// One line (two if writing fails): where the state file is and what
    /// the start took back from it.
    fn render(&self) -> String {
        let path = self.path.display();
        let mut line = match self.found.as_str() {
            "missing" => format!("state file {path}: nothing restored (none at the start)"),
            "bad" => format!(
                "state file {path}: UNUSABLE at the start ({}); {}; started without it",
                self.error.as_deref().unwrap_or("?"),
                self.moved_to
                    .as_ref()
                    .map_or("it could not be moved aside".to_string(), |p| format!("moved aside to {}", p.display()))
            ),
            _ => {
                let mut restored =
                    vec![format!("{} drain{}", self.restored_drains, if self.restored_drains == 1 { "" } else { "s" })];
                if self.restored_edge_drain {
                    restored.push("the edge drain".into());
                }
                format!("state file {path}: decisions restored at the start: {}", restored.join(" and "))
            }
        };
        if !self.dropped.is_empty() {
            let _ = write!(line, "; left out: {}", self.dropped.join(", "));
        }
        if let Some(error) = &self.write_error {
            let _ = write!(line, "\n  state file NOT WRITTEN (a restart would lose the latest decisions): {error}");
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use crate::view::status::sample_status;

    #[test]
    fn status_shows_each_backends_next_hop_or_the_route_lookup() {
        let text = sample_status().render();
        assert!(text.contains("next hops: 1 of 2 backends resolved by the agent"), "{text}");
        let pool = &text[text.find("\npool a").unwrap()..text.find("\nfailovers").unwrap()];
        let line = |address: &str| pool.lines().find(|l| l.trim_start().starts_with(address)).unwrap().to_string();
        assert!(line("10.0.0.1 ").contains("eth0 02:00:5e:00:01:01"), "{pool}");
        assert!(line("2001:db8::2 ").contains("route lookup"), "{pool}");
    }

    #[test]
    fn status_shows_the_program_and_what_it_replaced() {
        let mut status = sample_status();
        assert!(
            status.render().contains("program: steer (version unknown)  loaded at an unknown time\n"),
            "{}",
            status.render()
        );
        status.program.version = "0.2.0+def".into();
        status.program.loaded_unix = 1;
        status.program.upgraded_from = Some("0.1.0+abc".into());
        let text = status.render();
        assert!(text.contains("program: steer 0.2.0+def  loaded "), "{text}");
        assert!(text.contains("s ago  (replaced 0.1.0+abc in place)"), "{text}");
    }

    #[test]
    fn status_shows_the_state_file_and_drain_ends() {
        use crate::view::status::StateFileStatus;
        let mut status = sample_status();
        status.state_file = Some(StateFileStatus {
            path: "/var/lib/gslb/fra1.json".into(),
            found: "read".into(),
            restored_drains: 2,
            restored_edge_drain: true,
            dropped: vec!["drain of 192.0.2.9: no longer in the config".into()],
            ..StateFileStatus::default()
        });
        let soon = crate::view::time::unix_ms(std::time::SystemTime::now()) / 1000 + 601;
        status.pools[0].backends[0].drained = true;
        status.pools[0].backends[0].drain_until_unix = Some(soon);
        let text = status.render();
        let want = "state file /var/lib/gslb/fra1.json: decisions restored at the start: 2 drains and the edge drain; \
                    left out: drain of 192.0.2.9: no longer in the config";
        assert!(text.contains(want), "{text}");
        assert!(text.contains("drained: no new flows; recorded flows cut in 10m"), "{text}");
        assert!(text.contains("drained: no new flows; recorded flows run until they end (no --for)"), "{text}");

        status.state_file = Some(StateFileStatus {
            path: "/s.json".into(),
            found: "bad".into(),
            error: Some("not a state file: EOF".into()),
            moved_to: Some("/s.json.bad".into()),
            write_error: Some("disk full".into()),
            ..StateFileStatus::default()
        });
        let text = status.render();
        let want = "state file /s.json: UNUSABLE at the start (not a state file: EOF); moved aside to /s.json.bad; started without it\n  state file NOT WRITTEN";
        assert!(text.contains(want), "{text}");
    }

    #[test]
    fn status_shows_second_chance() {
        let mut status = sample_status();
        let text = status.render();
        let want = "second chance: stickiness window 6h  GUE port 6080  hop-list packets 12  backends understanding hop lists 1";
        assert!(text.contains(want), "{text}");
        let pool = &text[text.find("\npool a").unwrap()..text.find("\nfailovers").unwrap()];
        let line = |address: &str| pool.lines().find(|l| l.trim_start().starts_with(address)).unwrap().to_string();
        // The column after packets: hop-list packets, or "-" for a backend
        // whose decap does not take them.
        let hop_lists = |address: &str| line(address).split_whitespace().nth(8).unwrap().to_string();
        assert_eq!(hop_lists("10.0.0.1 "), "12", "{pool}");
        assert_eq!(hop_lists("2001:db8::2 "), "-", "{pool}");
        status.second_chance.stickiness_window_secs = 0;
        assert!(status.render().contains("second chance: off (stickiness_window 0s)"));
    }
}
