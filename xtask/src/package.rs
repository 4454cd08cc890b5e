//! `cargo xtask package`: the Debian package, built with cargo-deb from the
//! release binary. The metadata (what goes where) is in
//! gslb-userspace/Cargo.toml, `[package.metadata.deb]`; the units, the
//! example config and the maintainer scripts in packaging/.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use crate::{cargo, cargo_command, run, target_dir};

/// The cargo-deb series used (installed when missing; 3.8 builds on the
/// project's rustc and knows `--no-build` and globbed assets).
const CARGO_DEB_VERSION: &str = "3.8";

/// Builds the release binary, writes the man pages and completions it
/// generates, and packs everything into a .deb under target/debian.
/// Returns the .deb's path.
pub fn build() -> Result<PathBuf> {
    cargo_deb()?;
    eprintln!("xtask: building gslb in release mode (first time: several minutes)");
    cargo(&["build", "--release", "--package", "gslb-userspace", "--bin", "gslb"], &[])?;
    let release = target_dir().join("release");
    generate(&release.join("gslb"), &release.join("gslb-package"))?;
    eprintln!("xtask: packing the .deb (cargo deb --no-build)");
    let out = cargo_command()
        .args(["deb", "--package", "gslb-userspace", "--no-build", "--locked"])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo deb")?;
    if !out.status.success() {
        bail!("cargo deb failed: {}", out.status);
    }
    // cargo deb prints the path of the package it wrote, last.
    let stdout = String::from_utf8(out.stdout)?;
    let deb = stdout.lines().last().map(str::trim).unwrap_or_default();
    if !deb.ends_with(".deb") || !Path::new(deb).is_file() {
        bail!("cargo deb did not say where it wrote the package: {stdout:?}");
    }
    let deb = PathBuf::from(deb);
    eprintln!("xtask: built {}", deb.display());
    Ok(deb)
}

/// Installs cargo-deb unless a `CARGO_DEB_VERSION` one is there.
fn cargo_deb() -> Result<()> {
    let version = cargo_command().args(["deb", "--version"]).stderr(Stdio::null()).output();
    if let Ok(out) = version {
        if String::from_utf8_lossy(&out.stdout).starts_with(&format!("cargo-deb {CARGO_DEB_VERSION}.")) {
            return Ok(());
        }
    }
    eprintln!("xtask: installing cargo-deb {CARGO_DEB_VERSION} (a minute or two)");
    cargo(&["install", "cargo-deb", "--version", &format!("~{CARGO_DEB_VERSION}"), "--locked"], &[])
}

/// Man pages (gzipped) and bash, zsh and fish completions, from `gslb`
/// itself, where the package metadata takes them.
fn generate(gslb: &Path, dir: &Path) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let man = dir.join("man");
    let completions = dir.join("completions");
    fs::create_dir_all(&man)?;
    fs::create_dir_all(&completions)?;
    run(Command::new(gslb).arg("man").arg("--out-dir").arg(&man))?;
    for page in fs::read_dir(&man)? {
        run(Command::new("gzip").arg("-9n").arg(page?.path()))?;
    }
    for (shell, file) in [("bash", "gslb"), ("zsh", "_gslb"), ("fish", "gslb.fish")] {
        let out = Command::new(gslb).args(["completions", shell]).output()?;
        if !out.status.success() || out.stdout.is_empty() {
            bail!("gslb completions {shell} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        fs::write(completions.join(file), out.stdout)?;
    }
    Ok(())
}
