//! The test and bench XDP objects (gslb-ebpf-testing, built by build.rs),
//! apart from the agent's object (`gslb_userspace::sys::OBJECT`, `steer`
//! and `decap` only). Their map layouts and names are
//! `gslb_common::testing`.

/// `bench_restore` (restores a frame, tail-calls the program under test),
/// `bench_pass`, `bench_drop`, `bench_reflect`, `bench_forward`.
pub static BENCH: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench"));
/// `live_gen` (live-frames generator), `live_reflect`, `live_sink`,
/// `live_pass`.
pub static LIVE: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/live"));
/// `flood_syn` (live-frames SYN-flood generator).
pub static FLOOD: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flood"));
