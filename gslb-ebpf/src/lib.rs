//! Packet operations without state, shared by the product programs
//! (`main.rs`: `steer` and `decap`) and the test programs
//! (`gslb-ebpf-testing`): parsing, checksums, IP header writers,
//! encapsulation and routing. No map lives here: a map defined in this
//! library would land in every object that links it.
//!
//! Also compiled for the host, as a build-dependency of `gslb-userspace`
//! (so cargo rebuilds the object when it changes).
#![no_std]

pub mod checksum;
pub mod encap;
pub mod headers;
pub mod parse;
pub mod route;

/// What every XDP object needs besides its programs: the panic handler and
/// the license. Invoke once at the root of each program binary, which
/// starts with
/// `#![cfg_attr(target_arch = "bpf", no_std, no_main)]`: on the host
/// (clippy, `cargo check --workspace`) the binary is an empty ordinary
/// program, so it checks alongside crates that link std.
#[macro_export]
macro_rules! xdp_object {
    () => {
        #[cfg(target_arch = "bpf")]
        #[panic_handler]
        fn panic(_info: &core::panic::PanicInfo) -> ! {
            loop {}
        }

        #[cfg(not(target_arch = "bpf"))]
        fn main() {}

        #[unsafe(link_section = "license")]
        #[unsafe(no_mangle)]
        static LICENSE: [u8; 4] = *b"GPL\0";
    };
}
