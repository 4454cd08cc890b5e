//! `cargo xtask`: install what the project needs, build, run and test.
mod prerequisites;

use std::process::Command;

use anyhow::{bail, Result};
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
    /// run for the default members: gslb-ebpf only builds for BPF.
    Test {
        /// Passed to `cargo test` after `--` (a test name filter, ...).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Install prerequisites, build, and run `gslb` with the given
    /// arguments (default: `verify`, which loads both programs through the
    /// kernel verifier).
    Run {
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => prerequisites::ensure(),
        Task::Test { args } => {
            prerequisites::ensure()?;
            cargo(&["test"], &args)
        }
        Task::Run { args } => {
            prerequisites::ensure()?;
            let args = if args.is_empty() { vec!["verify".to_string()] } else { args };
            cargo(&["run", "--quiet", "--package", "gslb-userspace", "--bin", "gslb", "--"], &args)
        }
    }
}

fn cargo(args: &[&str], extra: &[String]) -> Result<()> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(args);
    if !extra.is_empty() {
        if args.first() == Some(&"test") {
            cmd.arg("--");
        }
        cmd.args(extra);
    }
    let status = cmd.status()?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
