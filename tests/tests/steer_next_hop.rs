//! `steer` with next hops the agent resolved (`NEXT_HOPS`): it sends to the
//! cached MACs and interface without a route lookup, and falls back to the
//! kernel's routing table when the entry is missing, not valid, or too
//! small for the packet.

use gslb_common::{NextHop, BACKEND_DEAD, NEXT_HOP_VALID};
use gslb_tests::{
    edge::test_edge,
    netns::{ifindex, in_scratch_netns, EDGE_IF},
    packet::{ethernet, l4, sized_packet, TCP, V4},
    reference::parse_tunnel,
    run::{run_xdp, XDP_PASS, XDP_REDIRECT, XDP_TX},
};

/// Backend 4 (the only backend of 203.0.113.50:80) sits behind a next hop
/// with no neighbour entry: by the routing table its packets go to the
/// kernel to resolve it (`XDP_PASS`), so any other verdict came from
/// `NEXT_HOPS`.
const BACKEND: u32 = 4;
const HOP_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x04];
const EDGE_SIDE_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 0x01];

fn frame() -> Vec<u8> {
    ethernet(&[], &V4::new("100.64.0.1", "203.0.113.50", TCP).packet(&l4(TCP, 40000, 80, b"hello")))
}

fn hop(ifindex: u32, mtu: u16, flags: u16) -> NextHop {
    NextHop { ifindex, mtu, flags, dst_mac: HOP_MAC, src_mac: EDGE_SIDE_MAC }
}

#[test]
fn a_resolved_next_hop_is_used_without_a_route_lookup() {
    in_scratch_netns(|| {
        let mut edge = test_edge();
        let edge_if = ifindex(EDGE_IF);
        let before = edge.global_stats().unwrap();
        let out = run_xdp(edge.program(), &frame(), Some(edge_if));
        assert_eq!(out.action, XDP_PASS, "without a next hop the routing table has no neighbour: handed to the kernel");

        // Out of the interface it arrived on: XDP_TX, with the cached MACs.
        edge.set_next_hop(BACKEND, Some(hop(edge_if, 1500, NEXT_HOP_VALID))).unwrap();
        let out = run_xdp(edge.program(), &frame(), Some(edge_if));
        assert_eq!(out.action, XDP_TX);
        assert_eq!(out.frame[..6], HOP_MAC, "destination MAC");
        assert_eq!(out.frame[6..12], EDGE_SIDE_MAC, "source MAC");
        let tunnel = parse_tunnel(&out.frame).expect("a tunnel packet");
        assert_eq!(tunnel.outer_dst, "198.51.101.1".parse::<std::net::IpAddr>().unwrap());
        assert_eq!(tunnel.inner, frame()[14..], "the inner packet is unchanged");

        // Out of another interface: a redirect.
        edge.set_next_hop(BACKEND, Some(hop(ifindex("router0"), 1500, NEXT_HOP_VALID))).unwrap();
        assert_eq!(run_xdp(edge.program(), &frame(), Some(edge_if)).action, XDP_REDIRECT);

        let after = edge.global_stats().unwrap();
        assert_eq!(after.forwarded - before.forwarded, 2, "both sends counted as forwarded");
        assert_eq!(after.neighbour_pending - before.neighbour_pending, 1, "the first packet waited for a neighbour");
    });
}

#[test]
fn an_unusable_next_hop_falls_back_to_the_routing_table() {
    in_scratch_netns(|| {
        let mut edge = test_edge();
        let edge_if = ifindex(EDGE_IF);
        // Not valid (being re-resolved): the routing table decides.
        edge.set_next_hop(BACKEND, Some(hop(edge_if, 1500, 0))).unwrap();
        assert_eq!(run_xdp(edge.program(), &frame(), Some(edge_if)).action, XDP_PASS);
        // Cleared: the same.
        edge.set_next_hop(BACKEND, None).unwrap();
        assert_eq!(edge.next_hop(BACKEND).unwrap().flags, 0);
        assert_eq!(run_xdp(edge.program(), &frame(), Some(edge_if)).action, XDP_PASS);

        // Too big for the cached MTU: the routing table decides, and its
        // path-MTU handling applies (here: no neighbour yet, to the kernel).
        let big = ethernet(&[], &sized_packet("100.64.0.1", "203.0.113.50", TCP, (40000, 80), 1000, true));
        edge.set_next_hop(BACKEND, Some(hop(edge_if, 1000, NEXT_HOP_VALID))).unwrap();
        assert_eq!(run_xdp(edge.program(), &big, Some(edge_if)).action, XDP_PASS, "1,020 bytes > MTU 1,000");
        // The same packet fits an MTU of 1,020 exactly.
        edge.set_next_hop(BACKEND, Some(hop(edge_if, 1020, NEXT_HOP_VALID))).unwrap();
        assert_eq!(run_xdp(edge.program(), &big, Some(edge_if)).action, XDP_TX, "1,020 bytes fit MTU 1,020");
    });
}

#[test]
fn a_next_hop_belongs_to_the_address_its_backend_id_holds() {
    use gslb_userspace::sys::maps::MapWrites;
    in_scratch_netns(|| {
        let mut edge = test_edge();
        let next_hops = edge.next_hops();
        let edge_if = ifindex(EDGE_IF);
        let (old, new) = ("198.51.101.1".parse().unwrap(), "198.51.101.99".parse().unwrap());
        assert!(next_hops.update(BACKEND, old, Some(hop(edge_if, 1500, 0))).unwrap(), "written, marked valid");
        assert_eq!(edge.next_hop(BACKEND).unwrap(), hop(edge_if, 1500, NEXT_HOP_VALID));
        assert!(!next_hops.update(BACKEND, old, Some(hop(edge_if, 1500, 0))).unwrap(), "unchanged: not rewritten");

        // The id is reused for another address: its next hop goes with the
        // old one, and a hop resolved for the old address is refused.
        edge.set_backend(BACKEND, new, 0).unwrap();
        assert_eq!(edge.next_hop(BACKEND).unwrap().flags, 0, "cleared when the backend's address changed");
        assert!(!next_hops.update(BACKEND, old, Some(hop(edge_if, 1500, 0))).unwrap(), "stale answer refused");
        assert_eq!(edge.next_hop(BACKEND).unwrap().flags, 0);
        assert!(next_hops.update(BACKEND, new, Some(hop(edge_if, 1500, 0))).unwrap());
        assert_eq!(run_xdp(edge.program(), &frame(), Some(edge_if)).action, XDP_TX, "the new address's hop is used");

        // Marking it dead keeps the hop; clearing the backend does not.
        edge.set_backend(BACKEND, new, BACKEND_DEAD).unwrap();
        assert_eq!(edge.next_hop(BACKEND).unwrap().flags, NEXT_HOP_VALID);
        assert!(next_hops.update(BACKEND, new, None).unwrap(), "invalidated");
        assert_eq!(edge.next_hop(BACKEND).unwrap().flags, 0);
        assert_eq!(edge.next_hop(BACKEND).unwrap().dst_mac, HOP_MAC, "only the flag changed");
        assert!(next_hops.update(BACKEND, new, Some(hop(edge_if, 1500, 0))).unwrap());
        edge.clear_backend(BACKEND).unwrap();
        assert_eq!(edge.next_hop(BACKEND).unwrap(), NextHop::default(), "cleared with its backend");
        assert!(!next_hops.update(BACKEND, new, Some(hop(edge_if, 1500, 0))).unwrap(), "a freed id takes no hop");
        assert!(!next_hops.targets().backends.contains_key(&BACKEND));
    });
}
