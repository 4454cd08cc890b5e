//! Attaching `steer` to interfaces with pinned XDP links.
//!
//! Each interface's link is pinned at `<pin dir>/links/<interface>`, so it
//! outlives the agent: a killed agent leaves the program attached and
//! steering, and the next agent adopts the link instead of re-attaching.

use std::{
    mem::{size_of, size_of_val},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use aya::programs::{links::FdLink, Xdp, XdpMode as AyaXdpMode};
use serde::Serialize;
use tracing::{info, warn};

use crate::config::XdpMode;

/// How `steer` sits on one interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttachedMode {
    /// In the driver, before any socket buffer is allocated.
    Native,
    /// In the kernel's generic path (slower; for drivers without XDP).
    Generic,
    /// A link left by an earlier agent; its mode is whatever that agent
    /// chose.
    Adopted,
}

impl AttachedMode {
    /// How status and logs spell it.
    pub fn word(self) -> &'static str {
        match self {
            AttachedMode::Native => "native",
            AttachedMode::Generic => "generic",
            AttachedMode::Adopted => "adopted",
        }
    }
}

pub fn link_pin(pin_dir: &Path, interface: &str) -> PathBuf {
    pin_dir.join("links").join(interface)
}

/// Makes sure `program` steers `interface`: adopts a pinned link that still
/// points at this interface, or attaches and pins a new one.
pub fn ensure_attached(program: &mut Xdp, interface: &str, mode: XdpMode, pin_dir: &Path) -> Result<AttachedMode> {
    let ifindex = ifindex(interface)?;
    let pin = link_pin(pin_dir, interface);
    if pin.exists() {
        if pinned_link_ifindex(&pin) == Some(ifindex) {
            info!(interface, "adopted the pinned XDP link");
            return Ok(AttachedMode::Adopted);
        }
        // The interface was deleted or recreated since: the old link is
        // defunct.
        warn!(interface, "the pinned XDP link no longer points at the interface; attaching again");
        std::fs::remove_file(&pin).with_context(|| format!("removing stale pin {}", pin.display()))?;
    }
    let attached = match mode {
        XdpMode::Native => attach(program, interface, AyaXdpMode::Driver, &pin).map(|()| AttachedMode::Native),
        XdpMode::Generic => attach(program, interface, AyaXdpMode::Skb, &pin).map(|()| AttachedMode::Generic),
        XdpMode::Auto => match attach(program, interface, AyaXdpMode::Driver, &pin) {
            Ok(()) => Ok(AttachedMode::Native),
            Err(error) => {
                warn!(interface, error = format!("{error:#}"), "native XDP refused; falling back to generic mode");
                attach(program, interface, AyaXdpMode::Skb, &pin).map(|()| AttachedMode::Generic)
            }
        },
    }?;
    info!(interface, mode = ?attached, "attached steer");
    Ok(attached)
}

fn attach(program: &mut Xdp, interface: &str, flags: AyaXdpMode, pin: &Path) -> Result<()> {
    let id = program.attach(interface, flags).with_context(|| format!("attaching steer to {interface} ({flags:?})"))?;
    let link = program.take_link(id)?;
    let fd_link = FdLink::try_from(link).context("this kernel gave no bpf_link for XDP; cannot pin it")?;
    if let Some(dir) = pin.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fd_link.pin(pin).with_context(|| format!("pinning the XDP link at {}", pin.display()))?;
    Ok(())
}

/// Detaches `steer` from an interface by removing its pinned link.
pub fn detach(interface: &str, pin_dir: &Path) -> Result<()> {
    let pin = link_pin(pin_dir, interface);
    match std::fs::remove_file(&pin) {
        Ok(()) => {
            info!(interface, "detached steer");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", pin.display())),
    }
}

/// Interfaces with a pinned link under `pin_dir`.
pub fn pinned_interfaces(pin_dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(pin_dir.join("links")) else { return Vec::new() };
    let mut names: Vec<String> = entries.flatten().filter_map(|e| e.file_name().into_string().ok()).collect();
    names.sort();
    names
}

pub fn ifindex(interface: &str) -> Result<u32> {
    match find_ifindex(interface) {
        Some(index) => Ok(index),
        None => bail!(
            "interface {interface} does not exist in this network namespace (`ip link show` lists the interfaces)"
        ),
    }
}

/// The interface's index in this thread's network namespace, if it exists.
pub fn find_ifindex(interface: &str) -> Option<u32> {
    let name = std::ffi::CString::new(interface).ok()?;
    // SAFETY: `name` is a valid C string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// The interface a pinned XDP link is attached to (0 once its interface is
/// gone). None when there is no pinned XDP link.
pub(crate) fn pinned_link_ifindex(pin: &Path) -> Option<u32> {
    pinned_link_info(pin).map(|(_, ifindex)| ifindex)
}

/// The id of the program a pinned XDP link runs: it changes when an
/// upgrade replaces the program.
pub fn pinned_link_program(pin: &Path) -> Option<u32> {
    pinned_link_info(pin).map(|(program, _)| program)
}

/// A pinned XDP link's program id and interface, read with raw bpf(2)
/// calls: aya exposes neither a link's fd nor these fields.
fn pinned_link_info(pin: &Path) -> Option<(u32, u32)> {
    use std::os::{fd::FromRawFd, unix::ffi::OsStrExt};
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    const BPF_LINK_TYPE_XDP: u32 = 6;
    let path = std::ffi::CString::new(pin.as_os_str().as_bytes()).ok()?;
    #[repr(C)]
    struct ObjGetAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let get = ObjGetAttr { pathname: path.as_ptr() as u64, bpf_fd: 0, file_flags: 0 };
    // SAFETY: `get` and `path` outlive the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, &get as *const ObjGetAttr, size_of::<ObjGetAttr>()) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just returned this fd to us; we own it.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    // struct bpf_link_info: type, id, prog_id, then a union whose XDP member
    // starts with the ifindex, at byte 16 (the union is 8-byte aligned).
    let mut info = [0u32; 24];
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let attr = InfoAttr {
        bpf_fd: std::os::fd::AsRawFd::as_raw_fd(&fd) as u32,
        info_len: size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: `attr` and `info` outlive the call; sizes are passed correctly.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, &attr as *const InfoAttr, size_of::<InfoAttr>())
    };
    (rc == 0 && info[0] == BPF_LINK_TYPE_XDP).then_some((info[2], info[4]))
}
