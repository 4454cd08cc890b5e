//! `cargo xtask`: install what the project needs, build, run and test.
mod package;
mod prerequisites;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "gslb developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install missing prerequisites only.
    Setup,
    /// Install prerequisites, build, and run every test (needs root). Tests
    /// run for the default members: the eBPF crates are built for BPF by
    /// the build scripts of gslb-userspace and gslb-tests. The Debian
    /// package is built first (as `package` does) for the package test.
    Test {
        /// Full-size fuzzing and floods (GSLB_FULL=1 for the tests): the
        /// sizes the hostile-input issue asks for, slower than the default.
        #[arg(long)]
        full: bool,
        /// Passed to `cargo test` after `--` (a test name filter, ...).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Install prerequisites, build, and run. With no arguments: the live
    /// namespace lab (two edges, six backends, traffic, a table refreshed
    /// every second) until Ctrl-C. With `-- --config FILE`: the agent on
    /// this host's real interfaces. With `-- ARGS`: `gslb ARGS`.
    Run {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Install prerequisites and cargo-deb, build gslb in release mode, and
    /// build the Debian package (target/debian/gslb_VERSION-1_ARCH.deb): the
    /// binary, systemd units, an example config, man pages and completions.
    Package,
    /// Install prerequisites, build in release mode, and run the benchmarks
    /// (needs root): a table on stdout, target/bench/report.json and plots.
    /// `-- ARGS` go to gslb-bench (`-- --only control-plane`).
    Bench {
        /// Fewer repetitions and smaller sizes: under two minutes.
        #[arg(long)]
        quick: bool,
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => prerequisites::ensure(),
        Task::Test { full, args } => {
            prerequisites::ensure()?;
            let deb = package::build()?;
            test(full, &deb, &args)
        }
        Task::Package => {
            prerequisites::ensure()?;
            package::build().map(drop)
        }
        Task::Run { args } => {
            prerequisites::ensure()?;
            // Ctrl-C reaches the whole process group: let the child clean up
            // its lab and exit first, rather than returning the prompt early.
            // (A handler, unlike SIG_IGN, is not inherited across exec.)
            signal_hook::flag::register(signal_hook::consts::SIGINT, Default::default())?;
            // Build first with cargo's progress showing (a fresh clone
            // compiles for minutes), then run quietly.
            if args.is_empty() {
                eprintln!("xtask: building the lab (first time: several minutes)");
                cargo(&["build", "--package", "gslb-tests", "--bin", "gslb-lab"], &[])?;
                return cargo(&["run", "--quiet", "--package", "gslb-tests", "--bin", "gslb-lab", "--", "demo"], &[]);
            }
            // `-- --config FILE` is shorthand for `gslb run --config FILE`.
            let args = if args[0].starts_with("--config") { [vec!["run".to_string()], args].concat() } else { args };
            eprintln!("xtask: building gslb (first time: several minutes)");
            cargo(&["build", "--package", "gslb-userspace", "--bin", "gslb"], &[])?;
            cargo(&["run", "--quiet", "--package", "gslb-userspace", "--bin", "gslb", "--"], &args)
        }
        Task::Bench { quick, args } => {
            prerequisites::ensure()?;
            // As for `run`: Ctrl-C lets the benchmarks remove their lab.
            signal_hook::flag::register(signal_hook::consts::SIGINT, Default::default())?;
            // The failover and memory groups run agents from gslb-lab, found
            // next to gslb-bench: build it in the same (release) profile.
            eprintln!("xtask: building the benchmarks in release mode (first time: several minutes)");
            cargo(&["build", "--release", "--package", "gslb-tests", "--bin", "gslb-lab"], &[])?;
            cargo(&["build", "--release", "--package", "gslb-bench", "--bin", "gslb-bench"], &[])?;
            let quick = if quick { vec!["--quick".to_string()] } else { Vec::new() };
            cargo(
                &["run", "--quiet", "--release", "--package", "gslb-bench", "--bin", "gslb-bench", "--"],
                &[quick, args].concat(),
            )
        }
    }
}

fn cargo_command() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn cargo(args: &[&str], extra: &[String]) -> Result<()> {
    run(cargo_command().args(args).args(extra))
}

/// Runs `cmd` to its end; an error unless it succeeds.
fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// The workspace's target directory (CARGO_TARGET_DIR, else target/).
fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is in the workspace").join("target")
    })
}

/// Runs `cargo test` for the default members, echoing its output, and ends
/// with one line that adds up every test binary's result.
fn test(full: bool, deb: &std::path::Path, extra: &[String]) -> Result<()> {
    let variant = build_variant()?;
    let mut cmd = cargo_command();
    cmd.arg("test");
    // The package test (tests/tests/package.rs) installs this one; the
    // upgrade test (tests/tests/upgrade.rs) runs this other gslb.
    cmd.env("GSLB_DEB", deb).env("GSLB_VARIANT", variant);
    if full {
        cmd.env("GSLB_FULL", "1");
    }
    if !extra.is_empty() {
        cmd.arg("--").args(extra);
    }
    let mut child = cmd.stdout(Stdio::piped()).spawn()?;
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(child.stdout.take().expect("piped stdout")).lines() {
        let line = line?;
        println!("{line}");
        if let Some(result) = line.strip_prefix("test result: ") {
            passed += count_before(result, " passed");
            failed += count_before(result, " failed");
        }
    }
    let status = child.wait()?;
    println!("tests: {passed} passed, {failed} failed");
    if !status.success() {
        bail!("cargo test failed: {status}");
    }
    Ok(())
}

/// Builds a gslb whose XDP program differs from the default build's
/// (gslb-userspace's `program-variant` feature) for the upgrade tests, in
/// the test profile (only gslb-userspace and its XDP object build again),
/// and keeps it aside as <target>/variant/gslb: the default build's binary
/// takes its place again with the tests. Returns its path.
fn build_variant() -> Result<std::path::PathBuf> {
    let target = target_dir();
    let variant = target.join("variant/gslb");
    println!("building {}, a gslb with another XDP program, for the upgrade tests", variant.display());
    cargo(&["build", "--package", "gslb-userspace", "--bin", "gslb", "--features", "program-variant"], &[])?;
    std::fs::create_dir_all(variant.parent().expect("a directory"))?;
    std::fs::copy(target.join("debug/gslb"), &variant)?;
    Ok(variant)
}

/// The number just before `word` in a libtest summary ("ok. 4 passed; ...").
fn count_before(summary: &str, word: &str) -> u64 {
    summary
        .split(';')
        .find_map(|part| {
            part.trim().trim_start_matches("ok. ").trim_start_matches("FAILED. ").strip_suffix(word.trim())
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}
