//! The edge interfaces as the agent sees them: up or down, present or
//! gone, and whether `steer` is attached. The watcher notices an interface
//! going down and coming back, and one deleted and created again under the
//! same name (a new ifindex: the kernel detached the old XDP link with the
//! old netdev), and then attaches `steer` again.
//!
//! The watcher polls, every [`POLL_INTERVAL`], rather than listening to
//! rtnetlink: one poll reads everything a decision needs (the name's
//! current ifindex, its flags, and the ifindex the pinned link points at)
//! with three small syscalls per interface. There are no messages to parse,
//! no lost events to resynchronise after, and the same check also catches a
//! pinned link removed by hand, which rtnetlink would not report. A quarter
//! second is short next to the time routing takes to send traffic back to
//! an interface that returns.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::Result;
use aya::programs::Xdp;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::XdpMode;
use crate::sys::attach::{self, AttachedMode};

/// How often the watcher looks at the interfaces.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// What happened to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// Went operationally down (admin down, or no carrier).
    Down,
    /// Came back up.
    Up,
    /// No longer exists; `steer` resumes when an interface of that name
    /// appears again.
    Vanished,
    /// `steer` was attached again (the interface was recreated, or its
    /// pinned link was gone).
    Reattached,
    /// Attaching again failed; retried at every poll.
    ReattachFailed,
}

#[derive(Clone, Debug)]
pub struct Event {
    pub at: SystemTime,
    pub kind: EventKind,
    pub detail: String,
}

/// One configured interface, as last seen.
#[derive(Clone, Debug, Default)]
pub struct Interface {
    /// None while no interface of this name exists.
    pub ifindex: Option<u32>,
    /// Operationally up: administratively up and with a carrier.
    pub up: bool,
    /// How `steer` is attached; None when it is not.
    pub mode: Option<AttachedMode>,
    /// Times the watcher attached `steer` again.
    pub reattaches: u64,
    pub last_event: Option<Event>,
    /// The ifindex `steer` was last attached to.
    attached_to: Option<u32>,
}

impl Interface {
    fn record(&mut self, kind: EventKind, detail: String) {
        self.last_event = Some(Event { at: SystemTime::now(), kind, detail });
    }
}

/// The configured interfaces, by name.
#[derive(Debug, Default)]
pub struct Interfaces {
    interfaces: BTreeMap<String, Interface>,
}

impl Interfaces {
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Interface)> {
        self.interfaces.iter()
    }

    pub fn get(&self, name: &str) -> Option<&Interface> {
        self.interfaces.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.interfaces.contains_key(name)
    }

    /// Starts steering an interface the watcher does not know yet (at start
    /// and on a reload that adds it): adopts its pinned link or attaches.
    pub fn attach(&mut self, program: &mut Xdp, name: &str, mode: XdpMode, pin_dir: &Path) -> Result<()> {
        let attached = attach::ensure_attached(program, name, mode, pin_dir)?;
        let ifindex = attach::find_ifindex(name);
        let up = ifindex.is_some() && is_up(name);
        let interface = Interface { ifindex, up, mode: Some(attached), attached_to: ifindex, ..Interface::default() };
        self.interfaces.insert(name.to_string(), interface);
        Ok(())
    }

    /// Stops steering an interface no longer configured.
    pub fn detach(&mut self, name: &str, pin_dir: &Path) -> Result<()> {
        attach::detach(name, pin_dir)?;
        self.interfaces.remove(name);
        Ok(())
    }

    /// One look at every interface: records changes, and attaches `steer`
    /// again where an interface came back without it.
    pub fn watch(&mut self, program: &mut Xdp, mode: XdpMode, pin_dir: &Path) {
        for (name, interface) in &mut self.interfaces {
            watch_one(name, interface, program, mode, pin_dir);
        }
    }
}

fn watch_one(name: &str, interface: &mut Interface, program: &mut Xdp, mode: XdpMode, pin_dir: &Path) {
    let Some(ifindex) = attach::find_ifindex(name) else {
        if interface.ifindex.take().is_some() {
            warn!(interface = name, "interface vanished; steer resumes when it returns");
            interface.up = false;
            interface.mode = None;
            interface.record(EventKind::Vanished, "no interface of this name".into());
        }
        return;
    };

    // The pinned link must point at the interface's current ifindex; a
    // recreated interface has a new one, and its old link is defunct.
    let pin = attach::link_pin(pin_dir, name);
    if attach::pinned_link_ifindex(&pin) != Some(ifindex) {
        let before = interface.attached_to.map_or("none".to_string(), |i| i.to_string());
        match attach::ensure_attached(program, name, mode, pin_dir) {
            Ok(attached) => {
                interface.reattaches += 1;
                interface.mode = Some(attached);
                let recreated = interface.attached_to != Some(ifindex);
                interface.attached_to = Some(ifindex);
                let detail = format!("ifindex {before} -> {ifindex}, mode {}", attached.word());
                let why = if recreated { "the interface reappeared" } else { "the pinned XDP link was gone" };
                warn!(interface = name, ifindex, mode = attached.word(), "{why}; steer attached again");
                interface.record(EventKind::Reattached, detail);
            }
            Err(error) => {
                interface.mode = None;
                let detail = format!("{error:#}");
                // Logged once per distinct error, not at every poll.
                let repeated = interface
                    .last_event
                    .as_ref()
                    .is_some_and(|e| e.kind == EventKind::ReattachFailed && e.detail == detail);
                if !repeated {
                    warn!(interface = name, "attaching steer again failed (retrying): {detail}");
                    interface.record(EventKind::ReattachFailed, detail);
                }
            }
        }
    }
    interface.ifindex = Some(ifindex);

    let up = is_up(name);
    if up != interface.up {
        interface.up = up;
        if up {
            info!(interface = name, "interface up");
            interface.record(EventKind::Up, String::new());
        } else {
            // XDP stays attached while the interface is down.
            warn!(interface = name, "interface down; steer stays attached");
            interface.record(EventKind::Down, String::new());
        }
    }
}

/// Whether the interface is up and has a carrier (IFF_UP and IFF_RUNNING),
/// read with SIOCGIFFLAGS in this thread's network namespace.
fn is_up(name: &str) -> bool {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= request.ifr_name.len() {
        return false;
    }
    for (dst, src) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return false;
    }
    // SAFETY: the kernel just returned this fd to us.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `request` is a valid ifreq with a NUL-terminated name and
    // outlives the call.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) };
    if rc != 0 {
        return false;
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { request.ifr_ifru.ifru_flags } as libc::c_int;
    flags & libc::IFF_UP != 0 && flags & libc::IFF_RUNNING != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_up_and_a_missing_interface_is_not() {
        // Tests run in the host's namespace, whose lo is up.
        assert!(is_up("lo"));
        assert!(!is_up("gslb-none0"));
        assert!(!is_up("a-name-far-too-long-for-linux"));
    }
}
