//! `gslb-bench`: the benchmarks behind `cargo xtask bench`.
//!
//! Runs the groups in order (per-packet, forwarding, control-plane,
//! failover, memory, fleet), prints one table, and writes `report.json`
//! and plots into `target/bench/`. A group that fails is reported and the
//! others still run. Run it as root, through `cargo xtask bench [--quick]`.

mod control;
mod failover;
mod fleet;
mod gen;
mod live;
mod memory;
mod packet;
mod plot;
mod report;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;

use report::{GroupError, Machine, Measurement, Report};

/// The groups, in the order they run.
const GROUPS: [&str; 6] = ["per-packet", "forwarding", "control-plane", "failover", "memory", "fleet"];

#[derive(Parser)]
#[command(
    name = "gslb-bench",
    about = "gslb benchmarks: per-packet cost, forwarding, control plane, failover, memory, fleet"
)]
struct Cli {
    /// Fewer repetitions and smaller sizes where noted: the whole run takes
    /// under two minutes, and about 40 s more for the fleet group.
    #[arg(long)]
    quick: bool,
    /// Run only this group (repeatable).
    #[arg(long = "only", value_name = "GROUP", value_parser = clap::builder::PossibleValuesParser::new(GROUPS))]
    only: Vec<String>,
}

fn run_group(group: &str, quick: bool) -> Result<Vec<Measurement>> {
    match group {
        "per-packet" => packet::run(quick),
        "forwarding" => live::run(quick),
        "control-plane" => control::run(quick),
        "failover" => failover::run(quick),
        "memory" => memory::run(quick),
        "fleet" => fleet::run(quick),
        _ => unreachable!("clap checks group names"),
    }
}

/// `target/` of the build this binary belongs to (`target/<profile>/gslb-bench`).
pub fn target_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating gslb-bench")?;
    let profile = exe.parent().context("gslb-bench has no directory")?;
    // Test binaries live one level deeper, in target/<profile>/deps.
    let profile = if profile.ends_with("deps") { profile.parent().unwrap_or(profile) } else { profile };
    Ok(profile.parent().context("gslb-bench is not in target/<profile>")?.to_path_buf())
}

/// The `gslb-lab` binary built next to this one.
pub fn lab_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating gslb-bench")?;
    let path = exe.with_file_name("gslb-lab");
    anyhow::ensure!(
        path.exists(),
        "{} is missing: build it in the same profile (cargo build --release -p gslb-tests --bin gslb-lab), or use cargo xtask bench",
        path.display()
    );
    Ok(path)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let started = Instant::now();
    let mut measurements = Vec::new();
    let mut errors = Vec::new();
    for group in GROUPS.iter().filter(|g| cli.only.is_empty() || cli.only.iter().any(|o| o == *g)) {
        eprintln!("gslb-bench: {group}{}", if cli.quick { " (quick)" } else { "" });
        let group_started = Instant::now();
        let outcome = std::panic::catch_unwind(|| run_group(group, cli.quick));
        let error = match outcome {
            Ok(Ok(results)) => {
                measurements.extend(results);
                None
            }
            Ok(Err(error)) => Some(format!("{error:#}")),
            Err(panic) => Some(format!(
                "panicked: {}",
                panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("?")
            )),
        };
        match error {
            Some(error) => {
                eprintln!("gslb-bench: {group} FAILED after {:.1} s: {error}", group_started.elapsed().as_secs_f64());
                errors.push(GroupError { group: group.to_string(), error });
            }
            None => eprintln!("gslb-bench: {group} done in {:.1} s", group_started.elapsed().as_secs_f64()),
        }
    }

    let report = Report {
        machine: Machine::this(),
        quick: cli.quick,
        seconds: started.elapsed().as_secs_f64(),
        measurements,
        errors,
    };
    println!(
        "gslb-bench on {} ({} cores), kernel {}, {}{}",
        report.machine.cpu,
        report.machine.cores,
        report.machine.kernel,
        report.machine.date,
        if report.quick { ", quick" } else { "" }
    );
    print!("{}", report::table(&report.measurements));
    for error in &report.errors {
        println!("ERROR {}: {}", error.group, error.error);
    }

    let out = target_dir()?.join("bench");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let json = out.join("report.json");
    std::fs::write(&json, report.to_json()).with_context(|| format!("writing {}", json.display()))?;
    println!("report: {}", json.display());
    for path in plot::write_all(&report.measurements, &out)? {
        println!("plot: {}", path.display());
    }
    println!("{:.1} s in all", report.seconds);
    if !report.errors.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
