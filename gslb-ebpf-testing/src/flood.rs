//! The `flood` object: `flood_syn`, a SYN-flood generator for the tests
//! (driven by tests/src/flood.rs).
//!
//! Run through BPF_PROG_TEST_RUN with live frames, it writes a whole
//! Ethernet/IPv4/TCP SYN into every frame (live frames keep what receivers
//! wrote into them, so nothing of the previous use may survive), gives it
//! its own source address and port from a sequence number (or one per
//! `per_flow` frames), computes both checksums, and redirects it into the
//! configured interface.

#![cfg_attr(target_arch = "bpf", no_std, no_main)]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_get_smp_processor_id, bpf_redirect},
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use gslb_common::testing::{FloodConfig, SYN_LEN};
use gslb_ebpf::{
    checksum::{self, add_words},
    headers::{read_ipv4, write_ipv4},
};
use gslb_ebpf_testing::generator;

gslb_ebpf::xdp_object!();

const ETH_LEN: usize = 14;
const IPV4_LEN: usize = 20;
const TCP_LEN: usize = 20;

#[map]
static FLOOD_CONFIG: Array<FloodConfig> = Array::with_max_entries(1, 0);
/// Frames written and handed to `bpf_redirect`, per CPU (slot 0).
#[map]
static FLOOD_SENT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// murmur3's finaliser: a bijection on u32, so distinct sequence numbers
/// give distinct (address, port) pairs.
#[inline(always)]
fn mix(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x85eb_ca6b);
    x ^= x >> 13;
    x = x.wrapping_mul(0xc2b2_ae35);
    x ^ (x >> 16)
}

#[xdp]
pub fn flood_syn(ctx: XdpContext) -> u32 {
    let Some((config, sent)) = generator(&FLOOD_CONFIG, &FLOOD_SENT) else {
        return xdp_action::XDP_ABORTED;
    };
    let start = ctx.data();
    if start + SYN_LEN > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    // The flow: the per-CPU count with the CPU in the low bits, unique over
    // the run even if the driving thread moves between CPUs.
    let n = unsafe { *sent };
    let per_flow = if config.per_flow == 0 { 1 } else { config.per_flow as u64 };
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let h = mix((((n / per_flow) as u32) << 6) | (cpu & 0x3f));

    let frame = unsafe { &mut *(start as *mut [u8; SYN_LEN]) };
    frame.copy_from_slice(&config.header[..SYN_LEN]);

    let ip = unsafe { &mut *((start + ETH_LEN) as *mut [u8; IPV4_LEN]) };
    // The hash's high 22 bits pick the address in the /10, its low 16 bits
    // the port (never below 1024): together they keep all 32 bits.
    let mut header = read_ipv4(ip);
    header.src = ((config.src_net & 0xffc0_0000) | (h >> 10)).to_be_bytes();
    header.id = n as u16;
    write_ipv4(ip, &header);

    let tcp = unsafe { &mut *((start + ETH_LEN + IPV4_LEN) as *mut [u8; TCP_LEN]) };
    tcp[0..2].copy_from_slice(&((h as u16) | 0x400).to_be_bytes());
    tcp[4..8].copy_from_slice(&h.to_be_bytes());
    tcp[16] = 0;
    tcp[17] = 0;
    // Pseudo-header: addresses, protocol, TCP length.
    let mut sum = add_words(0, &ip[12..20]);
    sum += 6 + TCP_LEN as u32;
    let check = checksum::finish(add_words(sum, tcp));
    tcp[16] = check[0];
    tcp[17] = check[1];

    unsafe { *sent = n + 1 };
    unsafe { bpf_redirect(config.ifindex, 0) as u32 }
}
