//! Memory: what the data plane's maps take for large flow tables and many
//! VIPs (the kernel's own accounting, `memlock:` in the map fd's fdinfo),
//! and the agent's resident memory with a large config.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use aya::maps::MapInfo;
use gslb_common::DEFAULT_TABLE_SIZE;
use gslb_userspace::view::admin::{self, Request};
use gslb_userspace::{config::Limits, sys::steer::Steer};

use crate::gen::{self, Shape};
use crate::report::Measurement;

const GROUP: &str = "memory";
const MIB: f64 = 1024.0 * 1024.0;

/// One BPF map this process holds open.
#[derive(Clone, Debug)]
struct MapMemory {
    fd: u32,
    name: String,
    max_entries: u64,
    memlock: u64,
}

/// Every BPF map fd open in this process.
fn map_fds() -> Result<BTreeSet<u32>> {
    let mut fds = BTreeSet::new();
    for entry in std::fs::read_dir("/proc/self/fd").context("reading /proc/self/fd")? {
        let entry = entry?;
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        if std::fs::read_link(entry.path()).is_ok_and(|target| target.as_os_str() == "anon_inode:bpf-map") {
            fds.insert(fd);
        }
    }
    Ok(fds)
}

/// A field of an fdinfo file.
fn field(fdinfo: &str, key: &str) -> Option<u64> {
    fdinfo.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':')?.trim().parse().ok())
}

fn map_memory(fd: u32) -> Result<MapMemory> {
    let path = format!("/proc/self/fdinfo/{fd}");
    let fdinfo = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let memlock = field(&fdinfo, "memlock").with_context(|| format!("no memlock in {path}"))?;
    let max_entries = field(&fdinfo, "max_entries").unwrap_or(0);
    let name = field(&fdinfo, "map_id")
        .and_then(|id| MapInfo::from_id(id as u32).ok())
        .and_then(|info| info.name_as_str().map(str::to_string))
        .unwrap_or_else(|| format!("fd {fd}"));
    Ok(MapMemory { fd, name, max_entries, memlock })
}

/// Loads `steer` with `limits` and reads the memory of every map it
/// opened.
fn loaded_maps(limits: Limits) -> Result<Vec<MapMemory>> {
    let before = map_fds()?;
    let steer = Steer::load(limits)?;
    let after = map_fds()?;
    let maps = after.difference(&before).map(|&fd| map_memory(fd)).collect::<Result<Vec<_>>>()?;
    drop(steer);
    if maps.is_empty() {
        bail!("loading steer opened no map fds");
    }
    Ok(maps)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB
}

/// One measurement: the memory of the map named `focus` (matched on its
/// kernel name, which is cut to 15 bytes), with every map in the check.
fn maps_measurement(name: &str, limits: Limits, focus: &str) -> Result<Measurement> {
    let maps = loaded_maps(limits)?;
    let total: u64 = maps.iter().map(|m| m.memlock).sum();
    let map = maps
        .iter()
        .find(|m| focus.starts_with(m.name.as_str()) && !m.name.is_empty())
        .with_context(|| format!("no map {focus} among {:?}", maps.iter().map(|m| &m.name).collect::<Vec<_>>()))?;
    let mut largest = maps.clone();
    largest.sort_by_key(|m| std::cmp::Reverse(m.memlock));
    let others: Vec<String> = largest.iter().take(4).map(|m| format!("{} {:.1}", m.name, mib(m.memlock))).collect();
    Ok(Measurement::from_samples(GROUP, name, "MiB", vec![mib(map.memlock)]).check(format!(
        "{} = {} entries, {:.0} B/entry (fd {}); all {} maps {:.1} MiB: {} ...",
        map.name,
        map.max_entries,
        map.memlock as f64 / map.max_entries.max(1) as f64,
        map.fd,
        maps.len(),
        mib(total),
        others.join(", ")
    )))
}

pub fn run(quick: bool) -> Result<Vec<Measurement>> {
    let base = Limits::default();
    let flows_1m =
        maps_measurement("map memory: flow table, 1M entries", Limits { max_flows: 1 << 20, ..base }, "FLOWS")?;
    let per_entry = flows_1m.value * 1024.0 * 1024.0 / (1u64 << 20) as f64;
    let verdict = if per_entry <= 64.0 { "met".into() } else { format!("MISSED by {:.0} B", per_entry - 64.0) };
    let flows_1m = flows_1m
        .target(format!("<= 64 B per flow entry (got {per_entry:.0} B, 4 flows per 64-byte bucket): {verdict}"));
    let mut results = vec![
        flows_1m,
        maps_measurement("map memory: flow table, 10M entries", Limits { max_flows: 10_000_000, ..base }, "FLOWS")?
            .baseline("map memory: flow table, 1M entries"),
        maps_measurement(
            "map memory: Maglev tables, 512 VIPs, M = 65,537",
            Limits { max_vips: 512, table_size: DEFAULT_TABLE_SIZE, ..base },
            "MAGLEV",
        )?,
        maps_measurement(
            "map memory: owner history (second chance), 512 VIPs, M = 65,537",
            Limits { max_vips: 512, table_size: DEFAULT_TABLE_SIZE, ..base },
            "OWNER_HISTORY",
        )?,
    ];
    let small = "agent resident memory: 1 VIP x 8 backends, M = 65,537";
    results.push(agent_rss(small, &Shape::new(1, 8, DEFAULT_TABLE_SIZE))?);
    let table_size = if quick { 4_099 } else { DEFAULT_TABLE_SIZE };
    let size = if quick { "M = 4099 (quick)".to_string() } else { "M = 65,537".to_string() };
    let name = format!("agent resident memory: 512 VIPs x 1,000 backends, {size}");
    let large = agent_rss(&name, &Shape::new(512, 1000, table_size))?.baseline(small);
    // The target is for M = 65,537.
    results.push(if quick { large } else { large.at_most(150.0) });
    Ok(results)
}

/// A `kB` line of /proc/PID/status, in bytes.
fn status_kb(pid: u32, key: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    field(&status.replace(" kB", ""), key).map(|kb| kb * 1024).with_context(|| format!("no {key} for pid {pid}"))
}

/// The agent (`gslb-lab gslb run`) on a veth in a scratch namespace, with
/// a generated config: its resident memory once it answers `status`.
fn agent_rss(name: &str, shape: &Shape) -> Result<Measurement> {
    let lab_binary = crate::lab_binary()?;
    let id = format!("gslb-bench-{}-{}", std::process::id(), shape.vips);
    let run_dir = std::env::temp_dir().join(&id);
    std::fs::create_dir_all(&run_dir)?;
    let shape = Shape {
        interface: gslb_tests::netns::EDGE_IF.into(),
        admin_socket: run_dir.join("gslb.sock"),
        bpffs_pin: PathBuf::from("/sys/fs/bpf").join(&id),
        ..shape.clone()
    };
    let config = run_dir.join("gslb.toml");
    std::fs::write(&config, gen::config_text(&shape))?;
    let log = run_dir.join("agent.log");
    let (socket, pin) = (shape.admin_socket.clone(), shape.bpffs_pin.clone());
    let outcome = gslb_tests::netns::in_scratch_netns(move || -> Result<(u64, u64, Duration)> {
        let child = Command::new(&lab_binary)
            .arg("gslb")
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting the agent")?;
        let mut agent = Agent(child);
        let started = Instant::now();
        loop {
            if admin::request(&socket, &Request::Status).is_ok_and(|r| r.ok) {
                break;
            }
            if let Some(status) = agent.0.try_wait()? {
                bail!("the agent exited ({status}):\n{}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            if started.elapsed() > Duration::from_secs(300) {
                bail!("the agent did not answer within 300 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let ready = started.elapsed();
        let pid = agent.0.id();
        let rss = status_kb(pid, "VmRSS")?;
        let peak = status_kb(pid, "VmHWM")?;
        drop(agent);
        Ok((rss, peak, ready))
    });
    // The agent is gone (killed and reaped): its pins go too.
    remove_pins(&pin);
    let _ = std::fs::remove_dir_all(&run_dir);
    let (rss, peak, ready) = outcome?;
    Ok(Measurement::from_samples(GROUP, name, "MiB", vec![mib(rss)]).check(format!(
        "VmRSS once it answered status ({:.1} s after start); peak VmHWM {:.1} MiB",
        ready.as_secs_f64(),
        mib(peak)
    )))
}

/// A running agent, killed and reaped on drop.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn remove_pins(pin: &Path) {
    if let Err(e) = std::fs::remove_dir_all(pin) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!("gslb-bench: removing {}: {e}", pin.display());
        }
    }
}
