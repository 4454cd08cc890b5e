//! `decap` through BPF_PROG_TEST_RUN: tunnel headers for this backend are
//! stripped and the inner packet restored exactly; nothing else changes.

use gslb_tests::{
    edge::test_edge,
    netns::in_scratch_netns,
    packet::{ethernet, ipv6, l4, TCP, UDP, V4},
    run::{action_name, run_xdp, XDP_PASS, XDP_REDIRECT},
};
use gslb_userspace::sys::decap::Decap;

const BACKEND_V4: &str = "198.51.100.1";
const BACKEND_V6: &str = "2001:db8:100::1";

fn decap() -> Decap {
    let mut d = Decap::load().expect("load decap");
    d.add_address(BACKEND_V4.parse().unwrap()).unwrap();
    d.add_address(BACKEND_V6.parse().unwrap()).unwrap();
    d
}

fn inner_v4() -> Vec<u8> {
    V4::new("100.64.0.1", "203.0.113.10", TCP).packet(&l4(TCP, 40000, 80, b"GET /"))
}

fn inner_v6() -> Vec<u8> {
    ipv6("2001:db8:c::1", "2001:db8:f::10", UDP, &[], &l4(UDP, 40000, 53, b"query"), 0)
}

fn ipip(outer_src: &str, outer_dst: &str, inner: &[u8]) -> Vec<u8> {
    let mut outer = V4::new(outer_src, outer_dst, 4);
    outer.tos = 0;
    outer.packet(inner)
}

#[test]
fn tunnel_headers_are_stripped_exactly() {
    let mut d = decap();
    let cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        ("ipv4 in ipv4", ethernet(&[], &ipip("192.0.2.10", BACKEND_V4, &inner_v4())), ethernet(&[], &inner_v4())),
        (
            "ipv6 in ipv6",
            ethernet(&[], &ipv6("2001:db8::10", BACKEND_V6, 41, &[], &inner_v6(), 0)),
            ethernet(&[], &inner_v6()),
        ),
        (
            "ipv4 in ipv6",
            ethernet(&[], &ipv6("2001:db8::10", BACKEND_V6, 4, &[], &inner_v4(), 0)),
            ethernet(&[], &inner_v4()),
        ),
        ("802.1Q tagged", ethernet(&[42], &ipip("192.0.2.10", BACKEND_V4, &inner_v4())), ethernet(&[42], &inner_v4())),
        (
            "two tags",
            ethernet(&[4, 2], &ipv6("2001:db8::10", BACKEND_V6, 4, &[], &inner_v4(), 0)),
            ethernet(&[4, 2], &inner_v4()),
        ),
    ];
    for (name, input, want) in cases {
        let out = run_xdp(d.program(), &input, None);
        assert_eq!(out.action, XDP_PASS, "{name}: {}", action_name(out.action));
        assert_eq!(out.frame, want, "{name}: inner packet not restored");
    }
    let s = d.stats().unwrap();
    assert_eq!((s.received, s.decapsulated, s.errors), (5, 5, 0), "{s:?}");
}

#[test]
fn everything_else_passes_untouched() {
    let mut d = decap();
    let mut cases = vec![
        ("plain tcp", ethernet(&[], &inner_v4())),
        ("plain ipv6", ethernet(&[], &inner_v6())),
        ("tunnel to another host", ethernet(&[], &ipip("192.0.2.10", "198.51.100.77", &inner_v4()))),
        (
            "ipv6 tunnel to another host",
            ethernet(&[], &ipv6("2001:db8::10", "2001:db8:100::77", 41, &[], &inner_v6(), 0)),
        ),
        ("fragmented tunnel packet", {
            let mut outer = V4::new("192.0.2.10", BACKEND_V4, 4);
            outer.more_fragments = true;
            ethernet(&[], &outer.packet(&inner_v4()))
        }),
    ];
    // Every cut of a real tunnel packet that leaves no inner header.
    let tunnel = ethernet(&[], &ipip("192.0.2.10", BACKEND_V4, &inner_v4()));
    for len in 14..34 {
        cases.push(("truncated tunnel packet", tunnel[..len].to_vec()));
    }
    for (name, input) in cases {
        let out = run_xdp(d.program(), &input, None);
        assert_eq!((out.action, &out.frame), (XDP_PASS, &input), "{name} ({} bytes) was changed", input.len());
    }
    assert_eq!(d.stats().unwrap().decapsulated, 0);
}

#[test]
fn steer_then_decap_restores_the_client_packet() {
    in_scratch_netns(|| {
        let mut edge = test_edge();
        let mut d = decap();
        let inner = V4::new("100.64.0.1", "203.0.113.40", TCP).packet(&l4(TCP, 1, 80, b"x"));
        for input in [ethernet(&[], &inner_v4()), ethernet(&[9], &inner_v4()), ethernet(&[], &inner)] {
            let steered = run_xdp(edge.program(), &input, None);
            assert_eq!(steered.action, XDP_REDIRECT);
            let out = run_xdp(d.program(), &steered.frame, None);
            assert_eq!(out.action, XDP_PASS);
            // MACs are those of the tunnel hop; the IP packet is the client's.
            let ip_start = input.len() - if input == ethernet(&[], &inner) { inner.len() } else { inner_v4().len() };
            assert_eq!(&out.frame[14..], &input[ip_start..], "round trip changed the packet");
            assert_eq!(&out.frame[..12], &steered.frame[..12]);
        }
    });
}
