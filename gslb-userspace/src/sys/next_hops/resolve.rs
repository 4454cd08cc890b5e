//! How a backend's next hop follows from what the kernel says: its route,
//! the egress link, and the gateway's neighbour entry. Pure: the kernel's
//! answers come in as plain values (`kernel`).

use std::net::IpAddr;

use gslb_common::{NextHop, NEXT_HOP_VALID};

/// An interface as far as next hops go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    /// Administratively up with a carrier (`IFF_UP` and `IFF_RUNNING`).
    pub up: bool,
    /// Its MAC; `None` when it is not Ethernet.
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
}

/// A neighbour entry: its MAC, if its state makes it usable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub mac: Option<[u8; 6]>,
}

/// The kernel's route for a tunnel packet (`RTM_GETROUTE`), when unicast
/// out of an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteAnswer {
    pub ifindex: u32,
    /// The gateway; `None` when the destination is on-link.
    pub gateway: Option<IpAddr>,
    /// The route's MTU metric (or a learned path MTU), if any.
    pub mtu: Option<u32>,
}

/// Where a backend's packets leave: the interface, the address whose
/// neighbour entry gives the MAC, the MTU and the interface's MAC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Path {
    pub ifindex: u32,
    pub via: IpAddr,
    pub mtu: u16,
    pub src_mac: [u8; 6],
}

/// The neighbour states whose MAC the kernel itself would send to.
pub fn usable(state: netlink_packet_route::neighbour::NeighbourState) -> bool {
    use netlink_packet_route::neighbour::NeighbourState::*;
    matches!(state, Reachable | Stale | Delay | Probe | Permanent | Noarp)
}

/// The path to `destination` by `route`, if its interface is up Ethernet.
pub fn path(destination: IpAddr, route: &RouteAnswer, link: Option<&Link>) -> Option<Path> {
    let link = link.filter(|l| l.up)?;
    let src_mac = link.mac?;
    let mtu = route.mtu.filter(|&m| m > 0).unwrap_or(link.mtu);
    Some(Path {
        ifindex: route.ifindex,
        via: route.gateway.unwrap_or(destination),
        mtu: mtu.min(u16::MAX as u32) as u16,
        src_mac,
    })
}

/// The entry `steer` uses for `path`, once its neighbour is known.
pub fn hop(path: &Path, neighbour: Option<&Neighbour>) -> Option<NextHop> {
    let dst_mac = neighbour?.mac?;
    Some(NextHop { ifindex: path.ifindex, mtu: path.mtu, flags: NEXT_HOP_VALID, dst_mac, src_mac: path.src_mac })
}

/// Whether a route to `prefix`/`len` can decide the route to `address`.
pub fn covers(prefix: IpAddr, len: u8, address: IpAddr) -> bool {
    fn within(prefix: &[u8], address: &[u8], len: u8) -> bool {
        let (bytes, bits) = ((len / 8) as usize, len % 8);
        if bytes > prefix.len() || prefix[..bytes] != address[..bytes] {
            return false;
        }
        bits == 0 || (prefix[bytes] ^ address[bytes]) >> (8 - bits) == 0
    }
    match (prefix, address) {
        (IpAddr::V4(p), IpAddr::V4(a)) => len <= 32 && within(&p.octets(), &a.octets(), len),
        (IpAddr::V6(p), IpAddr::V6(a)) => len <= 128 && within(&p.octets(), &a.octets(), len),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_route::neighbour::NeighbourState;

    use super::*;

    const ROUTER: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const EDGE: [u8; 6] = [2, 0, 0, 0, 0, 2];

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn eth0(up: bool) -> Link {
        Link { name: "eth0".into(), up, mac: Some(EDGE), mtu: 1500 }
    }

    #[test]
    fn a_gateway_route_resolves_to_the_gateways_mac_from_the_interface() {
        let route = RouteAnswer { ifindex: 3, gateway: Some(ip("10.0.0.1")), mtu: None };
        let path = path(ip("198.51.100.7"), &route, Some(&eth0(true))).unwrap();
        assert_eq!(path, Path { ifindex: 3, via: ip("10.0.0.1"), mtu: 1500, src_mac: EDGE });
        let hop = hop(&path, Some(&Neighbour { mac: Some(ROUTER) })).unwrap();
        assert_eq!(hop, NextHop { ifindex: 3, mtu: 1500, flags: NEXT_HOP_VALID, dst_mac: ROUTER, src_mac: EDGE });
    }

    #[test]
    fn an_on_link_destination_is_its_own_neighbour_and_a_route_mtu_wins() {
        let route = RouteAnswer { ifindex: 3, gateway: None, mtu: Some(1400) };
        let path = path(ip("2001:db8::7"), &route, Some(&eth0(true))).unwrap();
        assert_eq!(path.via, ip("2001:db8::7"));
        assert_eq!(path.mtu, 1400);
        let huge = RouteAnswer { mtu: Some(1 << 20), ..route };
        assert_eq!(super::path(ip("2001:db8::7"), &huge, Some(&eth0(true))).unwrap().mtu, u16::MAX);
    }

    #[test]
    fn no_entry_without_an_up_ethernet_link_or_a_known_neighbour() {
        let route = RouteAnswer { ifindex: 3, gateway: Some(ip("10.0.0.1")), mtu: None };
        assert_eq!(path(ip("198.51.100.7"), &route, None), None, "no such link");
        assert_eq!(path(ip("198.51.100.7"), &route, Some(&eth0(false))), None, "link down");
        let tunnel = Link { mac: None, ..eth0(true) };
        assert_eq!(path(ip("198.51.100.7"), &route, Some(&tunnel)), None, "not Ethernet");
        let path = path(ip("198.51.100.7"), &route, Some(&eth0(true))).unwrap();
        assert_eq!(hop(&path, None), None, "no neighbour entry");
        assert_eq!(hop(&path, Some(&Neighbour { mac: None })), None, "neighbour not usable");
    }

    #[test]
    fn usable_neighbour_states_are_those_the_kernel_sends_to() {
        use NeighbourState::*;
        for state in [Reachable, Stale, Delay, Probe, Permanent, Noarp] {
            assert!(usable(state), "{state:?}");
        }
        for state in [Incomplete, Failed, None] {
            assert!(!usable(state), "{state:?}");
        }
    }

    #[test]
    fn a_route_covers_the_addresses_of_its_prefix_only() {
        assert!(covers(ip("0.0.0.0"), 0, ip("198.51.100.7")), "default route");
        assert!(covers(ip("198.51.100.0"), 24, ip("198.51.100.7")));
        assert!(covers(ip("198.51.100.0"), 25, ip("198.51.100.7")));
        assert!(!covers(ip("198.51.100.128"), 25, ip("198.51.100.7")));
        assert!(covers(ip("198.51.100.7"), 32, ip("198.51.100.7")));
        assert!(!covers(ip("198.51.100.6"), 31, ip("198.51.101.7")));
        assert!(covers(ip("2001:db8::"), 32, ip("2001:db8::7")));
        assert!(!covers(ip("2001:db9::"), 32, ip("2001:db8::7")));
        assert!(!covers(ip("::"), 0, ip("198.51.100.7")), "another family");
        assert!(!covers(ip("198.51.100.7"), 33, ip("198.51.100.7")), "not a prefix");
    }
}
