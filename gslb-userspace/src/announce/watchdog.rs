//! The watchdog: a process (`gslb bgp-watchdog`) that withdraws the
//! agent's routes if the agent dies without doing so (SIGKILL, a crash).
//!
//! A BGP daemon knows nothing of the agent: left alone it would go on
//! announcing VIPs that nothing watches, attracting traffic an edge may not
//! be able to serve. The agent starts the watchdog in a session of its own
//! (so signals to the agent's process group spare it) with the read end of
//! a pipe as its stdin; only the agent holds the write end. The agent tells
//! it every route before the daemon gets it. When the pipe reaches EOF the
//! agent is gone: unless it said `exit` first (a clean exit that withdrew
//! everything itself), the watchdog withdraws what it was told, then exits.

use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::Route;
use crate::config::Bgp;

/// How long the watchdog keeps trying to withdraw.
const WITHDRAW_ATTEMPTS: u32 = 60;
const WITHDRAW_RETRY: Duration = Duration::from_millis(500);

/// One line on the pipe.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Message {
    /// First: how to reach the daemon.
    Config(Box<Bgp>),
    /// What the daemon may announce now.
    Routes(BTreeSet<Route>),
    /// The agent withdrew everything itself: exit without acting.
    Exit,
}

/// The agent's end.
pub struct Watchdog {
    child: Child,
    pipe: Option<ChildStdin>,
    /// Where its pid is recorded for the next agent (see `take_over`).
    pid_file: PathBuf,
}

/// Stops the watchdog a previous agent left (its pid in `pid_file`), if it
/// still runs. It may be retrying a withdrawal (its daemon was down when
/// that agent died); once this agent starts, that withdrawal is this
/// agent's to make, and a late one from the old watchdog would undo this
/// agent's announcements. This agent begins by withdrawing everything, so
/// nothing the old watchdog was asked to do is lost.
pub fn take_over(pid_file: &Path) {
    let Ok(text) = std::fs::read_to_string(pid_file) else { return };
    let Ok(pid) = text.trim().parse::<i32>() else { return };
    // Only a process that is still a watchdog: pids are reused.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if !cmdline.split(|&b| b == 0).any(|arg| arg == b"bgp-watchdog") {
        return;
    }
    // SAFETY: kill(2) on a pid that was just checked to be a watchdog.
    if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
        warn!(pid, "stopped the previous agent's BGP watchdog: this agent takes over its withdrawals");
    }
}

impl Watchdog {
    /// Starts the watchdog, after stopping a previous agent's (whose pid
    /// `pid_file` holds), and records its pid there.
    pub fn spawn(bgp: &Bgp, pid_file: &Path) -> Result<Watchdog> {
        take_over(pid_file);
        let exe = std::env::current_exe().context("finding the gslb binary for the BGP watchdog")?;
        let mut command = Command::new(exe);
        command
            .args(invocation_prefix(std::env::args()))
            .arg("bgp-watchdog")
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        // SAFETY: setsid is async-signal-safe and touches only the child.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().context("starting the BGP watchdog (gslb bgp-watchdog)")?;
        let pipe = child.stdin.take();
        if let Err(error) = std::fs::write(pid_file, format!("{}\n", child.id())) {
            warn!(
                "cannot record the BGP watchdog's pid in {} ({error}); a next agent cannot stop it",
                pid_file.display()
            );
        }
        let mut watchdog = Watchdog { child, pipe, pid_file: pid_file.to_path_buf() };
        watchdog.send(&Message::Config(Box::new(bgp.clone())));
        info!(pid = watchdog.child.id(), "BGP watchdog started: it withdraws the VIPs if this agent dies");
        Ok(watchdog)
    }

    pub fn tell(&mut self, routes: &BTreeSet<Route>) {
        self.send(&Message::Routes(routes.clone()));
    }

    /// The agent withdrew everything: the watchdog exits without acting.
    pub fn stand_down(&mut self) {
        self.send(&Message::Exit);
        self.pipe = None;
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.pid_file);
    }

    fn send(&mut self, message: &Message) {
        let Some(pipe) = &mut self.pipe else { return };
        let mut line = serde_json::to_string(message).expect("messages serialize");
        line.push('\n');
        if let Err(error) = pipe.write_all(line.as_bytes()) {
            warn!("the BGP watchdog is gone ({error}); a crash of this agent would leave its VIPs announced");
            self.pipe = None;
        }
    }
}

/// The arguments between the binary and `run`: none for `gslb run`, but
/// `gslb` for a binary that embeds the command line (the lab's
/// `gslb-lab gslb run ...`), so the watchdog starts the same way.
fn invocation_prefix(args: impl Iterator<Item = String>) -> Vec<String> {
    args.skip(1).take_while(|a| a != "run").collect()
}

/// `gslb bgp-watchdog`: reads the agent's messages from stdin until EOF.
pub fn run() -> Result<()> {
    // The agent's terminal signals are not ours to act on.
    // SAFETY: setting a signal to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    let mut bgp = None;
    let mut routes = BTreeSet::new();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        match serde_json::from_str::<Message>(&line) {
            Ok(Message::Config(config)) => bgp = Some(*config),
            Ok(Message::Routes(now)) => routes = now,
            Ok(Message::Exit) => return Ok(()),
            Err(error) => warn!("BGP watchdog: ignoring a bad message ({error})"),
        }
    }
    let Some(bgp) = bgp else { return Ok(()) };
    if routes.is_empty() {
        return Ok(());
    }
    warn!(routes = routes.len(), "BGP watchdog: the agent died without withdrawing its VIPs; withdrawing them");
    let Some(mut daemon) = super::daemon(&bgp) else { return Ok(()) };
    for attempt in 1..=WITHDRAW_ATTEMPTS {
        match daemon.announce(&BTreeSet::new(), &routes, true) {
            Ok(()) => {
                info!("BGP watchdog: withdrew every VIP");
                return Ok(());
            }
            Err(error) if attempt == WITHDRAW_ATTEMPTS => {
                return Err(error.context("BGP watchdog: giving up withdrawing the VIPs"));
            }
            Err(error) => {
                if attempt == 1 {
                    warn!("BGP watchdog: withdrawing failed ({error:#}); retrying");
                }
                std::thread::sleep(WITHDRAW_RETRY);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_starts_like_the_agent() {
        let args = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>().into_iter();
        assert!(invocation_prefix(args("/usr/bin/gslb run --config /etc/gslb.toml")).is_empty());
        assert_eq!(invocation_prefix(args("/x/gslb-lab gslb run --config c")), vec!["gslb"]);
    }

    #[test]
    fn messages_round_trip() {
        let routes: BTreeSet<Route> = [Route { address: "203.0.113.10".parse().unwrap(), drain: true }].into();
        for message in [Message::Config(Box::default()), Message::Routes(routes), Message::Exit] {
            let line = serde_json::to_string(&message).unwrap();
            assert_eq!(serde_json::to_string(&serde_json::from_str::<Message>(&line).unwrap()).unwrap(), line);
        }
    }
}
