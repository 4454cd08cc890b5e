//! The kernels gslb runs on: the oldest it starts on, and a refusal by the
//! verifier explained in a sentence before the verifier's own log.

use anyhow::{anyhow, bail, Result};
use aya::programs::ProgramError;

/// The oldest kernel series gslb starts on.
pub const MINIMUM: (u32, u32) = (6, 1);

/// The kernels `cargo xtask test --kernels` runs the programs and the tests
/// on (docs/operations.md, "Kernels").
pub const TESTED: &str = "Linux 6.1, 6.12 and 6.18";

/// This kernel's release (`uname -r`).
pub fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|r| r.trim().to_string()).unwrap_or_default()
}

/// Refuses to go on when this kernel is older than `MINIMUM`.
pub fn require_supported_here() -> Result<()> {
    require_supported(&release())
}

/// Refuses a kernel older than `MINIMUM`, naming what it lacks. A release
/// that does not parse is let through: the verifier has the last word.
fn require_supported(release: &str) -> Result<()> {
    let mut numbers = release.split(|c: char| !c.is_ascii_digit()).map(|n| n.parse::<u32>());
    let (Some(Ok(major)), Some(Ok(minor))) = (numbers.next(), numbers.next()) else {
        return Ok(());
    };
    if (major, minor) < MINIMUM {
        bail!(
            "this is Linux {release}; gslb needs Linux {}.{} or later: it attaches its programs as BPF links (5.9) \
             and replaces them in place through them, reads the boot clock in XDP (bpf_ktime_get_boot_ns, 5.8), \
             and its programs pass the verifiers of {TESTED}, not older ones",
            MINIMUM.0,
            MINIMUM.1
        );
    }
    Ok(())
}

/// An error for a program the kernel refused to load: for a verifier
/// refusal, the kernel, the verifier's reason in one line and what to do
/// come first, then the verifier's full log.
pub fn refused(program: &str, error: ProgramError) -> anyhow::Error {
    let ProgramError::LoadError { io_error, verifier_log } = &error else {
        return anyhow!(error).context(format!("loading {program}"));
    };
    let log = format!("{verifier_log:?}");
    let reason = verifier_reason(&log).unwrap_or("no reason given");
    anyhow!(
        "the verifier of this kernel (Linux {}) refused {program} ({io_error}): {reason}. gslb's programs are \
         verified on {TESTED} (docs/operations.md, \"Kernels\"); `gslb verify` shows this on any host. \
         The verifier's log:\n{log}",
        release()
    )
}

/// The verifier's reason: the last line of its log that is neither an
/// instruction, a source line nor a statistic.
fn verifier_reason(log: &str) -> Option<&str> {
    log.lines().map(str::trim).rev().find(|line| {
        let instruction =
            line.split_once(':').is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
        !(line.is_empty()
            || instruction
            || line.starts_with(';')
            || line.starts_with("verification time")
            || line.starts_with("stack depth")
            || line.starts_with("processed ")
            || line.starts_with("mark_precise"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_older_than_6_1_are_refused_by_name() {
        for release in ["6.1.0-57-cloud-amd64", "6.12.117+deb12-cloud-amd64", "6.18.44-fc-v669", "7.0.0", "weird"] {
            require_supported(release).unwrap();
        }
        for release in ["5.15.0-105-generic", "5.10.0-28-amd64", "4.19.0"] {
            let error = require_supported(release).unwrap_err().to_string();
            assert!(error.contains(release) && error.contains("needs Linux 6.1 or later"), "{error}");
        }
    }

    #[test]
    fn the_reason_is_the_verifier_s_last_word() {
        let log = "0: R1=ctx() R10=fp0\n; if ip.version() != 6 @ parse.rs:214\n270: (0f) r5 += r4\n\
                   math between pkt pointer and register with unbounded min value is not allowed\n\
                   verification time 5503 usec\nstack depth 272+0\nprocessed 128 insns (limit 1000000)\n";
        assert_eq!(
            verifier_reason(log),
            Some("math between pkt pointer and register with unbounded min value is not allowed")
        );
        let log = "combined stack size of 3 calls is 544. Too large\nverification time 9665408 usec\n\
                   stack depth 368+96+24\nprocessed 366367 insns (limit 1000000) max_states_per_insn 47\n";
        assert_eq!(verifier_reason(log), Some("combined stack size of 3 calls is 544. Too large"));
        assert_eq!(verifier_reason("verification time 1 usec\n"), None);
    }
}
