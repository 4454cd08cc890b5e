//! A SYN-flood generator: `flood_syn` (gslb-ebpf-testing/src/flood.rs) run through
//! BPF_PROG_TEST_RUN with live frames, so every frame it writes is really
//! transmitted through the interface it redirects into.
//!
//! Each frame is a complete Ethernet/IPv4/TCP SYN to one address and port,
//! from its own source address (in a /10) and port. [`SynFlood::run`] sends
//! exactly the frames asked for, in chunks, at most at a given rate (a
//! receiver on a shared machine would otherwise drop most of them), and
//! counts what the program sent in a map.
//!
//! [`flood_edge`] aims it at an edge of the lab from the router's side of
//! the edge's link, so the SYNs arrive as routed traffic does.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use aya::maps::{Array, MapData, PerCpuArray};
use aya::programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp};
use aya::{Ebpf, EbpfLoader};
use gslb_common::testing::{names, FloodConfig, SYN_LEN};

use crate::lab::{EdgeNode, Lab, Node};
use crate::programs::FLOOD;

/// Source addresses of flood SYNs: 100.64.0.0/10 (shared address space),
/// which nothing in the lab routes, so answers to them go nowhere.
pub const FLOOD_SOURCE_NET: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 0);
/// Prefix length of [`FLOOD_SOURCE_NET`]; `flood_syn` fills the other bits.
pub const FLOOD_SOURCE_LEN: u8 = 10;

/// Frames on the wire without FCS: 54 bytes of headers, padded.
const FRAME_LEN: usize = 60;
/// Live-frames batch size (the kernel's maximum is 256).
const BATCH: u32 = 256;
/// Frames per BPF_PROG_TEST_RUN call at most.
const MAX_CHUNK: u64 = 8_192;

/// Where the SYNs go, as seen from the namespace the flood runs in.
#[derive(Clone, Copy, Debug)]
pub struct FloodTarget {
    /// The interface frames are redirected into (in the flood's namespace).
    pub ifindex: u32,
    /// That interface's MAC: the frames' source.
    pub src_mac: [u8; 6],
    /// The receiver's MAC: the frames' destination.
    pub dst_mac: [u8; 6],
    /// Destination address and port of every SYN.
    pub dst: SocketAddrV4,
}

/// What to send.
#[derive(Clone, Copy, Debug)]
pub struct Flood {
    /// SYNs in all.
    pub frames: u64,
    /// Consecutive SYNs per spoofed flow: 1 for a plain flood, 2 for one
    /// whose every SYN is retransmitted once.
    pub per_flow: u32,
    /// SYNs a second, at most.
    pub rate_pps: u64,
}

/// What a flood did.
#[derive(Clone, Copy, Debug)]
pub struct FloodReport {
    /// Frames `flood_syn` wrote and redirected (its own count).
    pub sent: u64,
    pub elapsed: Duration,
}

/// The loaded generator.
pub struct SynFlood {
    ebpf: Ebpf,
}

impl SynFlood {
    pub fn load() -> Result<SynFlood> {
        let mut ebpf = EbpfLoader::new().load(FLOOD).context("loading the flood eBPF object")?;
        let program: &mut Xdp = ebpf.program_mut("flood_syn").context("no flood_syn program")?.try_into()?;
        program.load().context("the verifier refused flood_syn")?;
        Ok(SynFlood { ebpf })
    }

    /// Frames sent since the program was loaded.
    pub fn sent(&self) -> Result<u64> {
        let map = self.ebpf.map(names::FLOOD_SENT).context("no FLOOD_SENT")?;
        let sent: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map)?;
        Ok(sent.get(&0, 0)?.iter().sum())
    }

    /// Sends `flood.frames` SYNs to `target`. Must run on a thread inside
    /// the namespace of `target.ifindex`.
    pub fn run(&mut self, target: &FloodTarget, flood: &Flood) -> Result<FloodReport> {
        let Flood { frames, per_flow, rate_pps } = *flood;
        ensure!(rate_pps > 0 && per_flow > 0, "the flood rate and frames per flow must be positive");
        let config = FloodConfig {
            ifindex: target.ifindex,
            src_net: u32::from(FLOOD_SOURCE_NET),
            per_flow,
            header: syn_template(target),
        };
        let mut map: Array<&mut MapData, FloodConfig> =
            Array::try_from(self.ebpf.map_mut(names::FLOOD_CONFIG).context("no FLOOD_CONFIG")?)?;
        map.set(0, config, 0)?;

        let before = self.sent()?;
        let program: &Xdp = self.ebpf.program("flood_syn").context("no flood_syn")?.try_into()?;
        let frame = [0u8; FRAME_LEN];
        // xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex.
        let ctx: Vec<u8> =
            [0, FRAME_LEN as u32, 0, target.ifindex, 0, 0].iter().flat_map(|w: &u32| w.to_ne_bytes()).collect();
        // About 100 chunks a second at the requested rate.
        let chunk = (rate_pps / 100).clamp(BATCH as u64, MAX_CHUNK);
        let start = Instant::now();
        let mut done = 0;
        while done < frames {
            let n = chunk.min(frames - done);
            let mut opts = TestRunOptions::new();
            opts.data_in = Some(&frame);
            opts.ctx_in = Some(&ctx);
            opts.repeat = n as u32;
            opts.attrs = TestRunAttrs::new().xdp_live_frames(BATCH);
            program.test_run(opts).context("live-frames test run of flood_syn")?;
            done += n;
            // Pacing, not synchronisation: stay at or under the rate.
            let due = Duration::from_secs_f64(done as f64 / rate_pps as f64);
            if let Some(ahead) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
        let elapsed = start.elapsed();
        let sent = self.sent()? - before;
        if sent != frames {
            bail!("flood_syn counted {sent} frames sent, {frames} were asked for");
        }
        Ok(FloodReport { sent, elapsed })
    }
}

/// The SYN every frame starts from; `flood_syn` fills in the rest.
fn syn_template(target: &FloodTarget) -> [u8; 56] {
    let mut h = [0u8; 56];
    h[0..6].copy_from_slice(&target.dst_mac);
    h[6..12].copy_from_slice(&target.src_mac);
    h[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut h[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 6;
    ip[16..20].copy_from_slice(&target.dst.ip().octets());
    let tcp = &mut h[34..SYN_LEN];
    tcp[2..4].copy_from_slice(&target.dst.port().to_be_bytes());
    tcp[12] = 5 << 4; // data offset: 20 bytes
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64_240u16.to_be_bytes());
    h
}

/// An interface's MAC, read with `ip -j link` inside the node.
pub fn mac_of(lab: &Lab, node: impl Into<Node>, iface: &str) -> Result<[u8; 6]> {
    let node = node.into();
    let out = lab.exec(node, &["ip", "-j", "link", "show", "dev", iface])?;
    let links: serde_json::Value = serde_json::from_str(&out).context("parsing `ip -j link`")?;
    let text = links[0]["address"].as_str().with_context(|| format!("no MAC for {iface} in {node}"))?;
    let bytes: Vec<u8> = text.split(':').map(|b| u8::from_str_radix(b, 16)).collect::<Result<_, _>>()?;
    bytes.try_into().map_err(|_| anyhow::anyhow!("{iface} in {node}: {text} is not a MAC"))
}

/// Floods `edge` with SYNs to `dst` from the router: frames go out of the
/// router's interface towards the edge, addressed to the edge's MAC,
/// exactly as routed traffic arrives.
pub fn flood_edge(lab: &Lab, edge: EdgeNode, dst: SocketAddrV4, flood: Flood) -> Result<FloodReport> {
    let info = lab.edge(edge);
    let src_mac = mac_of(lab, Node::Router, info.router_iface)?;
    let dst_mac = mac_of(lab, edge, info.iface)?;
    let iface = info.router_iface;
    let mut generator = SynFlood::load()?;
    let run = lab.in_ns(Node::Router, move || -> Result<FloodReport> {
        let name = std::ffi::CString::new(iface)?;
        // SAFETY: a valid C string, looked up in this thread's namespace.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        ensure!(ifindex != 0, "no interface {iface} in the router");
        generator.run(&FloodTarget { ifindex, src_mac, dst_mac, dst }, &flood)
    });
    run.join().map_err(|_| anyhow::anyhow!("the flood thread panicked"))?
}
