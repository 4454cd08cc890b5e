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
