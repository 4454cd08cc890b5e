//! The fleet (issue 15) in the namespace lab: a real three-member etcd
//! cluster on the router and both edges' real agents with `[fleet]`.
//!
//! - **Push to applied everywhere**: `gslb fleet push --all-at-once` of a
//!   changed document (two weight settings, alternately), timed from just
//!   before the command starts to the moment the last edge's `gslb status`
//!   reports the new `fleet.applied_revision` (polled every 10 ms while the
//!   command runs), and the command's own wall time.
//! - **A backend verdict**: one backend's health checks blocked on both
//!   edges (nftables); from the first edge's own verdict `down` (the time
//!   stamp of its transition in `gslb status`) to both edges' tables being
//!   without it with equal `fleet.tables_digest` (polled every 10 ms); then
//!   unblocked, and repeated. Next to it, the lab monitor's worst case.
//! - **512 VIPs x 1,000 backends**: the generated document's size against
//!   etcd's default request limit, both agents' resident memory before and
//!   after it is pushed, and the bytes each agent exchanged with etcd
//!   during the push and over a steady minute, counted by nftables in the
//!   edge's namespace.
//!
//! Times are measured, never asserted.

use std::net::IpAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use gslb_tests::deploy::{config_path, fleet_document, Deployment, FleetSetup, Setup, Weights};
use gslb_tests::etcd::{EtcdCluster, CLIENT_PORT, MEMBERS};
use gslb_tests::lab::{BackendNode, EdgeNode, Node, Region};
use gslb_userspace::view::fleet::FleetMemberStatus;
use gslb_userspace::view::status::Status;
use gslb_userspace::view::time::unix_ms;

use crate::gen::{self, Shape};
use crate::report::{max, median, Measurement};

const GROUP: &str = "fleet";
/// How often the agents' status is polled while a change propagates.
const POLL: Duration = Duration::from_millis(10);
/// Bound on any one change reaching both edges.
const TIMEOUT: Duration = Duration::from_secs(30);
/// The backend whose checks are blocked (its IPv4 address only: one
/// backend of the config).
const VICTIM: BackendNode = BackendNode::UsEast1;
/// etcd's default `--max-request-bytes` (1.5 MiB): a revision is one key,
/// written in one request.
const ETCD_REQUEST_LIMIT: usize = 1536 * 1024;
/// The nftables tables the benchmark adds in edge namespaces.
const BLOCK_TABLE: &str = "gslb_bench_block";
const COUNTER_TABLE: &str = "gslb_bench_etcd";
/// After the last edge applied a revision, its report and the other
/// edge's still cross etcd: the push's traffic is counted this much longer.
const PUSH_SETTLE: Duration = Duration::from_secs(2);

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn now_ms() -> u64 {
    unix_ms(std::time::SystemTime::now())
}

fn samples_text(samples: &[f64]) -> String {
    samples.iter().map(|v| format!("{v:.0}")).collect::<Vec<_>>().join(" ")
}

pub fn run(quick: bool) -> Result<Vec<Measurement>> {
    let lab_binary = crate::lab_binary()?;
    let mut results = Vec::new();
    {
        let setup = Setup { monitor: true, fleet: Some(FleetSetup::default()), ..Setup::default() };
        let d = Deployment::start(&lab_binary, &setup).context("deploying the fleet lab")?;
        wait_connected(&d)?;
        results.extend(push_to_applied(&d, &lab_binary, &setup, if quick { 4 } else { 10 })?);
        results.extend(verdict_propagation(&d, if quick { 3 } else { 5 })?);
    }
    results.extend(large_config(&lab_binary, quick)?);
    Ok(results)
}

fn member(status: &Status) -> Result<&FleetMemberStatus> {
    status.fleet.as_ref().with_context(|| format!("{} reports no fleet", status.edge))
}

/// Waits until both agents have a session with etcd.
fn wait_connected(d: &Deployment) -> Result<()> {
    wait_for("both agents connected to etcd", || {
        Ok(EdgeNode::ALL.iter().all(|&edge| d.status(edge).is_ok_and(|s| s.fleet.is_some_and(|f| f.connected))))
    })
}

/// Polls `check` every `POLL` until it holds, at most `TIMEOUT`.
fn wait_for(what: &str, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let started = Instant::now();
    while !check()? {
        if started.elapsed() > TIMEOUT {
            bail!("{what}: not within {TIMEOUT:?}");
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}

fn wait_applied(d: &Deployment, revision: u64) -> Result<()> {
    wait_for(&format!("both edges apply revision {revision}"), || {
        for edge in EdgeNode::ALL {
            if member(&d.status(edge)?)?.applied_revision != Some(revision) {
                return Ok(false);
            }
        }
        Ok(true)
    })
}

/// `gslb fleet push FILE --all-at-once` on the router, as a command not
/// yet started.
fn push_command(d: &Deployment, lab_binary: &Path, file: &Path) -> std::process::Command {
    let mut cmd = d.lab.command(Node::Router, lab_binary);
    cmd.args(["gslb", "fleet", "push"])
        .arg(file)
        .arg("--all-at-once")
        .arg("--config")
        .arg(config_path(&d.lab, EdgeNode::EdgeA))
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null());
    cmd
}

/// The revision a push's output says it stored.
fn stored_revision(stdout: &str) -> Option<u64> {
    stdout.strip_prefix("stored revision ")?.split(';').next()?.parse().ok()
}

/// One timed push, with both edges' status polled every `poll` while the
/// command runs and after.
struct Push {
    /// Start of the command to the last edge reporting the revision.
    applied: Duration,
    /// The command's wall time.
    command: Duration,
    /// Start of the command to the last edge's own `applied_at` stamp.
    applied_stamp_ms: f64,
}

fn timed_push(d: &Deployment, lab_binary: &Path, file: &Path, revision: u64, poll: Duration) -> Result<Push> {
    let mut cmd = push_command(d, lab_binary, file);
    let started_ms = now_ms();
    let started = Instant::now();
    let command = std::thread::spawn(move || {
        let out = cmd.output();
        (out, started.elapsed())
    });
    let mut command = Some(command);
    let mut finished = None;
    let mut seen: [Option<Instant>; 2] = [None, None];
    let mut stamps = [0u64; 2];
    let mut last = Vec::new();
    while seen.iter().any(Option::is_none) || finished.is_none() {
        last.clear();
        for (i, &edge) in EdgeNode::ALL.iter().enumerate() {
            if seen[i].is_some() {
                continue;
            }
            let status = d.status(edge)?;
            let fleet = member(&status)?;
            if fleet.applied_revision == Some(revision) {
                seen[i] = Some(Instant::now());
                stamps[i] = fleet.applied_at_unix_ms.context("an applied revision without its time")?;
            }
            last.push(format!("{edge}: revision {:?}, apply error {:?}", fleet.applied_revision, fleet.apply_error));
        }
        if command.as_ref().is_some_and(|c| c.is_finished()) {
            let (out, wall) =
                command.take().expect("checked").join().map_err(|_| anyhow!("the push thread panicked"))?;
            let out = out.context("running gslb fleet push")?;
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            ensure!(
                out.status.success(),
                "gslb fleet push failed ({}): {stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            ensure!(
                stored_revision(&stdout) == Some(revision),
                "the push stored another revision than {revision}: {stdout}"
            );
            finished = Some(wall);
        }
        if started.elapsed() > TIMEOUT {
            bail!("revision {revision} was not applied by both edges within {TIMEOUT:?}: {}", last.join("; "));
        }
        if seen.iter().any(Option::is_none) {
            std::thread::sleep(poll);
        } else if finished.is_none() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let applied = seen.iter().flatten().max().expect("both seen").duration_since(started);
    let command = finished.expect("the loop waits for it");
    let last_stamp = stamps.iter().copied().max().unwrap_or(0);
    Ok(Push { applied, command, applied_stamp_ms: last_stamp.saturating_sub(started_ms) as f64 })
}

fn heavier_east() -> Weights {
    let mut weights = Weights::default();
    weights.pools.insert(Region::UsEast, 300);
    weights
}

/// Push to applied on both edges, `reps` times, alternating two weight
/// settings so that every push changes the tables.
fn push_to_applied(d: &Deployment, lab_binary: &Path, setup: &Setup, reps: usize) -> Result<Vec<Measurement>> {
    let documents = [fleet_document(setup), fleet_document(&Setup { weights: heavier_east(), ..setup.clone() })];
    ensure!(documents[0] != documents[1], "the two documents are equal");
    // Revision 1, untimed: the edges steer with it.
    d.push("bench-rev1.toml", &documents[0], &["--all-at-once"])?;
    wait_applied(d, 1)?;
    let mut digests = Vec::new();
    let (mut applied, mut commands, mut stamps) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..reps {
        let revision = rep as u64 + 2;
        let file = d.lab.run_dir().join(format!("bench-rev{revision}.toml"));
        std::fs::write(&file, &documents[(rep + 1) % 2]).with_context(|| format!("writing {}", file.display()))?;
        let push = timed_push(d, lab_binary, &file, revision, POLL)?;
        applied.push(ms(push.applied));
        commands.push(ms(push.command));
        stamps.push(push.applied_stamp_ms);
        // Evidence: the tables changed with each revision, alike on both
        // edges (the digest is published after the apply: let it settle).
        let mut both = Vec::new();
        wait_for("both edges report the same tables", || {
            both = EdgeNode::ALL
                .iter()
                .map(|&e| Ok(member(&d.status(e)?)?.tables_digest.clone()))
                .collect::<Result<Vec<_>>>()?;
            Ok(both[0] == both[1])
        })?;
        digests.push(both[0].clone());
        std::thread::sleep(Duration::from_millis(200));
    }
    let alternated = digests.windows(2).all(|w| w[0] != w[1]);
    ensure!(alternated, "a push left the tables as they were: {digests:?}");
    let name = format!("push -> applied on both edges (gslb fleet push --all-at-once, 4 VIPs), median of {reps}");
    Ok(vec![
        Measurement::from_samples(GROUP, &name, "ms", applied.clone()).check(format!(
            "status polled every 10 ms during the push; by the agents' own applied_at stamps: median {:.0} ms, max {:.0} ms; every push changed the tables, equal digests on both edges",
            median(&stamps),
            max(&stamps)
        )),
        Measurement::from_samples(
            GROUP,
            format!("push -> applied on both edges, max of {reps}"),
            "ms",
            vec![max(&applied)],
        )
        .baseline(&name)
        .check(format!("samples: {}", samples_text(&applied))),
        Measurement::from_samples(
            GROUP,
            format!("of which: the gslb fleet push command's wall time, median of {reps}"),
            "ms",
            commands.clone(),
        )
        .baseline(&name)
        .check(format!(
            "process start to exit (connect, read the fleet state, store revision and rollout in one txn); max {:.0} ms",
            max(&commands)
        )),
    ])
}

/// One edge's view of the victim.
struct VictimView {
    /// The edge's own checks say down.
    own_down: bool,
    /// Its latest transition to down since the block, Unix ms.
    down_at_ms: Option<u64>,
    /// Some VIP's table holds it.
    in_tables: bool,
    digest: String,
}

fn victim_view(d: &Deployment, edge: EdgeNode, address: IpAddr, since_ms: u64) -> Result<VictimView> {
    let status = d.status(edge)?;
    let backend = status
        .pools
        .iter()
        .flat_map(|p| &p.backends)
        .find(|b| b.address == address)
        .with_context(|| format!("{edge} does not configure {address}"))?;
    Ok(VictimView {
        own_down: backend.health == "down",
        down_at_ms: backend
            .transitions
            .iter()
            .filter(|t| t.to == "down" && t.at_unix_ms >= since_ms)
            .map(|t| t.at_unix_ms)
            .max(),
        in_tables: status.vips.iter().any(|v| v.backends.iter().any(|b| b.address == address)),
        digest: member(&status)?.tables_digest.clone(),
    })
}

fn views(d: &Deployment, address: IpAddr, since_ms: u64) -> Result<Vec<VictimView>> {
    EdgeNode::ALL.iter().map(|&edge| victim_view(d, edge, address, since_ms)).collect()
}

fn same_digest(views: &[VictimView]) -> bool {
    views.windows(2).all(|w| w[0].digest == w[1].digest)
}

/// nftables in `edge`'s namespace: drop its health checks to `address`.
fn block_checks(d: &Deployment, edge: EdgeNode, address: IpAddr) -> Result<()> {
    let script = format!(
        "table inet {BLOCK_TABLE} {{\n chain out {{\n  type filter hook output priority 0; policy accept;\n  ip daddr {address} tcp dport 8080 drop\n }}\n}}\n"
    );
    nft_script(d, edge, "block", &script)
}

fn unblock_checks(d: &Deployment, edge: EdgeNode) -> Result<()> {
    d.lab.exec(edge, &["nft", "delete", "table", "inet", BLOCK_TABLE]).map(|_| ())
}

fn nft_script(d: &Deployment, edge: EdgeNode, name: &str, script: &str) -> Result<()> {
    let path = d.lab.run_dir().join(format!("bench-{name}-{edge}.nft"));
    std::fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
    d.lab.exec(edge, &["nft", "-f", &path.to_string_lossy()]).map(|_| ())
}

/// A backend's checks blocked on both edges: from the first edge's own
/// verdict to identical tables without it everywhere, `reps` times.
fn verdict_propagation(d: &Deployment, reps: usize) -> Result<Vec<Measurement>> {
    let address = IpAddr::from(VICTIM.v4());
    let status = d.status(EdgeNode::EdgeA)?;
    let worst_case = status
        .pools
        .iter()
        .find(|p| p.backends.iter().any(|b| b.address == address))
        .and_then(|p| p.worst_case_failover_ms)
        .context("the victim's pool has no monitor")? as f64;
    let (mut first_to_tables, mut last_to_tables, mut blocked_to_tables, mut polled) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut skews = Vec::new();
    for run in 0..reps {
        wait_for("the victim is up and in both edges' tables", || {
            let v = views(d, address, u64::MAX)?;
            Ok(v.iter().all(|e| e.in_tables && !e.own_down) && same_digest(&v))
        })?;
        std::thread::sleep(Duration::from_millis(300));
        let since_ms = now_ms();
        let blocked = Instant::now();
        for edge in EdgeNode::ALL {
            block_checks(d, edge, address)?;
        }
        let mut first_polled: Option<Instant> = None;
        let (done, done_ms, last) = loop {
            let v = views(d, address, since_ms)?;
            if first_polled.is_none() && v.iter().any(|e| e.own_down) {
                first_polled = Some(Instant::now());
            }
            if first_polled.is_some() && v.iter().all(|e| !e.in_tables) && same_digest(&v) {
                break (Instant::now(), now_ms(), v);
            }
            if blocked.elapsed() > TIMEOUT {
                bail!("run {run}: {address} did not leave both edges' tables within {TIMEOUT:?} of its checks being blocked");
            }
            std::thread::sleep(POLL);
        };
        let downs: Vec<u64> = last
            .iter()
            .map(|e| e.down_at_ms.context("an edge took the backend out before its own checks said down"))
            .collect::<Result<_>>()?;
        let (first, second) = (*downs.iter().min().unwrap(), *downs.iter().max().unwrap());
        first_to_tables.push(done_ms.saturating_sub(first) as f64);
        last_to_tables.push(done_ms.saturating_sub(second) as f64);
        skews.push((second - first) as f64);
        blocked_to_tables.push(ms(done.duration_since(blocked)));
        polled.push(ms(done.duration_since(first_polled.expect("set before done"))));

        for edge in EdgeNode::ALL {
            unblock_checks(d, edge)?;
        }
    }
    wait_for("the victim is back in both edges' tables", || {
        let v = views(d, address, u64::MAX)?;
        Ok(v.iter().all(|e| e.in_tables) && same_digest(&v))
    })?;

    let worst_name = "monitor's worst case, one edge: (3 + 1) x 200 ms + 150 ms";
    let name =
        format!("backend verdict: first edge's own down -> identical tables without it on both, median of {reps}");
    Ok(vec![
        Measurement::from_samples(GROUP, worst_name, "ms", vec![worst_case])
            .check("the lab monitor (interval 200 ms, timeout 150 ms, consecutive_down 3), from gslb status"),
        Measurement::from_samples(GROUP, &name, "ms", first_to_tables.clone()).baseline(worst_name).check(format!(
            "start: the first edge's own transition to down (its status time stamp); end: the 10 ms poll that saw both tables without it and equal digests; as polled from the first poll showing down: median {:.0} ms",
            median(&polled)
        )),
        Measurement::from_samples(
            GROUP,
            format!("backend verdict: first edge's own down -> identical tables, max of {reps}"),
            "ms",
            vec![max(&first_to_tables)],
        )
        .baseline(worst_name)
        .check(format!("samples: {}", samples_text(&first_to_tables))),
        Measurement::from_samples(
            GROUP,
            format!("of which: second edge's own down -> identical tables (verdict through etcd, replan), median of {reps}"),
            "ms",
            last_to_tables.clone(),
        )
        .check(format!(
            "max {:.0} ms; the rest is the two edges' monitors disagreeing in time (quorum 2 of 2): median {:.0} ms, max {:.0} ms",
            max(&last_to_tables),
            median(&skews),
            max(&skews)
        )),
        Measurement::from_samples(
            GROUP,
            format!("checks blocked on both edges -> identical tables without it, median of {reps}"),
            "ms",
            blocked_to_tables.clone(),
        )
        .baseline(worst_name)
        .check(format!("max {:.0} ms; samples: {}", max(&blocked_to_tables), samples_text(&blocked_to_tables))),
    ])
}

/// Bytes and packets an edge's agent sent to and received from etcd, by
/// nftables counters in its namespace (IP packets: headers included).
#[derive(Clone, Copy, Debug, Default)]
struct EtcdTraffic {
    sent_bytes: u64,
    sent_packets: u64,
    received_bytes: u64,
    received_packets: u64,
}

impl EtcdTraffic {
    fn since(self, before: EtcdTraffic) -> EtcdTraffic {
        EtcdTraffic {
            sent_bytes: self.sent_bytes - before.sent_bytes,
            sent_packets: self.sent_packets - before.sent_packets,
            received_bytes: self.received_bytes - before.received_bytes,
            received_packets: self.received_packets - before.received_packets,
        }
    }

    fn bytes(self) -> u64 {
        self.sent_bytes + self.received_bytes
    }

    fn describe(self) -> String {
        format!(
            "sent {} B in {} packets, received {} B in {} packets",
            self.sent_bytes, self.sent_packets, self.received_bytes, self.received_packets
        )
    }
}

/// Counters of TCP to and from the etcd members' client port, in the
/// edge's namespace.
fn install_etcd_counters(d: &Deployment, edge: EdgeNode) -> Result<()> {
    let members = format!("{}-{}", EtcdCluster::address(0), EtcdCluster::address(MEMBERS - 1));
    let script = format!(
        "table inet {COUNTER_TABLE} {{\n counter to_etcd {{ }}\n counter from_etcd {{ }}\n \
         chain out {{\n  type filter hook output priority 0; policy accept;\n  ip daddr {members} tcp dport {CLIENT_PORT} counter name \"to_etcd\"\n }}\n \
         chain in {{\n  type filter hook input priority 0; policy accept;\n  ip saddr {members} tcp sport {CLIENT_PORT} counter name \"from_etcd\"\n }}\n}}\n"
    );
    nft_script(d, edge, "etcd-counters", &script)
}

fn etcd_traffic(d: &Deployment, edge: EdgeNode) -> Result<EtcdTraffic> {
    let json = d.lab.exec(edge, &["nft", "-j", "list", "counters", "table", "inet", COUNTER_TABLE])?;
    let value: serde_json::Value = serde_json::from_str(&json).context("parsing nft -j list counters")?;
    let mut traffic = EtcdTraffic::default();
    let mut found = 0;
    for item in value["nftables"].as_array().context("nft -j: no nftables array")? {
        let Some(counter) = item.get("counter") else { continue };
        let (bytes, packets) = (counter["bytes"].as_u64().unwrap_or(0), counter["packets"].as_u64().unwrap_or(0));
        match counter["name"].as_str() {
            Some("to_etcd") => (traffic.sent_bytes, traffic.sent_packets) = (bytes, packets),
            Some("from_etcd") => (traffic.received_bytes, traffic.received_packets) = (bytes, packets),
            _ => continue,
        }
        found += 1;
    }
    ensure!(found == 2, "nft listed {found} of the 2 etcd counters in {edge}: {json}");
    Ok(traffic)
}

/// `VmRSS` and `VmHWM` of the agent of `edge`, in bytes.
fn agent_memory(d: &Deployment, edge: EdgeNode) -> Result<(u64, u64)> {
    let pid = d.agent_pid(edge).with_context(|| format!("no agent runs on {edge}"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .with_context(|| format!("no {key} for pid {pid}"))
    };
    Ok((kb("VmRSS")?, kb("VmHWM")?))
}

const MIB: f64 = 1024.0 * 1024.0;

/// `f` for each edge, in `EdgeNode::ALL` order.
fn each_edge<T>(f: impl FnMut(EdgeNode) -> Result<T>) -> Result<Vec<T>> {
    EdgeNode::ALL.into_iter().map(f).collect()
}
const KIB: f64 = 1024.0;

/// A generated 512-VIP document pushed to a fleet lab whose edges take 512
/// VIPs: document size, agents' memory, etcd traffic.
fn large_config(lab_binary: &Path, quick: bool) -> Result<Vec<Measurement>> {
    let table_size = if quick { 4_099 } else { gslb_common::DEFAULT_TABLE_SIZE };
    let size = if quick { "M = 4099 (quick)".to_string() } else { "M = 65,537".to_string() };
    let steady = if quick { Duration::from_secs(20) } else { Duration::from_secs(60) };
    let document = gen::document_text(&Shape::new(512, 1000, table_size));
    let doc_bytes = document.len();
    let vip_bytes = document.find("[[pool]]").context("a document without pools")?;
    // Unmonitored: the generated backends do not exist in the lab.
    let setup = Setup {
        fleet: Some(FleetSetup::default()),
        max_vips: Some(512),
        table_size: Some(table_size),
        ..Setup::default()
    };
    let d = Deployment::start(lab_binary, &setup).context("deploying the fleet lab for 512 VIPs")?;
    wait_connected(&d)?;
    for edge in EdgeNode::ALL {
        install_etcd_counters(&d, edge)?;
    }
    // The first revision, into empty maps (the agents start with none).
    std::thread::sleep(PUSH_SETTLE);
    let before_memory = each_edge(|e| agent_memory(&d, e))?;
    let before_traffic = each_edge(|e| etcd_traffic(&d, e))?;

    let file = d.lab.run_dir().join("bench-large.toml");
    std::fs::write(&file, &document).with_context(|| format!("writing {}", file.display()))?;
    let window = Instant::now();
    let push = timed_push(&d, lab_binary, &file, 1, Duration::from_millis(50))?;
    std::thread::sleep(PUSH_SETTLE);
    let push_traffic = each_edge(|e| etcd_traffic(&d, e))?;
    let window = window.elapsed();
    let after_memory = each_edge(|e| agent_memory(&d, e))?;
    let vips = each_edge(|e| Ok(d.status(e)?.vips.len()))?;

    let steady_before = each_edge(|e| etcd_traffic(&d, e))?;
    std::thread::sleep(steady);
    let steady_after = each_edge(|e| etcd_traffic(&d, e))?;
    let revisions = each_edge(|e| Ok(member(&d.status(e)?)?.applied_revision))?;
    drop(d);

    let shape = format!("512 VIPs x 1,000 backends, {size}");
    let share = doc_bytes as f64 / ETCD_REQUEST_LIMIT as f64 * 100.0;
    let fits = if doc_bytes < ETCD_REQUEST_LIMIT { "fits" } else { "EXCEEDS it" };
    let mut results = vec![
        Measurement::from_samples(
            GROUP,
            "fleet document size, 512 VIPs x 1,000 backends (40 pools of 25, unmonitored)",
            "B",
            vec![doc_bytes as f64],
        )
        .check(format!(
            "{share:.1}% of etcd's default request limit (--max-request-bytes 1.5 MiB = {ETCD_REQUEST_LIMIT} B): {fits}; {:.0} B a VIP, {:.0} B a backend",
            vip_bytes as f64 / 512.0,
            (doc_bytes - vip_bytes) as f64 / 1000.0
        )),
        Measurement::from_samples(
            GROUP,
            format!("push -> applied on both edges (the agents' applied_at stamps), {shape}"),
            "ms",
            vec![push.applied_stamp_ms],
        )
        .check(format!(
            "one push into empty maps; the command itself {:.0} ms; as polled (status of 512 VIPs every 50 ms, itself slow): {:.0} ms",
            ms(push.command),
            ms(push.applied)
        )),
    ];
    for (i, edge) in EdgeNode::ALL.iter().enumerate() {
        let ((rss_before, _), (rss_after, hwm_after)) = (before_memory[i], after_memory[i]);
        let before_name = format!("agent VmRSS on {edge}: connected, no revision yet, before the push");
        let vip_count = vips[i];
        ensure!(vip_count == 512, "{edge} steers {vip_count} VIPs after the push, not 512");
        results.push(
            Measurement::from_samples(GROUP, &before_name, "MiB", vec![rss_before as f64 / MIB])
                .check("/proc/PID/status of the agent"),
        );
        results.push(
            Measurement::from_samples(
                GROUP,
                format!("agent VmRSS on {edge}: after the push, {shape}"),
                "MiB",
                vec![rss_after as f64 / MIB],
            )
            .baseline(before_name)
            .check(format!("{vip_count} VIPs in its status; peak VmHWM {:.1} MiB", hwm_after as f64 / MIB)),
        );
    }
    for (i, edge) in EdgeNode::ALL.iter().enumerate() {
        let pushed = push_traffic[i].since(before_traffic[i]);
        results.push(
            Measurement::from_samples(
                GROUP,
                format!("etcd traffic of {edge}'s agent during the push ({doc_bytes} B document)"),
                "KiB",
                vec![pushed.bytes() as f64 / KIB],
            )
            .check(format!(
                "{}; over {:.1} s: from before the push to {} s after the last edge applied it (nftables counters, IP bytes)",
                pushed.describe(),
                window.as_secs_f64(),
                PUSH_SETTLE.as_secs()
            )),
        );
    }
    for (i, edge) in EdgeNode::ALL.iter().enumerate() {
        let quiet = steady_after[i].since(steady_before[i]);
        let minutes = steady.as_secs_f64() / 60.0;
        let revision = revisions[i];
        ensure!(revision == Some(1), "{edge} left revision 1 during the steady window: {revision:?}");
        results.push(
            Measurement::from_samples(
                GROUP,
                format!("etcd traffic of {edge}'s agent at steady state, {shape}"),
                "KiB/min",
                vec![quiet.bytes() as f64 / KIB / minutes],
            )
            .check(format!(
                "{} over {} s (lease keep-alives, HTTP/2 pings; nothing changed)",
                quiet.describe(),
                steady.as_secs()
            )),
        );
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_stored_revision() {
        assert_eq!(stored_revision("stored revision 12; every edge applies it now\n"), Some(12));
        assert_eq!(stored_revision("nothing"), None);
    }

    #[test]
    fn the_large_document_is_a_valid_fleet_document() {
        let shape = Shape::new(512, 1000, 4_099);
        let text = gen::document_text(&shape);
        let edge = gslb_userspace::config::Edge::permissive();
        let (vips, pools) =
            gslb_userspace::config::parse_fleet_document(&text, "gen.toml".as_ref(), &edge).expect("a valid document");
        assert_eq!((vips.len(), pools.len()), (512, 40));
    }
}
