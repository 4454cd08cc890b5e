//! Live forwarding rate: Mpps through one edge core, on veth pairs in three
//! network namespaces, in one run:
//!
//! ```text
//!  gen ns                 edge ns (system under test)          sink ns
//!  live_gen ──> G ═══════ E [XDP under test]   F ═════════════ S [live_sink]
//!  (test run)   [live_sink] <── reflected                   (backend side)
//! ```
//!
//! - The generator is `live_gen` run through BPF_PROG_TEST_RUN with live
//!   frames on CPU 0: it gives each frame one of 65,536 flows (source
//!   address and UDP source port) and redirects it into `G`.
//! - The edge's receive processing (NAPI of `E`, switched to threaded mode)
//!   runs on CPU 1, alone; the sinks' NAPI threads run on CPU 0 with the
//!   generator.
//! - Cases: a MAC-swap reflector on `E` (the ceiling: frames go back to `G`),
//!   `steer` with one VIP and 8 backends (IPIP to the backends, redirected
//!   out of `F`), and an nftables DNAT load balancer (`jhash` over the same 8
//!   backends, conntrack, kernel forwarding out of `F`).
//! - Rate = frames counted by `live_sink` in a window while the generator
//!   runs flat out, divided by the window. The generator offers more than
//!   the edge forwards (see "sent" against "delivered").

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use aya::{
    maps::{Array, MapData, PerCpuArray},
    programs::{xdp::XdpLinkId, TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use gslb_common::{
    addr_from_ip,
    maglev::{build_table, MaglevBackend},
    testing::{
        names, LiveGenConfig, LIVE_HEADER_SPACE, LIVE_SINK_ALL as SINK_ALL, LIVE_SINK_IPIP as SINK_IPIP,
        LIVE_SINK_TO_BACKENDS as SINK_TO_BACKENDS,
    },
    NextHop, NEXT_HOP_VALID,
};
use gslb_tests::programs::LIVE;
use gslb_userspace::{
    config::Limits,
    decide::plan::{EdgeSettings, VipMatch},
    sys::maps::MapWrites,
    sys::steer::Steer,
};

use crate::report::{median, Measurement};

const GROUP: &str = "forwarding";
const REFLECTOR: &str = "reflector";

const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const VIP_PORT: u16 = 5353;
const BACKENDS: u32 = 8;
/// Flows the generator cycles through.
const FLOWS: u32 = 65_536;
/// Frame length without FCS (64 bytes on the wire).
const FRAME_LEN: usize = 60;
/// Frames per BPF_PROG_TEST_RUN call of the generator.
const CHUNK: u32 = 262_144;
/// Live-frames batch size (the kernel's maximum is 256).
const BATCH: u32 = 256;

const G_MAC: [u8; 6] = [0x02, 0, 0, 0x4c, 0, 0x02];
const E_MAC: [u8; 6] = [0x02, 0, 0, 0x4c, 0, 0x01];
const F_MAC: [u8; 6] = [0x02, 0, 0, 0x4c, 0, 0x11];
const S_MAC: [u8; 6] = [0x02, 0, 0, 0x4c, 0, 0x12];

static NEXT: AtomicU64 = AtomicU64::new(0);

/// Runs the benchmark; `quick` takes 3 short runs per case instead of 5.
pub fn run(quick: bool) -> Result<Vec<Measurement>> {
    let (runs, warmup, window) = if quick {
        (3, Duration::from_millis(150), Duration::from_millis(500))
    } else {
        (5, Duration::from_millis(300), Duration::from_secs(3))
    };
    let lab = Lab::new()?;
    let mut bench = Bench::new(&lab)?;
    let mut out = Vec::new();

    let reflector = bench.case(Case::Reflector, runs, warmup, window)?;
    let reflector_mpps = median(&reflector.samples);
    out.push(reflector.measurement(REFLECTOR.into(), None, None));

    let steer = bench.case(Case::Steer, runs, warmup, window)?;
    let steer_mpps = median(&steer.samples);
    let steer_name = format!("steer: 1 UDP VIP, {BACKENDS} backends, {FLOWS} flows, IPIP, redirect");
    out.push(steer.measurement(
        steer_name,
        Some(REFLECTOR),
        Some(ratio_verdict(">= 90% of reflector", steer_mpps / reflector_mpps, 0.9, "%")),
    ));

    let nft_name = format!("nftables: DNAT jhash over {BACKENDS} backends, conntrack, {FLOWS} flows");
    match bench.case(Case::Nftables, runs, warmup, window) {
        Ok(nft) => {
            let nft_mpps = median(&nft.samples);
            out.push(nft.measurement(
                nft_name,
                Some(REFLECTOR),
                Some(ratio_verdict("steer >= 5x nftables", steer_mpps / nft_mpps, 5.0, "x")),
            ));
        }
        Err(e) => {
            eprintln!("live forwarding: nftables not measured: {e:#}");
            out.push(Measurement {
                group: GROUP.into(),
                name: format!("{nft_name} (not measured)"),
                value: f64::NAN,
                unit: "Mpps".into(),
                baseline: Some(REFLECTOR.into()),
                samples: Vec::new(),
                target: Some("steer >= 5x nftables".into()),
                check: Some(format!("not measured: {e:#}")),
            });
        }
    }
    drop(bench);
    drop(lab);
    Ok(out)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    Reflector,
    Steer,
    Nftables,
}

/// Samples of one case.
struct Samples {
    samples: Vec<f64>,
    sent: u64,
    delivered: u64,
    extra: String,
}

impl Samples {
    fn measurement(self, name: String, baseline: Option<&str>, target: Option<String>) -> Measurement {
        Measurement {
            group: GROUP.into(),
            name,
            value: median(&self.samples),
            unit: "Mpps".into(),
            baseline: baseline.map(Into::into),
            samples: self.samples,
            target,
            check: Some(format!("sent {}, delivered {}{}", self.sent, self.delivered, self.extra)),
        }
    }
}

/// What one run counted.
struct Run {
    mpps: f64,
    sent: u64,
    delivered: u64,
}

/// The loaded bench programs and the edge being measured.
struct Bench<'a> {
    lab: &'a Lab,
    ebpf: Ebpf,
    seq: PerCpuArray<MapData, u64>,
    sink: PerCpuArray<MapData, u64>,
    g_ifindex: u32,
    gen_cpu: usize,
    edge_cpu: usize,
}

impl<'a> Bench<'a> {
    fn new(lab: &'a Lab) -> Result<Bench<'a>> {
        let cpus = allowed_cpus()?;
        ensure!(!cpus.is_empty(), "no CPU allowed");
        let gen_cpu = cpus[0];
        // With one CPU the edge shares it with the generator.
        let edge_cpu = *cpus.get(1).unwrap_or(&cpus[0]);

        let mut ebpf = EbpfLoader::new().load(LIVE).context("loading the live eBPF object")?;
        for name in ["live_gen", "live_reflect", "live_sink", "live_pass"] {
            let p: &mut Xdp = ebpf.program_mut(name).with_context(|| format!("no {name} program"))?.try_into()?;
            p.load().with_context(|| format!("the verifier refused {name}"))?;
        }
        let g_ifindex = lab.ifindex(&lab.gen, &lab.g)?;
        let mut config: Array<MapData, LiveGenConfig> =
            Array::try_from(ebpf.take_map(names::LIVE_GEN_CONFIG).context("no LIVE_GEN_CONFIG")?)?;
        let mut header = [0u8; LIVE_HEADER_SPACE];
        header[..42].copy_from_slice(&frame()[..42]);
        config.set(0, LiveGenConfig { ifindex: g_ifindex, flows: FLOWS, header }, 0)?;
        let seq = PerCpuArray::try_from(ebpf.take_map(names::LIVE_GEN_SEQ).context("no LIVE_GEN_SEQ")?)?;
        let sink = PerCpuArray::try_from(ebpf.take_map(names::LIVE_SINK).context("no LIVE_SINK")?)?;
        let mut bench = Bench { lab, ebpf, seq, sink, g_ifindex, gen_cpu, edge_cpu };
        // The sinks stay for the whole run, their NAPI beside the generator.
        bench.attach("live_sink", &lab.gen, &lab.g)?;
        bench.attach("live_sink", &lab.sink, &lab.s)?;
        lab.pin_napi(&lab.gen, &lab.g, gen_cpu, true)?;
        lab.pin_napi(&lab.sink, &lab.s, gen_cpu, true)?;
        Ok(bench)
    }

    fn attach(&mut self, program: &str, ns: &str, ifname: &str) -> Result<XdpLinkId> {
        let _in = InNs::enter(ns)?;
        let p: &mut Xdp = self.ebpf.program_mut(program).context("program")?.try_into()?;
        p.attach(ifname, XdpMode::Driver).with_context(|| format!("attaching {program} to {ifname}"))
    }

    fn detach(&mut self, program: &str, link: XdpLinkId) -> Result<()> {
        let p: &mut Xdp = self.ebpf.program_mut(program).context("program")?.try_into()?;
        p.detach(link).with_context(|| format!("detaching {program}"))
    }

    /// Sets up one case on the edge, runs it `runs` times, tears it down.
    fn case(&mut self, case: Case, runs: usize, warmup: Duration, window: Duration) -> Result<Samples> {
        let lab = self.lab;
        match case {
            Case::Reflector => {
                let link = self.attach("live_reflect", &lab.edge, &lab.e)?;
                let result = self.runs(SINK_ALL, runs, warmup, window);
                self.detach("live_reflect", link)?;
                result
            }
            Case::Steer => {
                let mut steer = bench_edge()?;
                // The next hop the agent resolves here (S's MAC, out of F),
                // as `sys::next_hops` does: no route lookup per packet.
                let f_ifindex = lab.ifindex(&lab.edge, &lab.f)?;
                let hop =
                    NextHop { ifindex: f_ifindex, mtu: 1500, flags: NEXT_HOP_VALID, dst_mac: S_MAC, src_mac: F_MAC };
                for id in 1..=BACKENDS {
                    steer.set_next_hop(id, Some(hop))?;
                }
                let link = {
                    let _in = InNs::enter(&lab.edge)?;
                    steer.program().attach(&lab.e, XdpMode::Driver).context("attaching steer")?
                };
                let ipip_before = self.sink_count(SINK_IPIP)?;
                let result = self.runs(SINK_TO_BACKENDS, runs, warmup, window);
                let ipip = self.sink_count(SINK_IPIP)? - ipip_before;
                let stats = steer.global_stats();
                steer.program().detach(link).context("detaching steer")?;
                result.map(|mut s| {
                    s.extra = format!(", IPIP {ipip}");
                    if let Ok(g) = stats {
                        s.extra +=
                            &format!(", steer forwarded {} dropped {} passed {}", g.forwarded, g.dropped, g.passed);
                    }
                    s
                })
            }
            Case::Nftables => {
                lab.nft(&nft_ruleset())?;
                // The veth takes redirected frames only with an XDP program.
                let link = self.attach("live_pass", &lab.edge, &lab.e)?;
                let result = self.runs(SINK_TO_BACKENDS, runs, warmup, window);
                self.detach("live_pass", link)?;
                let _ = lab.nft("delete table ip gslb_bench");
                result
            }
        }
    }

    fn runs(&mut self, slot: u32, runs: usize, warmup: Duration, window: Duration) -> Result<Samples> {
        // The attach made a NAPI instance for E: run it on the edge CPU.
        self.lab.pin_napi(&self.lab.edge, &self.lab.e, self.edge_cpu, false)?;
        let frame = frame();
        let mut s = Samples { samples: Vec::new(), sent: 0, delivered: 0, extra: String::new() };
        for _ in 0..runs {
            let run = self.one_run(&frame, slot, warmup, window)?;
            s.samples.push(run.mpps);
            s.sent += run.sent;
            s.delivered += run.delivered;
        }
        ensure!(s.delivered > 0, "nothing reached the sink (sent {})", s.sent);
        Ok(s)
    }

    fn sink_count(&self, slot: u32) -> Result<u64> {
        Ok(self.sink.get(&slot, 0)?.iter().sum())
    }

    fn gen_count(&self) -> Result<u64> {
        Ok(self.seq.get(&0, 0)?.iter().sum())
    }

    /// Generates flat out on the generator CPU; counts delivered frames in
    /// a window after `warmup`.
    fn one_run(&self, frame: &[u8], slot: u32, warmup: Duration, window: Duration) -> Result<Run> {
        let gen: &Xdp = self.ebpf.program("live_gen").context("no live_gen")?.try_into()?;
        let (sent0, delivered0) = (self.gen_count()?, self.sink_count(slot)?);
        let stop = AtomicBool::new(false);
        let ctx: Vec<u8> =
            [0, frame.len() as u32, 0, self.g_ifindex, 0, 0].iter().flat_map(|w: &u32| w.to_ne_bytes()).collect();
        let (gen_cpu, sink) = (self.gen_cpu, &self.sink);
        let mpps = std::thread::scope(|scope| -> Result<f64> {
            let sampler = scope.spawn(|| -> Result<f64> {
                let _ = pin_thread(gen_cpu);
                std::thread::sleep(warmup);
                let read = || -> Result<u64> { Ok(sink.get(&slot, 0)?.iter().sum()) };
                let (c0, t0) = (read(), Instant::now());
                std::thread::sleep(window);
                let (c1, t1) = (read(), Instant::now());
                stop.store(true, Ordering::Relaxed);
                Ok((c1? - c0?) as f64 / (t1 - t0).as_secs_f64() / 1e6)
            });
            let generated = std::thread::scope(|inner| {
                inner
                    .spawn(|| -> Result<()> {
                        pin_thread(gen_cpu)?;
                        let _in = InNs::enter(&self.lab.gen)?;
                        while !stop.load(Ordering::Relaxed) {
                            let mut opts = TestRunOptions::new();
                            opts.data_in = Some(frame);
                            opts.ctx_in = Some(&ctx);
                            opts.repeat = CHUNK;
                            opts.attrs = TestRunAttrs::new().xdp_live_frames(BATCH);
                            gen.test_run(opts).context("live-frames test run of live_gen")?;
                        }
                        Ok(())
                    })
                    .join()
                    .expect("generator thread")
            });
            if let Err(e) = generated {
                stop.store(true, Ordering::Relaxed);
                let _ = sampler.join();
                return Err(e);
            }
            sampler.join().expect("sampler thread")
        })?;
        // Let the rings drain before the totals are read.
        std::thread::sleep(Duration::from_millis(20));
        Ok(Run { mpps, sent: self.gen_count()? - sent0, delivered: self.sink_count(slot)? - delivered0 })
    }
}

fn backend(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, i as u8)
}

/// `steer` with one UDP VIP over `BACKENDS` backends, tunnels from F's
/// address.
fn bench_edge() -> Result<Steer> {
    let limits = Limits { max_vips: 4, max_backends: 16, max_flows: 1 << 20, table_size: 4_099 };
    let mut steer = Steer::load(limits)?;
    steer.set_edge_config(&EdgeSettings::new(Ipv4Addr::new(10, 78, 0, 1), None))?;
    let mut backends = Vec::new();
    for id in 1..=BACKENDS {
        let addr = IpAddr::V4(backend(id));
        steer.set_backend(id, addr, 0)?;
        backends.push(MaglevBackend { id, addr: addr_from_ip(addr), weight: 100 });
    }
    let table = build_table(&backends, limits.table_size);
    let vip = VipMatch { address: IpAddr::V4(VIP), port: VIP_PORT, proto: 17 };
    steer.set_vip(vip, 0, false, &table)?;
    Ok(steer)
}

fn nft_ruleset() -> String {
    let map: Vec<String> = (1..=BACKENDS).map(|i| format!("{} : {}", i - 1, backend(i))).collect();
    format!(
        "table ip gslb_bench {{\n  chain pre {{\n    type nat hook prerouting priority dstnat; policy accept;\n    \
         ip daddr {VIP} udp dport {VIP_PORT} dnat to jhash ip saddr . udp sport mod {BACKENDS} map {{ {} }}\n  }}\n}}\n",
        map.join(", ")
    )
}

/// The generator's template: UDP from 10.1.0.0 (the generator fills in the
/// flow) to the VIP, addressed to E's MAC.
fn frame() -> Vec<u8> {
    let mut f = Vec::with_capacity(FRAME_LEN);
    f.extend_from_slice(&E_MAC);
    f.extend_from_slice(&G_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let ip_len = (FRAME_LEN - 14) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[10, 1, 0, 0]);
    ip[16..20].copy_from_slice(&VIP.octets());
    f.extend_from_slice(&ip);
    let udp_len = ip_len - 20;
    f.extend_from_slice(&10_000u16.to_be_bytes());
    f.extend_from_slice(&VIP_PORT.to_be_bytes());
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.resize(FRAME_LEN, 0x5a);
    f
}

/// A "at least `want`" target and whether `got` met it, or by how much it
/// missed.
fn ratio_verdict(target: &str, got: f64, want: f64, unit: &str) -> String {
    let show = |v: f64| if unit == "%" { format!("{:.0}%", v * 100.0) } else { format!("{v:.1}x") };
    if got >= want {
        format!("{target} (got {}): met", show(got))
    } else {
        format!("{target} (got {}): MISSED by {}", show(got), show(want - got))
    }
}

fn sh(cmd: &str) -> Result<String> {
    let out = Command::new("sh").args(["-c", cmd]).output().context("spawning sh")?;
    if !out.status.success() {
        bail!("`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn mac(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is valid; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    ensure!(rc == 0, "sched_getaffinity: {}", std::io::Error::last_os_error());
    Ok((0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect())
}

fn set_affinity(tid: libc::pid_t, cpu: usize) -> Result<()> {
    // SAFETY: as above.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    let rc = unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    ensure!(rc == 0, "sched_setaffinity({tid}, {cpu}): {}", std::io::Error::last_os_error());
    Ok(())
}

/// Pins the calling thread (only ever a thread spawned for the purpose).
fn pin_thread(cpu: usize) -> Result<()> {
    set_affinity(0, cpu)
}

/// The calling thread inside a named network namespace until dropped.
struct InNs {
    orig: File,
}

impl InNs {
    fn enter(ns: &str) -> Result<InNs> {
        let orig = File::open("/proc/thread-self/ns/net").context("opening this thread's netns")?;
        let target = File::open(format!("/run/netns/{ns}")).with_context(|| format!("opening netns {ns}"))?;
        // SAFETY: setns on this thread with a valid namespace fd.
        let rc = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
        ensure!(rc == 0, "setns({ns}): {}", std::io::Error::last_os_error());
        Ok(InNs { orig })
    }
}

impl Drop for InNs {
    fn drop(&mut self) {
        // SAFETY: returns to the namespace the thread came from.
        let rc = unsafe { libc::setns(self.orig.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "cannot return to the original netns: {}", std::io::Error::last_os_error());
    }
}

/// Three namespaces and two veth pairs; `Drop` deletes them (and so the
/// links), also when setup fails half way.
struct Lab {
    gen: String,
    edge: String,
    sink: String,
    /// Interface names are unique system-wide, so their NAPI threads are
    /// found by name.
    g: String,
    e: String,
    f: String,
    s: String,
    created: Vec<String>,
}

impl Lab {
    fn new() -> Result<Lab> {
        let id = (std::process::id() as u64 * 64 + NEXT.fetch_add(1, Ordering::Relaxed)) & 0xf_ffff;
        let ns = |n: &str| format!("gslb-live-{}-{id:05x}-{n}", std::process::id());
        let ifn = |n: &str| format!("lv{id:05x}{n}");
        let mut lab = Lab {
            gen: ns("gen"),
            edge: ns("edge"),
            sink: ns("sink"),
            g: ifn("g"),
            e: ifn("e"),
            f: ifn("f"),
            s: ifn("s"),
            created: Vec::new(),
        };
        for n in [lab.gen.clone(), lab.edge.clone(), lab.sink.clone()] {
            sh(&format!("ip netns add {n}"))?;
            lab.created.push(n);
        }
        let (gen, edge, sink, g, e, f, s) = (&lab.gen, &lab.edge, &lab.sink, &lab.g, &lab.e, &lab.f, &lab.s);
        sh(&format!(
            "ip -n {gen} link add {g} address {} type veth peer name {e} netns {edge} address {}",
            mac(G_MAC),
            mac(E_MAC)
        ))?;
        sh(&format!(
            "ip -n {edge} link add {f} address {} type veth peer name {s} netns {sink} address {}",
            mac(F_MAC),
            mac(S_MAC)
        ))?;
        for (n, links) in [(gen, vec!["lo", g]), (edge, vec!["lo", e, f]), (sink, vec!["lo", s])] {
            for l in links {
                sh(&format!("ip -n {n} link set {l} up"))?;
            }
        }
        sh(&format!("ip -n {gen} addr add 10.77.0.2/24 dev {g}"))?;
        sh(&format!("ip -n {gen} neigh replace 10.77.0.1 lladdr {} dev {g} nud permanent", mac(E_MAC)))?;
        sh(&format!("ip -n {gen} route add default via 10.77.0.1"))?;
        sh(&format!("ip -n {edge} addr add 10.77.0.1/24 dev {e}"))?;
        sh(&format!("ip -n {edge} addr add 10.78.0.1/24 dev {f}"))?;
        sh(&format!("ip -n {edge} neigh replace 10.77.0.2 lladdr {} dev {e} nud permanent", mac(G_MAC)))?;
        sh(&format!("ip -n {edge} neigh replace 10.78.0.2 lladdr {} dev {f} nud permanent", mac(S_MAC)))?;
        sh(&format!("ip -n {edge} route add 198.51.100.0/24 via 10.78.0.2 dev {f}"))?;
        sh(&format!("ip -n {edge} route add 10.1.0.0/16 via 10.77.0.2 dev {e}"))?;
        sh(&format!(
            "ip netns exec {edge} sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 \
             net.ipv4.conf.default.rp_filter=0 net.ipv4.conf.{e}.rp_filter=0 net.ipv4.conf.all.send_redirects=0"
        ))?;
        sh(&format!("ip -n {sink} addr add 10.78.0.2/24 dev {s}"))?;
        Ok(lab)
    }

    fn ifindex(&self, ns: &str, ifname: &str) -> Result<u32> {
        let _in = InNs::enter(ns)?;
        let c = std::ffi::CString::new(ifname)?;
        // SAFETY: a valid C string; looked up in this thread's namespace.
        let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
        ensure!(index != 0, "no interface {ifname} in {ns}");
        Ok(index)
    }

    fn nft(&self, script: &str) -> Result<()> {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.edge, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("running nft (is nftables installed?)")?;
        child.stdin.take().expect("stdin").write_all(script.as_bytes())?;
        let out = child.wait_with_output()?;
        ensure!(out.status.success(), "nft -f failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        Ok(())
    }

    /// Switches `ifname`'s NAPI to a kernel thread and pins that thread.
    fn pin_napi(&self, ns: &str, ifname: &str, cpu: usize, fifo: bool) -> Result<()> {
        sh(&format!("ip netns exec {ns} sh -c 'echo 1 > /sys/class/net/{ifname}/threaded'"))?;
        let comm: String = format!("napi/{ifname}-").chars().take(15).collect();
        let mut pinned = 0;
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<libc::pid_t>() else { continue };
            let Ok(name) = std::fs::read_to_string(entry.path().join("comm")) else { continue };
            if name.trim_end().starts_with(&comm) {
                set_affinity(pid, cpu)?;
                if fifo {
                    // The sinks must keep up while the generator runs flat
                    // out on their CPU: they preempt it.
                    let param = libc::sched_param { sched_priority: 50 };
                    // SAFETY: a valid pid and parameter.
                    let rc = unsafe { libc::sched_setscheduler(pid, libc::SCHED_FIFO, &param) };
                    ensure!(rc == 0, "SCHED_FIFO for {name}: {}", std::io::Error::last_os_error());
                }
                pinned += 1;
            }
        }
        ensure!(pinned > 0, "no NAPI thread for {ifname}");
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for n in self.created.drain(..) {
            let _ = Command::new("ip").args(["netns", "del", &n]).status();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A very short run of the lab: the reflector and `steer` deliver
    /// frames to the sinks.
    #[test]
    fn live_forwarding_smoke() {
        let lab = Lab::new().expect("lab");
        let mut bench = Bench::new(&lab).expect("bench programs");
        let (warmup, window) = (Duration::from_millis(20), Duration::from_millis(100));
        for case in [Case::Reflector, Case::Steer] {
            let s = bench.case(case, 1, warmup, window).expect("case");
            eprintln!("{case:?}: {:.2} Mpps, sent {}, delivered {}{}", s.samples[0], s.sent, s.delivered, s.extra);
            assert!(s.delivered > 1_000, "{case:?}: only {} of {} frames delivered", s.delivered, s.sent);
        }
    }
}

#[cfg(test)]
mod report_tests {
    /// The whole benchmark; `GSLB_LIVE_FULL=1` for the full (not quick) run.
    #[test]
    #[ignore = "takes half a minute; run by hand"]
    fn live_forwarding_report() {
        let quick = std::env::var("GSLB_LIVE_FULL").is_err();
        for m in super::run(quick).expect("live bench") {
            eprintln!("{}: {:.3} {} {:?} {:?} {:?}", m.name, m.value, m.unit, m.samples, m.target, m.check);
        }
    }
}
