//! `steer` on hand-built frames through BPF_PROG_TEST_RUN: return action and
//! exact output bytes, judged by the reference parser.

use std::net::IpAddr;

use gslb_tests::{
    edge::{backend_id, ref_vips, test_edge, TUNNEL_V4, TUNNEL_V6},
    netns::{ifindex, in_scratch_netns, EDGE_IF, EDGE_MAC, ROUTER_MAC},
    packet::{
        ethernet, flow_frame, ipv6, ipv6_fragment_header, ipv6_options_header, l4, CLIENT_ROUTER_MAC, ICMP, TCP, UDP,
        V4,
    },
    reference::{complete_vip_packet, parse_tunnel},
    run::{action_name, run_xdp, XDP_PASS, XDP_REDIRECT, XDP_TX},
};

/// What a fixture must do.
enum Expect {
    /// Handed to the kernel byte-for-byte unchanged.
    Untouched,
    /// Encapsulated to one of these backends and sent with this action.
    Tunnel { action: u32, backends: &'static [u32] },
}

struct Fixture {
    name: &'static str,
    frame: Vec<u8>,
    /// Arrive on the edge interface instead of `lo`.
    on_edge_if: bool,
    expect: Expect,
}

fn fixture(name: &'static str, frame: Vec<u8>, expect: Expect) -> Fixture {
    Fixture { name, frame, on_edge_if: false, expect }
}

fn tunnel(backends: &'static [u32]) -> Expect {
    Expect::Tunnel { action: XDP_REDIRECT, backends }
}

/// A frame from the IPv6 test client to the IPv6 VIP.
fn to_v6_vip(proto: u8, ext: &[(u8, Vec<u8>)], payload: &[u8]) -> Vec<u8> {
    ethernet(&[], &ipv6("2001:db8:c::1", "2001:db8:f::10", proto, ext, payload, 0))
}

fn tcp(src_port: u16, dst_port: u16) -> Vec<u8> {
    l4(TCP, src_port, dst_port, b"GET / HTTP/1.1\r\n\r\n")
}

fn udp(src_port: u16, dst_port: u16) -> Vec<u8> {
    l4(UDP, src_port, dst_port, b"query")
}

fn fixtures() -> Vec<Fixture> {
    let v4_tcp = V4::new("100.64.0.1", "203.0.113.10", TCP);
    let v4_udp = V4::new("100.64.0.1", "203.0.113.10", UDP);
    let mut with_options = v4_tcp.clone();
    with_options.options = vec![1, 1, 1, 0]; // NOP, NOP, NOP, EOL
    let mut max_options = v4_tcp.clone();
    max_options.options = vec![1; 40];
    let mut first_fragment = v4_udp.clone();
    first_fragment.df = false;
    first_fragment.more_fragments = true;
    let mut later_fragment = first_fragment.clone();
    later_fragment.fragment_offset = 185;
    let mut no_df = v4_tcp.clone();
    no_df.df = false;
    no_df.tos = 0;

    vec![
        fixture("ipv4 tcp", ethernet(&[], &v4_tcp.packet(&tcp(40000, 80))), tunnel(&[1, 2])),
        fixture("ipv4 udp", ethernet(&[], &v4_udp.packet(&udp(40000, 53))), tunnel(&[1, 2])),
        fixture("ipv4 without DF", ethernet(&[], &no_df.packet(&tcp(40001, 80))), tunnel(&[1, 2])),
        fixture(
            "ipv6 tcp",
            ethernet(&[], &ipv6("2001:db8:c::1", "2001:db8:f::10", TCP, &[], &tcp(40000, 443), 0xb8)),
            tunnel(&[3, 6]),
        ),
        fixture(
            "ipv6 udp",
            ethernet(&[], &ipv6("2001:db8:c::1", "2001:db8:f::10", UDP, &[], &udp(40000, 53), 0)),
            tunnel(&[3, 6]),
        ),
        fixture("802.1Q tag", ethernet(&[100], &v4_tcp.packet(&tcp(40000, 80))), tunnel(&[1, 2])),
        fixture("802.1ad + 802.1Q tags", ethernet(&[100, 200], &v4_tcp.packet(&tcp(40000, 80))), tunnel(&[1, 2])),
        fixture(
            "ipv6 in two tags",
            ethernet(&[7, 8], &ipv6("2001:db8:c::1", "2001:db8:f::10", TCP, &[], &tcp(1, 443), 0)),
            tunnel(&[3, 6]),
        ),
        fixture(
            "ethernet padding is not tunnelled",
            {
                let mut f = ethernet(&[], &v4_udp.packet(&udp(7, 53)));
                f.extend([0; 9]);
                f
            },
            tunnel(&[1, 2]),
        ),
        fixture("ipv4 options", ethernet(&[], &with_options.packet(&tcp(40000, 80))), tunnel(&[1, 2])),
        fixture("ipv4 40 bytes of options", ethernet(&[], &max_options.packet(&tcp(40000, 80))), tunnel(&[1, 2])),
        fixture(
            "ipv6 hop-by-hop + destination options",
            to_v6_vip(TCP, &[(0, ipv6_options_header()), (60, ipv6_options_header())], &tcp(40000, 443)),
            tunnel(&[3, 6]),
        ),
        fixture(
            "ipv6 atomic fragment header is not a fragment",
            to_v6_vip(UDP, &[(44, ipv6_fragment_header(0, false, 9))], &udp(40000, 53)),
            tunnel(&[3, 6]),
        ),
        fixture("ipv4 first fragment", ethernet(&[], &first_fragment.packet(&udp(40000, 53))), tunnel(&[1, 2])),
        fixture("ipv4 later fragment", ethernet(&[], &later_fragment.packet(b"more data")), tunnel(&[1, 2])),
        fixture(
            "ipv6 later fragment",
            to_v6_vip(UDP, &[(44, ipv6_fragment_header(100, true, 9))], b"middle"),
            tunnel(&[3, 6]),
        ),
        fixture(
            "vip with port 0, any port",
            ethernet(&[], &V4::new("100.64.0.1", "203.0.113.20", TCP).packet(&tcp(5, 8443))),
            tunnel(&[1, 2, 5]),
        ),
        fixture(
            "source-ip affinity",
            ethernet(&[], &V4::new("100.64.0.9", "203.0.113.30", TCP).packet(&tcp(5, 80))),
            tunnel(&[1, 2, 5]),
        ),
        fixture(
            "ipv4 vip, ipv6 backend",
            ethernet(&[], &V4::new("100.64.0.1", "203.0.113.40", TCP).packet(&tcp(5, 80))),
            tunnel(&[3]),
        ),
        Fixture {
            name: "backend out of the ingress interface: XDP_TX",
            frame: ethernet(&[], &v4_tcp.packet(&tcp(40000, 80))),
            on_edge_if: true,
            expect: Expect::Tunnel { action: XDP_TX, backends: &[1, 2] },
        },
        fixture(
            "neighbour not resolved: encapsulated, to the kernel",
            ethernet(&[], &V4::new("100.64.0.1", "203.0.113.50", TCP).packet(&tcp(5, 80))),
            Expect::Tunnel { action: XDP_PASS, backends: &[4] },
        ),
        fixture(
            "not a vip address",
            flow_frame("100.64.0.1".parse().unwrap(), "203.0.113.99".parse().unwrap(), TCP, 5, 80),
            Expect::Untouched,
        ),
        fixture("vip address, other port", ethernet(&[], &v4_tcp.packet(&tcp(5, 81))), Expect::Untouched),
        fixture(
            "vip address, other protocol",
            ethernet(&[], &V4::new("100.64.0.1", "203.0.113.10", ICMP).packet(&[8, 0, 0, 0, 0, 0, 0, 0])),
            Expect::Untouched,
        ),
        fixture(
            "ipv6 vip, other port",
            ethernet(&[], &ipv6("2001:db8:c::1", "2001:db8:f::10", TCP, &[], &tcp(1, 80), 0)),
            Expect::Untouched,
        ),
        fixture(
            "arp",
            {
                let mut f = ethernet(&[], &[0u8; 28]);
                f[12] = 0x08;
                f[13] = 0x06;
                f
            },
            Expect::Untouched,
        ),
        fixture(
            "fragment of a protocol with no fragment vip",
            ethernet(
                &[],
                &{
                    let mut f = V4::new("100.64.0.1", "203.0.113.20", TCP);
                    f.more_fragments = true;
                    f
                }
                .packet(&tcp(5, 80)),
            ),
            Expect::Untouched,
        ),
    ]
}

/// The IP packet inside an input frame (after Ethernet and VLAN tags).
fn inner_of(frame: &[u8]) -> Vec<u8> {
    complete_vip_packet(frame, &ref_vips()).expect("fixture is a complete VIP packet")
}

#[test]
fn steer_fixtures_produce_exact_frames() {
    in_scratch_netns(|| {
        let mut edge = test_edge();
        let edge_if = ifindex(EDGE_IF);
        let mut failures = Vec::new();
        for f in fixtures() {
            let out = run_xdp(edge.program(), &f.frame, f.on_edge_if.then_some(edge_if));
            if let Err(why) = check(&f, &out.action, &out.frame) {
                failures.push(format!("{}: {why} (action {})", f.name, action_name(out.action)));
            }
        }
        assert!(failures.is_empty(), "fixtures failed:\n{}", failures.join("\n"));
    });
}

fn check(f: &Fixture, action: &u32, out: &[u8]) -> Result<(), String> {
    let (want_action, backends) = match f.expect {
        Expect::Untouched => {
            return if *action == XDP_PASS && out == f.frame { Ok(()) } else { Err("expected untouched PASS".into()) };
        }
        Expect::Tunnel { action, backends } => (action, backends),
    };
    if *action != want_action {
        return Err(format!("expected action {}", action_name(want_action)));
    }
    let t = parse_tunnel(out)?;
    let inner = inner_of(&f.frame);
    if t.inner != inner {
        return Err("inner packet changed".into());
    }
    let id = backend_id(t.outer_dst).ok_or(format!("outer destination {} is no backend", t.outer_dst))?;
    if !backends.contains(&id) {
        return Err(format!("went to backend {id}, expected one of {backends:?}"));
    }
    let want_src: IpAddr = if t.outer_dst.is_ipv4() { TUNNEL_V4.into() } else { TUNNEL_V6.into() };
    if t.outer_src != want_src {
        return Err(format!("outer source {}", t.outer_src));
    }
    // Forwarded frames go to the router; frames left to the kernel keep
    // the MACs they arrived with.
    let (dst_mac, src_mac) =
        if want_action == XDP_PASS { (EDGE_MAC, CLIENT_ROUTER_MAC) } else { (ROUTER_MAC, EDGE_MAC) };
    if t.eth_dst != dst_mac || t.eth_src != src_mac {
        return Err(format!("MACs {:02x?} -> {:02x?}", t.eth_src, t.eth_dst));
    }
    let inner_tos = if inner[0] >> 4 == 4 { inner[1] } else { (inner[0] << 4) | (inner[1] >> 4) };
    if t.outer_tos != inner_tos {
        return Err(format!("outer TOS {:#x}, inner {inner_tos:#x}", t.outer_tos));
    }
    if t.outer_dst.is_ipv4() {
        let inner_df = inner[6] & 0x40 != 0;
        let inner_id = u16::from_be_bytes([inner[4], inner[5]]);
        if t.outer_df != inner_df || t.outer_id != inner_id {
            return Err(format!("outer DF {} id {:#x}; inner DF {inner_df} id {inner_id:#x}", t.outer_df, t.outer_id));
        }
    }
    Ok(())
}

/// Backend the program picks for a frame (None if not tunnelled).
fn backend_for(edge: &mut gslb_userspace::sys::steer::Steer, frame: &[u8]) -> Option<u32> {
    let out = run_xdp(edge.program(), frame, None);
    parse_tunnel(&out.frame).ok().and_then(|t| backend_id(t.outer_dst)).filter(|_| out.action == XDP_REDIRECT)
}

#[test]
fn every_fragment_of_a_datagram_reaches_one_backend() {
    in_scratch_netns(|| {
        let mut edge = test_edge();
        for client in 1..=40u8 {
            let mut ip = V4::new(&format!("100.64.1.{client}"), "203.0.113.10", UDP);
            ip.df = false;
            ip.more_fragments = true;
            let first = backend_for(&mut edge, &ethernet(&[], &ip.packet(&udp(3000 + client as u16, 53))));
            ip.fragment_offset = 185;
            let middle = backend_for(&mut edge, &ethernet(&[], &ip.packet(b"middle")));
            ip.more_fragments = false;
            ip.fragment_offset = 370;
            let last = backend_for(&mut edge, &ethernet(&[], &ip.packet(b"last")));
            assert!(first.is_some(), "fragment not steered");
            assert_eq!((first, first), (middle, last), "client {client}: fragments split");
        }
    });
}

#[test]
fn source_ip_affinity_keeps_a_client_and_its_fragments_together() {
    in_scratch_netns(|| {
        let mut edge = test_edge();
        let mut seen = std::collections::BTreeSet::new();
        for client in 1..=30u8 {
            let ip = V4::new(&format!("100.64.2.{client}"), "203.0.113.30", TCP);
            let first = backend_for(&mut edge, &ethernet(&[], &ip.packet(&tcp(1000, 80)))).expect("steered");
            seen.insert(first);
            for port in 1001..1020 {
                let b = backend_for(&mut edge, &ethernet(&[], &ip.packet(&tcp(port, 80))));
                assert_eq!(b, Some(first), "client {client} port {port} moved");
            }
            let mut frag = ip.clone();
            frag.df = false;
            frag.fragment_offset = 50;
            assert_eq!(
                backend_for(&mut edge, &ethernet(&[], &frag.packet(b"tail"))),
                Some(first),
                "client {client}: fragment left its flow"
            );
        }
        assert!(seen.len() > 1, "30 clients all hashed to one backend: {seen:?}");
    });
}

#[test]
fn counters_count() {
    in_scratch_netns(|| {
        let mut edge = test_edge();
        let frame = flow_frame("100.64.0.1".parse().unwrap(), "203.0.113.10".parse().unwrap(), TCP, 999, 80);
        for _ in 0..3 {
            run_xdp(edge.program(), &frame, None);
        }
        run_xdp(edge.program(), &frame[..20], None);
        let other = flow_frame("100.64.0.1".parse().unwrap(), "203.0.113.99".parse().unwrap(), TCP, 999, 80);
        run_xdp(edge.program(), &other, None);

        let g = edge.global_stats().unwrap();
        assert_eq!((g.received, g.forwarded, g.passed, g.parse_failures), (5, 3, 2, 1), "{g:?}");
        let v = edge.vip_stats(0).unwrap();
        let inner_len = frame.len() as u64 - 14;
        assert_eq!((v.packets, v.bytes, v.new_flows, v.flow_misses, v.flow_hits), (3, 3 * inner_len, 1, 1, 2), "{v:?}");
        let chosen = backend_for(&mut edge, &frame).unwrap();
        let b = edge.backend_stats(chosen).unwrap();
        assert_eq!(b.packets, 4, "{b:?}");
        let other_backend = if chosen == 1 { 2 } else { 1 };
        assert_eq!(edge.backend_stats(other_backend).unwrap().packets, 0);
    });
}
