//! `cargo xtask`: install what the project needs, build, run and test.
mod matrix;
mod package;
mod prerequisites;
mod vm;

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
        /// Instead of every test: the kernel matrix. In each kernel (Debian's
        /// cloud kernels under QEMU, fetched into target/vm, and `host`),
        /// `gslb verify`, the data-plane tests and a small namespace lab,
        /// with a summary line per kernel. A comma-separated list chooses
        /// the kernels.
        #[arg(long, value_name = "KERNELS", num_args = 0..=1, require_equals = true,
              default_missing_value = matrix::DEFAULT_KERNELS, value_delimiter = ',')]
        kernels: Option<Vec<String>>,
        /// Passed to `cargo test` after `--` (a test name filter, ...).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Install prerequisites, build, and run. With no arguments: the live
    /// namespace lab (two edges, six backends, traffic, a table refreshed
    /// every second) until Ctrl-C. With `-- --config FILE`: the agent on
    /// this host's real interfaces. With `-- ARGS`: `gslb ARGS`.
    Run {
        /// The lab in a QEMU VM (see `vm`) instead of on this host.
        #[arg(long)]
        vm: bool,
        /// The VM's kernel with `--vm`: a Debian cloud series (6.1, 6.12).
        #[arg(long, default_value = "6.12", requires = "vm")]
        kernel: String,
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Install prerequisites and cargo-deb, build gslb in release mode, and
    /// build the Debian package (target/debian/gslb_VERSION-1_ARCH.deb): the
    /// binary, systemd units, an example config, man pages and completions.
    Package,
    /// Run COMMAND in a QEMU VM booted with a Debian cloud kernel (`6.1`,
    /// `6.12`, fetched from Debian and kept in target/vm; never installed
    /// on this host) or on this host (`host`). The guest sees this host's
    /// files read-only (writes stay in the guest), runs COMMAND in the
    /// current directory with this environment, and `vm` exits with its
    /// status. Build first: `vm` runs what is there.
    Vm {
        /// A Debian cloud kernel series (6.1, 6.12) or `host`.
        #[arg(long, default_value = "6.12")]
        kernel: String,
        /// The guest's memory, in MiB.
        #[arg(long, default_value_t = vm::MEMORY_MIB)]
        memory: u64,
        /// The guest's CPUs.
        #[arg(long, default_value_t = vm::CPUS)]
        cpus: u32,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
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
        Task::Test { kernels: Some(kernels), .. } => {
            prerequisites::ensure()?;
            matrix::run(&kernels)
        }
        Task::Test { full, args, kernels: None } => {
            prerequisites::ensure()?;
            let deb = package::build()?;
            test(full, &deb, &args)
        }
        Task::Package => {
            prerequisites::ensure()?;
            package::build().map(drop)
        }
        Task::Run { vm: true, kernel, args } => {
            prerequisites::ensure()?;
            if !args.is_empty() {
                bail!("`run --vm` runs the lab only; for another command use `cargo xtask vm -- COMMAND`");
            }
            eprintln!("xtask: building the lab (first time: several minutes)");
            cargo(&["build", "--package", "gslb-tests", "--bin", "gslb-lab"], &[])?;
            let lab = target_dir().join("debug/gslb-lab").to_string_lossy().into_owned();
            let target = vm::Target::prepare(&kernel, vm::MEMORY_MIB, vm::CPUS)?;
            eprintln!("xtask: booting Linux {} under QEMU for the lab; Ctrl-C stops it", target.release());
            std::process::exit(target.run(&[lab, "demo".into(), "--in-vm".into()], vm::Output::Terminal)?)
        }
        Task::Run { vm: false, args, .. } => {
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
        Task::Vm { kernel, memory, cpus, command } => {
            prerequisites::ensure()?;
            let target = vm::Target::prepare(&kernel, memory, cpus)?;
            let code = target.run(&command, vm::Output::Terminal)?;
            std::process::exit(code)
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
