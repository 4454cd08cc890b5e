//! BIRD 2: the routes live in an include file the agent owns (two static
//! protocols, `gslb_vips4` and `gslb_vips6`, one host route per announced
//! VIP), replaced atomically, then `configure` on BIRD's control socket.
//! Sessions come from `show protocols`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::{Daemon, Route, Session};
use crate::config::{Bgp, DrainStyle};

/// The static protocols the include file defines.
pub const PROTOCOL_V4: &str = "gslb_vips4";
pub const PROTOCOL_V6: &str = "gslb_vips6";

/// How long one exchange with BIRD may take (`configure` re-reads the
/// whole config).
const TIMEOUT: Duration = Duration::from_secs(10);

pub struct Bird {
    socket: PathBuf,
    include: PathBuf,
    bgp: Bgp,
}

impl Bird {
    pub fn new(bgp: &Bgp) -> Bird {
        Bird {
            socket: bgp.bird_socket.clone(),
            include: bgp.bird_include.clone().expect("validation requires bird_include with daemon = \"bird\""),
            bgp: bgp.clone(),
        }
    }
}

impl Daemon for Bird {
    fn announce(&mut self, routes: &BTreeSet<Route>, _held: &BTreeSet<Route>, _full: bool) -> Result<()> {
        write_atomically(&self.include, &include_file(routes, &self.bgp))?;
        let reply = command(&self.socket, "configure")?;
        // "0003 Reconfigured", "0004 Reconfiguration in progress", "0019 Nothing to do", ...
        if reply.last().is_none_or(|(code, _)| *code >= 1000) {
            bail!("BIRD refused `configure`: {}", text(&reply));
        }
        Ok(())
    }

    fn sessions(&mut self) -> Result<Vec<Session>> {
        Ok(parse_protocols(&command(&self.socket, "show protocols")?))
    }
}

/// The include file for `routes`.
pub fn include_file(routes: &BTreeSet<Route>, bgp: &Bgp) -> String {
    let mut out = String::from("# Written by the gslb agent: the VIPs this edge announces. Do not edit.\n");
    for (protocol, channel, v4) in [(PROTOCOL_V4, "ipv4", true), (PROTOCOL_V6, "ipv6", false)] {
        let _ = writeln!(out, "protocol static {protocol} {{\n  {channel};");
        for route in routes.iter().filter(|r| r.address.is_ipv4() == v4) {
            let length = if v4 { 32 } else { 128 };
            let _ = write!(out, "  route {}/{length} blackhole", route.address);
            if route.drain {
                let _ = write!(out, " {{ {} }}", drain_attributes(bgp));
            }
            out.push_str(";\n");
        }
        out.push_str("}\n");
    }
    out
}

/// The filter statements that make a route less preferred.
fn drain_attributes(bgp: &Bgp) -> String {
    match bgp.drain {
        DrainStyle::GracefulShutdown => "bgp_community.add((65535,0));".to_string(),
        DrainStyle::Med => format!("bgp_med = {};", bgp.drain_med),
        DrainStyle::Prepend => {
            let asn = bgp.local_as.expect("validation requires local_as with drain = \"prepend\"");
            format!("bgp_path.prepend({asn});").repeat(bgp.prepend_count as usize)
        }
    }
}

/// Writes `path` through a temporary file and a rename, so BIRD never reads
/// half a file.
pub fn write_atomically(path: &Path, contents: &str) -> Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    };
    write().with_context(|| format!("writing bgp.bird_include {}", path.display()))
}

/// Sends one command on BIRD's control socket; the reply's lines as
/// (code, text). Continuation lines without a code take the last code.
pub fn command(socket: &Path, command: &str) -> Result<Vec<(u32, String)>> {
    let stream = UnixStream::connect(socket).with_context(|| {
        format!("connecting to BIRD's control socket {} (is bird running? see bgp.bird_socket)", socket.display())
    })?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let greeting = read_reply(&mut reader).context("reading BIRD's greeting")?;
    if greeting.first().is_none_or(|(code, _)| *code != 1) {
        bail!("{} does not greet like BIRD: {}", socket.display(), text(&greeting));
    }
    (&stream).write_all(format!("{command}\n").as_bytes())?;
    read_reply(&mut reader).with_context(|| format!("reading BIRD's answer to `{command}`"))
}

/// Reads lines up to the one that ends the reply ("NNNN text").
fn read_reply(reader: &mut impl BufRead) -> Result<Vec<(u32, String)>> {
    let mut lines = Vec::new();
    let mut code = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            bail!("BIRD closed the control socket mid-reply");
        }
        let line = line.trim_end_matches('\n');
        let numbered = line.len() >= 5 && line.as_bytes()[..4].iter().all(u8::is_ascii_digit);
        if numbered {
            code = line[..4].parse()?;
            let last = line.as_bytes()[4] == b' ';
            lines.push((code, line[5..].to_string()));
            if last {
                return Ok(lines);
            }
        } else {
            lines.push((code, line.strip_prefix(' ').unwrap_or(line).to_string()));
        }
    }
}

fn text(reply: &[(u32, String)]) -> String {
    reply.iter().map(|(c, t)| format!("{c:04} {t}")).collect::<Vec<_>>().join(" / ")
}

/// The BGP protocols of a `show protocols` reply (code 1002 rows:
/// name, protocol, table, state, since, info).
pub fn parse_protocols(reply: &[(u32, String)]) -> Vec<Session> {
    reply
        .iter()
        .filter(|(code, _)| *code == 1002)
        .filter_map(|(_, line)| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(1) != Some(&"BGP") {
                return None;
            }
            // "Since" may be one or two words (a date and a time).
            let info = fields.iter().skip(5).find(|f| f.chars().next().is_some_and(char::is_alphabetic));
            let state = info.copied().unwrap_or(fields.get(3).copied().unwrap_or("unknown"));
            Some(Session { name: fields[0].to_string(), state: state.to_string(), established: state == "Established" })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bgp(drain: DrainStyle) -> Bgp {
        Bgp { drain, local_as: Some(65001), prepend_count: 2, drain_med: 500, ..Bgp::default() }
    }

    #[test]
    fn include_file_has_one_host_route_per_vip_with_drain_attributes() {
        let routes: BTreeSet<Route> = [
            Route { address: "203.0.113.10".parse().unwrap(), drain: false },
            Route { address: "203.0.113.11".parse().unwrap(), drain: true },
            Route { address: "2001:db8::53".parse().unwrap(), drain: true },
        ]
        .into();
        let text = include_file(&routes, &bgp(DrainStyle::Prepend));
        assert!(text.contains("protocol static gslb_vips4 {\n  ipv4;\n  route 203.0.113.10/32 blackhole;\n"));
        assert!(
            text.contains("  route 203.0.113.11/32 blackhole { bgp_path.prepend(65001);bgp_path.prepend(65001); };\n")
        );
        assert!(text.contains("protocol static gslb_vips6 {\n  ipv6;\n  route 2001:db8::53/128 blackhole {"));
        let text = include_file(&routes, &bgp(DrainStyle::GracefulShutdown));
        assert!(text.contains("{ bgp_community.add((65535,0)); }"));
        let text = include_file(&routes, &bgp(DrainStyle::Med));
        assert!(text.contains("{ bgp_med = 500; }"));
        // Nothing announced: both protocols, empty.
        let empty = include_file(&BTreeSet::new(), &bgp(DrainStyle::Med));
        assert_eq!(empty.matches("protocol static").count(), 2);
        assert!(!empty.contains("route"));
    }

    #[test]
    fn replies_and_protocols_parse() {
        let raw = "2002-Name       Proto      Table      State  Since         Info\n\
                   1002-device1    Device     ---        up     05:29:24.721  \n \
                   gslb_vips4 Static     master4    up     05:29:24.721  \n \
                   router     BGP        ---        up     05:29:25.000  Established   \n \
                   backup     BGP        ---        start  05:29:24.721  Active        Socket: Connection refused\n\
                   0000 \n";
        let reply = read_reply(&mut raw.as_bytes()).unwrap();
        assert_eq!(reply.last().unwrap().0, 0);
        let sessions = parse_protocols(&reply);
        assert_eq!(
            sessions,
            vec![
                Session { name: "router".into(), state: "Established".into(), established: true },
                Session { name: "backup".into(), state: "Active".into(), established: false },
            ]
        );
        assert!(read_reply(&mut "0002-Reading\n".as_bytes()).is_err());
    }
}
