//! `steer`'s choice between plain tunnels and hop lists, through
//! BPF_PROG_TEST_RUN: after a table change, a mid-flow TCP packet of a flow
//! the edge never saw goes to the slot's new owner with the previous owner
//! in a hop list (GUE, byte for byte as documented); SYNs, flows recorded
//! from their SYN, UDP, unchanged slots, backends without second chance,
//! dead previous owners and a zero window all go plain.

use std::net::{IpAddr, SocketAddr};

use gslb_common::{addr_from_ip, hash_flow, proto, BACKEND_DEAD, BACKEND_SECOND_CHANCE};
use gslb_tests::{
    edge::{backend_addr, table_of, test_edge, TUNNEL_V4, TUNNEL_V6, VIPS},
    netns::{in_scratch_netns, narrow_tunnel_path, NARROW_TUNNEL_MTU},
    packet::{ethernet, hop_list_packet, ipv6, l4, tcp_segment, GUE_PORT, TCP, TCP_ACK, TCP_SYN, UDP, V4},
    reference::{check_too_big, parse_tunnel},
    run::{action_name, run_xdp, XDP_REDIRECT, XDP_TX},
};
use gslb_userspace::{decide::plan::EdgeSettings, sys::maps::MapWrites, sys::steer::Steer};

const WINDOW_SECS: u32 = 3600;

/// The test edge with second chance on for every backend.
fn edge() -> Steer {
    let mut steer = test_edge();
    let settings = EdgeSettings {
        stickiness_window_secs: WINDOW_SECS,
        gue_port: GUE_PORT,
        ..EdgeSettings::new(TUNNEL_V4, Some(TUNNEL_V6))
    };
    steer.set_edge_config(&settings).unwrap();
    for &(id, addr) in gslb_tests::edge::BACKENDS {
        steer.set_backend(id, addr.parse().unwrap(), BACKEND_SECOND_CHANCE).unwrap();
    }
    steer
}

/// VIP `index` of the test edge gets a table of `ids`.
fn change_table(steer: &mut Steer, index: usize, ids: &[u32]) {
    let vip = &VIPS[index];
    let limits = gslb_tests::edge::TEST_LIMITS;
    steer.set_vip(vip.matcher(), vip.id, vip.source_ip, &table_of(ids, &limits)).unwrap();
}

/// The owner a table of `ids` gives the flow from `client` to VIP `index`.
fn owner(index: usize, ids: &[u32], client: SocketAddr) -> u32 {
    let vip = &VIPS[index];
    let limits = gslb_tests::edge::TEST_LIMITS;
    let table = table_of(ids, &limits);
    let dst: IpAddr = vip.addr.parse().unwrap();
    let hash = hash_flow(&addr_from_ip(client.ip()), &addr_from_ip(dst), client.port(), vip.port, vip.proto);
    table[(hash as u32 % limits.table_size) as usize]
}

/// A client port whose flow to VIP `index` changes owner from a table of
/// `old` to one of `new` (or keeps it, with `changed` false).
fn client_for(index: usize, old: &[u32], new: &[u32], changed: bool, ip: &str) -> SocketAddr {
    (1000..60_000)
        .map(|port| SocketAddr::new(ip.parse().unwrap(), port))
        .find(|&c| (owner(index, old, c) != owner(index, new, c)) == changed)
        .expect("a client port")
}

fn tcp(client: SocketAddr, vip: &str, port: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let seg = tcp_segment(client.port(), port, flags, 7, 9, payload);
    match client.ip() {
        IpAddr::V4(c) => V4::new(&c.to_string(), vip, TCP).packet(&seg),
        IpAddr::V6(c) => ipv6(&c.to_string(), vip, TCP, &[], &seg, 0),
    }
}

/// The output is a plain tunnel packet to backend `to` carrying `inner`.
fn assert_plain(steer: &mut Steer, inner: &[u8], to: u32, what: &str) {
    let out = run_xdp(steer.program(), &ethernet(&[], inner), None);
    assert!(matches!(out.action, XDP_REDIRECT | XDP_TX), "{what}: {}", action_name(out.action));
    let t = parse_tunnel(&out.frame).unwrap_or_else(|e| panic!("{what}: not a plain tunnel packet: {e}"));
    assert_eq!((t.outer_dst, t.inner.as_slice()), (backend_addr(to), inner), "{what}");
}

/// The output is a hop-list packet to backend `to` listing `hops`, with
/// `inner` after the list: outer header from the edge's tunnel source,
/// protocol UDP to the GUE port from a port of the ephemeral range, UDP
/// length right and checksum zero, then GUE and the list exactly as the
/// documented format has them.
fn assert_hop_list(steer: &mut Steer, inner: &[u8], to: u32, hops: &[u32], what: &str) {
    let out = run_xdp(steer.program(), &ethernet(&[], inner), None);
    assert!(matches!(out.action, XDP_REDIRECT | XDP_TX), "{what}: {}", action_name(out.action));
    let to = backend_addr(to);
    let (ip_len, src, dst, proto) = match to {
        IpAddr::V4(_) => {
            let h = &out.frame[14..34];
            let a = |at: usize| IpAddr::from(<[u8; 4]>::try_from(&h[at..at + 4]).unwrap());
            assert_eq!(gslb_tests::packet::internet_checksum(h), 0, "{what}: outer IPv4 checksum");
            assert_eq!(u16::from_be_bytes([h[2], h[3]]) as usize, out.frame.len() - 14, "{what}: total length");
            (20, a(12), a(16), h[9])
        }
        IpAddr::V6(_) => {
            let h = &out.frame[14..54];
            let a = |at: usize| IpAddr::from(<[u8; 16]>::try_from(&h[at..at + 16]).unwrap());
            assert_eq!(u16::from_be_bytes([h[4], h[5]]) as usize, out.frame.len() - 54, "{what}: payload length");
            (40, a(8), a(24), h[6])
        }
    };
    let source: IpAddr = if to.is_ipv4() { TUNNEL_V4.into() } else { TUNNEL_V6.into() };
    assert_eq!((src, dst, proto), (source, to, proto::UDP), "{what}: outer header");
    let udp = &out.frame[14 + ip_len..];
    assert!(u16::from_be_bytes([udp[0], udp[1]]) >= 0xc000, "{what}: UDP source port");
    assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), GUE_PORT, "{what}: UDP destination port");
    assert_eq!(u16::from_be_bytes([udp[4], udp[5]]) as usize, udp.len(), "{what}: UDP length");
    assert_eq!(udp[6..8], [0, 0], "{what}: UDP checksum");
    let hops: Vec<IpAddr> = hops.iter().map(|&id| backend_addr(id)).collect();
    let want = hop_list_packet(source, to, inner, &hops, 0, GUE_PORT);
    assert_eq!(&udp[8..], &want[ip_len + 8..], "{what}: GUE, hop list and inner packet");
}

#[test]
fn a_mid_flow_packet_after_a_change_carries_the_previous_owner() {
    in_scratch_netns(|| {
        let mut steer = edge();
        let (old, new): (&[u32], &[u32]) = (&[1, 2], &[1, 2, 5]);
        let moved = client_for(0, old, new, true, "100.64.0.1");
        let kept = client_for(0, old, new, false, "100.64.0.1");
        let recorded = client_for(0, old, new, true, "100.64.0.2");
        // A flow that starts before the change: recorded from its SYN.
        assert_plain(&mut steer, &tcp(recorded, "203.0.113.10", 80, TCP_SYN, b""), owner(0, old, recorded), "SYN");
        change_table(&mut steer, 0, new);
        let (was, now) = (owner(0, old, moved), owner(0, new, moved));

        let ack = tcp(moved, "203.0.113.10", 80, TCP_ACK, b"data");
        assert_hop_list(&mut steer, &ack, now, &[was], "first mid-flow packet");
        // Recorded as mid-flow: its next packets carry the list too.
        assert_hop_list(&mut steer, &ack, now, &[was], "second mid-flow packet");
        let fin = tcp(moved, "203.0.113.10", 80, TCP_ACK | 0x01, b"");
        assert_hop_list(&mut steer, &fin, now, &[was], "FIN");

        // Everything else goes as before.
        let syn = tcp(client_for(0, old, new, true, "100.64.0.3"), "203.0.113.10", 80, TCP_SYN, b"");
        let syn_owner = owner(0, new, client_for(0, old, new, true, "100.64.0.3"));
        assert_plain(&mut steer, &syn, syn_owner, "a SYN after the change");
        let ack = tcp(recorded, "203.0.113.10", 80, TCP_ACK, b"data");
        assert_plain(&mut steer, &ack, owner(0, old, recorded), "a flow recorded from its SYN");
        let ack = tcp(kept, "203.0.113.10", 80, TCP_ACK, b"data");
        assert_plain(&mut steer, &ack, owner(0, new, kept), "a slot the change kept");

        let g = steer.global_stats().unwrap();
        assert_eq!(g.hop_list_packets, 3, "{g:?}");
        assert_eq!(steer.backend_stats(now).unwrap().hop_list_packets, 3);
    });
}

#[test]
fn two_changes_list_both_previous_owners_most_recent_first() {
    in_scratch_netns(|| {
        let mut steer = edge();
        let (a, b, c): (&[u32], &[u32], &[u32]) = (&[1, 2], &[1, 2, 5], &[5]);
        let client = (1000..60_000)
            .map(|port| SocketAddr::new("100.64.0.9".parse().unwrap(), port))
            .find(|&cl| {
                let (x, y, z) = (owner(0, a, cl), owner(0, b, cl), owner(0, c, cl));
                x != y && y != z && x != z
            })
            .expect("a flow whose slot changed twice");
        change_table(&mut steer, 0, b);
        change_table(&mut steer, 0, c);
        let ack = tcp(client, "203.0.113.10", 80, TCP_ACK, b"x");
        assert_hop_list(&mut steer, &ack, 5, &[owner(0, b, client), owner(0, a, client)], "two changes");
    });
}

#[test]
fn ipv6_hop_lists_carry_ipv6_hops() {
    in_scratch_netns(|| {
        let mut steer = edge();
        let (old, new): (&[u32], &[u32]) = (&[3, 6], &[3]);
        let moved = client_for(2, old, new, true, "2001:db8:c::1");
        change_table(&mut steer, 2, new);
        let ack = tcp(moved, "2001:db8:f::10", 443, TCP_ACK, b"data");
        assert_hop_list(&mut steer, &ack, 3, &[6], "IPv6");
    });
}

#[test]
fn no_hop_list_without_a_usable_previous_owner_or_with_second_chance_off() {
    in_scratch_netns(|| {
        let (old, new): (&[u32], &[u32]) = (&[1, 2], &[1, 2, 5]);
        let clients: Vec<SocketAddr> =
            (0..5).map(|i| client_for(0, old, new, true, &format!("100.64.1.{i}"))).collect();
        let ack = |c: SocketAddr| tcp(c, "203.0.113.10", 80, TCP_ACK, b"data");

        // The previous owner is dead (health down, or removed).
        let mut steer = edge();
        change_table(&mut steer, 0, new);
        let was = owner(0, old, clients[0]);
        steer.set_backend(was, backend_addr(was), BACKEND_SECOND_CHANCE | BACKEND_DEAD).unwrap();
        assert_plain(&mut steer, &ack(clients[0]), owner(0, new, clients[0]), "a dead previous owner");

        // The previous owner does not understand hop lists.
        let mut steer = edge();
        change_table(&mut steer, 0, new);
        let was = owner(0, old, clients[1]);
        steer.set_backend(was, backend_addr(was), 0).unwrap();
        assert_plain(&mut steer, &ack(clients[1]), owner(0, new, clients[1]), "a previous owner without it");

        // The current owner does not understand hop lists.
        let mut steer = edge();
        change_table(&mut steer, 0, new);
        let now = owner(0, new, clients[2]);
        steer.set_backend(now, backend_addr(now), 0).unwrap();
        assert_plain(&mut steer, &ack(clients[2]), now, "a current owner without it");

        // A zero window: second chance off on this edge.
        let mut steer = edge();
        change_table(&mut steer, 0, new);
        steer.set_edge_config(&EdgeSettings::new(TUNNEL_V4, Some(TUNNEL_V6))).unwrap();
        assert_plain(&mut steer, &ack(clients[3]), owner(0, new, clients[3]), "window 0");
        assert_eq!(steer.global_stats().unwrap().hop_list_packets, 0);
    });
}

#[test]
fn udp_flows_never_carry_a_hop_list() {
    in_scratch_netns(|| {
        let mut steer = edge();
        change_table(&mut steer, 1, &[1, 5]);
        let udp_owner = |c: SocketAddr| owner(1, &[1, 5], c);
        for port in 2000..2020 {
            let client = SocketAddr::new("100.64.0.1".parse().unwrap(), port);
            let packet = V4::new("100.64.0.1", "203.0.113.10", UDP).packet(&l4(UDP, port, 53, b"q"));
            assert_plain(&mut steer, &packet, udp_owner(client), "UDP");
        }
        assert_eq!(steer.global_stats().unwrap().hop_list_packets, 0);
    });
}

/// A hop-list packet is larger than a plain one: one that fits the plain
/// tunnel but not the hop list is answered with the hop list's smaller MTU.
#[test]
fn too_big_answers_account_for_the_hop_list() {
    in_scratch_netns(|| {
        narrow_tunnel_path();
        let mut steer = edge();
        let (old, new): (&[u32], &[u32]) = (&[1, 2], &[1, 2, 5]);
        let moved = client_for(0, old, new, true, "100.64.0.1");
        change_table(&mut steer, 0, new);
        // 1370 bytes: fits a plain IPv4 tunnel (1380), not a hop list (1356).
        let packet = tcp(moved, "203.0.113.10", 80, TCP_ACK, &vec![0x5a; 1370 - 40]);
        let out = run_xdp(steer.program(), &ethernet(&[], &packet), None);
        check_too_big(&ethernet(&[], &packet), &out.frame, (NARROW_TUNNEL_MTU - 44) as u32)
            .unwrap_or_else(|e| panic!("{e}: {}", action_name(out.action)));
        // The same size as a SYN of another flow goes plain: it fits.
        let other = client_for(0, old, new, true, "100.64.0.2");
        let syn = tcp(other, "203.0.113.10", 80, TCP_SYN, &vec![0x5a; 1370 - 40]);
        assert_plain(&mut steer, &syn, owner(0, new, other), "a SYN of the same size");
    });
}
