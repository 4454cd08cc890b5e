//! A `steer` instance programmed with a fixed set of VIPs and backends,
//! shared by the data-plane tests.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use gslb_common::{
    addr_from_ip,
    maglev::{build_table, MaglevBackend},
};
use gslb_userspace::{
    config::Limits,
    decide::plan::{EdgeSettings, VipMatch},
    sys::maps::MapWrites,
    sys::steer::Steer,
};

use crate::packet::{TCP, UDP};
use crate::reference::RefVip;

pub const TUNNEL_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
pub const TUNNEL_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);

/// Backends by id.
pub const BACKENDS: &[(u32, &str)] = &[
    (1, "198.51.100.1"),
    (2, "198.51.100.2"),
    (3, "2001:db8:100::1"),
    // Routed via a next hop with no neighbour entry.
    (4, "198.51.101.1"),
    (5, "198.51.100.5"),
    (6, "2001:db8:100::6"),
];

/// A VIP of the test edge.
pub struct TestVip {
    pub id: u32,
    pub addr: &'static str,
    pub port: u16,
    pub proto: u8,
    pub source_ip: bool,
    pub backends: &'static [u32],
}

pub const VIPS: &[TestVip] = &[
    TestVip { id: 0, addr: "203.0.113.10", port: 80, proto: TCP, source_ip: false, backends: &[1, 2] },
    TestVip { id: 1, addr: "203.0.113.10", port: 53, proto: UDP, source_ip: false, backends: &[1, 2] },
    TestVip { id: 2, addr: "2001:db8:f::10", port: 443, proto: TCP, source_ip: false, backends: &[3, 6] },
    TestVip { id: 3, addr: "2001:db8:f::10", port: 53, proto: UDP, source_ip: false, backends: &[3, 6] },
    TestVip { id: 4, addr: "203.0.113.20", port: 0, proto: TCP, source_ip: false, backends: &[1, 2, 5] },
    TestVip { id: 5, addr: "203.0.113.30", port: 80, proto: TCP, source_ip: true, backends: &[1, 2, 5] },
    TestVip { id: 6, addr: "203.0.113.40", port: 80, proto: TCP, source_ip: false, backends: &[3] },
    TestVip { id: 7, addr: "203.0.113.50", port: 80, proto: TCP, source_ip: false, backends: &[4] },
];

/// Which VIP (by port) fragments to an address and protocol use.
pub const FRAGMENT_VIPS: &[(&str, u8, u16)] =
    &[("203.0.113.10", TCP, 80), ("203.0.113.10", UDP, 53), ("2001:db8:f::10", UDP, 53), ("203.0.113.30", TCP, 80)];

/// Small tables keep loading fast; the size is still prime.
pub const TEST_LIMITS: Limits = Limits { max_vips: 8, max_backends: 16, max_flows: 65_536, table_size: 4_099 };

pub fn backend_addr(id: u32) -> IpAddr {
    BACKENDS.iter().find(|b| b.0 == id).map(|b| b.1.parse().unwrap()).expect("backend id")
}

pub fn backend_id(addr: IpAddr) -> Option<u32> {
    BACKENDS.iter().find(|b| b.1.parse::<IpAddr>().unwrap() == addr).map(|b| b.0)
}

impl TestVip {
    pub fn matcher(&self) -> VipMatch {
        VipMatch { address: self.addr.parse().unwrap(), port: self.port, proto: self.proto }
    }

    pub fn table(&self, limits: &Limits) -> Vec<u32> {
        table_of(self.backends, limits)
    }
}

/// The Maglev table of equally weighted backends.
pub fn table_of(ids: &[u32], limits: &Limits) -> Vec<u32> {
    let backends: Vec<_> =
        ids.iter().map(|&id| MaglevBackend { id, addr: addr_from_ip(backend_addr(id)), weight: 100 }).collect();
    build_table(&backends, limits.table_size)
}

pub fn ref_vips() -> Vec<RefVip> {
    VIPS.iter().map(|v| RefVip { addr: v.addr.parse().unwrap(), port: v.port, proto: v.proto }).collect()
}

/// Loads `steer` and programs the test VIPs and backends.
pub fn test_edge() -> Steer {
    let mut steer = Steer::load(TEST_LIMITS).expect("load steer");
    steer.set_edge_config(&EdgeSettings::new(TUNNEL_V4, Some(TUNNEL_V6))).unwrap();
    for &(id, addr) in BACKENDS {
        steer.set_backend(id, addr.parse().unwrap(), 0).unwrap();
    }
    for vip in VIPS {
        steer.set_vip(vip.matcher(), vip.id, vip.source_ip, &vip.table(&TEST_LIMITS)).unwrap();
    }
    for &(addr, proto, port) in FRAGMENT_VIPS {
        steer.set_fragment_vip(addr.parse().unwrap(), proto, port).unwrap();
    }
    steer
}
