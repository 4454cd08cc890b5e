//! The data plane's map sizes: set by `[edge]` when `steer` is loaded
//! afresh, read back from the maps when pinned state is adopted.

use anyhow::{ensure, Result};
use gslb_common::{maglev::is_prime, DEFAULT_TABLE_SIZE, TABLE_GENERATIONS};

/// Map sizes, chosen when the programs are loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_vips: u32,
    /// Backend ids run from 1 to `max_backends - 1` (0 means none).
    pub max_backends: u32,
    /// Flows the flow table holds: a whole number of buckets
    /// (`gslb_common::flow_capacity`).
    pub max_flows: u32,
    /// Slots per Maglev table; must be prime.
    pub table_size: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_vips: 64, max_backends: 4096, max_flows: 1 << 20, table_size: DEFAULT_TABLE_SIZE }
    }
}

impl Limits {
    /// Refuses sizes the maps cannot be built with.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.max_vips > 0 && self.max_backends > 1 && self.max_flows > 0,
            "map sizes must be positive: {self:?}"
        );
        ensure!(is_prime(self.table_size), "table size {} is not prime", self.table_size);
        ensure!(
            self.table_size >= self.max_backends,
            "table size {} is smaller than max backends {}",
            self.table_size,
            self.max_backends
        );
        let slots = self.max_vips as u64 * TABLE_GENERATIONS as u64 * self.table_size as u64;
        ensure!(
            slots <= u32::MAX as u64,
            "{} VIPs x {} slots do not fit one table map",
            self.max_vips,
            self.table_size
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked_before_loading() {
        assert!(Limits::default().validate().is_ok());
        let bad = [
            Limits { table_size: 65_536, ..Limits::default() },
            Limits { table_size: 13, max_backends: 14, ..Limits::default() },
            Limits { max_vips: 40_000, ..Limits::default() },
            Limits { max_flows: 0, ..Limits::default() },
        ];
        for limits in bad {
            assert!(limits.validate().is_err(), "accepted {limits:?}");
        }
    }
}
