//! `cargo xtask test --kernels`: the kernel matrix. In each kernel (Debian's
//! 6.1 and 6.12 LTS cloud kernels under QEMU, and this host's), `gslb
//! verify` with the release binary, the data-plane tests that run the real
//! programs through BPF_PROG_TEST_RUN, and one small namespace lab with
//! real TCP through `steer` and `decap` attached in the veth driver.

use std::{
    fmt::Write as _,
    fs,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{cargo, cargo_command, count_before, target_dir, vm};

/// The kernels `--kernels` runs in when not given a list.
pub const DEFAULT_KERNELS: &str = "6.1,6.12,host";

/// Integration tests of gslb-tests the matrix runs, whole.
const TESTS: &[&str] = &[
    // BPF_PROG_TEST_RUN: exact frames, counters, fragments.
    "steer_fixtures",
    // Truncated, malformed and fuzzed packets (default sizes).
    "steer_hostile",
    // The program's choice of backend against the userspace model.
    "steer_selection",
    "steer_icmp",
    "steer_next_hop",
    // Hop lists from the edge, and decap's side of second chance.
    "steer_second_chance",
    "decap",
    "decap_hop_lists",
    // Real TCP through steer and decap in the veth driver.
    "kernel_smoke",
];

struct KernelResult {
    kernel: String,
    release: String,
    verified: bool,
    passed: u64,
    failed: u64,
    /// The command's exit status, or why it did not run.
    outcome: Result<i32>,
    took: Duration,
}

pub fn run(kernels: &[String]) -> Result<()> {
    eprintln!("xtask: building gslb (release) and the matrix's tests");
    cargo(&["build", "--release", "--package", "gslb-userspace", "--bin", "gslb"], &[])?;
    let script = suite_script(&test_binaries()?)?;

    let mut results = Vec::new();
    for kernel in kernels {
        println!("== kernel {kernel}");
        let start = Instant::now();
        let target = vm::Target::prepare(kernel, vm::MEMORY_MIB, vm::CPUS)?;
        let mut result = KernelResult {
            kernel: kernel.clone(),
            release: target.release(),
            verified: false,
            passed: 0,
            failed: 0,
            outcome: Ok(0),
            took: Duration::ZERO,
        };
        let command = ["sh".to_string(), script.to_string_lossy().into_owned()];
        result.outcome = target.run(
            &command,
            vm::Output::Lines(&mut |line| {
                println!("[{kernel}] {line}");
                if line == "steer and decap passed the verifier" {
                    result.verified = true;
                }
                if let Some(summary) = line.strip_prefix("test result: ") {
                    result.passed += count_before(summary, " passed");
                    result.failed += count_before(summary, " failed");
                }
            }),
        );
        result.took = start.elapsed();
        results.push(result);
    }

    let mut failures = 0;
    for r in &results {
        let how = if r.kernel == "host" { "this host" } else { "QEMU" };
        let verdict = match &r.outcome {
            Ok(0) if r.verified && r.failed == 0 => "ok".to_string(),
            Ok(code) => format!("FAILED (exit status {code})"),
            Err(e) => format!("FAILED: {e:#}"),
        };
        if !verdict.starts_with("ok") {
            failures += 1;
        }
        println!(
            "kernel {} ({}, {how}): verifier {}, tests: {} passed, {} failed, {}s: {verdict}",
            r.kernel,
            r.release,
            if r.verified { "passed" } else { "REFUSED" },
            r.passed,
            r.failed,
            r.took.as_secs()
        );
    }
    if failures > 0 {
        bail!("the kernel matrix failed on {failures} of {} kernels", results.len());
    }
    Ok(())
}

/// Builds the matrix's tests (test profile) and returns their executables.
fn test_binaries() -> Result<Vec<(String, PathBuf)>> {
    let mut cmd = cargo_command();
    cmd.args(["test", "--no-run", "--package", "gslb-tests", "--message-format=json-render-diagnostics"]);
    for test in TESTS {
        cmd.args(["--test", test]);
    }
    let out = cmd.stderr(Stdio::inherit()).output().context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the matrix's tests failed: {}", out.status);
    }
    let mut binaries = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let (Some(name), Some(executable)) = (message["target"]["name"].as_str(), message["executable"].as_str())
        else {
            continue;
        };
        if message["target"]["kind"][0] == "test" && TESTS.contains(&name) {
            binaries.push((name.to_string(), PathBuf::from(executable)));
        }
    }
    binaries.sort_by_key(|(name, _)| TESTS.iter().position(|t| t == name));
    if binaries.len() != TESTS.len() {
        bail!("cargo built {} of the matrix's {} tests", binaries.len(), TESTS.len());
    }
    Ok(binaries)
}

/// The script each kernel runs (under target/, which the guests see):
/// every step, even after a failure, and a failing status if any failed.
fn suite_script(binaries: &[(String, PathBuf)]) -> Result<PathBuf> {
    let gslb = target_dir().join("release/gslb");
    let mut script = String::from("# Written by cargo xtask test --kernels.\nfailed=0\necho \"kernel $(uname -r)\"\n");
    writeln!(script, "{} verify || failed=1", gslb.display())?;
    for (name, binary) in binaries {
        writeln!(script, "echo '-- {name}'")?;
        writeln!(script, "{} --color=never || failed=1", binary.display())?;
    }
    script.push_str("exit $failed\n");
    let path = target_dir().join("vm/matrix.sh");
    fs::create_dir_all(path.parent().expect("a directory"))?;
    fs::write(&path, script)?;
    Ok(path)
}
