//! An IP prefix (`address/length`), for client-prefix steering.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Serialize, Serializer};

/// An IPv4 or IPv6 prefix. `address` has its host bits cleared; `len` is at
/// most 32 (IPv4) or 128 (IPv6). Displays and serializes as `address/len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    pub address: IpAddr,
    pub len: u8,
}

/// Why a string is not a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrefixError {
    /// Not `address/length`, or the address or length does not parse.
    Syntax,
    /// The length is longer than the address family allows.
    TooLong { max: u8 },
    /// The address has bits set past the length; `suggestion` is the
    /// prefix with them cleared.
    HostBits { suggestion: Prefix },
}

impl Prefix {
    /// `address/len` with the host bits of `address` cleared, or `None` if
    /// `len` is too long for the family.
    pub fn new(address: IpAddr, len: u8) -> Option<Prefix> {
        if len > max_len(address) {
            return None;
        }
        Some(Prefix { address: mask(address, len), len })
    }

    /// Whether `address` is in this prefix (never, across families).
    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.address, address) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => mask(address, self.len) == self.address,
            _ => false,
        }
    }

    pub fn is_ipv4(&self) -> bool {
        self.address.is_ipv4()
    }
}

fn max_len(address: IpAddr) -> u8 {
    if address.is_ipv4() {
        32
    } else {
        128
    }
}

/// `address` with every bit past the first `len` cleared.
fn mask(address: IpAddr, len: u8) -> IpAddr {
    match address {
        IpAddr::V4(a) => {
            let keep = u32::MAX.checked_shl(32 - len.min(32) as u32).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & keep))
        }
        IpAddr::V6(a) => {
            let keep = u128::MAX.checked_shl(128 - len.min(128) as u32).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & keep))
        }
    }
}

impl FromStr for Prefix {
    type Err = PrefixError;

    /// Parses `address/length`; refuses host bits rather than clearing them.
    fn from_str(s: &str) -> Result<Prefix, PrefixError> {
        let (address, len) = s.split_once('/').ok_or(PrefixError::Syntax)?;
        let address: IpAddr = address.parse().map_err(|_| PrefixError::Syntax)?;
        if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PrefixError::Syntax);
        }
        let too_long = PrefixError::TooLong { max: max_len(address) };
        let len: u8 = len.parse().map_err(|_| too_long.clone())?;
        let prefix = Prefix::new(address, len).ok_or(too_long)?;
        if prefix.address != address {
            return Err(PrefixError::HostBits { suggestion: prefix });
        }
        Ok(prefix)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.len)
    }
}

impl Serialize for Prefix {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}
