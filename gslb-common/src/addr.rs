//! The 16-byte address form used in every map.

/// An IPv4 or IPv6 address in network byte order; IPv4 is IPv4-mapped.
pub type Addr16 = [u8; 16];

/// `::ffff:0:0/96`, the prefix of IPv4-mapped addresses.
const V4_MAPPED_PREFIX: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

/// Maps an IPv4 address (network byte order) into the 16-byte form. Built
/// from two words, so the XDP programs store it with two 8-byte writes
/// rather than a byte loop for the zeros.
#[inline(always)]
pub fn addr_from_v4(v4: [u8; 4]) -> Addr16 {
    let low = u64::from_ne_bytes([0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3]]);
    let words: [u64; 2] = [0, low];
    // SAFETY: two u64 are 16 plain bytes, in memory order.
    unsafe { core::mem::transmute::<[u64; 2], Addr16>(words) }
}

/// The IPv4 address inside an IPv4-mapped address, if it is one.
#[inline(always)]
pub fn addr_as_v4(a: &Addr16) -> Option<[u8; 4]> {
    let mut i = 0;
    while i < 12 {
        if a[i] != V4_MAPPED_PREFIX[i] {
            return None;
        }
        i += 1;
    }
    Some([a[12], a[13], a[14], a[15]])
}

#[cfg(any(test, feature = "alloc"))]
mod std_conv {
    use super::*;
    use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    /// Converts a standard address into the map form.
    pub fn addr_from_ip(ip: IpAddr) -> Addr16 {
        match ip {
            IpAddr::V4(v4) => addr_from_v4(v4.octets()),
            IpAddr::V6(v6) => v6.octets(),
        }
    }

    /// Converts the map form back into a standard address.
    pub fn addr_to_ip(a: &Addr16) -> IpAddr {
        match addr_as_v4(a) {
            Some(v4) => IpAddr::V4(Ipv4Addr::from(v4)),
            None => IpAddr::V6(Ipv6Addr::from(*a)),
        }
    }
}
#[cfg(any(test, feature = "alloc"))]
pub use std_conv::*;

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::IpAddr;

    #[test]
    fn v4_round_trips_through_mapped_form() {
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let a = addr_from_ip(ip);
        assert_eq!(addr_as_v4(&a), Some([192, 0, 2, 7]));
        assert_eq!(addr_to_ip(&a), ip);
    }

    #[test]
    fn v6_is_not_mistaken_for_v4() {
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let a = addr_from_ip(ip);
        assert_eq!(addr_as_v4(&a), None);
        assert_eq!(addr_to_ip(&a), ip);
    }
}
