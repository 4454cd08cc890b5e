//! Health monitors: how a backend is checked, and the HTTP status codes a
//! check accepts.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize, Serializer};

/// Default `monitor.interval_ms`.
pub const DEFAULT_MONITOR_INTERVAL_MS: u32 = 1000;
/// Largest `monitor.interval_ms` (one hour).
pub const MAX_MONITOR_INTERVAL_MS: u32 = 3_600_000;
/// Default `monitor.timeout_ms`.
pub const DEFAULT_MONITOR_TIMEOUT_MS: u32 = 500;
/// Default `monitor.consecutive_up`.
pub const DEFAULT_CONSECUTIVE_UP: u32 = 2;
/// Default `monitor.consecutive_down`.
pub const DEFAULT_CONSECUTIVE_DOWN: u32 = 3;
/// Default `monitor.path`.
pub const DEFAULT_MONITOR_PATH: &str = "/";

/// How a backend is checked: the pool's `monitor` merged with the backend's
/// own `monitor` overrides.
///
/// Keys that do not apply to `protocol` hold their defaults, so that two
/// monitors are equal exactly when they check the same way: `port` is 0 for
/// `None`; `path`, `expected_codes` and `host` are only meaningful for HTTP
/// and HTTPS, `tls_verify` only for HTTPS. With `None` every key holds its
/// default.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Monitor {
    pub protocol: MonitorProtocol,
    /// 1..=65535; 0 for `None`.
    pub port: u16,
    /// Starts with '/'.
    pub path: String,
    pub expected_codes: ExpectedCodes,
    /// Host header and TLS SNI; none = the backend's address.
    pub host: Option<String>,
    /// HTTPS: verify the backend's certificate.
    pub tls_verify: bool,
    /// 1..=3_600_000.
    pub interval_ms: u32,
    /// 1..=`interval_ms`.
    pub timeout_ms: u32,
    /// Successes in a row that bring a down backend up; >= 1.
    pub consecutive_up: u32,
    /// Failures in a row that take an up backend down; >= 1.
    pub consecutive_down: u32,
}

impl Default for Monitor {
    /// No monitor: the backend is always considered up.
    fn default() -> Monitor {
        Monitor {
            protocol: MonitorProtocol::None,
            port: 0,
            path: DEFAULT_MONITOR_PATH.to_string(),
            expected_codes: ExpectedCodes::default(),
            host: None,
            tls_verify: false,
            interval_ms: DEFAULT_MONITOR_INTERVAL_MS,
            timeout_ms: DEFAULT_MONITOR_TIMEOUT_MS,
            consecutive_up: DEFAULT_CONSECUTIVE_UP,
            consecutive_down: DEFAULT_CONSECUTIVE_DOWN,
        }
    }
}

impl Monitor {
    /// Whether the backend is checked at all.
    pub fn is_enabled(&self) -> bool {
        self.protocol != MonitorProtocol::None
    }

    /// The longest time from a backend failing to its being taken out:
    /// `(consecutive_down + 1) x interval_ms + timeout_ms` (the failure can
    /// start just after a check passed, and the last failing check can take
    /// the whole timeout).
    pub fn worst_case_failover_ms(&self) -> u64 {
        (self.consecutive_down as u64 + 1) * self.interval_ms as u64 + self.timeout_ms as u64
    }
}

/// The kind of health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MonitorProtocol {
    /// Not checked: always up.
    #[default]
    None,
    /// A TCP connection to `port` must be accepted.
    Tcp,
    /// An HTTP GET of `path` must answer one of `expected_codes`.
    Http,
    /// As `Http`, over TLS.
    Https,
}

impl MonitorProtocol {
    /// The name used in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            MonitorProtocol::None => "none",
            MonitorProtocol::Tcp => "tcp",
            MonitorProtocol::Http => "http",
            MonitorProtocol::Https => "https",
        }
    }

    /// The port checked when the file gives none (0: no default).
    pub fn default_port(self) -> u16 {
        match self {
            MonitorProtocol::Http => 80,
            MonitorProtocol::Https => 443,
            MonitorProtocol::None | MonitorProtocol::Tcp => 0,
        }
    }

    /// HTTP or HTTPS.
    pub fn is_http(self) -> bool {
        matches!(self, MonitorProtocol::Http | MonitorProtocol::Https)
    }
}

impl fmt::Display for MonitorProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The HTTP status codes a check accepts: a set of code ranges within
/// 100..=599, written like `"2xx"`, `"200"`, `"200,204"`, `"200-299"` or
/// `"2xx,301"`. Displays (and serializes) in a canonical form: ranges sorted
/// and merged, whole classes as `Nxx`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExpectedCodes(Vec<(u16, u16)>);

impl ExpectedCodes {
    /// Whether `code` is accepted.
    pub fn matches(&self, code: u16) -> bool {
        self.0.iter().any(|&(low, high)| (low..=high).contains(&code))
    }

    /// The accepted ranges, inclusive, sorted, disjoint and not adjacent.
    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.0
    }
}

impl Default for ExpectedCodes {
    /// `2xx`.
    fn default() -> ExpectedCodes {
        ExpectedCodes(vec![(200, 299)])
    }
}

impl FromStr for ExpectedCodes {
    type Err = String;

    fn from_str(s: &str) -> Result<ExpectedCodes, String> {
        let mut ranges = Vec::new();
        for item in s.split(',') {
            let item = item.trim();
            if item.is_empty() {
                return Err("an entry is empty (write codes separated by single commas)".to_string());
            }
            ranges.push(code_range(item)?);
        }
        ranges.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
        for (low, high) in ranges {
            match merged.last_mut() {
                Some(last) if low <= last.1.saturating_add(1) => last.1 = last.1.max(high),
                _ => merged.push((low, high)),
            }
        }
        Ok(ExpectedCodes(merged))
    }
}

/// One entry: `Nxx`, `NNN` or `NNN-NNN`.
fn code_range(item: &str) -> Result<(u16, u16), String> {
    let bad = || format!("{item:?} is not a status code (100 to 599), a class like 2xx or a range like 200-299");
    let bytes = item.as_bytes();
    if bytes.len() == 3 && bytes[1..].eq_ignore_ascii_case(b"xx") {
        return match bytes[0] {
            b @ b'1'..=b'5' => {
                let class = (b - b'0') as u16 * 100;
                Ok((class, class + 99))
            }
            _ => Err(bad()),
        };
    }
    let code = |text: &str| -> Result<u16, String> {
        if text.len() != 3 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let code: u16 = text.parse().map_err(|_| bad())?;
        if (100..=599).contains(&code) {
            Ok(code)
        } else {
            Err(format!("{code} is not an HTTP status code (they run from 100 to 599)"))
        }
    };
    match item.split_once('-') {
        None => code(item).map(|c| (c, c)),
        Some((low, high)) => {
            let (low, high) = (code(low.trim())?, code(high.trim())?);
            if low > high {
                return Err(format!("the range {item:?} is backwards (write {high}-{low})"));
            }
            Ok((low, high))
        }
    }
}

impl fmt::Display for ExpectedCodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut item = |f: &mut fmt::Formatter<'_>, args: fmt::Arguments| {
            let separator = if first { "" } else { "," };
            first = false;
            write!(f, "{separator}{args}")
        };
        for &(low, high) in &self.0 {
            if low % 100 == 0 && high % 100 == 99 {
                for class in low / 100..=high / 100 {
                    item(f, format_args!("{class}xx"))?;
                }
            } else if low == high {
                item(f, format_args!("{low}"))?;
            } else {
                item(f, format_args!("{low}-{high}"))?;
            }
        }
        Ok(())
    }
}

impl Serialize for ExpectedCodes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}
