//! Test sizes: scaled down for `cargo xtask test`, full size under
//! `cargo xtask test --full` (which sets GSLB_FULL=1).

/// Whether the full-size run was asked for.
pub fn full() -> bool {
    std::env::var_os("GSLB_FULL").is_some_and(|v| v != "0" && !v.is_empty())
}

/// `default` normally, `full_size` under `--full`.
pub fn sized(default: u64, full_size: u64) -> u64 {
    if full() {
        full_size
    } else {
        default
    }
}

/// A fuzzer's seed: `GSLB_FUZZ_SEED` to replay a run, else a fresh one.
/// Prints it with what the run does (`what`, e.g. "steer fuzz: 200000
/// frames"), so a failure can be replayed.
pub fn fuzz_seed(what: &str) -> u64 {
    let seed = std::env::var("GSLB_FUZZ_SEED")
        .map(|s| s.parse().expect("GSLB_FUZZ_SEED is a number"))
        .unwrap_or_else(|_| rand::random::<u32>() as u64);
    println!("{what}, seed {seed} (replay with GSLB_FUZZ_SEED={seed})");
    seed
}
