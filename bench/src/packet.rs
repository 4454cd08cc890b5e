//! Per-packet cost of the XDP programs, through BPF_PROG_TEST_RUN.
//!
//! The kernel's test loop does not restore the packet between repetitions,
//! so `steer` (which adds a tunnel header) and `decap` (which strips one)
//! run behind `bench_restore` (gslb-ebpf-testing/src/bench.rs, its own
//! object): it puts the input frame back, optionally gives it a fresh flow
//! key, and tail-calls the program under test, loaded from the agent's
//! object. The wrapper's own cost (tail-calling `bench_drop`,
//! same frame) is measured next to every case and subtracted:
//! `net = raw - (wrapper - floor)`, so a net figure reads like the program
//! run directly, against the `XDP_PASS` floor. Every run checks the
//! programs' own counters moved by exactly the number of repetitions.
//!
//! Everything runs in a scratch network namespace (routes to the backends,
//! a resolved next hop), pinned to one CPU, so `bpf_fib_lookup` succeeds
//! and an established packet really ends in `XDP_TX`.

// `crate::main` wires `run` in; until then only the tests call it.
#![cfg_attr(not(test), allow(dead_code))]

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, AsRawFd},
};

use anyhow::{bail, ensure, Context, Result};
use aya::{
    maps::{Array, HashMap, Map, MapData, PerCpuArray, ProgramArray},
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf, EbpfLoader, Pod,
};
use gslb_common::{
    addr_from_ip, flow_bucket, flow_buckets, flow_hash64,
    maglev::{build_table, MaglevBackend},
    names, stage,
    testing::{self, BenchFrame, BENCH_FRAME_WORDS, BENCH_MAX_FRAME},
    vip_filter_bit, Addr16, Backend, DecapStats, EdgeConfig, FlowBucket, FlowKey, GlobalStats, NextHop, SlotHistory,
    VipKey, VipStats, VipValue, BACKEND_SECOND_CHANCE, DEFAULT_GUE_PORT, DEFAULT_TABLE_SIZE, NEXT_HOP_VALID,
    TABLE_GENERATIONS,
};
use gslb_tests::{
    edge::{TUNNEL_V4, TUNNEL_V6},
    netns::{ifindex, in_scratch_netns, sh, EDGE_IF, EDGE_MAC, ROUTER_MAC},
    packet::{ethernet, hop_list_packet, ipv6, l4, tcp_segment, GUE_PORT, TCP, TCP_ACK, V4},
    programs::BENCH,
};
use gslb_userspace::sys::OBJECT;
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::report::{median, Measurement};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const GROUP: &str = "per-packet";
const UNIT: &str = "ns/packet";
const FLOOR: &str = "XDP_PASS floor";

/// Where the IPv4 source address sits in an untagged frame: varying it
/// makes every repetition a new flow.
const V4_SRC_OFFSET: u32 = 14 + 12;

/// How much measuring to do.
#[derive(Clone, Copy, Debug)]
struct Plan {
    runs: usize,
    repeat: u32,
    /// The large configuration's flow table and Maglev table sizes.
    big_flows: u32,
    big_table: u32,
}

/// Every per-packet figure. `quick`: 3 runs of 200,000 repetitions and a
/// smaller large configuration (named so in the results).
pub fn run(quick: bool) -> Result<Vec<Measurement>> {
    let plan = if quick {
        Plan { runs: 3, repeat: 200_000, big_flows: 1 << 16, big_table: 4_099 }
    } else {
        Plan { runs: 5, repeat: 1_000_000, big_flows: 1 << 20, big_table: DEFAULT_TABLE_SIZE }
    };
    in_scratch_netns(move || measure(plan))
}

/// One loaded copy of the agent's object (`steer`, `decap`, their maps)
/// and of the bench object (`bench_restore`, which tail-calls them, and
/// the baselines).
struct Object {
    product: Ebpf,
    bench: Ebpf,
    progs: ProgramArray<MapData>,
    frame: Array<MapData, BenchFrame>,
    vips: HashMap<MapData, VipKey, VipValue>,
    vip_filter: Array<MapData, u64>,
    backends: Array<MapData, Backend>,
    next_hops: Array<MapData, NextHop>,
    maglev: MapData,
    flows: MapData,
    history: MapData,
    edge_config: Array<MapData, EdgeConfig>,
    global: PerCpuArray<MapData, GlobalStats>,
    vip_stats: PerCpuArray<MapData, VipStats>,
    decap_addrs: HashMap<MapData, Addr16, u32>,
    decap_edges: HashMap<MapData, Addr16, u32>,
    decap_peers: HashMap<MapData, Addr16, u32>,
    decap_stats: PerCpuArray<MapData, DecapStats>,
    table_size: u32,
    /// The table `program_edge` gave every VIP.
    table: Vec<u32>,
    /// Ingress interface for the test runs (the edge link).
    ingress: u32,
}

/// Counters a run is judged by.
#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    global: GlobalStats,
    vip: VipStats,
    decap: DecapStats,
}

/// What a case must show, per repetition.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// `passed` (not a VIP).
    Passed,
    /// `forwarded` and a flow-table hit.
    ForwardedHit,
    /// `forwarded` and a new flow recorded.
    ForwardedNew,
    /// `decapsulated`.
    Decapsulated,
    /// `forwarded` with a hop list.
    HopList,
    /// `decap` delivered a hop-list packet (owned here).
    HopListDelivered,
    /// `decap` sent a hop-list packet on.
    HopListForwarded,
    /// `received` (a stage of `steer` reached; it then drops).
    Received,
    /// Nothing counted (baselines, the wrapper alone).
    Nothing,
}

fn sum<T: Pod + Default + std::ops::AddAssign>(map: &PerCpuArray<MapData, T>) -> Result<T> {
    let mut total = T::default();
    for v in map.get(&0, 0)?.iter() {
        total += *v;
    }
    Ok(total)
}

fn sum_at<T: Pod + Default + std::ops::AddAssign>(map: &PerCpuArray<MapData, T>, index: u32) -> Result<T> {
    let mut total = T::default();
    for v in map.get(&index, 0)?.iter() {
        total += *v;
    }
    Ok(total)
}

fn take_data(ebpf: &mut Ebpf, name: &str) -> Result<MapData> {
    match ebpf.take_map(name).with_context(|| format!("map {name} missing"))? {
        Map::Array(d) | Map::LruHashMap(d) | Map::HashMap(d) => Ok(d),
        _ => bail!("map {name} has an unexpected type"),
    }
}

fn take<M: TryFrom<Map, Error = aya::maps::MapError>>(ebpf: &mut Ebpf, name: &str) -> Result<M> {
    let map = ebpf.take_map(name).with_context(|| format!("map {name} missing"))?;
    M::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// BPF_MAP_UPDATE_BATCH: aya 0.14 has no batch writes, and filling a
/// million-entry table one syscall at a time takes too long.
fn update_batch<K: Pod, V: Pod>(map: &MapData, keys: &[K], values: &[V]) -> Result<()> {
    #[repr(C)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    const CHUNK: usize = 1 << 16;
    for (i, k) in keys.chunks(CHUNK).enumerate() {
        let v = values[i * CHUNK..i * CHUNK + k.len()].as_ptr() as u64;
        let mut attr = BatchAttr {
            in_batch: 0,
            out_batch: 0,
            keys: k.as_ptr() as u64,
            values: v,
            count: k.len() as u32,
            map_fd: map.fd().as_fd().as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: the attribute points at live buffers of `count` entries.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>() as u32,
            )
        };
        if rc != 0 {
            bail!("BPF_MAP_UPDATE_BATCH: {} ({} of {} written)", std::io::Error::last_os_error(), attr.count, k.len());
        }
    }
    Ok(())
}

impl Object {
    /// Loads the object with the given sizes and verifies every program
    /// this benchmark runs.
    fn load(max_vips: u32, max_backends: u32, max_flows: u32, table_size: u32) -> Result<Object> {
        Self::load_stopping(max_vips, max_backends, max_flows, table_size, 0)
    }

    /// `load`, with `steer` stopping after `stop_after` (a `stage`; 0: none).
    fn load_stopping(
        max_vips: u32,
        max_backends: u32,
        max_flows: u32,
        table_size: u32,
        stop_after: u32,
    ) -> Result<Object> {
        let mut product = EbpfLoader::new()
            .override_global(names::TABLE_SIZE, &table_size, true)
            .override_global(names::STOP_AFTER, &stop_after, true)
            .override_global(names::FLOW_BUCKETS, &flow_buckets(max_flows), true)
            .map_max_entries(names::VIPS, max_vips)
            .map_max_entries(names::FRAGMENT_VIPS, max_vips)
            .map_max_entries(names::STEER_PREFIXES, max_vips)
            .map_max_entries(names::BACKENDS, max_backends)
            .map_max_entries(names::BACKEND_STATS, max_backends)
            .map_max_entries(names::NEXT_HOPS, max_backends)
            .map_max_entries(names::VIP_STATS, max_vips)
            .map_max_entries(names::MAGLEV, max_vips * TABLE_GENERATIONS * table_size)
            .map_max_entries(names::FLOWS, flow_buckets(max_flows))
            .map_max_entries(names::OWNER_HISTORY, max_vips * table_size)
            .load(OBJECT)
            .context("loading the gslb eBPF object")?;
        let mut bench = EbpfLoader::new().load(BENCH).context("loading the bench eBPF object")?;
        let programs: [(&mut Ebpf, &[&str]); 2] = [
            (&mut product, &["steer", "decap"]),
            (&mut bench, &["bench_restore", "bench_pass", "bench_drop", "bench_reflect", "bench_forward"]),
        ];
        for (object, names) in programs {
            for &name in names {
                let prog: &mut Xdp =
                    object.program_mut(name).with_context(|| format!("no program {name}"))?.try_into()?;
                prog.load().with_context(|| format!("the verifier refused {name}"))?;
            }
        }
        let progs = take(&mut bench, testing::names::BENCH_PROGS)?;
        let frame = take(&mut bench, testing::names::BENCH_FRAME)?;
        let vips = take(&mut product, names::VIPS)?;
        let vip_filter = take(&mut product, names::VIP_FILTER)?;
        let backends = take(&mut product, names::BACKENDS)?;
        let next_hops = take(&mut product, names::NEXT_HOPS)?;
        let maglev = take_data(&mut product, names::MAGLEV)?;
        let flows = take_data(&mut product, names::FLOWS)?;
        let mut edge_config: Array<MapData, EdgeConfig> = take(&mut product, names::EDGE_CONFIG)?;
        let global = take(&mut product, names::GLOBAL_STATS)?;
        let vip_stats = take(&mut product, names::VIP_STATS)?;
        let decap_addrs = take(&mut product, names::DECAP_ADDRS)?;
        let decap_edges = take(&mut product, names::DECAP_EDGES)?;
        let decap_peers = take(&mut product, names::DECAP_PEERS)?;
        let decap_stats = take(&mut product, names::DECAP_STATS)?;
        let history = take_data(&mut product, names::OWNER_HISTORY)?;
        let config = EdgeConfig {
            tunnel_source_v4: TUNNEL_V4.octets(),
            has_v6: 1,
            tunnel_source_v6: TUNNEL_V6.octets(),
            ..EdgeConfig::default()
        };
        edge_config.set(0, config, 0)?;
        Ok(Object {
            product,
            bench,
            progs,
            frame,
            vips,
            vip_filter,
            backends,
            next_hops,
            maglev,
            flows,
            history,
            edge_config,
            global,
            vip_stats,
            decap_addrs,
            decap_edges,
            decap_peers,
            decap_stats,
            table_size,
            table: Vec::new(),
            ingress: ifindex(EDGE_IF),
        })
    }

    /// A program of either object.
    fn xdp(&self, name: &str) -> Result<&Xdp> {
        let program = self.product.program(name).or_else(|| self.bench.program(name));
        Ok(program.with_context(|| format!("no program {name}"))?.try_into()?)
    }

    /// Backends `1..=addrs.len()`, and `vips` (id = index) all using one
    /// Maglev table over them.
    fn program_edge(&mut self, vips: &[(IpAddr, u16)], addrs: &[IpAddr]) -> Result<()> {
        let mut members = Vec::new();
        for (i, &addr) in addrs.iter().enumerate() {
            let id = i as u32 + 1;
            self.backends.set(id, Backend { addr: addr_from_ip(addr), flags: 0, _pad: 0 }, 0)?;
            members.push(MaglevBackend { id, addr: addr_from_ip(addr), weight: 100 });
        }
        let table = build_table(&members, self.table_size);
        for (vip_id, &(addr, port)) in vips.iter().enumerate() {
            let vip_id = vip_id as u32;
            let base = vip_id * TABLE_GENERATIONS * self.table_size;
            let keys: Vec<u32> = (base..base + self.table_size).collect();
            update_batch(&self.maglev, &keys, &table)?;
            let key = VipKey { addr: addr_from_ip(addr), port, proto: TCP, _pad: 0 };
            let (word, bit) = vip_filter_bit(&key.addr);
            let current = self.vip_filter.get(&word, 0)?;
            self.vip_filter.set(word, current | bit, 0)?;
            self.vips.insert(key, VipValue { vip_id, flags: 0, generation: 0, table_id: vip_id }, 0)?;
        }
        self.table = table;
        Ok(())
    }

    /// Gives every backend the next hop the agent would resolve here (the
    /// scratch router, out of the edge link), so `steer` needs no route
    /// lookup; `None` clears them, so it falls back to `bpf_fib_lookup`.
    fn set_next_hops(&mut self, backends: u32, resolved: bool) -> Result<()> {
        let hop =
            NextHop { ifindex: self.ingress, mtu: 1500, flags: NEXT_HOP_VALID, dst_mac: ROUTER_MAC, src_mac: EDGE_MAC };
        for id in 1..=backends {
            self.next_hops.set(id, if resolved { hop } else { NextHop::default() }, 0)?;
        }
        Ok(())
    }

    /// Second chance on for backends `1..=backends` (at least 3), and every
    /// slot of VIP 0's table given two previous owners other than its own,
    /// superseded just now: every mid-flow packet gets a full hop list.
    fn enable_second_chance(&mut self, backends: u32) -> Result<()> {
        for id in 1..=backends {
            let mut backend = self.backends.get(&id, 0)?;
            backend.flags |= BACKEND_SECOND_CHANCE;
            self.backends.set(id, backend, 0)?;
        }
        let mut config = self.edge_config.get(&0, 0)?;
        config.stickiness_window = 6 * 3600;
        config.gue_port = DEFAULT_GUE_PORT;
        self.edge_config.set(0, config, 0)?;
        let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: a valid timespec to fill.
        unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) };
        let history: Vec<SlotHistory> = self
            .table
            .iter()
            .map(|&owner| SlotHistory {
                owners: [owner % backends + 1, (owner + 1) % backends + 1],
                superseded: [now.tv_sec as u32; 2],
            })
            .collect();
        let keys: Vec<u32> = (0..self.table_size).collect();
        update_batch(&self.history, &keys, &history)
    }

    /// Fills the flow table with `count` random IPv4 flows to the VIPs, each
    /// seen again since it was recorded (as established flows are).
    fn prefill_flows(&mut self, count: u32, vips: &[(IpAddr, u16)], backends: u32) -> Result<()> {
        let mut rng = StdRng::seed_from_u64(0x6e5b);
        let buckets = self.flows_len()?;
        let mut table = vec![FlowBucket::default(); buckets as usize];
        for _ in 0..count {
            // 10.0.0.0/8 clients: never the benchmark's own flows.
            let src = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | rng.gen_range(0..1u32 << 24)));
            let (dst, dst_port) = vips[rng.gen_range(0..vips.len())];
            let key = FlowKey {
                src: addr_from_ip(src),
                dst: addr_from_ip(dst),
                src_port: rng.gen(),
                dst_port,
                proto: TCP,
                _pad: [0; 3],
            };
            let hash = flow_hash64(&key);
            let bucket = &mut table[flow_bucket(hash, buckets) as usize];
            bucket.record(hash, rng.gen_range(1..=backends));
            let (way, _) = bucket.find(hash).context("a flow just recorded")?;
            bucket.touch(way);
        }
        let keys: Vec<u32> = (0..buckets).collect();
        update_batch(&self.flows, &keys, &table)
    }

    /// Empties the flow table.
    fn clear_flows(&self) -> Result<()> {
        let buckets = self.flows_len()?;
        let keys: Vec<u32> = (0..buckets).collect();
        update_batch(&self.flows, &keys, &vec![FlowBucket::default(); buckets as usize])
            .context("emptying the flow table")
    }

    fn flows_len(&self) -> Result<u32> {
        Ok(self.flows.info()?.max_entries())
    }

    fn counters(&self, vip_id: u32) -> Result<Counters> {
        Ok(Counters {
            global: sum(&self.global)?,
            vip: sum_at(&self.vip_stats, vip_id)?,
            decap: sum(&self.decap_stats)?,
        })
    }

    /// Sets what `bench_restore` restores and which program it calls.
    fn arm(&mut self, frame: &[u8], vary_offset: u32, target: &str) -> Result<()> {
        ensure!(
            (16..=BENCH_MAX_FRAME).contains(&frame.len()) && frame.len().is_multiple_of(8),
            "bench_restore takes 16 to {BENCH_MAX_FRAME} bytes, a multiple of 8, not {}",
            frame.len()
        );
        let mut words = [0u64; BENCH_FRAME_WORDS];
        for (i, chunk) in frame.chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            words[i] = u64::from_le_bytes(w);
        }
        let vary_base = if vary_offset != 0 {
            let at = vary_offset as usize;
            u32::from_be_bytes(frame[at..at + 4].try_into()?)
        } else {
            0
        };
        self.frame.set(0, BenchFrame { len: frame.len() as u32, vary_offset, vary_base, _pad: 0, words }, 0)?;
        let fd = self.xdp(target)?.fd()?.try_clone()?;
        self.progs.set(0, &fd, 0)?;
        Ok(())
    }

    /// One BPF_PROG_TEST_RUN of `prog`: (ns per repetition, action, output
    /// frame).
    fn test_run(&self, prog: &str, frame: &[u8], repeat: u32) -> Result<(f64, u32, Vec<u8>)> {
        let ctx: Vec<u8> =
            [0, frame.len() as u32, 0, self.ingress, 0, 0].iter().flat_map(|w: &u32| w.to_ne_bytes()).collect();
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.ctx_in = Some(&ctx);
        opts.repeat = repeat;
        let result = self.xdp(prog)?.test_run(opts).with_context(|| format!("BPF_PROG_TEST_RUN of {prog}"))?;
        out.truncate(result.data_size_out as usize);
        Ok((result.duration.as_nanos() as f64, result.return_value, out))
    }
}

/// A case: which program runs on which frame, what each repetition must do.
struct Case<'a> {
    name: String,
    /// Program run by the test loop (`bench_restore` or a program directly).
    prog: &'a str,
    frame: &'a [u8],
    action: u32,
    expect: Expect,
    vip_id: u32,
    /// Output frame length minus input (tunnel header added or removed).
    grow: isize,
    /// Remove the flows each run adds, so every run starts from the
    /// same flow table.
    clear_new_flows: bool,
}

/// Runs a case `plan.runs` times after one warm-up repetition; fails if
/// any run's counters or action disagree. Returns the samples and the
/// check line.
fn sample(obj: &Object, case: &Case, plan: Plan) -> Result<(Vec<f64>, String)> {
    obj.test_run(case.prog, case.frame, 1)?;
    if case.clear_new_flows {
        obj.clear_flows()?;
    }
    let mut samples = Vec::new();
    let n = plan.repeat as u64;
    let mut checked = 0u64;
    for _ in 0..plan.runs {
        let before = obj.counters(case.vip_id)?;
        let (ns, action, out) = obj.test_run(case.prog, case.frame, plan.repeat)?;
        let after = obj.counters(case.vip_id)?;
        if case.clear_new_flows {
            obj.clear_flows()?;
        }
        ensure!(action == case.action, "{}: action {action}, want {}", case.name, case.action);
        ensure!(
            out.len() as isize == case.frame.len() as isize + case.grow,
            "{}: output frame of {} bytes from {}",
            case.name,
            out.len(),
            case.frame.len()
        );
        let (g, v, d) = (after.global, after.vip, after.decap);
        let (g0, v0, d0) = (before.global, before.vip, before.decap);
        let got = match case.expect {
            Expect::Passed => [g.received - g0.received, g.passed - g0.passed],
            Expect::ForwardedHit => [g.forwarded - g0.forwarded, v.flow_hits - v0.flow_hits],
            Expect::ForwardedNew => [g.forwarded - g0.forwarded, v.new_flows - v0.new_flows],
            Expect::Decapsulated => [d.received - d0.received, d.decapsulated - d0.decapsulated],
            Expect::HopList => [g.forwarded - g0.forwarded, g.hop_list_packets - g0.hop_list_packets],
            Expect::HopListDelivered => {
                [d.decapsulated - d0.decapsulated, d.hop_list_delivered - d0.hop_list_delivered]
            }
            Expect::HopListForwarded => [d.received - d0.received, d.hop_list_forwarded - d0.hop_list_forwarded],
            Expect::Received => [g.received - g0.received, g.dropped - g0.dropped],
            Expect::Nothing => [n, n],
        };
        ensure!(got == [n, n], "{}: counters {got:?} after {n} repetitions ({:?} -> {:?})", case.name, before, after);
        checked += n;
        samples.push(ns);
    }
    let check = match case.expect {
        Expect::Passed => format!("passed {checked} of {checked}"),
        Expect::ForwardedHit => format!("forwarded {checked} of {checked}, flow-table hits {checked}"),
        Expect::ForwardedNew => format!("forwarded {checked} of {checked}, new flows {checked}"),
        Expect::Decapsulated => format!("decapsulated {checked} of {checked}"),
        Expect::HopList => format!("forwarded {checked} of {checked}, with a hop list {checked}"),
        Expect::HopListDelivered => format!("hop lists delivered here {checked} of {checked}"),
        Expect::HopListForwarded => format!("hop lists sent on {checked} of {checked}"),
        Expect::Received => format!("received and stopped {checked} of {checked}"),
        Expect::Nothing => format!("action {} on all {checked}", action_name(case.action)),
    };
    Ok((samples, check))
}

fn action_name(a: u32) -> &'static str {
    ["ABORTED", "DROP", "PASS", "TX", "REDIRECT"].get(a as usize).copied().unwrap_or("?")
}

fn measurement(name: &str, samples: Vec<f64>, baseline: bool, target: Option<String>, check: String) -> Measurement {
    Measurement {
        group: GROUP.into(),
        name: name.into(),
        value: median(&samples),
        unit: UNIT.into(),
        baseline: baseline.then(|| FLOOR.to_string()),
        samples,
        target,
        check: Some(check),
    }
}

/// Measures a program behind `bench_restore`, and the wrapper alone on the
/// same frame; pushes the wrapper, raw and net figures.
struct Runner<'a> {
    plan: Plan,
    floor: f64,
    out: &'a mut Vec<Measurement>,
}

/// A program under test behind the wrapper.
struct Wrapped<'a> {
    name: String,
    target: &'a str,
    frame: Vec<u8>,
    vary: bool,
    action: u32,
    expect: Expect,
    vip_id: u32,
    grow: isize,
    /// Allowed ns above the floor.
    budget: Option<f64>,
    clear_new_flows: bool,
}

/// One measured program behind the wrapper: the wrapper alone on the same
/// frame, then the program; samples and check lines of each.
struct WrappedRun {
    wrapper: Vec<f64>,
    wrapper_check: String,
    raw: Vec<f64>,
    check: String,
}

impl Runner<'_> {
    fn run_wrapped(&self, obj: &mut Object, w: &Wrapped) -> Result<WrappedRun> {
        let vary_offset = if w.vary { V4_SRC_OFFSET } else { 0 };
        // The wrapper's own cost: restore the same frame, tail-call a
        // program that drops.
        obj.arm(&w.frame, vary_offset, "bench_drop")?;
        let alone = Case {
            name: format!("restore wrapper alone ({})", w.name),
            prog: "bench_restore",
            frame: &w.frame,
            action: XDP_DROP,
            expect: Expect::Nothing,
            vip_id: w.vip_id,
            grow: 0,
            clear_new_flows: false,
        };
        let (wrapper, wrapper_check) = sample(obj, &alone, self.plan)?;

        obj.arm(&w.frame, vary_offset, w.target)?;
        let case = Case {
            name: w.name.clone(),
            prog: "bench_restore",
            frame: &w.frame,
            action: w.action,
            expect: w.expect,
            vip_id: w.vip_id,
            grow: w.grow,
            clear_new_flows: w.clear_new_flows,
        };
        let (raw, check) = sample(obj, &case, self.plan)?;
        Ok(WrappedRun { wrapper, wrapper_check, raw, check })
    }

    /// Measures a program behind the wrapper; pushes the wrapper, raw and
    /// net figures.
    fn wrapped(&mut self, obj: &mut Object, w: Wrapped) -> Result<()> {
        let WrappedRun { wrapper, wrapper_check, raw, check } = self.run_wrapped(obj, &w)?;
        let overhead = median(&wrapper) - self.floor;
        let net: Vec<f64> = raw.iter().map(|r| r - overhead).collect();

        let frame_desc =
            format!("{}-byte frame{}", w.frame.len(), if w.vary { ", fresh source per packet" } else { "" });
        self.out.push(measurement(
            &format!("restore wrapper alone ({frame_desc}; tail call to XDP_DROP)"),
            wrapper,
            true,
            None,
            wrapper_check,
        ));
        self.out.push(measurement(
            &format!("{} [raw, incl. restore wrapper]", w.name),
            raw,
            false,
            None,
            check.clone(),
        ));
        let net_value = median(&net);
        let target = w.budget.map(|b| budget_verdict(b, self.floor, net_value));
        self.out.push(measurement(
            &format!("{} [net: raw - (wrapper - floor)]", w.name),
            net,
            true,
            target,
            format!("{check}; wrapper overhead {overhead:.0} ns subtracted"),
        ));
        Ok(())
    }

    /// The net cost of a program behind the wrapper (nothing pushed).
    fn net(&mut self, obj: &mut Object, w: Wrapped) -> Result<f64> {
        let run = self.run_wrapped(obj, &w)?;
        Ok(median(&run.raw) - (median(&run.wrapper) - self.floor))
    }

    fn direct(
        &mut self,
        obj: &Object,
        name: &str,
        prog: &str,
        frame: &[u8],
        action: u32,
        expect: Expect,
    ) -> Result<f64> {
        let case = Case { name: name.into(), prog, frame, action, expect, vip_id: 0, grow: 0, clear_new_flows: false };
        let (samples, check) = sample(obj, &case, self.plan)?;
        let value = median(&samples);
        let baseline = prog != "bench_pass";
        let target = (prog == "steer").then(|| budget_verdict(10.0, self.floor, value));
        self.out.push(measurement(name, samples, baseline, target, check));
        Ok(value)
    }
}

/// A target of `budget` ns above the floor, and whether `value` met it (by
/// how much it missed, if it did).
fn budget_verdict(budget: f64, floor: f64, value: f64) -> String {
    let bound = floor + budget;
    let verdict = if value <= bound { "met".to_string() } else { format!("MISSED by {:.0} ns", value - bound) };
    format!("<= floor + {budget} ns (<= {bound:.0} ns in this run): {verdict}")
}

/// Pins the calling thread to one CPU, so every repetition runs there.
fn pin_to_last_cpu() {
    // SAFETY: a zeroed cpu_set_t is valid; affects this thread only.
    unsafe {
        let n = libc::sysconf(libc::_SC_NPROCESSORS_ONLN).max(1) as usize;
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(n - 1, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// A TCP frame padded to a multiple of 8 bytes, as `bench_restore` wants:
/// 64 bytes over IPv4, 80 over IPv6.
fn tcp_frame(src: IpAddr, dst: IpAddr, src_port: u16, dst_port: u16) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let seg = l4(TCP, src_port, dst_port, &[0; 10]);
            ethernet(&[], &V4::new(&s.to_string(), &d.to_string(), TCP).packet(&seg))
        }
        _ => {
            ethernet(&[], &ipv6(&src.to_string(), &dst.to_string(), TCP, &[], &l4(TCP, src_port, dst_port, &[0; 6]), 0))
        }
    }
}

fn v4(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Runs every case; call inside `in_scratch_netns`.
fn measure(plan: Plan) -> Result<Vec<Measurement>> {
    pin_to_last_cpu();
    // 1,000 backends do not fit the test edge's /24: route a /16 too.
    sh("ip route add 198.18.0.0/16 via 10.200.0.254");
    let mut out = Vec::new();
    let client = v4("100.64.1.1");
    let vip = v4("203.0.113.10");
    let established = tcp_frame(client, vip, 40_000, 80);

    // Small configuration: 1 VIP, 8 backends, empty flow table.
    let small_flows = 1 << 20;
    let mut small = Object::load(1, 16, small_flows, DEFAULT_TABLE_SIZE)?;
    let small_backends: Vec<IpAddr> = (1..=8).map(|i| v4(&format!("198.51.100.{i}"))).collect();
    small.program_edge(&[(vip, 80)], &small_backends)?;
    small.set_next_hops(8, true)?;

    let mut r = Runner { plan, floor: 0.0, out: &mut out };
    // Baselines.
    r.floor = r.direct(&small, FLOOR, "bench_pass", &established, XDP_PASS, Expect::Nothing)?;
    r.direct(&small, "MAC swap + XDP_TX", "bench_reflect", &established, XDP_TX, Expect::Nothing)?;

    // Where steer's time goes: its forward step alone (route lookup and
    // MAC rewrite), on a packet already addressed to a backend.
    let to_backend = tcp_frame(client, small_backends[0], 40_000, 80);
    r.direct(
        &small,
        "component: steer's forward step alone (bpf_fib_lookup + MAC rewrite + XDP_TX)",
        "bench_forward",
        &to_backend,
        XDP_TX,
        Expect::Nothing,
    )?;

    let cfg = "1 VIP, 8 backends, empty flow table";
    let no_vip = tcp_frame(client, v4("192.0.2.99"), 40_000, 80);
    // steer leaves a non-VIP packet as it is: measurable directly too.
    r.direct(
        &small,
        &format!("steer: no VIP, {cfg} [direct, no wrapper]"),
        "steer",
        &no_vip,
        XDP_PASS,
        Expect::Passed,
    )?;
    let steer = |name: String, frame: Vec<u8>, vary: bool, expect: Expect, grow: isize, budget: f64| Wrapped {
        name,
        target: "steer",
        frame,
        vary,
        action: if expect == Expect::Passed { XDP_PASS } else { XDP_TX },
        expect,
        vip_id: 0,
        grow,
        budget: Some(budget),
        clear_new_flows: false,
    };
    r.wrapped(&mut small, steer(format!("steer: no VIP, {cfg}"), no_vip.clone(), false, Expect::Passed, 0, 10.0))?;
    r.wrapped(
        &mut small,
        steer(
            format!("steer: established TCP flow, {cfg}"),
            established.clone(),
            false,
            Expect::ForwardedHit,
            20,
            50.0,
        ),
    )?;
    r.wrapped(
        &mut small,
        Wrapped {
            clear_new_flows: true,
            ..steer(
                format!("steer: new TCP flow each packet (lookup + insert), {cfg} at the start of every run"),
                established.clone(),
                true,
                Expect::ForwardedNew,
                20,
                120.0,
            )
        },
    )?;
    // The same established flow without agent-resolved next hops: the
    // route lookup per packet that `steer` falls back to.
    small.set_next_hops(8, false)?;
    r.wrapped(
        &mut small,
        Wrapped {
            budget: None,
            ..steer(
                format!("steer: established TCP flow, no resolved next hop (bpf_fib_lookup fallback), {cfg}"),
                established.clone(),
                false,
                Expect::ForwardedHit,
                20,
                0.0,
            )
        },
    )?;
    // Second chance: a mid-flow packet (an ACK) of a flow this edge never
    // saw, whose slot has two previous owners: sent with a hop list.
    small.set_next_hops(8, true)?;
    small.enable_second_chance(8)?;
    let mid_flow = ack_frame(client, vip, 40_000, 80);
    r.wrapped(
        &mut small,
        Wrapped {
            clear_new_flows: true,
            expect: Expect::HopList,
            ..steer(
                format!(
                    "steer: mid-flow TCP packet of an unrecorded flow, each packet new, with a hop list of 2, {cfg}"
                ),
                mid_flow.clone(),
                true,
                Expect::HopList,
                44,
                0.0,
            )
        },
    )?;
    r.wrapped(
        &mut small,
        Wrapped {
            budget: None,
            expect: Expect::HopList,
            ..steer(
                format!("steer: flow recorded mid-flow, every packet with a hop list of 2, {cfg}"),
                mid_flow,
                false,
                Expect::HopList,
                44,
                0.0,
            )
        },
    )?;
    drop(small);

    stage_breakdown(&mut r, vip, &small_backends, &established, small_flows)?;

    // IPv6: 1 VIP, 8 IPv6 backends, empty flow table, IPv6 tunnel.
    let mut small6 = Object::load(1, 16, small_flows, DEFAULT_TABLE_SIZE)?;
    let vip6: IpAddr = "2001:db8:f::10".parse()?;
    let backends6: Vec<IpAddr> =
        (1..=8u16).map(|i| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, i))).collect();
    small6.program_edge(&[(vip6, 443)], &backends6)?;
    small6.set_next_hops(8, true)?;
    let frame6 = tcp_frame("2001:db8:c::1".parse()?, vip6, 40_000, 443);
    r.wrapped(
        &mut small6,
        steer(format!("steer: established IPv6 TCP flow, {cfg}"), frame6, false, Expect::ForwardedHit, 40, 50.0),
    )?;
    drop(small6);

    // Large configuration: 512 VIPs, 1,000 backends, flow table 90% full.
    let mut big = Object::load(512, 1024, plan.big_flows, plan.big_table)?;
    let vips: Vec<(IpAddr, u16)> = (0..512u32).map(|i| (IpAddr::V4(Ipv4Addr::from(0xcb00_7100 + i)), 80)).collect(); // 203.0.113.0 on
    let big_backends: Vec<IpAddr> = (1..=1000u32).map(|i| IpAddr::V4(Ipv4Addr::from(0xc612_0000 + i))).collect();
    big.program_edge(&vips, &big_backends)?;
    big.set_next_hops(1000, true)?;
    let fill = (plan.big_flows as u64 * 9 / 10) as u32;
    big.prefill_flows(fill, &vips, 1000)?;
    let big_cfg = format!(
        "512 VIPs, 1,000 backends, flow table {} entries 90% full ({fill} random flows), Maglev table {}",
        plan.big_flows, plan.big_table
    );
    // The benchmark's VIP: 203.0.113.10 is VIP id 10 here.
    let big_steer = |w: Wrapped<'static>| Wrapped { vip_id: 10, ..w };
    r.wrapped(
        &mut big,
        big_steer(steer(
            format!("steer: established TCP flow, {big_cfg}"),
            established.clone(),
            false,
            Expect::ForwardedHit,
            20,
            50.0,
        )),
    )?;
    r.wrapped(
        &mut big,
        big_steer(steer(
            format!("steer: new TCP flow each packet (lookup + insert; the flow table full, evicting), {big_cfg}"),
            established.clone(),
            true,
            Expect::ForwardedNew,
            20,
            200.0,
        )),
    )?;
    drop(big);

    // decap: an IPv4-in-IPv4 tunnel packet for this backend.
    let mut backend = Object::load(1, 2, 1, 2)?;
    let tunnel_dst = v4("198.51.100.1");
    backend.decap_addrs.insert(addr_from_ip(tunnel_dst), 1, 0)?;
    // 14 + 20 + 20 + 20 + 6 = 80 bytes.
    let inner = V4::new("100.64.1.1", "203.0.113.10", TCP).packet(&l4(TCP, 40_000, 80, &[0; 6]));
    let tunnel = ethernet(&[], &V4::new(&TUNNEL_V4.to_string(), &tunnel_dst.to_string(), 4).packet(&inner));
    r.wrapped(
        &mut backend,
        Wrapped {
            name: "decap: IPv4-in-IPv4 tunnel packet".into(),
            target: "decap",
            frame: tunnel,
            vary: false,
            action: XDP_PASS,
            expect: Expect::Decapsulated,
            vip_id: 0,
            grow: -20,
            budget: None,
            clear_new_flows: false,
        },
    )?;
    decap_hop_lists(&mut r, &mut backend, tunnel_dst)?;
    drop(backend);
    Ok(out)
}

/// `decap` on hop-list packets from an edge: one of a connection this host
/// owns (a real socket, found by `bpf_skc_lookup_tcp`) is delivered; one it
/// does not own is sent on to the next hop.
fn decap_hop_lists(r: &mut Runner, backend: &mut Object, tunnel_dst: IpAddr) -> Result<()> {
    let edge = IpAddr::V4(TUNNEL_V4);
    let peer = v4("198.51.100.2");
    backend.decap_edges.insert(addr_from_ip(edge), 1, 0)?;
    // Peer 1, with the next hop `gslb decap` would resolve for it.
    backend.decap_peers.insert(addr_from_ip(peer), 1, 0)?;
    backend.set_next_hops(1, true)?;
    let vip = v4("203.0.113.10");
    sh("ip addr add 203.0.113.10/32 dev lo");
    let listener = std::net::TcpListener::bind((vip, 80))?;
    let client = std::net::TcpStream::connect((vip, 80))?;
    let _server = listener.accept()?;
    let local = client.local_addr()?;
    // 14 + 20 + 8 + 4 + 12 + 20 + 20 + 6 = 104 bytes.
    let inner = |src: std::net::SocketAddr| {
        let seg = tcp_segment(src.port(), 80, TCP_ACK, 1, 1, &[0; 6]);
        V4::new(&src.ip().to_string(), "203.0.113.10", TCP).packet(&seg)
    };
    let owned = ethernet(&[], &hop_list_packet(edge, tunnel_dst, &inner(local), &[peer], 0, GUE_PORT));
    let stranger = "100.64.1.1:40000".parse()?;
    let not_owned = ethernet(&[], &hop_list_packet(edge, tunnel_dst, &inner(stranger), &[peer], 0, GUE_PORT));
    let hop_list = |name: &str, frame: Vec<u8>, action: u32, expect: Expect, grow: isize| Wrapped {
        name: name.into(),
        target: "decap",
        frame,
        vary: false,
        action,
        expect,
        vip_id: 0,
        grow,
        budget: None,
        clear_new_flows: false,
    };
    r.wrapped(
        backend,
        hop_list(
            "decap: hop-list packet of a connection owned here (socket lookup), delivered",
            owned,
            XDP_PASS,
            Expect::HopListDelivered,
            -44,
        ),
    )?;
    r.wrapped(
        backend,
        hop_list(
            "decap: hop-list packet not owned here (socket lookup), sent on by the peer's resolved next hop",
            not_owned,
            XDP_TX,
            Expect::HopListForwarded,
            0,
        ),
    )
}

/// A TCP ACK (mid-flow) frame of 64 bytes.
fn ack_frame(src: IpAddr, dst: IpAddr, src_port: u16, dst_port: u16) -> Vec<u8> {
    let seg = tcp_segment(src_port, dst_port, TCP_ACK, 1, 1, &[0; 10]);
    ethernet(&[], &V4::new(&src.to_string(), &dst.to_string(), TCP).packet(&seg))
}

/// Where `steer`'s time goes: the small configuration loaded once per stage
/// with `STOP_AFTER` at that stage, for an established flow (a flow-table
/// hit) and a new flow each packet (miss, table lookup, record). Each row
/// is the cost of one stage: the run stopping after it, less the run
/// stopping after the stage before (the first: less the floor); the last,
/// "forward", is the whole program less the run stopping after
/// encapsulation.
fn stage_breakdown(r: &mut Runner, vip: IpAddr, backends: &[IpAddr], established: &[u8], flows: u32) -> Result<()> {
    for (path, vary) in [("established TCP flow", false), ("new TCP flow each packet", true)] {
        let mut previous = r.floor;
        let stages: Vec<(u32, &str)> = stage::ALL
            .iter()
            .copied()
            .filter(|&(s, _)| vary || !matches!(s, stage::TABLE_LOOKUP | stage::RECORD))
            .chain([(0, "forward")])
            .collect();
        for (stop, name) in stages {
            let mut obj = Object::load_stopping(1, 16, flows, DEFAULT_TABLE_SIZE, stop)?;
            obj.program_edge(&[(vip, 80)], backends)?;
            obj.set_next_hops(backends.len() as u32, true)?;
            let expect = match stop {
                0 if vary => Expect::ForwardedNew,
                0 => Expect::ForwardedHit,
                _ => Expect::Received,
            };
            let cumulative = r.net(
                &mut obj,
                Wrapped {
                    name: format!("steer stages, {path}: through {name}"),
                    target: "steer",
                    frame: established.to_vec(),
                    vary,
                    action: if stop == 0 { XDP_TX } else { XDP_DROP },
                    expect,
                    vip_id: 0,
                    grow: if stop == 0 || stop == stage::ENCAPSULATE { 20 } else { 0 },
                    budget: None,
                    clear_new_flows: vary,
                },
            )?;
            let cost = cumulative - previous;
            r.out.push(Measurement {
                group: GROUP.into(),
                name: format!("stage: {path}: {name}"),
                value: cost,
                unit: UNIT.into(),
                baseline: None,
                samples: vec![cost],
                target: None,
                check: Some(format!("through {name}: {cumulative:.0} ns net, the stage before: {previous:.0} ns")),
            });
            previous = cumulative;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every program runs behind the wrapper and does its real work on every
    /// repetition (the counters are checked inside `measure`).
    #[test]
    fn every_case_does_its_work() {
        let plan = Plan { runs: 1, repeat: 1_000, big_flows: 4_096, big_table: 1_031 };
        let results = in_scratch_netns(move || measure(plan)).expect("per-packet benchmark");
        for m in &results {
            // Net figures and stage costs are differences: noise can take
            // them below zero in so short a run.
            assert!(m.value > 0.0 || m.name.contains("[net") || m.name.starts_with("stage:"), "{m:?}");
            assert!(m.check.is_some(), "{m:?}");
        }
        assert!(results.iter().any(|m| m.name.starts_with("decap")));
        assert_eq!(results.iter().filter(|m| m.name.starts_with("stage:")).count(), 5 + 7, "every stage of both paths");
    }
}

#[cfg(test)]
mod full {
    /// The whole per-packet group, printed (`GSLB_BENCH_QUICK=1` for quick):
    /// `cargo test --release -p gslb-bench packet::full -- --ignored --nocapture`.
    #[test]
    #[ignore = "takes about a minute; run by hand"]
    fn per_packet() {
        let quick = std::env::var_os("GSLB_BENCH_QUICK").is_some();
        for m in super::run(quick).expect("per-packet benchmark") {
            let samples: Vec<String> = m.samples.iter().map(|s| format!("{s:.1}")).collect();
            println!(
                "{:>7.1} {}  {}\n        samples [{}]  target {}  check {}",
                m.value,
                m.unit,
                m.name,
                samples.join(", "),
                m.target.as_deref().unwrap_or("-"),
                m.check.as_deref().unwrap_or("-")
            );
        }
    }
}
