//! Generated agent configs: many VIPs over many backends, for the
//! control-plane, memory and fleet benchmarks.

use std::fmt::Write as _;
use std::path::PathBuf;

/// The shape of a generated config.
#[derive(Clone, Debug)]
pub struct Shape {
    pub vips: u32,
    /// Backends in all; split evenly over `pools`.
    pub backends: u32,
    pub pools: u32,
    /// Each VIP uses this many consecutive pools.
    pub pools_per_vip: u32,
    pub table_size: u32,
    pub max_vips: u32,
    pub max_backends: u32,
    pub max_flows: u32,
    pub interface: String,
    pub admin_socket: PathBuf,
    pub bpffs_pin: PathBuf,
    /// Halve the weight of every pool's first backend: every VIP's table
    /// changes.
    pub reweighted: bool,
}

impl Shape {
    /// `vips` VIPs over `backends` backends in pools of 25 (or fewer), two
    /// pools per VIP; maps sized to fit.
    pub fn new(vips: u32, backends: u32, table_size: u32) -> Shape {
        let pools = backends.div_ceil(25).max(1);
        Shape {
            vips,
            backends,
            pools,
            pools_per_vip: pools.min(2),
            table_size,
            max_vips: vips.max(1),
            max_backends: (backends + 1).next_power_of_two().max(2),
            max_flows: 1024,
            interface: "eth0".into(),
            admin_socket: "/run/gslb-bench/gslb.sock".into(),
            bpffs_pin: "/sys/fs/bpf/gslb-bench".into(),
            reweighted: false,
        }
    }
}

/// Backend `k`'s address, in 198.18.0.0/15 (benchmarking addresses).
pub fn backend_address(k: u32) -> String {
    format!("198.18.{}.{}", k / 250, k % 250 + 1)
}

/// VIP `i`'s address.
pub fn vip_address(i: u32) -> String {
    format!("198.19.{}.{}", i / 250, i % 250 + 1)
}

pub fn config_text(shape: &Shape) -> String {
    let mut toml = String::new();
    let _ = write!(
        toml,
        "[edge]\nname = \"bench\"\ninterfaces = [\"{}\"]\nxdp_mode = \"auto\"\ntunnel_source_v4 = \"192.0.2.10\"\n\
         admin_socket = \"{}\"\nbpffs_pin = \"{}\"\nmax_flows = {}\nmax_backends = {}\nmax_vips = {}\ntable_size = {}\n\n",
        shape.interface,
        shape.admin_socket.display(),
        shape.bpffs_pin.display(),
        shape.max_flows,
        shape.max_backends,
        shape.max_vips,
        shape.table_size,
    );
    toml.push_str(&document_text(shape));
    toml
}

/// The VIPs and pools of `config_text` alone: a fleet document.
pub fn document_text(shape: &Shape) -> String {
    let mut toml = String::new();
    for i in 0..shape.vips {
        let pools: Vec<String> =
            (0..shape.pools_per_vip).map(|k| format!("\"pool-{}\"", (i + k) % shape.pools)).collect();
        let _ = write!(
            toml,
            "[[vip]]\nname = \"vip-{i}\"\naddress = \"{}\"\nport = 80\nprotocol = \"tcp\"\npools = [{}]\n\n",
            vip_address(i),
            pools.join(", ")
        );
    }
    let per_pool = shape.backends.div_ceil(shape.pools);
    for p in 0..shape.pools {
        let members: Vec<String> = (p * per_pool..((p + 1) * per_pool).min(shape.backends))
            .map(|k| {
                let weight = if shape.reweighted && k == p * per_pool { 50 } else { 100 };
                format!("{{ address = \"{}\", weight = {weight} }}", backend_address(k))
            })
            .collect();
        let _ = write!(toml, "[[pool]]\nname = \"pool-{p}\"\nbackends = [ {} ]\n\n", members.join(", "));
    }
    toml
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_config_is_valid_and_has_its_shape() {
        let shape = Shape::new(512, 1000, 4099);
        let config = gslb_userspace::config::parse(&config_text(&shape), "gen.toml".as_ref()).unwrap();
        assert_eq!(config.vips.len(), 512);
        assert_eq!(config.pools.len(), 40);
        assert_eq!(config.pools.iter().map(|p| p.backends.len()).sum::<usize>(), 1000);
        assert_eq!(config.edge.max_vips, 512);
        assert_eq!(config.edge.max_backends, 1024);
    }
}
