//! `gslb-bench`: the benchmarks behind `cargo xtask bench`.

mod report;

fn main() {}
