//! The capabilities loading and attaching XDP programs needs, checked up
//! front so that a process without them is told which ones it lacks
//! instead of meeting a bare EPERM from the verifier.

use anyhow::{bail, Result};
use caps::{CapSet, Capability};

/// What `steer` and `decap` need: CAP_BPF to create maps and load
/// programs, CAP_PERFMON for the verifier to accept them (without it, it
/// refuses their pointer arithmetic on packet and map data), CAP_NET_ADMIN
/// to load XDP programs and attach them.
pub const XDP: [Capability; 3] = [Capability::CAP_BPF, Capability::CAP_PERFMON, Capability::CAP_NET_ADMIN];

/// For raw ICMP sockets: the agent counts tunnel errors with one.
pub const RAW_SOCKETS: Capability = Capability::CAP_NET_RAW;

/// Which of `wanted` this process does not have in its effective set.
pub fn missing(wanted: &[Capability]) -> Vec<Capability> {
    wanted.iter().copied().filter(|cap| !caps::has_cap(None, CapSet::Effective, *cap).unwrap_or(false)).collect()
}

/// Refuses to go on without the capabilities `what` needs to load and
/// attach XDP programs, naming the missing ones.
pub fn require_xdp(what: &str) -> Result<()> {
    let lacking = missing(&XDP);
    if !lacking.is_empty() {
        let names: Vec<String> = lacking.iter().map(ToString::to_string).collect();
        bail!(
            "{what} needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN to load and attach its XDP program; this process lacks {} \
             (run it as root, or give its user these capabilities: docs/operations.md, \"Running without root\")",
            names.join(" and ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_has_what_xdp_needs() {
        // The tests run as root, with every capability.
        assert!(missing(&XDP).is_empty());
        assert!(require_xdp("gslb run").is_ok());
    }
}
