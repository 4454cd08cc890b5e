//! Hostile input: `steer` under BPF_PROG_TEST_RUN on truncated, random and
//! mutated frames. Whatever arrives, it never aborts; it tunnels only a
//! complete VIP packet (or an ICMP error about a VIP flow), unchanged, and
//! only to a configured backend from the edge's own tunnel address; it
//! answers only a VIP packet too big for the tunnel; it drops only such
//! packets; everything else it leaves untouched.
//!
//! The random run prints its seed; `GSLB_FUZZ_SEED=N` replays it. A frame
//! that breaks a rule is written to `target/fuzz-failures/`; copy it into
//! `tests/fixtures/steer-regressions/` (one hex frame per file) and it is
//! judged first on every later run.

use std::net::IpAddr;
use std::path::Path;

use gslb_tests::{
    edge::{backend_id, ref_vips, test_edge, TUNNEL_V4, TUNNEL_V6},
    netns::{in_scratch_netns, narrow_tunnel_path, NARROW_TUNNEL_MTU},
    packet::{
        ethernet, flow_frame, icmp4_error, icmp6_error, ipv6, ipv6_fragment_header, ipv6_options_header, l4,
        sized_packet, TCP, UDP, V4,
    },
    reference::{check_too_big, complete_vip_packet, parse_tunnel, vip_icmp_error, RefVip},
    run::{action_name, run_xdp, Outcome, XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX},
    scale::sized,
};
use rand::{rngs::StdRng, Rng, SeedableRng};

const ETH_HLEN: usize = 14;
/// The scratch edge's MTU toward the backends, so large seeds exercise the
/// too-big path: inner packets up to 1380 (IPv4 tunnel) or 1360 (IPv6).
const TUNNEL_MTU: usize = NARROW_TUNNEL_MTU;
/// Backend 4 sits behind a next hop with no neighbour entry: its tunnel
/// packets go to the kernel (XDP_PASS, encapsulated) to resolve it.
const UNRESOLVED_BACKEND: u32 = 4;

/// Frames `steer` acts on, of every shape the data-plane fixtures cover.
fn seeds() -> Vec<Vec<u8>> {
    let mut opts = V4::new("100.64.0.1", "203.0.113.10", TCP);
    opts.options = vec![1; 12];
    let mut frag = V4::new("100.64.0.1", "203.0.113.10", UDP);
    frag.more_fragments = true;
    let reply = V4::new("203.0.113.10", "100.64.0.1", TCP).packet(&l4(TCP, 80, 40000, &[0; 64]));
    let reply_v6 = ipv6("2001:db8:f::10", "2001:db8:c::1", UDP, &[], &l4(UDP, 53, 40000, &[0; 64]), 0);
    vec![
        flow_frame("100.64.0.1".parse().unwrap(), "203.0.113.10".parse().unwrap(), TCP, 1, 80),
        flow_frame("100.64.0.1".parse().unwrap(), "203.0.113.10".parse().unwrap(), UDP, 1, 53),
        flow_frame("2001:db8:c::1".parse().unwrap(), "2001:db8:f::10".parse().unwrap(), TCP, 1, 443),
        flow_frame("100.64.0.1".parse().unwrap(), "203.0.113.20".parse().unwrap(), TCP, 1, 9999),
        flow_frame("100.64.0.1".parse().unwrap(), "203.0.113.30".parse().unwrap(), TCP, 1, 80),
        flow_frame("100.64.0.1".parse().unwrap(), "203.0.113.40".parse().unwrap(), TCP, 1, 80),
        flow_frame("100.64.0.1".parse().unwrap(), "203.0.113.50".parse().unwrap(), TCP, 1, 80),
        ethernet(&[1, 2], &opts.packet(&l4(TCP, 1, 80, b"x"))),
        ethernet(&[], &frag.packet(&l4(UDP, 1, 53, b"x"))),
        ethernet(
            &[3],
            &ipv6(
                "2001:db8:c::1",
                "2001:db8:f::10",
                UDP,
                &[(0, ipv6_options_header()), (44, ipv6_fragment_header(0, false, 1))],
                &l4(UDP, 1, 53, b"x"),
                0,
            ),
        ),
        ethernet(&[], &icmp4_error("100.64.9.9", "203.0.113.10", 3, 4, [0, 0, 5, 0], &reply[..28])),
        ethernet(&[7], &icmp6_error("2001:db8:9::9", "2001:db8:f::10", 2, 0, [0, 0, 5, 0], &reply_v6)),
        // Around the tunnel MTU: fits, too big with DF, too big without.
        ethernet(&[], &sized_packet("100.64.0.1", "203.0.113.10", TCP, (1, 80), 1380, true)),
        ethernet(&[], &sized_packet("100.64.0.1", "203.0.113.10", TCP, (1, 80), 1381, true)),
        ethernet(&[], &sized_packet("100.64.0.1", "203.0.113.10", UDP, (1, 53), 1381, false)),
        ethernet(&[], &sized_packet("2001:db8:c::1", "2001:db8:f::10", TCP, (1, 443), 1361, true)),
    ]
}

/// The tunnel source of an outer address's family.
fn tunnel_source(outer: IpAddr) -> IpAddr {
    if outer.is_ipv4() {
        TUNNEL_V4.into()
    } else {
        TUNNEL_V6.into()
    }
}

/// What `steer` may tunnel for `input`: a complete VIP packet or an ICMP
/// error about a VIP flow.
fn steerable(input: &[u8], vips: &[RefVip]) -> Option<Vec<u8>> {
    complete_vip_packet(input, vips).or_else(|| vip_icmp_error(input, vips))
}

/// The rules every outcome must obey.
fn judge(input: &[u8], out: &Outcome, vips: &[RefVip]) -> Result<(), String> {
    match out.action {
        XDP_PASS if out.frame == input => Ok(()),
        XDP_PASS | XDP_TX | XDP_REDIRECT => {
            if let Ok(t) = parse_tunnel(&out.frame) {
                let inner = steerable(input, vips).ok_or("tunneled a frame that is not a VIP packet")?;
                if t.inner != inner {
                    return Err("tunneled with a changed inner packet".into());
                }
                let backend = backend_id(t.outer_dst).ok_or(format!("tunneled to {}, not a backend", t.outer_dst))?;
                if t.outer_src != tunnel_source(t.outer_dst) {
                    return Err(format!("tunneled from {}", t.outer_src));
                }
                if out.action == XDP_PASS && backend != UNRESOLVED_BACKEND {
                    return Err("a tunnel packet to a resolved backend was handed to the kernel".into());
                }
                return Ok(());
            }
            if out.action == XDP_PASS {
                return Err("PASS with a changed frame".into());
            }
            // Otherwise it must be the answer to a packet too big for the
            // tunnel (IPv4 or IPv6 tunnel, by the backend chosen).
            complete_vip_packet(input, vips).ok_or("answered a frame that is not a VIP packet")?;
            check_too_big(input, &out.frame, (TUNNEL_MTU - 20) as u32)
                .or_else(|_| check_too_big(input, &out.frame, (TUNNEL_MTU - 40) as u32))
        }
        XDP_DROP => match steerable(input, vips) {
            Some(packet) if packet.len() > TUNNEL_MTU - 40 => Ok(()),
            _ => Err("dropped a frame that is not a VIP packet too big for the tunnel".into()),
        },
        XDP_ABORTED => Err("ABORTED".into()),
        a => Err(format!("unknown action {a}")),
    }
}

fn hex(frame: &[u8]) -> String {
    frame.iter().map(|b| format!("{b:02x}")).collect()
}

/// Frames that once broke a rule (`tests/fixtures/steer-regressions/*`).
fn regressions() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/steer-regressions");
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut found: Vec<_> = entries
        .map(|e| e.unwrap().path())
        .filter(|path| path.extension().is_some_and(|x| x == "hex"))
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let text: String = text.split_whitespace().collect();
            let frame = (0..text.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex frame"))
                .collect();
            (path.display().to_string(), frame)
        })
        .collect();
    found.sort();
    found
}

/// Saves a failing frame for replay and says how to keep it.
fn record_failure(seed: u64, i: u64, frame: &[u8], why: &str) -> ! {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-failures");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{seed}-{i}.hex"));
    let _ = std::fs::write(&path, hex(frame));
    panic!(
        "frame {i} of seed {seed}: {why}\n  saved to {} (copy it into tests/fixtures/steer-regressions/)\n  \
         replay: GSLB_FUZZ_SEED={seed}\n  {frame:02x?}",
        path.display()
    );
}

#[test]
fn every_truncation_passes_untouched() {
    in_scratch_netns(|| {
        let mut edge = test_edge();
        let vips = ref_vips();
        for seed in seeds() {
            let whole = run_xdp(edge.program(), &seed, None);
            assert!(whole.action != XDP_PASS || whole.frame != seed, "seed is not acted on: {seed:02x?}");
            judge(&seed, &whole, &vips).unwrap();
            // The kernel hands XDP no frame shorter than an Ethernet header
            // (and BPF_PROG_TEST_RUN refuses one), so cuts start there.
            // Long seeds are cut at their ends only.
            for len in (ETH_HLEN..seed.len()).filter(|&l| l < 200 || l > seed.len() - 50) {
                let cut = &seed[..len];
                let out = run_xdp(edge.program(), cut, None);
                assert!(
                    out.action == XDP_PASS && out.frame == cut,
                    "cut at {len} of {}: {} ({seed:02x?})",
                    seed.len(),
                    action_name(out.action)
                );
            }
        }
        let g = edge.global_stats().unwrap();
        assert!(g.parse_failures > 0, "{g:?}");
    });
}

#[test]
fn random_and_mutated_frames_are_never_misrouted() {
    let runs = sized(200_000, 2_000_000);
    let seed = gslb_tests::scale::fuzz_seed(&format!("steer fuzz: {runs} frames"));
    in_scratch_netns(move || {
        narrow_tunnel_path();
        let mut edge = test_edge();
        let vips = ref_vips();
        for (name, frame) in regressions() {
            let out = run_xdp(edge.program(), &frame, None);
            judge(&frame, &out, &vips).unwrap_or_else(|why| panic!("regression {name}: {why}"));
        }
        let seeds = seeds();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut seen = [0u64; 5];
        for i in 0..runs {
            let frame: Vec<u8> = if i % 4 == 0 {
                // Pure noise behind a plausible ethertype now and then.
                let mut f: Vec<u8> = (0..rng.gen_range(ETH_HLEN..160)).map(|_| rng.gen()).collect();
                if f.len() > 14 && rng.gen_bool(0.5) {
                    f[12..14].copy_from_slice(if rng.gen_bool(0.5) { &[0x08, 0x00] } else { &[0x86, 0xdd] });
                }
                f
            } else {
                // A real frame with a few bytes changed (mostly in the
                // headers) and maybe cut.
                let mut f = seeds[rng.gen_range(0..seeds.len())].clone();
                for _ in 0..rng.gen_range(1..4) {
                    let end = if rng.gen_bool(0.9) { f.len().min(120) } else { f.len() };
                    let at = rng.gen_range(12..end);
                    f[at] = rng.gen();
                }
                if rng.gen_bool(0.2) {
                    f.truncate(rng.gen_range(ETH_HLEN..f.len()));
                }
                f
            };
            let out = run_xdp(edge.program(), &frame, None);
            if let Err(why) = judge(&frame, &out, &vips) {
                record_failure(seed, i, &frame, &why);
            }
            seen[out.action.min(4) as usize] += 1;
        }
        println!("actions: pass {}, drop {}, tx {}, redirect {}", seen[2], seen[1], seen[3], seen[4]);
        // The mutations must reach every outcome for the test to mean
        // anything: tunneled, answered or dropped as too big, untouched.
        let g = edge.global_stats().unwrap();
        println!("{g:?}");
        assert!(seen[4] > runs / 20 && seen[2] > runs / 20, "{seen:?}");
        assert!(g.too_big_answered > 0 && g.too_big_dropped > 0 && g.icmp_errors > 0, "{g:?}");
        assert!(g.neighbour_pending > 0 && g.parse_failures > 0 && g.fragments > 0, "{g:?}");
    });
}

/// A TCP segment whose header length (data offset) is under the fixed 20
/// bytes or reaches past the packet is malformed: counted, handed to the
/// kernel untouched, never tunnelled. Lengths from 20 bytes to the packet's
/// end are tunnelled.
#[test]
fn tcp_with_an_impossible_header_length_is_never_tunnelled() {
    in_scratch_netns(|| {
        let mut edge = test_edge();
        let payload = [0u8; 12];
        let frame = |words: u8, v6: bool| {
            let mut segment = l4(TCP, 40000, if v6 { 443 } else { 80 }, &payload);
            segment[12] = words << 4;
            if v6 {
                ethernet(&[], &ipv6("2001:db8:c::1", "2001:db8:f::10", TCP, &[], &segment, 0))
            } else {
                ethernet(&[], &V4::new("100.64.0.1", "203.0.113.10", TCP).packet(&segment))
            }
        };
        for v6 in [false, true] {
            // 20 bytes of header and 12 of payload: up to 8 words fit.
            for words in 0..16u8 {
                let before = edge.global_stats().unwrap().parse_failures;
                let f = frame(words, v6);
                let out = run_xdp(edge.program(), &f, None);
                let failures = edge.global_stats().unwrap().parse_failures - before;
                if (5..=8).contains(&words) {
                    assert_eq!(
                        out.action,
                        XDP_REDIRECT,
                        "v6 {v6}, data offset {words} words: {}",
                        action_name(out.action)
                    );
                    assert_eq!(failures, 0);
                } else {
                    assert!(
                        out.action == XDP_PASS && out.frame == f,
                        "v6 {v6}, data offset {words} words: {} (must pass untouched)",
                        action_name(out.action)
                    );
                    assert_eq!(failures, 1, "v6 {v6}, data offset {words} words: not counted as malformed");
                }
            }
        }
    });
}
