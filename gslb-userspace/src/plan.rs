//! What the data plane should hold for a config: backend ids, and each
//! VIP's weights and lookup table.
//!
//! Planning is a pure function of the config and of the backend ids already
//! installed, so two edges with the same config build the same tables: the
//! edge name, interface names and the order of keys play no part.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{bail, Result};
use gslb_common::{
    addr_from_ip, backend_hashes,
    maglev::{build_table, MaglevBackend},
};

use crate::config::{Affinity, Config};
use crate::dataplane::VipMatch;

/// The data plane's contents for one config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub tunnel_source_v4: Ipv4Addr,
    pub tunnel_source_v6: Option<Ipv6Addr>,
    /// Every backend of every pool, by address.
    pub backend_ids: BTreeMap<IpAddr, u32>,
    pub vips: BTreeMap<VipMatch, PlannedVip>,
    /// Which port's VIP fragments to an (address, protocol) use.
    pub fragment_vips: BTreeMap<(IpAddr, u8), u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedVip {
    pub name: String,
    pub source_ip_affinity: bool,
    /// Effective weight of each backend: pool weight x backend weight,
    /// summed over the VIP's pools.
    pub weights: BTreeMap<IpAddr, u64>,
    pub table: Vec<u32>,
}

/// Plans `config` for tables of `table_size` slots and ids below
/// `max_backends`, keeping the ids of backends already `installed`.
pub fn plan(config: &Config, installed: &BTreeMap<IpAddr, u32>, max_backends: u32, table_size: u32) -> Result<Plan> {
    let addresses: BTreeSet<IpAddr> = config.pools.iter().flat_map(|p| p.backends.iter().map(|b| b.address)).collect();
    let backend_ids = assign_backend_ids(&addresses, installed, max_backends)?;

    let mut vips = BTreeMap::new();
    for vip in &config.vips {
        let weights = config.effective_weights(vip);
        let members: Vec<MaglevBackend> = weights
            .iter()
            .map(|(address, &weight)| MaglevBackend {
                id: backend_ids[address],
                addr: addr_from_ip(*address),
                weight: weight.min(u32::MAX as u64) as u32,
            })
            .collect();
        let matcher = VipMatch { address: vip.address, port: vip.port, proto: vip.protocol.number() };
        let planned = PlannedVip {
            name: vip.name.clone(),
            source_ip_affinity: vip.affinity == Affinity::SourceIp,
            table: build_table(&members, table_size),
            weights,
        };
        vips.insert(matcher, planned);
    }

    // Fragments carry no ports: they follow the address's every-port VIP,
    // or else its lowest-port VIP, so all fragments of a datagram agree.
    let mut fragment_vips = BTreeMap::new();
    for vip in vips.keys() {
        fragment_vips.entry((vip.address, vip.proto)).or_insert(vip.port);
    }

    Ok(Plan {
        tunnel_source_v4: config.edge.tunnel_source_v4,
        tunnel_source_v6: config.edge.tunnel_source_v6,
        backend_ids,
        vips,
        fragment_vips,
    })
}

/// The id a backend takes when it is free: derived from its address alone,
/// so edges that start from different histories still tend to agree.
pub fn preferred_id(address: IpAddr, max_backends: u32) -> u32 {
    let (hash, _) = backend_hashes(&addr_from_ip(address));
    1 + (hash % (max_backends as u64 - 1)) as u32
}

/// Gives every address an id in `1..max_backends`. Installed backends keep
/// theirs (flows are recorded by id); a new backend takes its preferred id,
/// or the next free one after it, never one an installed backend holds.
/// New backends are placed in address order, so the result does not depend
/// on config order.
pub fn assign_backend_ids(
    addresses: &BTreeSet<IpAddr>,
    installed: &BTreeMap<IpAddr, u32>,
    max_backends: u32,
) -> Result<BTreeMap<IpAddr, u32>> {
    let slots = max_backends - 1;
    if addresses.len() as u64 > slots as u64 {
        bail!("{} backends do not fit {} backend ids", addresses.len(), slots);
    }
    let mut taken: BTreeSet<u32> = installed.values().copied().collect();
    let mut ids = BTreeMap::new();
    for address in addresses {
        if let Some(&id) = installed.get(address) {
            ids.insert(*address, id);
        }
    }
    for address in addresses.iter().filter(|a| !installed.contains_key(a)) {
        let start = preferred_id(*address, max_backends);
        let Some(id) = (0..slots).map(|step| 1 + (start - 1 + step) % slots).find(|id| !taken.contains(id)) else {
            bail!("no free backend id for {address}: ids still held by removed backends free up on the next reload");
        };
        taken.insert(id);
        ids.insert(*address, id);
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use std::path::Path;

    const CONFIG: &str = r#"
[edge]
name = "edge-a"
interfaces = ["eth0"]
tunnel_source_v4 = "192.0.2.10"
tunnel_source_v6 = "2001:db8::10"

[[vip]]
name = "web"
address = "203.0.113.10"
port = 80
protocol = "tcp"
pools = ["us-east", "eu-west"]

[[vip]]
name = "dns"
address = "203.0.113.10"
port = 53
protocol = "udp"
affinity = "source-ip"
pools = ["eu-west"]

[[pool]]
name = "us-east"
weight = 100
backends = [ { address = "198.51.100.1", weight = 100 }, { address = "198.51.100.2", weight = 50 } ]

[[pool]]
name = "eu-west"
weight = 50
backends = [ { address = "198.51.100.3" }, { address = "2001:db8:100::4", weight = 10 } ]
"#;

    /// The same config with every list reversed and another edge's
    /// identity.
    const SHUFFLED: &str = r#"
[[pool]]
backends = [ { weight = 10, address = "2001:db8:100::4" }, { address = "198.51.100.3" } ]
weight = 50
name = "eu-west"

[[pool]]
name = "us-east"
weight = 100
backends = [ { address = "198.51.100.2", weight = 50 }, { address = "198.51.100.1", weight = 100 } ]

[[vip]]
name = "dns"
address = "203.0.113.10"
port = 53
protocol = "udp"
affinity = "source-ip"
pools = ["eu-west"]

[[vip]]
name = "web"
address = "203.0.113.10"
port = 80
protocol = "tcp"
pools = ["eu-west", "us-east"]

[edge]
name = "edge-b"
interfaces = ["ens5", "ens6"]
tunnel_source_v4 = "192.0.2.10"
tunnel_source_v6 = "2001:db8::10"
"#;

    fn parse(text: &str) -> Config {
        config::parse(text, Path::new("test.toml")).unwrap()
    }

    #[test]
    fn same_config_same_plan_whatever_the_order_and_edge() {
        let a = plan(&parse(CONFIG), &BTreeMap::new(), 4096, 4099).unwrap();
        let b = plan(&parse(SHUFFLED), &BTreeMap::new(), 4096, 4099).unwrap();
        assert_eq!(a, b);
        let web = VipMatch { address: "203.0.113.10".parse().unwrap(), port: 80, proto: 6 };
        let weights: Vec<u64> = a.vips[&web].weights.values().copied().collect();
        // 198.51.100.1..3, then the IPv6 backend.
        assert_eq!(weights, vec![100 * 100, 100 * 50, 50 * 100, 50 * 10]);
    }

    #[test]
    fn ids_come_from_addresses_and_survive_changes() {
        let all: BTreeSet<IpAddr> = (1..=200u8).map(|i| IpAddr::from([10, 0, 0, i])).collect();
        let fresh = assign_backend_ids(&all, &BTreeMap::new(), 4096).unwrap();
        let distinct: BTreeSet<u32> = fresh.values().copied().collect();
        assert_eq!(distinct.len(), all.len());
        assert!(distinct.iter().all(|&id| (1..4096).contains(&id)));

        // Remove half and add new ones: the kept backends keep their ids,
        // the new ones take ids nobody installed holds.
        let mut next: BTreeSet<IpAddr> =
            all.iter().copied().filter(|a| matches!(a, IpAddr::V4(v) if v.octets()[3] % 2 == 0)).collect();
        next.extend((1..=50u8).map(|i| IpAddr::from([10, 0, 1, i])));
        let after = assign_backend_ids(&next, &fresh, 4096).unwrap();
        for (address, id) in &after {
            match fresh.get(address) {
                Some(old) => assert_eq!(old, id, "{address} changed id"),
                None => assert!(!fresh.values().any(|v| v == id), "{address} took an installed id"),
            }
        }
    }

    #[test]
    fn too_many_backends_are_refused() {
        let all: BTreeSet<IpAddr> = (1..=20u8).map(|i| IpAddr::from([10, 0, 0, i])).collect();
        assert!(assign_backend_ids(&all, &BTreeMap::new(), 16).is_err());
        assert!(assign_backend_ids(&all, &BTreeMap::new(), 21).is_ok());
    }
}
