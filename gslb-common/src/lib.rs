//! Types and logic shared by the XDP programs and userspace.
//!
//! Everything the kernel side and the agent must agree on lives here once:
//! the layout of every map key and value, the flow hash, and the Maglev
//! lookup. Addresses are always 16 bytes: IPv4 addresses are stored
//! IPv4-mapped (`::ffff:a.b.c.d`), so one key type serves both families.
#![cfg_attr(not(any(test, feature = "alloc")), no_std)]

#[cfg(any(test, feature = "alloc"))]
extern crate alloc;

pub mod addr;
pub mod flows;
pub mod hash;
#[cfg(any(test, feature = "alloc"))]
pub mod maglev;
pub mod maps;
pub mod second_chance;
#[cfg(feature = "testing")]
pub mod testing;

pub use addr::*;
pub use flows::*;
pub use hash::*;
pub use maps::*;
pub use second_chance::*;
