//! Checks each prerequisite and installs only what is missing, so running
//! this again on a prepared machine costs a few process launches.

use std::{fs, path::Path, process::Command};

use anyhow::{bail, Context, Result};

const LLVM_CONFIG: &str = "llvm-config-22";
const BPF_LINKER_VERSION: &str = "0.13";
/// Debian packages: LLVM for bpf-linker, `ip` and `ethtool` for the tests,
/// `nft` for the benchmarks' kernel-path baseline, BIRD 2 and GoBGP (with
/// its `gobgp` client) for the lab's BGP routing, etcd and `etcdctl` for
/// the lab's three-member etcd cluster, `protoc` for the build script
/// of the `etcd-client` crate, for the package test `systemd-analyze`
/// and `systemd-sysusers` (systemd) and `man` (man-db), and `promtool`
/// (prometheus) to check the alert rules.
const DEBIAN_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "iproute2",
    "ethtool",
    "nftables",
    "bird2",
    "gobgpd",
    "etcd-server",
    "etcd-client",
    "protobuf-compiler",
    "systemd",
    "man-db",
    "prometheus",
];
/// Services those packages would start with their stock configs; the lab
/// starts its own daemons (BGP speakers, etcd members) in namespaces.
const SERVICES: &[(&str, &str)] = &[
    ("bird2", "bird.service"),
    ("gobgpd", "gobgpd.service"),
    ("etcd-server", "etcd.service"),
    ("prometheus", "prometheus.service"),
];
/// Refuses every service start while packages install (see invoke-rc.d(8)).
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

pub fn ensure() -> Result<()> {
    if effective_uid() != 0 {
        bail!("gslb loads XDP programs and creates network namespaces: run as root");
    }
    debian_packages()?;
    rust_src()?;
    bpf_linker()?;
    bpffs()?;
    Ok(())
}

fn effective_uid() -> u32 {
    // /proc/self/status avoids a libc dependency for one number.
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(2).and_then(|u| u.parse().ok()))
        .unwrap_or(u32::MAX)
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn run(program: &str, args: &[&str], envs: &[(&str, &str)]) -> Result<()> {
    eprintln!("xtask: {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .status()
        .with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("{program} {} failed: {status}", args.join(" "));
    }
    Ok(())
}

fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    run("apt-get", &["update", "-qq"], &[])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    without_service_starts(|| run("apt-get", &args, &[("DEBIAN_FRONTEND", "noninteractive")]))?;
    keep_services_off(&missing)
}

/// Runs `install` with service starts refused, so a postinst script neither
/// waits on a daemon nor leaves a system BIRD, GoBGP or etcd running (their
/// postinsts start them through invoke-rc.d and deb-systemd-invoke, which
/// both ask policy-rc.d; a refusal is not an error for either). An existing
/// policy is the machine's own and stays as it is.
fn without_service_starts(install: impl FnOnce() -> Result<()>) -> Result<()> {
    if Path::new(POLICY_RC_D).exists() {
        return install();
    }
    fs::write(POLICY_RC_D, "#!/bin/sh\n# Written by cargo xtask while it installs packages.\nexit 101\n")
        .with_context(|| format!("writing {POLICY_RC_D}"))?;
    fs::set_permissions(POLICY_RC_D, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let result = install();
    fs::remove_file(POLICY_RC_D).with_context(|| format!("removing {POLICY_RC_D}"))?;
    result
}

/// Disables the services of the daemons just installed, on systemd hosts,
/// so they stay off after a reboot too. Daemons installed before are left
/// as the machine's owner set them.
fn keep_services_off(installed_now: &[&str]) -> Result<()> {
    if !Path::new("/run/systemd/system").exists() {
        return Ok(());
    }
    for (package, service) in SERVICES {
        if installed_now.contains(package) {
            run("systemctl", &["disable", "--now", service], &[])?;
        }
    }
    Ok(())
}

fn rust_src() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .context("rustup is needed to find the nightly toolchain")?;
    if !installed.status.success() {
        bail!("the nightly toolchain is missing (rustup toolchain list); it builds the eBPF programs");
    }
    if String::from_utf8_lossy(&installed.stdout).lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    run("rustup", &["component", "add", "rust-src", "--toolchain", "nightly"], &[])
}

fn bpf_linker() -> Result<()> {
    let version = Command::new("bpf-linker").arg("--version").output();
    if let Ok(out) = version {
        if String::from_utf8_lossy(&out.stdout).contains(&format!("bpf-linker {BPF_LINKER_VERSION}")) {
            return Ok(());
        }
    }
    let prefix = Command::new(LLVM_CONFIG).arg("--prefix").output().context("llvm-config-22")?;
    let prefix = String::from_utf8(prefix.stdout)?.trim().to_string();
    // The default feature wants LLVM 23; build against Debian's LLVM 22.
    run(
        "cargo",
        &[
            "install",
            "bpf-linker",
            "--version",
            &format!("~{BPF_LINKER_VERSION}"),
            "--no-default-features",
            "--features",
            "llvm-22",
        ],
        &[("LLVM_PREFIX", &prefix)],
    )
}

fn bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/mounts")?;
    if mounts.lines().any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf")) {
        return Ok(());
    }
    if !Path::new("/sys/fs/bpf").exists() {
        fs::create_dir_all("/sys/fs/bpf")?;
    }
    run("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"], &[])
}
