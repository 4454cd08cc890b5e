//! Everything that touches the kernel: the BPF object and its maps
//! (`steer`, `decap`, `maps`, `tables` for the Maglev tables and `history`
//! for their slots' previous owners), XDP
//! attachment (`attach`), the kernel's version and verifier refusals
//! (`kernel`), the interfaces (`interfaces`), next hops per
//! backend (`next_hops`), bpffs (`bpffs`),
//! and raw ICMP sockets (`tunnel_errors`).

pub mod attach;
pub mod bpffs;
pub mod capabilities;
pub mod decap;
pub mod history;
pub mod interfaces;
pub mod kernel;
pub mod maps;
pub mod next_hops;
pub mod steer;
mod tables;
pub mod tunnel_errors;
pub mod upgrade;

/// The compiled XDP object (`steer` and `decap`), built by `build.rs`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gslb-ebpf"));
