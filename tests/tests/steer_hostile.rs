//! Malformed input: `steer` never aborts, never forwards anything but a
//! complete VIP packet, and leaves what it passes untouched.

use gslb_tests::{
    edge::{ref_vips, test_edge},
    netns::in_scratch_netns,
    packet::{ethernet, flow_frame, ipv6, ipv6_fragment_header, ipv6_options_header, l4, TCP, UDP, V4},
    reference::{complete_vip_packet, parse_tunnel, RefVip},
    run::{action_name, run_xdp, Outcome, XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX},
};
use rand::{rngs::StdRng, Rng, SeedableRng};

const ETH_HLEN: usize = 14;

/// Complete VIP packets of every shape the parser handles.
fn seeds() -> Vec<Vec<u8>> {
    let mut opts = V4::new("100.64.0.1", "203.0.113.10", TCP);
    opts.options = vec![1; 12];
    let mut frag = V4::new("100.64.0.1", "203.0.113.10", UDP);
    frag.more_fragments = true;
    vec![
        flow_frame("100.64.0.1".parse().unwrap(), "203.0.113.10".parse().unwrap(), TCP, 1, 80),
        flow_frame("100.64.0.1".parse().unwrap(), "203.0.113.10".parse().unwrap(), UDP, 1, 53),
        flow_frame("2001:db8:c::1".parse().unwrap(), "2001:db8:f::10".parse().unwrap(), TCP, 1, 443),
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
    ]
}

/// The rule every outcome must obey.
fn judge(input: &[u8], out: &Outcome, vips: &[RefVip]) -> Result<(), String> {
    match out.action {
        XDP_PASS if out.frame == input => Ok(()),
        XDP_PASS => Err("PASS with a changed frame".into()),
        XDP_TX | XDP_REDIRECT => {
            let inner =
                complete_vip_packet(input, vips).ok_or("forwarded a frame that is not a complete VIP packet")?;
            let t = parse_tunnel(&out.frame)?;
            if t.inner != inner {
                return Err("forwarded with a changed inner packet".into());
            }
            Ok(())
        }
        XDP_DROP => Err("dropped (no VIP here should drop)".into()),
        XDP_ABORTED => Err("ABORTED".into()),
        a => Err(format!("unknown action {a}")),
    }
}

#[test]
fn every_truncation_passes_untouched() {
    in_scratch_netns(|| {
        let mut edge = test_edge();
        let vips = ref_vips();
        for seed in seeds() {
            let whole = run_xdp(edge.program(), &seed, None);
            assert_eq!(whole.action, XDP_REDIRECT, "seed is not steered: {seed:02x?}");
            // The kernel hands XDP no frame shorter than an Ethernet header
            // (and BPF_PROG_TEST_RUN refuses one), so cuts start there.
            for len in ETH_HLEN..seed.len() {
                let cut = &seed[..len];
                let out = run_xdp(edge.program(), cut, None);
                assert!(
                    out.action == XDP_PASS && out.frame == cut,
                    "cut at {len} of {}: {} ({seed:02x?})",
                    seed.len(),
                    action_name(out.action)
                );
                judge(cut, &out, &vips).unwrap();
            }
        }
        let g = edge.global_stats().unwrap();
        assert!(g.parse_failures > 0 && g.dropped == 0, "{g:?}");
    });
}

#[test]
fn random_and_mutated_frames_are_never_misrouted() {
    in_scratch_netns(|| {
        let mut edge = test_edge();
        let vips = ref_vips();
        let seeds = seeds();
        let mut rng = StdRng::seed_from_u64(0x6564_6765);
        let (mut forwarded, mut passed) = (0, 0);
        for i in 0..20_000 {
            let frame: Vec<u8> = if i % 4 == 0 {
                // Pure noise behind a plausible ethertype now and then.
                let mut f: Vec<u8> = (0..rng.gen_range(ETH_HLEN..160)).map(|_| rng.gen()).collect();
                if f.len() > 14 && rng.gen_bool(0.5) {
                    f[12..14].copy_from_slice(if rng.gen_bool(0.5) { &[0x08, 0x00] } else { &[0x86, 0xdd] });
                }
                f
            } else {
                // A real VIP packet with a few bytes changed and maybe cut.
                let mut f = seeds[rng.gen_range(0..seeds.len())].clone();
                for _ in 0..rng.gen_range(1..4) {
                    let at = rng.gen_range(12..f.len());
                    f[at] = rng.gen();
                }
                if rng.gen_bool(0.2) {
                    f.truncate(rng.gen_range(ETH_HLEN..f.len()));
                }
                f
            };
            let out = run_xdp(edge.program(), &frame, None);
            if let Err(why) = judge(&frame, &out, &vips) {
                panic!("frame {i}: {why}: {frame:02x?}");
            }
            if out.action == XDP_PASS {
                passed += 1
            } else {
                forwarded += 1
            }
        }
        // The mutations must exercise both outcomes for the test to mean anything.
        assert!(forwarded > 1_000 && passed > 1_000, "forwarded {forwarded}, passed {passed}");
    });
}
