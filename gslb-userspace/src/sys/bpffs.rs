//! The BPF filesystem the agent pins its state on.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// bpffs's magic number in statfs(2).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Refuses a pin directory that is not on bpffs, saying how to fix it.
pub fn check(pin_dir: &Path) -> Result<()> {
    let mut probe = pin_dir.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    let path = std::ffi::CString::new(probe.as_os_str().as_encoded_bytes()).context("path contains NUL")?;
    // SAFETY: statfs writes into `stat`, which lives across the call.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(path.as_ptr(), &mut stat) };
    if rc != 0 || stat.f_type as i64 != BPF_FS_MAGIC {
        bail!(
            "edge.bpffs_pin {} is not on a BPF filesystem ({} is not bpffs); mount one with `mount -t bpf bpf /sys/fs/bpf` or choose a path under a bpffs mount",
            pin_dir.display(),
            probe.display()
        );
    }
    Ok(())
}
