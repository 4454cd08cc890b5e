//! One measurement, as every benchmark reports it.

use serde::Serialize;

/// A figure from one benchmark run.
#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    /// "per-packet", "forwarding", "control-plane", "failover", "memory".
    pub group: String,
    /// What was measured, e.g. "steer: established TCP flow, 1 VIP, 8 backends".
    pub name: String,
    /// The median (or the single value) in `unit`.
    pub value: f64,
    /// "ns/packet", "Mpps", "ms", "MiB", ...
    pub unit: String,
    /// The `name` of the same-run baseline this is compared to, if any.
    pub baseline: Option<String>,
    /// All samples the median was taken over.
    pub samples: Vec<f64>,
    /// What the issue asks for, in words ("<= floor + 50 ns"), if anything.
    pub target: Option<String>,
    /// Evidence the measurement did the real work (e.g. "forwarded = 1000000 of 1000000").
    pub check: Option<String>,
}

/// The median of `samples` (which must not be empty).
pub fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).expect("no NaN samples"));
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}
