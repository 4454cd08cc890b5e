//! The gslb agent library: loading the XDP programs and programming their
//! maps. The `gslb` binary and the end-to-end tests both use it.
pub mod dataplane;
