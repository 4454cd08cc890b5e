//! Scratch network namespaces for tests.
//!
//! `in_scratch_netns` runs a closure on a new thread that has first moved
//! itself into a fresh, unnamed network namespace. Commands it spawns
//! (`ip`, `sysctl`) inherit that namespace, and BPF_PROG_TEST_RUN's route
//! lookups use it. The namespace disappears with the thread, so nothing is
//! left behind, even when the test fails; tests can run in parallel.

use std::process::Command;

/// The edge's side of the lab link, fixed so expected bytes are known.
pub const EDGE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// The next hop towards the backends (a permanent neighbour entry).
pub const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
/// The edge interface in the scratch namespace.
pub const EDGE_IF: &str = "edge0";

/// Backend networks reachable through `ROUTER_MAC`.
pub const BACKEND_NET_V4: &str = "198.51.100.0/24";
pub const BACKEND_NET_V6: &str = "2001:db8:100::/64";
/// A backend network whose next hop has no neighbour entry yet.
pub const UNRESOLVED_NET_V4: &str = "198.51.101.0/24";

/// Runs `f` in a fresh network namespace set up as an edge: one veth link
/// with routes to the backend networks. Panics in `f` propagate.
pub fn in_scratch_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: unshare only changes this thread's namespace.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "unshare(CLONE_NEWNET) failed: {}", std::io::Error::last_os_error());
        setup_edge_links();
        f()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Runs a command in the current thread's namespace; panics on failure.
pub fn sh(cmd: &str) {
    let out = Command::new("sh").args(["-c", cmd]).output().expect("spawn sh");
    assert!(out.status.success(), "`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn mac(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn setup_edge_links() {
    sh("ip link set lo up");
    sh(&format!(
        "ip link add {EDGE_IF} address {} type veth peer name router0 address {}",
        mac(EDGE_MAC),
        mac(ROUTER_MAC)
    ));
    sh(&format!("ip link set {EDGE_IF} up && ip link set router0 up"));
    sh(&format!("ip addr add 10.200.0.1/24 dev {EDGE_IF} && ip addr add fd00:200::1/64 dev {EDGE_IF} nodad"));
    sh(&format!("ip neigh replace 10.200.0.254 lladdr {} dev {EDGE_IF} nud permanent", mac(ROUTER_MAC)));
    sh(&format!("ip -6 neigh replace fd00:200::fe lladdr {} dev {EDGE_IF} nud permanent", mac(ROUTER_MAC)));
    sh(&format!("ip route add {BACKEND_NET_V4} via 10.200.0.254"));
    sh(&format!("ip -6 route add {BACKEND_NET_V6} via fd00:200::fe"));
    sh(&format!("ip route add {UNRESOLVED_NET_V4} via 10.200.0.253"));
    sh("sysctl -qw net.ipv4.conf.all.forwarding=1 net.ipv6.conf.all.forwarding=1");
}

/// The interface index of `name` in the current thread's namespace.
pub fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).expect("interface name");
    // SAFETY: a valid C string; the lookup uses this thread's namespace.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(index, 0, "no interface {name}");
    index
}

/// The MTU `narrow_tunnel_path` gives the edge link: inner packets up to
/// 1380 bytes fit an IPv4 tunnel, 1360 an IPv6 one.
pub const NARROW_TUNNEL_MTU: usize = 1400;

/// Narrows the scratch edge's link to `NARROW_TUNNEL_MTU` and routes the
/// test clients (100.64.0.0/16, 2001:db8:c::/48) back through it, so
/// packets too big for the tunnel get an answer that can be routed.
pub fn narrow_tunnel_path() {
    sh(&format!("ip link set {EDGE_IF} mtu {NARROW_TUNNEL_MTU}"));
    sh("ip route add 100.64.0.0/16 via 10.200.0.254");
    sh("ip -6 route add 2001:db8:c::/48 via fd00:200::fe");
}
