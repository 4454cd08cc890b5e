//! Failover in the lab: a backend's server is killed while a client opens
//! short connections to the VIP without pause; how long after the kill do
//! new connections still reach it? Compared with the configured worst
//! case, `(consecutive_down + 1) x interval + timeout` (the lab monitor:
//! (3 + 1) x 200 ms + 150 ms = 950 ms), and with the agents' own failover
//! records.
//!
//! A killed server refuses connections (the backend's kernel answers the
//! SYN with a reset), so every refused connection after the kill is a new
//! connection the data plane still sent to the dead backend.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use gslb_tests::checks::web_v4;
use gslb_tests::deploy::{Deployment, Setup};
use gslb_tests::lab::{BackendNode, ClientNode, EdgeNode, Lab};
use gslb_userspace::view::{status::FailoverStatus, time::unix_ms};

use crate::report::{max, median, Measurement};

const GROUP: &str = "failover";
/// The lab monitor's worst case: (3 + 1) x 200 ms + 150 ms.
const WORST_CASE_MS: f64 = 950.0;
const VICTIM: BackendNode = BackendNode::UsEast1;
/// Client threads, each opening one connection at a time.
const WORKERS: usize = 4;
/// Pause between one worker's connections.
const PAUSE: Duration = Duration::from_millis(1);
/// Bound on waiting for the agents to see a backend go down or come back.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// Traffic keeps running this long after both agents declared the backend
/// down, to catch any connection still sent to it.
const AFTER_DOWN: Duration = Duration::from_millis(300);

/// What the client saw.
#[derive(Default)]
struct Seen {
    /// Answers per backend, and the latest answer's time.
    answers: BTreeMap<String, (u64, Instant)>,
    /// Start times of refused connections since the last `clear`.
    refused: Vec<Instant>,
    /// Other failures (timeouts, resets), with one example.
    other: u64,
    example: Option<String>,
}

/// Short connections from a client, without pause, until stopped.
struct Traffic {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Traffic {
    fn start(lab: &Lab, client: ClientNode, target: SocketAddr) -> Traffic {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (shared, stopping) = (seen.clone(), stop.clone());
        // Threads spawned in the namespace thread inherit its namespace.
        let thread = lab.in_ns(client, move || {
            let workers: Vec<_> = (0..WORKERS)
                .map(|_| {
                    let (seen, stop) = (shared.clone(), stopping.clone());
                    std::thread::spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            let started = Instant::now();
                            let outcome = one_connection(target);
                            let mut seen = seen.lock().unwrap();
                            match outcome {
                                Ok(backend) => {
                                    let entry = seen.answers.entry(backend).or_insert((0, started));
                                    entry.0 += 1;
                                    entry.1 = Instant::now();
                                }
                                Err(e) if e.kind() == ErrorKind::ConnectionRefused => seen.refused.push(started),
                                Err(e) => {
                                    seen.other += 1;
                                    seen.example.get_or_insert_with(|| e.to_string());
                                }
                            }
                            drop(seen);
                            std::thread::sleep(PAUSE);
                        }
                    })
                })
                .collect();
            for worker in workers {
                let _ = worker.join();
            }
        });
        Traffic { seen, stop, thread: Some(thread) }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One request on a new connection; the backend's name, as it answers.
fn one_connection(target: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(1))?;
    // Close with a reset: no TIME_WAIT, so ports never run out.
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt on an open socket with a correctly sized value.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(b"request\n")?;
    let mut line = String::new();
    if BufReader::new(&stream).read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "EOF"));
    }
    Ok(line.trim().to_string())
}

/// Waits until every edge reports `backend` as `health`.
fn wait_for_health(d: &Deployment, backend: BackendNode, health: &str) -> Result<Duration> {
    let start = Instant::now();
    let address: std::net::IpAddr = backend.v4().into();
    loop {
        let reached = EdgeNode::ALL.iter().all(|&edge| {
            d.status(edge).is_ok_and(|s| {
                s.pools.iter().flat_map(|p| &p.backends).any(|b| b.address == address && b.health == health)
            })
        });
        if reached {
            return Ok(start.elapsed());
        }
        if start.elapsed() > HEALTH_TIMEOUT {
            bail!("{backend} did not become {health} on every edge within {HEALTH_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The failover record each edge made for `backend` since `since_ms`.
fn records(d: &Deployment, backend: BackendNode, since_ms: u64) -> Result<Vec<FailoverStatus>> {
    let address: std::net::IpAddr = backend.v4().into();
    let mut found = Vec::new();
    for edge in EdgeNode::ALL {
        let status = d.status(edge)?;
        let record = status
            .failovers
            .into_iter()
            .rev()
            .find(|f| f.backend == address && f.declared_down_unix_ms >= since_ms)
            .with_context(|| format!("{edge} made no failover record for {backend}"))?;
        found.push(record);
    }
    Ok(found)
}

pub fn run(quick: bool) -> Result<Vec<Measurement>> {
    let runs = if quick { 5 } else { 20 };
    let lab_binary = crate::lab_binary()?;
    let mut d = Deployment::start(&lab_binary, &Setup { monitor: true, ..Setup::default() })?;
    wait_for_health(&d, VICTIM, "up")?;
    let mut traffic = Traffic::start(&d.lab, ClientNode::Client1, web_v4());
    std::thread::sleep(Duration::from_millis(300));

    let (mut last_new, mut detected, mut total, mut apply) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut refused, mut worst_case) = (0usize, WORST_CASE_MS);
    for run in 0..runs {
        let before = traffic.seen.lock().unwrap().answers.get(VICTIM.name()).map_or(0, |a| a.0);
        traffic.seen.lock().unwrap().refused.clear();
        let since_ms = unix_ms(SystemTime::now());
        let killed = Instant::now();
        d.servers.kill(VICTIM);
        detected.push(wait_for_health(&d, VICTIM, "down")?.as_secs_f64() * 1e3);
        std::thread::sleep(AFTER_DOWN);

        let (reached, count) = {
            let seen = traffic.seen.lock().unwrap();
            let answered = seen.answers.get(VICTIM.name()).map(|a| a.1).filter(|&t| t > killed);
            let refused_at = seen.refused.iter().copied().filter(|&t| t >= killed).max();
            (answered.into_iter().chain(refused_at).max(), seen.refused.len())
        };
        if before == 0 {
            bail!("run {run}: {VICTIM} answered no connection before it was killed: no traffic reaches it");
        }
        refused += count;
        last_new.push(reached.map_or(0.0, |t| t.duration_since(killed).as_secs_f64() * 1e3));
        for record in records(&d, VICTIM, since_ms)? {
            total.push(record.total_ms as f64);
            apply.push(record.apply_ms as f64);
            worst_case = record.worst_case_ms as f64;
        }

        d.servers.start(&d.lab, VICTIM)?;
        wait_for_health(&d, VICTIM, "up")?;
        std::thread::sleep(Duration::from_millis(100));
    }
    traffic.stop();
    let seen = traffic.seen.lock().unwrap();
    let connections: u64 = seen.answers.values().map(|a| a.0).sum::<u64>() + seen.other;
    let others = match &seen.example {
        Some(e) => format!("; {} other failures (e.g. {e})", seen.other),
        None => String::new(),
    };

    let worst_name = "configured worst case: (3 + 1) x 200 ms + 150 ms";
    let target = format!("<= {worst_case:.0} ms");
    let kill_name = format!("kill -> last new connection to the killed backend, median of {runs}");
    Ok(vec![
        Measurement::from_samples(GROUP, worst_name, "ms", vec![worst_case])
            .check("the lab monitor, as the agents' records report it"),
        Measurement::from_samples(GROUP, &kill_name, "ms", last_new.clone()).baseline(worst_name).target(&target).check(
            format!(
                "{refused} connections refused by the dead backend over {runs} kills, {connections} connections in all{others}"
            ),
        ),
        Measurement::from_samples(GROUP, format!("kill -> last new connection to the killed backend, max of {runs}"), "ms", vec![max(&last_new)])
            .baseline(worst_name)
            .target(&target)
            .check(format!("samples: {}", last_new.iter().map(|v| format!("{v:.0}")).collect::<Vec<_>>().join(" "))),
        Measurement::from_samples(GROUP, "kill -> both agents report the backend down (status polled every 10 ms)", "ms", detected.clone())
            .baseline(worst_name)
            .check(format!("max {:.0} ms", max(&detected))),
        Measurement::from_samples(GROUP, "agent record total_ms: first failed probe -> new tables live, both edges", "ms", total.clone())
            .baseline(worst_name)
            .target(&target)
            .check(format!("max {:.0} ms over {} records", max(&total), total.len())),
        Measurement::from_samples(GROUP, "agent record apply_ms: declared down -> new tables live, both edges", "ms", apply.clone())
            .check(format!("max {:.0} ms, median {:.1} ms", max(&apply), median(&apply))),
    ])
}
