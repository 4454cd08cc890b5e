//! One measurement, as every benchmark reports it, and the report of a
//! whole run: the table on stdout and `target/bench/report.json`.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// A figure from one benchmark run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Measurement {
    /// "per-packet", "forwarding", "control-plane", "failover", "memory",
    /// "fleet".
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

impl Measurement {
    /// A measurement whose value is the median of `samples`.
    pub fn from_samples(group: &str, name: impl Into<String>, unit: &str, samples: Vec<f64>) -> Measurement {
        Measurement {
            group: group.to_string(),
            name: name.into(),
            value: median(&samples),
            unit: unit.to_string(),
            baseline: None,
            samples,
            target: None,
            check: None,
        }
    }

    pub fn baseline(mut self, name: impl Into<String>) -> Measurement {
        self.baseline = Some(name.into());
        self
    }

    pub fn target(mut self, target: impl Into<String>) -> Measurement {
        self.target = Some(target.into());
        self
    }

    /// Sets an upper-bound target and says whether the value met it, or by
    /// how much it missed.
    pub fn at_most(self, limit: f64) -> Measurement {
        let verdict = if self.value <= limit {
            "met".to_string()
        } else {
            format!("MISSED by {:.2} {}", self.value - limit, self.unit)
        };
        let target = format!("<= {limit} {}: {verdict}", self.unit);
        self.target(target)
    }

    pub fn check(mut self, check: impl Into<String>) -> Measurement {
        self.check = Some(check.into());
        self
    }
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

/// The largest of `samples` (0 when empty).
pub fn max(samples: &[f64]) -> f64 {
    samples.iter().copied().fold(0.0, f64::max)
}

/// Where and when the numbers were taken.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Machine {
    /// `uname -r`.
    pub kernel: String,
    /// The first `model name` of /proc/cpuinfo.
    pub cpu: String,
    pub cores: usize,
    /// UTC, RFC 3339.
    pub date: String,
}

impl Machine {
    pub fn this() -> Machine {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        Machine { kernel, cpu, cores, date: rfc3339(now) }
    }
}

/// A group that failed, and why.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GroupError {
    pub group: String,
    pub error: String,
}

/// Everything one run produced: `target/bench/report.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub machine: Machine,
    pub quick: bool,
    /// Wall time of the whole run.
    pub seconds: f64,
    pub measurements: Vec<Measurement>,
    pub errors: Vec<GroupError>,
}

impl Report {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serialises")
    }

    #[allow(dead_code)] // for tools that compare runs; tested below
    pub fn from_json(text: &str) -> serde_json::Result<Report> {
        serde_json::from_str(text)
    }
}

/// `seconds` since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let rest = seconds % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + (month <= 2) as i64;
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rest / 3600, rest / 60 % 60, rest % 60)
}

/// A value with about four significant digits, no exponent.
pub fn format_value(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 1000.0 || value == value.trunc() && magnitude >= 1.0 {
        format!("{value:.0}")
    } else if magnitude >= 100.0 {
        format!("{value:.1}")
    } else if magnitude >= 10.0 {
        format!("{value:.2}")
    } else if magnitude >= 0.01 || magnitude == 0.0 {
        format!("{value:.3}")
    } else {
        format!("{value:.5}")
    }
}

/// Each measurement's value over its baseline's, when the baseline is in
/// `measurements` (same group first, then any) with the same unit.
pub fn ratio(m: &Measurement, measurements: &[Measurement]) -> Option<f64> {
    let name = m.baseline.as_deref()?;
    let base = measurements
        .iter()
        .find(|b| b.name == name && b.group == m.group)
        .or_else(|| measurements.iter().find(|b| b.name == name))?;
    (base.unit == m.unit && base.value != 0.0).then(|| m.value / base.value)
}

/// The table printed on stdout: one row per measurement, columns aligned.
pub fn table(measurements: &[Measurement]) -> String {
    let header = ["group", "name", "value", "vs baseline", "target", "check"];
    let rows: Vec<[String; 6]> = measurements
        .iter()
        .map(|m| {
            [
                m.group.clone(),
                m.name.clone(),
                format!("{} {}", format_value(m.value), m.unit),
                ratio(m, measurements).map(|r| format!("x{r:.2}")).unwrap_or_default(),
                m.target.clone().unwrap_or_default(),
                m.check.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[String]| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else if i == 2 {
                // Values right-aligned, so digits line up by unit.
                let _ = write!(text, "{cell:>width$}  ");
            } else {
                let _ = write!(text, "{cell:<width$}  ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut out, &header.map(String::from));
    line(&mut out, &widths.map(|w| "-".repeat(w)));
    for row in &rows {
        line(&mut out, row);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(group: &str, name: &str, value: f64, unit: &str) -> Measurement {
        Measurement::from_samples(group, name, unit, vec![value])
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[7.0]), 7.0);
        assert_eq!(max(&[1.0, 9.0, 3.0]), 9.0);
    }

    #[test]
    fn the_table_aligns_columns_and_shows_ratios() {
        let base = m("per-packet", "floor", 20.0, "ns/packet");
        let steer = m("per-packet", "steer", 50.0, "ns/packet").baseline("floor").target("<= floor + 50 ns");
        let lost = m("memory", "rss", 12.5, "MiB").baseline("missing").check("pid 1");
        let text = table(&[base, steer, lost]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines[0].starts_with("group       name   ") && lines[0].contains("value  vs baseline"), "{text}");
        assert!(lines[3].contains("50 ns/packet  x2.50 ") && lines[3].contains("<= floor + 50 ns"), "{text}");
        // A baseline that is not in the results gives no ratio.
        assert!(lines[4].contains("12.50 MiB") && !lines[4].contains('x') && lines[4].ends_with("pid 1"), "{text}");
        // The value column is right-aligned: every row has it end at the same place.
        let end = |l: &str, v: &str| l.find(v).unwrap() + v.len();
        assert_eq!(end(lines[2], "20 ns/packet"), end(lines[3], "50 ns/packet"));
    }

    #[test]
    fn values_keep_about_four_digits() {
        assert_eq!(format_value(1234.567), "1235");
        assert_eq!(format_value(123.45), "123.5");
        assert_eq!(format_value(12.345), "12.35");
        assert_eq!(format_value(1.23456), "1.235");
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(0.0012345), "0.00123");
    }

    #[test]
    fn the_report_round_trips_through_json() {
        let report = Report {
            machine: Machine { kernel: "6.1".into(), cpu: "cpu".into(), cores: 2, date: rfc3339(0) },
            quick: true,
            seconds: 1.5,
            measurements: vec![m("failover", "kill", 400.0, "ms").check("20 runs")],
            errors: vec![GroupError { group: "memory".into(), error: "no bpffs".into() }],
        };
        assert_eq!(Report::from_json(&report.to_json()).unwrap(), report);
    }

    #[test]
    fn dates_are_utc_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400 + 3_723), "2000-02-29T01:02:03Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
