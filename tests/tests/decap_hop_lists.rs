//! `decap` and hop lists (second chance) through BPF_PROG_TEST_RUN, with
//! real sockets in a scratch namespace: a packet of a connection this host
//! owns is delivered; one it does not own goes on to the next hop with
//! exactly its destination and index changed; SYNs, SYN cookie ACKs and
//! packets with no hop left are delivered; anything not from an edge, or
//! malformed, or naming a hop that is not a configured backend, is never
//! forwarded.

use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};

use gslb_tests::{
    netns::{in_scratch_netns, sh, EDGE_MAC, ROUTER_MAC},
    packet::{
        ethernet, hop_list_packet, internet_checksum, ipv6, tcp_segment, GUE_PORT, TCP, TCP_ACK, TCP_SYN, UDP, V4,
    },
    run::{action_name, run_xdp, Outcome, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX},
};
use gslb_userspace::sys::decap::{Decap, HopLists};

const BACKEND_V4: &str = "198.51.100.1";
const BACKEND_V6: &str = "2001:db8:100::1";
const PEER_V4: &str = "198.51.100.2";
const PEER_V6: &str = "2001:db8:100::2";
const EDGE_V4: &str = "192.0.2.10";
const EDGE_V6: &str = "2001:db8::10";
/// A VIP this namespace serves (on `lo`), as backends do.
const VIP_V4: &str = "203.0.113.10";
const VIP_V6: &str = "2001:db8:f::10";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn decap() -> Decap {
    let hop_lists = HopLists {
        edges: vec![ip(EDGE_V4), ip(EDGE_V6)],
        peers: vec![ip(PEER_V4), ip(PEER_V6), ip("198.51.100.3")],
        gue_port: None,
    };
    Decap::configured(&[ip(BACKEND_V4), ip(BACKEND_V6)], &hop_lists).expect("load decap")
}

/// A listener on the VIP and one established connection to it (from the
/// VIP itself: both ends are local).
struct Connection {
    _listener: TcpListener,
    client: TcpStream,
    server: TcpStream,
}

impl Connection {
    fn open(vip: &str) -> Connection {
        let listener = TcpListener::bind(SocketAddr::new(ip(vip), 80)).expect("listen on the VIP");
        let client = TcpStream::connect(listener.local_addr().unwrap()).expect("connect to the VIP");
        let (server, _) = listener.accept().unwrap();
        Connection { _listener: listener, client, server }
    }

    /// Closes the server's end first, then the client's: the server's end
    /// stays in TIME_WAIT.
    fn close_server_first(mut self) {
        drop(self.server);
        let _ = self.client.read(&mut [0; 16]);
        drop(self.client);
    }

    /// The client's packet of this connection (an ACK with data), as an IP
    /// packet.
    fn packet(&self, flags: u8) -> Vec<u8> {
        let (src, dst) = (self.client.local_addr().unwrap(), self.client.peer_addr().unwrap());
        inner(src, dst, flags)
    }
}

fn inner(src: SocketAddr, dst: SocketAddr, flags: u8) -> Vec<u8> {
    let seg = tcp_segment(src.port(), dst.port(), flags, 1000, 2000, b"data");
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => V4::new(&s.to_string(), &d.to_string(), TCP).packet(&seg),
        (IpAddr::V6(s), IpAddr::V6(d)) => ipv6(&s.to_string(), &d.to_string(), TCP, &[], &seg, 0),
        _ => unreachable!(),
    }
}

/// Addresses on `lo` a backend would have: the VIPs.
fn serve_vips() {
    sh(&format!("ip addr add {VIP_V4}/32 dev lo && ip addr add {VIP_V6}/128 dev lo nodad"));
}

fn hop_list_frame(v6: bool, inner: &[u8], hops: &[&str], next: u8) -> Vec<u8> {
    let (src, dst) = if v6 { (EDGE_V6, BACKEND_V6) } else { (EDGE_V4, BACKEND_V4) };
    let hops: Vec<IpAddr> = hops.iter().map(|h| ip(h)).collect();
    ethernet(&[], &hop_list_packet(ip(src), ip(dst), inner, &hops, next, GUE_PORT))
}

/// What a hop-list frame (untagged) from an edge looks like when sent on:
/// the MACs of the route to the backends, the outer destination its next
/// hop, the IPv4 checksum redone, the UDP checksum zero, the next index
/// one further. `None` if it may not be sent on: not from an edge, not to
/// this backend, malformed, no hop left, a hop that is not a peer.
fn forwarded(input: &[u8]) -> Option<Vec<u8>> {
    let v6 = input.get(12..14)? == [0x86, 0xdd];
    if !v6 && input.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let (src, dst, proto, udp_at) = if v6 {
        let h = input.get(14..54)?;
        let a = |at: usize| IpAddr::from(<[u8; 16]>::try_from(&h[at..at + 16]).unwrap());
        (a(8), a(24), h[6], 54)
    } else {
        let h = input.get(14..34)?;
        let a = |at: usize| IpAddr::from(<[u8; 4]>::try_from(&h[at..at + 4]).unwrap());
        let fragment = u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0;
        if h[0] != 0x45 || fragment {
            return None;
        }
        (a(12), a(16), h[9], 34)
    };
    let (addr_len, words) = if v6 { (16, 9) } else { (4, 3) };
    let udp = input.get(udp_at..udp_at + 8 + 8 + 2 * addr_len)?;
    let edges = [ip(EDGE_V4), ip(EDGE_V6)];
    let ours = [ip(BACKEND_V4), ip(BACKEND_V6)];
    let peers = [ip(PEER_V4), ip(PEER_V6), ip("198.51.100.3")];
    let gue = &udp[8..];
    let well_formed = proto == UDP
        && udp[2..4] == GUE_PORT.to_be_bytes()
        && edges.contains(&src)
        && ours.contains(&dst)
        && gue[0] == words
        && (gue[1] == 4 || gue[1] == 41)
        && gue[2..6] == [0, 0, 0x47, 0x53]
        && gue[6] <= 2
        && gue[7] < gue[6];
    if !well_formed {
        return None;
    }
    let at = 8 + addr_len * gue[7] as usize;
    let hop = match addr_len {
        4 => IpAddr::from(<[u8; 4]>::try_from(&gue[at..at + 4]).unwrap()),
        _ => IpAddr::from(<[u8; 16]>::try_from(&gue[at..at + 16]).unwrap()),
    };
    if !peers.contains(&hop) {
        return None;
    }
    let mut want = input.to_vec();
    want[..6].copy_from_slice(&ROUTER_MAC);
    want[6..12].copy_from_slice(&EDGE_MAC);
    let dst_at = if v6 { 14 + 24 } else { 14 + 16 };
    want[dst_at..dst_at + addr_len].copy_from_slice(&gue[at..at + addr_len]);
    if !v6 {
        want[24..26].copy_from_slice(&[0, 0]);
        let check = internet_checksum(&want[14..34]);
        want[24..26].copy_from_slice(&check.to_be_bytes());
    }
    want[udp_at + 6..udp_at + 8].copy_from_slice(&[0, 0]);
    want[udp_at + 8 + 7] += 1;
    Some(want)
}

fn assert_delivered(out: &Outcome, inner: &[u8], what: &str) {
    assert_eq!(out.action, XDP_PASS, "{what}: {}", action_name(out.action));
    assert_eq!(&out.frame[14..], inner, "{what}: not the inner packet");
    let ether_type = if inner[0] >> 4 == 6 { [0x86, 0xdd] } else { [0x08, 0x00] };
    assert_eq!(out.frame[12..14], ether_type, "{what}: ethertype");
}

#[test]
fn a_connection_this_host_owns_is_delivered_whatever_its_list() {
    in_scratch_netns(|| {
        serve_vips();
        let mut d = decap();
        for (v6, vip, peer) in [(false, VIP_V4, PEER_V4), (true, VIP_V6, PEER_V6)] {
            let conn = Connection::open(vip);
            let packet = conn.packet(TCP_ACK);
            for next in [0, 1] {
                let out = run_xdp(d.program(), &hop_list_frame(v6, &packet, &[peer], next), None);
                assert_delivered(&out, &packet, &format!("owned, v6={v6}, next={next}"));
            }
            // A connection in TIME_WAIT is still this host's: the side
            // that closes first keeps it there.
            let (local, peer_addr) = (conn.client.local_addr().unwrap(), conn.client.peer_addr().unwrap());
            conn.close_server_first();
            let out = run_xdp(d.program(), &hop_list_frame(v6, &inner(local, peer_addr, TCP_ACK), &[peer], 0), None);
            assert_delivered(&out, &inner(local, peer_addr, TCP_ACK), "TIME_WAIT");
        }
        let s = d.stats().unwrap();
        assert_eq!((s.hop_list_delivered, s.hop_list_forwarded, s.decapsulated), (6, 0, 6), "{s:?}");
    });
}

#[test]
fn a_connection_it_does_not_own_goes_to_the_next_hop_with_only_that_changed() {
    in_scratch_netns(|| {
        serve_vips();
        let mut d = decap();
        // A listener, but no connection from this client: not owned.
        let _listener_v4 = TcpListener::bind(SocketAddr::new(ip(VIP_V4), 80)).unwrap();
        let _listener_v6 = TcpListener::bind(SocketAddr::new(ip(VIP_V6), 80)).unwrap();
        for (v6, vip, client, hops) in [
            (false, VIP_V4, "100.64.0.1", [PEER_V4, "198.51.100.3"]),
            (true, VIP_V6, "2001:db8:c::1", [PEER_V6, PEER_V6]),
        ] {
            let packet =
                inner(SocketAddr::new(ip(client), 40000), SocketAddr::new(ip(vip), 80), TCP_ACK | 0x08 /* PSH */);
            let input = hop_list_frame(v6, &packet, &hops, 0);
            let out = run_xdp(d.program(), &input, None);
            assert_eq!(out.action, XDP_REDIRECT, "v6={v6}: {}", action_name(out.action));
            let want = forwarded(&input).expect("a well-formed hop list");
            assert_eq!(out.frame, want, "v6={v6}: the forwarded frame");
            if !v6 {
                assert_eq!(internet_checksum(&out.frame[14..34]), 0, "outer IPv4 checksum");
            }

            // At its last hop, with no hop left: delivered as the last resort.
            let last = hop_list_frame(v6, &packet, &hops, 2);
            assert_delivered(&run_xdp(d.program(), &last, None), &packet, "last resort");
        }
        let s = d.stats().unwrap();
        assert_eq!((s.hop_list_forwarded, s.hop_list_last_resort, s.hop_list_delivered), (2, 2, 0), "{s:?}");
    });
}

#[test]
fn syns_and_packets_other_than_tcp_are_delivered() {
    in_scratch_netns(|| {
        serve_vips();
        let mut d = decap();
        let _listener = TcpListener::bind(SocketAddr::new(ip(VIP_V4), 80)).unwrap();
        let client = SocketAddr::new(ip("100.64.0.1"), 40001);
        let syn = inner(client, SocketAddr::new(ip(VIP_V4), 80), TCP_SYN);
        assert_delivered(&run_xdp(d.program(), &hop_list_frame(false, &syn, &[PEER_V4], 0), None), &syn, "SYN");
        let udp = V4::new("100.64.0.1", VIP_V4, UDP).packet(&gslb_tests::packet::l4(UDP, 40001, 53, b"q"));
        assert_delivered(&run_xdp(d.program(), &hop_list_frame(false, &udp, &[PEER_V4], 0), None), &udp, "UDP");
        // IPv4 inside an IPv6 tunnel.
        let ack = inner(client, SocketAddr::new(ip(VIP_V4), 80), TCP_ACK);
        let out = run_xdp(d.program(), &hop_list_frame(true, &ack, &[PEER_V6], 0), None);
        assert_eq!(out.action, XDP_REDIRECT, "an unowned IPv4 flow in an IPv6 tunnel goes on");
    });
}

#[test]
fn a_syn_cookie_ack_is_delivered_to_the_listener_that_sent_the_cookie() {
    in_scratch_netns(|| {
        serve_vips();
        sh("sysctl -qw net.ipv4.tcp_syncookies=2");
        let mut d = decap();
        // With syncookies=2 every SYN is answered with a cookie and no
        // state: a connection's handshake completes on its ACK alone.
        let listener = TcpListener::bind(SocketAddr::new(ip(VIP_V4), 80)).unwrap();
        let (isn, cookie) = syn_cookie_exchange(listener.local_addr().unwrap());
        let client = SocketAddr::new(ip("100.64.0.7"), 41000);
        let seg = tcp_segment(client.port(), 80, TCP_ACK, isn.wrapping_add(1), cookie.wrapping_add(1), b"");
        let ack = V4::new("100.64.0.7", VIP_V4, TCP).packet(&seg);
        assert_delivered(&run_xdp(d.program(), &hop_list_frame(false, &ack, &[PEER_V4], 0), None), &ack, "cookie ACK");
        // The same ACK with a wrong cookie is not this host's.
        let seg = tcp_segment(client.port(), 80, TCP_ACK, isn.wrapping_add(1), cookie.wrapping_add(2), b"");
        let forged = V4::new("100.64.0.7", VIP_V4, TCP).packet(&seg);
        let out = run_xdp(d.program(), &hop_list_frame(false, &forged, &[PEER_V4], 0), None);
        assert_eq!(out.action, XDP_REDIRECT, "a wrong cookie was taken: {}", action_name(out.action));
    });
}

/// Sends a SYN from 100.64.0.7:41000 (an address on `lo`, with no socket)
/// to `listener` through a raw socket and reads the SYN-ACK: returns the
/// SYN's sequence number and the cookie (the SYN-ACK's sequence number).
fn syn_cookie_exchange(listener: SocketAddr) -> (u32, u32) {
    sh("ip addr add 100.64.0.7/32 dev lo");
    // The kernel would answer the SYN-ACK with a reset, which is harmless:
    // a cookie needs no state.
    let isn = 0x1234_5678u32;
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    let mut seg = tcp_segment(41000, listener.port(), TCP_SYN, isn, 0, b"");
    // MSS option keeps the cookie's MSS table happy.
    seg[12] = 0x60;
    seg.extend([2, 4, 0x05, 0xb4]);
    let src = [100u8, 64, 0, 7];
    let IpAddr::V4(dst) = listener.ip() else { unreachable!() };
    let mut pseudo = Vec::new();
    pseudo.extend(src);
    pseudo.extend(dst.octets());
    pseudo.extend([0, TCP]);
    pseudo.extend((seg.len() as u16).to_be_bytes());
    pseudo.extend(&seg);
    let check = internet_checksum(&pseudo);
    seg[16..18].copy_from_slice(&check.to_be_bytes());
    // Our own IP header (IP_HDRINCL): the source must be 100.64.0.7, which
    // the checksum covers, not the address routing would pick.
    let on: libc::c_int = 1;
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_HDRINCL,
            &on as *const _ as *const _,
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    let mut outer = V4::new("100.64.0.7", &dst.to_string(), TCP);
    outer.tos = 0;
    let seg = outer.packet(&seg);
    let to = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(dst.octets()) },
        sin_zero: [0; 8],
    };
    let sent = unsafe {
        libc::sendto(
            fd,
            seg.as_ptr() as *const _,
            seg.len(),
            0,
            &to as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        )
    };
    assert_eq!(sent, seg.len() as isize, "sending the SYN: {}", std::io::Error::last_os_error());
    // The raw socket sees every TCP packet to this host: find the SYN-ACK.
    let timeout = libc::timeval { tv_sec: 2, tv_usec: 0 };
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &timeout as *const _ as *const _,
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    let mut buf = [0u8; 1500];
    for _ in 0..50 {
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut _, buf.len(), 0) };
        assert!(n > 0, "no SYN-ACK: {}", std::io::Error::last_os_error());
        let ihl = (buf[0] & 0xf) as usize * 4;
        let t = &buf[ihl..n as usize];
        let (sport, dport, flags) = (u16::from_be_bytes([t[0], t[1]]), u16::from_be_bytes([t[2], t[3]]), t[13]);
        if sport == listener.port() && dport == 41000 && flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
            unsafe { libc::close(fd) };
            return (isn, u32::from_be_bytes([t[4], t[5], t[6], t[7]]));
        }
    }
    panic!("no SYN-ACK among 50 packets");
}

#[test]
fn hop_lists_from_anyone_but_an_edge_pass_untouched() {
    in_scratch_netns(|| {
        let mut d = decap();
        let packet = inner(SocketAddr::new(ip("100.64.0.1"), 1), SocketAddr::new(ip(VIP_V4), 80), TCP_ACK);
        for src in ["192.0.2.99", PEER_V4] {
            let frame = ethernet(&[], &hop_list_packet(ip(src), ip(BACKEND_V4), &packet, &[ip(PEER_V4)], 0, GUE_PORT));
            let out = run_xdp(d.program(), &frame, None);
            assert_eq!((out.action, &out.frame), (XDP_PASS, &frame), "from {src}: changed");
        }
        // Without any edge configured, every hop list is refused.
        let mut bare = Decap::configured(&[ip(BACKEND_V4)], &HopLists::default()).unwrap();
        let frame = hop_list_frame(false, &packet, &[PEER_V4], 0);
        let out = run_xdp(bare.program(), &frame, None);
        assert_eq!((out.action, &out.frame), (XDP_PASS, &frame));
        assert_eq!(d.stats().unwrap().hop_list_refused, 2);
        assert_eq!(bare.stats().unwrap().hop_list_refused, 1);
    });
}

#[test]
fn malformed_hop_lists_are_dropped_and_never_forwarded() {
    in_scratch_netns(|| {
        let mut d = decap();
        let packet = inner(SocketAddr::new(ip("100.64.0.1"), 1), SocketAddr::new(ip(VIP_V4), 80), TCP_ACK);
        let good = hop_list_frame(false, &packet, &[PEER_V4], 0);
        let udp_at = 14 + 20;
        let gue_at = udp_at + 8;
        let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
        let mut edit = |name: &str, at: usize, value: u8| {
            let mut f = good.clone();
            f[at] = value;
            cases.push((name.to_string(), f));
        };
        edit("GUE version 1", gue_at, 0x40 | 3);
        edit("GUE control message", gue_at, 0x20 | 3);
        edit("wrong private length", gue_at, 2);
        edit("inner protocol UDP", gue_at + 1, UDP);
        edit("GUE flags", gue_at + 2, 0x80);
        edit("another private type", gue_at + 4, 0x99);
        edit("three hops", gue_at + 6, 3);
        edit("next past the count", gue_at + 7, 2);
        edit("a hop that is no backend", gue_at + 8 + 3, 99);
        let zero_hop = hop_list_frame(false, &packet, &[], 0);
        let mut zero_count_forward = zero_hop.clone();
        zero_count_forward[gue_at + 6] = 1; // count 1, but the hop is 0.0.0.0
        cases.push(("a zero hop".into(), zero_count_forward));
        let n = cases.len() as u64;
        for (name, frame) in &cases {
            let out = run_xdp(d.program(), frame, None);
            assert_eq!(out.action, XDP_DROP, "{name}: {}", action_name(out.action));
        }
        assert_eq!(d.stats().unwrap().hop_list_malformed, n);

        // Every cut of a good packet: never forwarded, never aborted.
        for len in 14..good.len() {
            let out = run_xdp(d.program(), &good[..len], None);
            assert!(matches!(out.action, XDP_PASS | XDP_DROP), "cut at {len}: {}", action_name(out.action));
        }
        assert_eq!(d.stats().unwrap().hop_list_forwarded, 0);
    });
}

/// The rules every `decap` outcome obeys, whatever the frame: never
/// aborted; sent on only as `forwarded` says; handed to the kernel either
/// untouched or as the inner packet of a tunnel to this backend; dropped
/// only if it is a hop-list packet from an edge to this backend.
fn judge(input: &[u8], out: &Outcome) -> Result<(), String> {
    let outer_v4 = input.get(12..14) == Some(&[0x08, 0x00]);
    let ip_len = if outer_v4 { (input.get(14).copied().unwrap_or(0) & 0xf) as usize * 4 } else { 40 };
    let hop_list_len = if outer_v4 { 8 + 4 + 4 + 8 } else { 8 + 4 + 4 + 32 };
    let dst = |v4: bool| -> Option<IpAddr> {
        if v4 {
            Some(IpAddr::from(<[u8; 4]>::try_from(input.get(30..34)?).unwrap()))
        } else {
            Some(IpAddr::from(<[u8; 16]>::try_from(input.get(38..54)?).unwrap()))
        }
    };
    let to_us = dst(outer_v4).is_some_and(|d| d == ip(BACKEND_V4) || d == ip(BACKEND_V6));
    match out.action {
        XDP_PASS if out.frame == input => Ok(()),
        XDP_PASS => {
            let stripped = [ip_len, ip_len + hop_list_len]
                .iter()
                .any(|&strip| input.get(14 + strip..) == Some(&out.frame[14..]) && out.frame[..12] == input[..12]);
            if stripped && to_us {
                Ok(())
            } else {
                Err("changed a frame it was not to strip".into())
            }
        }
        XDP_REDIRECT | XDP_TX => match forwarded(input) {
            Some(want) if want == out.frame => Ok(()),
            Some(_) => Err("sent on with other changes than the hop".into()),
            None => Err("sent on a frame that may not be".into()),
        },
        XDP_DROP => {
            let udp_at = 14 + ip_len;
            let gue = input.get(udp_at + 2..udp_at + 4) == Some(&GUE_PORT.to_be_bytes());
            let src = if outer_v4 {
                input.get(26..30).map(|s| IpAddr::from(<[u8; 4]>::try_from(s).unwrap()))
            } else {
                input.get(22..38).map(|s| IpAddr::from(<[u8; 16]>::try_from(s).unwrap()))
            };
            let from_edge = src.is_some_and(|s| s == ip(EDGE_V4) || s == ip(EDGE_V6));
            if gue && to_us && from_edge {
                Ok(())
            } else {
                Err("dropped a frame that is not a hop-list packet from an edge".into())
            }
        }
        a => Err(format!("action {}", action_name(a))),
    }
}

#[test]
fn random_and_mutated_frames_are_never_relayed() {
    let runs = gslb_tests::scale::sized(200_000, 2_000_000);
    let seed = gslb_tests::scale::fuzz_seed(&format!("decap fuzz: {runs} frames"));
    in_scratch_netns(move || {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        serve_vips();
        let mut d = decap();
        let conn = Connection::open(VIP_V4);
        let owned = conn.packet(TCP_ACK);
        let stranger = inner(SocketAddr::new(ip("100.64.0.1"), 7), SocketAddr::new(ip(VIP_V4), 80), TCP_ACK);
        let stranger6 = inner(SocketAddr::new(ip("2001:db8:c::1"), 7), SocketAddr::new(ip(VIP_V6), 80), TCP_ACK);
        let seeds = [
            hop_list_frame(false, &owned, &[PEER_V4], 0),
            hop_list_frame(false, &stranger, &[PEER_V4, "198.51.100.3"], 0),
            hop_list_frame(false, &stranger, &[PEER_V4, "198.51.100.3"], 1),
            hop_list_frame(true, &stranger6, &[PEER_V6], 0),
            hop_list_frame(true, &stranger, &[PEER_V6], 0),
            ethernet(&[], &{
                let mut outer = V4::new(EDGE_V4, BACKEND_V4, 4);
                outer.tos = 0;
                outer.packet(&stranger)
            }),
        ];
        let mut rng = StdRng::seed_from_u64(seed);
        let mut seen = [0u64; 5];
        for i in 0..runs {
            let mut f = seeds[rng.gen_range(0..seeds.len())].clone();
            // Mostly the headers; sometimes cut.
            for _ in 0..rng.gen_range(0..4) {
                let end = if rng.gen_bool(0.9) { f.len().min(110) } else { f.len() };
                let at = rng.gen_range(12..end);
                f[at] = rng.gen();
            }
            if rng.gen_bool(0.1) {
                f.truncate(rng.gen_range(14..f.len()));
            }
            let out = run_xdp(d.program(), &f, None);
            if let Err(why) = judge(&f, &out) {
                panic!("frame {i} (replay with GSLB_FUZZ_SEED={seed}): {why}\n  {f:02x?}\n  -> {:02x?}", out.frame);
            }
            seen[out.action.min(4) as usize] += 1;
        }
        let s = d.stats().unwrap();
        println!("actions: pass {}, drop {}, redirect {}; {s:?}", seen[2], seen[1], seen[4]);
        // Every outcome must be reached for the test to mean anything.
        assert!(seen[4] > runs / 20 && seen[1] > runs / 50, "{seen:?}");
        assert!(s.hop_list_delivered > 0 && s.hop_list_last_resort > 0 && s.hop_list_refused > 0, "{s:?}");
        assert!(s.hop_list_malformed > 0 && s.decapsulated > 0, "{s:?}");
    });
}

/// With the next hop `gslb decap` resolved for a peer, a packet goes on
/// without a route lookup, so without forwarding enabled on the backend;
/// a peer with no resolved next hop and no usable route gets the packet
/// delivered here as the last resort.
#[test]
fn a_resolved_peer_next_hop_needs_no_forwarding() {
    in_scratch_netns(|| {
        sh("sysctl -qw net.ipv4.conf.all.forwarding=0 net.ipv6.conf.all.forwarding=0");
        sh("sysctl -qw net.ipv4.conf.lo.forwarding=0 net.ipv4.conf.edge0.forwarding=0");
        let mut d = decap();
        let hop = gslb_common::NextHop {
            ifindex: gslb_tests::netns::ifindex(gslb_tests::netns::EDGE_IF),
            mtu: 1500,
            flags: gslb_common::NEXT_HOP_VALID,
            dst_mac: [2, 0, 0, 0, 0, 0x77],
            src_mac: EDGE_MAC,
        };
        // PEER_V4 is the first peer `decap()` adds: index 1.
        d.next_hops().set(1, hop).unwrap();
        let packet = inner(SocketAddr::new(ip("100.64.0.1"), 5), SocketAddr::new(ip(VIP_V4), 80), TCP_ACK);
        let input = hop_list_frame(false, &packet, &[PEER_V4], 0);
        let out = run_xdp(d.program(), &input, None);
        assert_eq!(out.action, XDP_REDIRECT, "{}", action_name(out.action));
        let mut want = forwarded(&input).unwrap();
        want[..6].copy_from_slice(&hop.dst_mac);
        assert_eq!(out.frame, want, "sent by the resolved next hop");

        // 198.51.100.3: no resolved next hop, and the route lookup is
        // refused with forwarding off: delivered here.
        let input = hop_list_frame(false, &packet, &["198.51.100.3"], 0);
        assert_delivered(&run_xdp(d.program(), &input, None), &packet, "unroutable");
        let s = d.stats().unwrap();
        assert_eq!((s.hop_list_forwarded, s.hop_list_unroutable, s.hop_list_last_resort), (1, 1, 1), "{s:?}");
    });
}

/// An ICMP error about a connection (a router's "fragmentation needed" to
/// the VIP, quoting the backend's reply) follows the same path as the
/// connection's packets: delivered where the connection is, sent on where
/// it is not.
#[test]
fn icmp_errors_follow_the_connection_they_quote() {
    in_scratch_netns(|| {
        serve_vips();
        let mut d = decap();
        let conn = Connection::open(VIP_V4);
        let client = conn.client.local_addr().unwrap();
        let quote = |client: SocketAddr| {
            let seg = tcp_segment(80, client.port(), TCP_ACK, 1, 1, &[0; 8]);
            V4::new(VIP_V4, &client.ip().to_string(), TCP).packet(&seg)
        };
        let error = |client: SocketAddr| {
            gslb_tests::packet::icmp4_error("100.64.9.9", VIP_V4, 3, 4, [0, 0, 5, 0], &quote(client))
        };
        let owned = error(client);
        assert_delivered(&run_xdp(d.program(), &hop_list_frame(false, &owned, &[PEER_V4], 0), None), &owned, "owned");
        let stranger = error(SocketAddr::new(ip("100.64.0.1"), 7));
        let out = run_xdp(d.program(), &hop_list_frame(false, &stranger, &[PEER_V4], 0), None);
        assert_eq!(out.action, XDP_REDIRECT, "an error about another host's connection: {}", action_name(out.action));
    });
}
