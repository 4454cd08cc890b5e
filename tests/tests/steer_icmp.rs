//! ICMP and path MTU through `steer` (BPF_PROG_TEST_RUN in a scratch
//! namespace): packets too big for the tunnel are answered like a router
//! would; ICMP errors about a VIP flow reach that flow's backend; and
//! nothing but a complete VIP packet is ever tunneled, and only to a
//! configured backend (the steerer is not an open relay).

use std::net::IpAddr;

use gslb_tests::{
    edge::{backend_id, ref_vips, table_of, test_edge, TEST_LIMITS, TUNNEL_V4, TUNNEL_V6, VIPS},
    netns::{in_scratch_netns, narrow_tunnel_path, NARROW_TUNNEL_MTU},
    packet::{ethernet, flow_frame, icmp4_error, icmp6_error, ipv6, l4, sized_packet, ICMP, TCP, UDP, V4},
    reference::{check_too_big, complete_vip_packet, parse_tunnel, vip_icmp_error},
    run::{action_name, run_xdp, Outcome, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX},
};
use gslb_userspace::sys::steer::Steer;

const TUNNEL_MTU: usize = NARROW_TUNNEL_MTU;
const CLIENT_V4: &str = "100.64.0.1";
const CLIENT_V6: &str = "2001:db8:c::1";
const VIP_V4: &str = "203.0.113.10";
const VIP_V6: &str = "2001:db8:f::10";

/// The test edge behind a narrow tunnel path (answers to too-big packets
/// are routed like any packet).
fn edge_with_small_mtu() -> Steer {
    narrow_tunnel_path();
    test_edge()
}

fn sent(out: &Outcome) -> bool {
    out.action == XDP_REDIRECT || out.action == XDP_TX
}

/// The backend a forwarded frame went to.
fn backend_of(out: &Outcome) -> u32 {
    assert!(sent(out), "not sent: {}", action_name(out.action));
    let t = parse_tunnel(&out.frame).unwrap();
    backend_id(t.outer_dst).unwrap_or_else(|| panic!("tunneled to {} (not a backend)", t.outer_dst))
}

#[test]
fn packets_too_big_for_the_tunnel_are_answered_with_the_inner_mtu() {
    in_scratch_netns(|| {
        let mut edge = edge_with_small_mtu();
        // (client, VIP, port, overhead): IPv4 in IPv4, IPv4 in IPv6 (VIP
        // .40 has an IPv6 backend), IPv6 in IPv6.
        let cases = [(CLIENT_V4, VIP_V4, 80, 20), (CLIENT_V4, "203.0.113.40", 80, 40), (CLIENT_V6, VIP_V6, 443, 40)];
        for (client, vip, port, overhead) in cases {
            let inner_mtu = TUNNEL_MTU - overhead;
            // The largest packet that fits is tunneled...
            let fits = ethernet(&[], &sized_packet(client, vip, TCP, (40000, port), inner_mtu, true));
            let out = run_xdp(edge.program(), &fits, None);
            backend_of(&out);
            assert_eq!(parse_tunnel(&out.frame).unwrap().inner.len(), inner_mtu);
            // ...one byte more is answered, from the VIP, with the MTU
            // the client must use.
            let big = ethernet(&[], &sized_packet(client, vip, TCP, (40000, port), inner_mtu + 1, true));
            let out = run_xdp(edge.program(), &big, None);
            assert!(sent(&out), "{vip}: {} for a too-big packet", action_name(out.action));
            check_too_big(&big, &out.frame, inner_mtu as u32).unwrap_or_else(|e| panic!("{vip}: {e}"));
        }
        let g = edge.global_stats().unwrap();
        assert_eq!((g.too_big_answered, g.too_big_dropped, g.forwarded), (3, 0, 3), "{g:?}");
    });
}

#[test]
fn too_big_packets_that_may_not_be_answered_are_dropped_and_counted() {
    in_scratch_netns(|| {
        let mut edge = edge_with_small_mtu();
        // IPv4 without DF: a router would fragment it; the tunnel cannot
        // (backends cannot reassemble outer fragments), so it is dropped.
        let no_df = ethernet(&[], &sized_packet(CLIENT_V4, VIP_V4, UDP, (40000, 53), 1381, false));
        assert_eq!(run_xdp(edge.program(), &no_df, None).action, XDP_DROP);
        // An ICMP error is never answered with another.
        let flow = sized_packet(VIP_V4, CLIENT_V4, TCP, (80, 40000), 1360, true);
        let error = ethernet(&[], &icmp4_error("100.64.9.9", VIP_V4, 3, 1, [0; 4], &flow[..]));
        assert!(error.len() - 14 > 1380);
        assert_eq!(run_xdp(edge.program(), &error, None).action, XDP_DROP);
        let g = edge.global_stats().unwrap();
        assert_eq!((g.too_big_answered, g.too_big_dropped, g.dropped), (0, 2, 2), "{g:?}");
    });
}

/// A router's "fragmentation needed" about a packet the backend sent to
/// `client_port`, quoting its first 28 bytes as routers do.
fn frag_needed_about(client_port: u16) -> Vec<u8> {
    let reply = V4::new(VIP_V4, CLIENT_V4, TCP).packet(&l4(TCP, 80, client_port, &[0; 1200]));
    ethernet(&[], &icmp4_error("100.64.9.9", VIP_V4, 3, 4, [0, 0, 0x05, 0x00], &reply[..28]))
}

fn packet_too_big_about(client_port: u16) -> Vec<u8> {
    let reply = ipv6(VIP_V6, CLIENT_V6, TCP, &[], &l4(TCP, 443, client_port, &[0; 1200]), 0);
    ethernet(&[], &icmp6_error("2001:db8:9::9", VIP_V6, 2, 0, 1280u32.to_be_bytes(), &reply[..1000]))
}

#[test]
fn icmp_errors_about_a_flow_reach_that_flows_backend() {
    in_scratch_netns(|| {
        let mut edge = test_edge();
        let vips = ref_vips();
        let ports = 40000..40100u16;
        // Record 100 flows per family, then send every backend the other
        // table: the flow table, not the Maglev table, now decides.
        let mut owner = Vec::new();
        for port in ports.clone() {
            let v4 = flow_frame(CLIENT_V4.parse().unwrap(), VIP_V4.parse().unwrap(), TCP, port, 80);
            let v6 = flow_frame(CLIENT_V6.parse().unwrap(), VIP_V6.parse().unwrap(), TCP, port, 443);
            owner.push((
                backend_of(&run_xdp(edge.program(), &v4, None)),
                backend_of(&run_xdp(edge.program(), &v6, None)),
            ));
        }
        let seen: std::collections::BTreeSet<_> = owner.iter().collect();
        assert!(seen.len() > 1, "100 flows all on one backend pair: {seen:?}");
        for (vip, other) in [(&VIPS[0], &[2u32, 1][..]), (&VIPS[2], &[6, 3][..])] {
            // Equal weights in reverse order still give other slots.
            let flipped: Vec<u32> =
                table_of(vip.backends, &TEST_LIMITS).iter().map(|&b| other[(b == vip.backends[0]) as usize]).collect();
            edge.set_vip(vip.matcher(), vip.id, vip.source_ip, &flipped).unwrap();
        }
        let new_flows = edge.vip_stats(0).unwrap().new_flows + edge.vip_stats(2).unwrap().new_flows;

        for (port, (v4_backend, v6_backend)) in ports.clone().zip(&owner) {
            for (frame, want) in [(frag_needed_about(port), v4_backend), (packet_too_big_about(port), v6_backend)] {
                let error = vip_icmp_error(&frame, &vips).expect("the reference sees a VIP ICMP error");
                let out = run_xdp(edge.program(), &frame, None);
                assert_eq!(backend_of(&out), *want, "port {port}");
                assert_eq!(parse_tunnel(&out.frame).unwrap().inner, error, "the ICMP error is tunneled unchanged");
            }
        }
        // Errors about flows the table does not know go where the flow
        // would go, and create no flow entry.
        let unknown = frag_needed_about(50000);
        let to = backend_of(&run_xdp(edge.program(), &unknown, None));
        let first = flow_frame(CLIENT_V4.parse().unwrap(), VIP_V4.parse().unwrap(), TCP, 50000, 80);
        assert_eq!(edge.vip_stats(0).unwrap().new_flows + edge.vip_stats(2).unwrap().new_flows, new_flows);
        assert_eq!(backend_of(&run_xdp(edge.program(), &first, None)), to);
        assert_eq!(edge.global_stats().unwrap().icmp_errors, 201);
    });
}

#[test]
fn icmp_that_is_not_about_a_vip_flow_is_left_to_the_kernel() {
    in_scratch_netns(|| {
        let mut edge = test_edge();
        let reply = V4::new(VIP_V4, CLIENT_V4, TCP).packet(&l4(TCP, 80, 40000, b""));
        let from_other = V4::new("198.51.100.77", CLIENT_V4, TCP).packet(&l4(TCP, 80, 40000, b""));
        let other_port = V4::new(VIP_V4, CLIENT_V4, TCP).packet(&l4(TCP, 8080, 40000, b""));
        let mut echo = vec![8, 0, 0, 0, 0, 1, 0, 1];
        echo.extend(b"ping");
        let frames = [
            ("echo request to the VIP", V4::new(CLIENT_V4, VIP_V4, ICMP).packet(&echo)),
            ("redirect (not an error) to the VIP", icmp4_error("100.64.9.9", VIP_V4, 5, 1, [0; 4], &reply[..28])),
            ("error quoting another sender", icmp4_error("100.64.9.9", VIP_V4, 3, 4, [0; 4], &from_other[..28])),
            ("error about a port that is no VIP", icmp4_error("100.64.9.9", VIP_V4, 3, 4, [0; 4], &other_port[..28])),
            ("error to a backend", icmp4_error("100.64.9.9", "198.51.100.1", 3, 4, [0; 4], &reply[..28])),
            ("error quoting only 2 port bytes", icmp4_error("100.64.9.9", VIP_V4, 3, 4, [0; 4], &reply[..22])),
        ];
        for (what, ip) in frames {
            let frame = ethernet(&[], &ip);
            let out = run_xdp(edge.program(), &frame, None);
            assert!(out.action == XDP_PASS && out.frame == frame, "{what}: {}", action_name(out.action));
        }
        assert_eq!(edge.global_stats().unwrap().icmp_errors, 0);
    });
}

#[test]
fn nothing_but_vip_packets_is_tunneled_and_only_to_backends() {
    in_scratch_netns(|| {
        let mut edge = test_edge();
        let vips = ref_vips();
        let inner = V4::new(CLIENT_V4, "198.51.100.1", TCP).packet(&l4(TCP, 1234, 22, b"ssh"));
        let inner_v6 = ipv6(CLIENT_V6, "2001:db8:100::1", TCP, &[], &l4(TCP, 1234, 22, b"ssh"), 0);
        let ipip = |dst: &str, payload: &[u8]| V4::new(CLIENT_V4, dst, 4).packet(payload);
        let untouched = [
            ("IPIP to the VIP carrying a packet for a backend", ipip(VIP_V4, &inner)),
            ("IPIP to the tunnel source", ipip(&TUNNEL_V4.to_string(), &inner)),
            ("IPv6-in-IPv6 to the VIP", ipv6(CLIENT_V6, VIP_V6, 41, &[], &inner_v6, 0)),
            ("IPv6-in-IPv6 to the tunnel source", ipv6(CLIENT_V6, &TUNNEL_V6.to_string(), 41, &[], &inner_v6, 0)),
            ("TCP to a backend", V4::new(CLIENT_V4, "198.51.100.1", TCP).packet(&l4(TCP, 1, 80, b"x"))),
            ("UDP to a backend", V4::new(CLIENT_V4, "198.51.100.2", UDP).packet(&l4(UDP, 1, 53, b"x"))),
            ("TCP to an IPv6 backend", ipv6(CLIENT_V6, "2001:db8:100::1", TCP, &[], &l4(TCP, 1, 443, b"x"), 0)),
            ("TCP to the VIP on a port that is no VIP", V4::new(CLIENT_V4, VIP_V4, TCP).packet(&l4(TCP, 1, 81, b"x"))),
            ("UDP to a TCP-only VIP port", V4::new(CLIENT_V4, VIP_V4, UDP).packet(&l4(UDP, 1, 80, b"x"))),
            (
                "TCP from a backend to another backend",
                V4::new("198.51.100.1", "198.51.100.2", TCP).packet(&l4(TCP, 1, 80, b"x")),
            ),
            ("TCP to the tunnel source", V4::new(CLIENT_V4, &TUNNEL_V4.to_string(), TCP).packet(&l4(TCP, 1, 80, b"x"))),
        ];
        for (what, ip) in untouched {
            let frame = ethernet(&[], &ip);
            let out = run_xdp(edge.program(), &frame, None);
            assert!(out.action == XDP_PASS && out.frame == frame, "{what}: {}", action_name(out.action));
        }
        // A packet from a backend's address to a VIP is a VIP packet like
        // any other: it goes to a configured backend, from the tunnel
        // source, and nowhere else.
        for (src, dst, port) in [("198.51.100.1", VIP_V4, 80), ("2001:db8:100::1", VIP_V6, 443)] {
            let frame = flow_frame(src.parse().unwrap(), dst.parse().unwrap(), TCP, 5555, port);
            let out = run_xdp(edge.program(), &frame, None);
            let t = parse_tunnel(&out.frame).unwrap();
            assert!(backend_id(t.outer_dst).is_some(), "{src}: tunneled to {}", t.outer_dst);
            let source: IpAddr = if t.outer_src.is_ipv4() { TUNNEL_V4.into() } else { TUNNEL_V6.into() };
            assert_eq!(t.outer_src, source);
            assert_eq!(Some(t.inner), complete_vip_packet(&frame, &vips));
        }
        assert_eq!(edge.global_stats().unwrap().forwarded, 2);
    });
}
