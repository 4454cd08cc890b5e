//! Backend selection in the kernel: flows stick to their backend across
//! table rebuilds until it dies, and the kernel's choice equals the one
//! computed natively with the shared hash and table.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use gslb_common::{addr_from_ip, flow_hash, ClientTable, FlowKey, BACKEND_DEAD, VIP_CLIENT_STEERING};
use gslb_tests::{
    edge::{backend_addr, backend_id, table_of, test_edge, TestVip, TEST_LIMITS, VIPS},
    netns::in_scratch_netns,
    packet::{flow_frame, TCP},
    reference::parse_tunnel,
    run::{run_xdp, XDP_REDIRECT},
};
use gslb_userspace::sys::{maps::MapWrites, steer::Steer};
use rand::{rngs::StdRng, Rng, SeedableRng};

fn steered_to(edge: &mut Steer, frame: &[u8]) -> u32 {
    let out = run_xdp(edge.program(), frame, None);
    assert_eq!(out.action, XDP_REDIRECT, "not steered");
    let t = parse_tunnel(&out.frame).expect("tunnel frame");
    backend_id(t.outer_dst).expect("a backend")
}

fn vip(id: u32) -> &'static TestVip {
    VIPS.iter().find(|v| v.id == id).unwrap()
}

#[test]
fn flows_stay_on_their_backend_until_it_dies() {
    in_scratch_netns(|| {
        let mut edge = test_edge();
        let web = vip(0);
        let client: IpAddr = "100.64.9.9".parse().unwrap();
        let vip_addr: IpAddr = web.addr.parse().unwrap();
        let old = flow_frame(client, vip_addr, TCP, 50_000, 80);

        // Point the whole table at backend 1 and record the flow there.
        edge.set_vip(web.matcher(), web.id, false, &table_of(&[1], &TEST_LIMITS)).unwrap();
        assert_eq!(steered_to(&mut edge, &old), 1);

        // Rebuild the table to hold only backend 2: the recorded flow stays,
        // a new flow follows the new table.
        edge.set_vip(web.matcher(), web.id, false, &table_of(&[2], &TEST_LIMITS)).unwrap();
        assert_eq!(edge.vip_table(web.matcher()).unwrap(), table_of(&[2], &TEST_LIMITS), "table flip not visible");
        for _ in 0..5 {
            assert_eq!(steered_to(&mut edge, &old), 1, "established flow moved on a table rebuild");
        }
        let new = flow_frame(client, vip_addr, TCP, 50_001, 80);
        assert_eq!(steered_to(&mut edge, &new), 2, "new flow ignored the new table");

        // Backend 1 dies: its flow re-selects through the table and sticks.
        edge.set_backend(1, backend_addr(1), BACKEND_DEAD).unwrap();
        assert_eq!(steered_to(&mut edge, &old), 2, "flow stayed on a dead backend");
        edge.set_backend(1, backend_addr(1), 0).unwrap();
        assert_eq!(steered_to(&mut edge, &old), 2, "re-selected flow was not recorded");

        let stats = edge.vip_stats(web.id).unwrap();
        assert_eq!((stats.flow_hits, stats.new_flows), (6, 3), "{stats:?}");
    });
}

/// The backend userspace predicts for a flow, from the shared code alone.
fn predicted(table: &[u32], key: &FlowKey, source_ip: bool) -> u32 {
    table[(flow_hash(key, source_ip) % TEST_LIMITS.table_size) as usize]
}

#[test]
fn kernel_and_userspace_pick_the_same_backend() {
    in_scratch_netns(|| {
        let mut edge = test_edge();
        let mut rng = StdRng::seed_from_u64(42);
        // Three IPv4 backends and two IPv6 ones; the assertion below checks that
        // every one is chosen, so a wrong hash cannot agree by luck.
        let ids: Vec<u32> = vec![1, 2, 5];
        for (v, source_ip) in [(0u32, false), (5, true), (2, false)] {
            let test_vip = vip(v);
            let backends: &[u32] = if test_vip.addr.contains(':') { &[3, 6] } else { &ids };
            let table = table_of(backends, &TEST_LIMITS);
            edge.set_vip(test_vip.matcher(), v, source_ip, &table).unwrap();
            let vip_addr: IpAddr = test_vip.addr.parse().unwrap();
            let mut hits = std::collections::BTreeMap::new();
            for _ in 0..3_000 {
                let src: IpAddr = if vip_addr.is_ipv4() {
                    Ipv4Addr::from(rng.gen::<u32>() | 0x0100_0000).into()
                } else {
                    Ipv6Addr::from(rng.gen::<u128>() | 1 << 125).into()
                };
                let src_port = rng.gen_range(1024..65535);
                let key = FlowKey {
                    src: addr_from_ip(src),
                    dst: addr_from_ip(vip_addr),
                    src_port: if source_ip { 0 } else { src_port },
                    dst_port: if source_ip { 0 } else { test_vip.port },
                    proto: TCP,
                    _pad: [0; 3],
                };
                let frame = flow_frame(src, vip_addr, TCP, src_port, test_vip.port);
                let kernel = steered_to(&mut edge, &frame);
                assert_eq!(kernel, predicted(&table, &key, source_ip), "vip {v}: flow {src}:{src_port}");
                assert_eq!(edge.flow(&key), Some(kernel), "flow not recorded under the shared key");
                *hits.entry(kernel).or_insert(0) += 1;
            }
            assert_eq!(hits.len(), backends.len(), "vip {v}: some backend never chosen: {hits:?}");
        }
    });
}

#[test]
fn client_prefixes_pick_their_table_longest_first() {
    in_scratch_netns(|| {
        let mut edge = test_edge();
        let web = vip(0);
        let vip_addr: IpAddr = web.addr.parse().unwrap();
        // Tables 0..8 belong to the test VIPs; use the last two for steering.
        let (wide, narrow) = (6, 7);
        edge.write_table(wide, 0, &table_of(&[2], &TEST_LIMITS)).unwrap();
        edge.write_table(narrow, 0, &table_of(&[5], &TEST_LIMITS)).unwrap();
        edge.set_vip(web.matcher(), web.id, false, &table_of(&[1], &TEST_LIMITS)).unwrap();
        let vip_id = web.id;
        let v4 = |s: &str| -> IpAddr { s.parse().unwrap() };
        edge.set_client_prefix(vip_id, (v4("10.0.0.0"), 8), ClientTable { table_id: wide, generation: 0 }).unwrap();
        edge.set_client_prefix(vip_id, (v4("10.1.0.0"), 16), ClientTable { table_id: narrow, generation: 0 }).unwrap();

        // Without the flag the prefixes are not consulted.
        let frame = |client: &str, port| flow_frame(v4(client), vip_addr, TCP, port, 80);
        assert_eq!(steered_to(&mut edge, &frame("10.1.2.3", 40_000)), 1);

        let mut value = edge.vip_entries().unwrap().into_iter().find(|(m, _)| *m == web.matcher()).unwrap().1;
        value.flags |= VIP_CLIENT_STEERING;
        edge.set_vip_entry(web.matcher(), value).unwrap();
        for port in 41_000..41_050 {
            assert_eq!(steered_to(&mut edge, &frame("10.1.2.3", port)), 5, "longest prefix must win");
            assert_eq!(steered_to(&mut edge, &frame("10.9.2.3", port)), 2, "the /8 must match");
            assert_eq!(steered_to(&mut edge, &frame("11.0.0.1", port)), 1, "no prefix: the VIP's own table");
        }
        let listed = edge.client_prefixes().unwrap();
        assert!(listed.contains(&(vip_id, (v4("10.1.0.0"), 16), ClientTable { table_id: narrow, generation: 0 })));
        // Another VIP's clients in the same prefix are not affected.
        let other = vip(4);
        let other_addr: IpAddr = other.addr.parse().unwrap();
        let got = steered_to(&mut edge, &flow_frame(v4("10.1.2.3"), other_addr, TCP, 42_000, 80));
        assert!([1, 2, 5].contains(&got));
        edge.remove_client_prefix(vip_id, (v4("10.1.0.0"), 16)).unwrap();
        assert_eq!(steered_to(&mut edge, &frame("10.1.2.3", 43_000)), 2, "after removal the /8 matches");
    });
}
