//! Traffic generators run from a client namespace: long-lived TCP
//! connections, bursts of short TCP connections, and UDP flows. Each
//! records which backend answered (the servers reply with their name).
//!
//! Every generator runs on its own thread inside the client's namespace
//! with a current-thread tokio runtime. Every wait is bounded by a timeout;
//! the only sleeps are the deliberate gaps between requests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::time::{timeout, Instant};

use crate::lab::{ClientNode, Lab};

/// Bound on a TCP handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on each TCP request's reply.
pub const TCP_REPLY_TIMEOUT: Duration = Duration::from_secs(1);
/// Bound on each UDP datagram's reply.
pub const UDP_REPLY_TIMEOUT: Duration = Duration::from_millis(500);
/// How many error strings a `ShortReport` keeps.
const ERROR_SAMPLES: usize = 10;

/// What one connection (or UDP flow) saw.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ConnReport {
    /// Index of the connection within its generator.
    pub id: usize,
    /// The client's address and port, once connected.
    pub local: Option<SocketAddr>,
    /// Backends that answered, in order, with how many answers in a row.
    pub runs: Vec<(String, u64)>,
    /// Requests answered.
    pub ok: u64,
    /// Requests with no answer in time (TCP: a late answer still counts
    /// in `ok`).
    pub timeouts: u64,
    /// Why the connection ended early: reset, EOF, connect failure, ...
    pub error: Option<String>,
}

impl ConnReport {
    fn new(id: usize) -> ConnReport {
        ConnReport { id, ..ConnReport::default() }
    }

    /// The connection ended with an error rather than being stopped.
    pub fn broken(&self) -> bool {
        self.error.is_some()
    }

    /// Distinct backends that answered, in order of first answer.
    pub fn backends(&self) -> Vec<String> {
        let mut seen: Vec<String> = Vec::new();
        for (backend, _) in &self.runs {
            if !seen.contains(backend) {
                seen.push(backend.clone());
            }
        }
        seen
    }

    /// More than one backend answered over the connection's life.
    pub fn changed_backend(&self) -> bool {
        self.runs.len() > 1
    }

    fn answered_by(&mut self, backend: &str) {
        self.ok += 1;
        match self.runs.last_mut() {
            Some((last, count)) if last == backend => *count += 1,
            _ => self.runs.push((backend.to_string(), 1)),
        }
    }
}

/// Long-lived TCP connections sending a request every `interval`.
pub struct LongLived {
    reports: Arc<Mutex<Vec<ConnReport>>>,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl LongLived {
    /// Opens `connections` connections from `client` to `target`; returns
    /// once every one has had its first answer or failed.
    pub fn start(
        lab: &Lab,
        client: ClientNode,
        target: SocketAddr,
        connections: usize,
        interval: Duration,
    ) -> Result<LongLived> {
        LongLived::start_sized(lab, client, target, connections, interval, 0)
    }

    /// `start`, each request padded to `request_len` bytes: large requests
    /// travel as full-size segments.
    pub fn start_sized(
        lab: &Lab,
        client: ClientNode,
        target: SocketAddr,
        connections: usize,
        interval: Duration,
        request_len: usize,
    ) -> Result<LongLived> {
        let reports = Arc::new(Mutex::new((0..connections).map(ConnReport::new).collect::<Vec<_>>()));
        let (stop, _) = watch::channel(false);
        let (first_tx, first_rx) = mpsc::channel::<()>();
        let stops = [stop.subscribe(), lab.stop_signal()];
        let shared = reports.clone();
        let thread = lab.in_ns(client, move || {
            let runtime = runtime();
            runtime.block_on(async move {
                let tasks: Vec<_> = (0..connections)
                    .map(|id| {
                        let first = Mutex::new(Some(first_tx.clone()));
                        let conn = LongConn { id, target, interval, request_len, reports: shared.clone(), first };
                        tokio::spawn(conn.run(stops.clone()))
                    })
                    .collect();
                drop(first_tx);
                for task in tasks {
                    let _ = task.await;
                }
            });
        });
        let mut long = LongLived { reports, stop, thread: Some(thread) };

        // Each connection reports once; the bound covers a connect plus a
        // reply timeout, with slack for a busy machine.
        let deadline = std::time::Instant::now() + CONNECT_TIMEOUT + TCP_REPLY_TIMEOUT + Duration::from_secs(2);
        for _ in 0..connections {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if first_rx.recv_timeout(left).is_err() {
                let panicked = long.thread.as_ref().is_some_and(|t| t.is_finished());
                long.stop_and_join();
                if panicked {
                    bail!("long-lived traffic thread ended early");
                }
                bail!("long-lived connections did not all get a first answer in time");
            }
        }
        Ok(long)
    }

    /// The reports so far.
    pub fn snapshot(&self) -> Vec<ConnReport> {
        self.reports.lock().unwrap().clone()
    }

    /// Ends the connections cleanly and returns the final reports.
    pub fn stop(mut self) -> Vec<ConnReport> {
        self.stop_and_join();
        self.snapshot()
    }

    fn stop_and_join(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                eprintln!("long-lived traffic thread panicked");
            }
        }
    }
}

impl Drop for LongLived {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

struct LongConn {
    id: usize,
    target: SocketAddr,
    interval: Duration,
    /// Requests are padded to this many bytes.
    request_len: usize,
    reports: Arc<Mutex<Vec<ConnReport>>>,
    /// Taken and signalled once: first answer or failure.
    first: Mutex<Option<mpsc::Sender<()>>>,
}

impl LongConn {
    async fn run(self, stops: [watch::Receiver<bool>; 2]) {
        let error = tokio::select! {
            result = self.exchange() => result.err(),
            _ = stopped(stops) => None,
        };
        self.update(|r| r.error = error.map(|e| format!("{e:#}")));
        self.signal_first();
        // The stream is already dropped, which closed it with a FIN.
    }

    fn signal_first(&self) {
        if let Some(first) = self.first.lock().unwrap().take() {
            let _ = first.send(());
        }
    }

    fn update(&self, f: impl FnOnce(&mut ConnReport)) {
        f(&mut self.reports.lock().unwrap()[self.id]);
    }

    /// Requests forever; returns only on error.
    async fn exchange(&self) -> Result<()> {
        let stream = connect(self.target).await?;
        let local = stream.local_addr().ok();
        self.update(|r| r.local = local);
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        let mut line = Vec::new();
        // Requests sent but not yet answered: after a timeout the late
        // answer is still read, so answers never get out of step.
        let mut pending = 0u64;
        for seq in 0u64.. {
            let mut request = format!("request {seq} ");
            let padding = self.request_len.saturating_sub(request.len() + 1);
            request.extend(std::iter::repeat_n('.', padding));
            request.push('\n');
            write.write_all(request.as_bytes()).await.map_err(|e| anyhow!("write: {e}"))?;
            pending += 1;
            let deadline = Instant::now() + TCP_REPLY_TIMEOUT;
            while pending > 0 {
                // read_until keeps partial input in `line` if the timeout
                // cancels it, so the next call continues the same line.
                match tokio::time::timeout_at(deadline, read.read_until(b'\n', &mut line)).await {
                    Err(_) => {
                        self.update(|r| r.timeouts += 1);
                        break;
                    }
                    Ok(Err(e)) => bail!("read: {e}"),
                    Ok(Ok(0)) => bail!("EOF"),
                    Ok(Ok(_)) => {
                        let backend = String::from_utf8_lossy(&line).trim().to_string();
                        line.clear();
                        pending -= 1;
                        self.update(|r| r.answered_by(&backend));
                    }
                }
            }
            self.signal_first();
            tokio::time::sleep(self.interval).await;
        }
        unreachable!("the request loop only ends by returning")
    }
}

/// The outcome of `short_connections`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ShortReport {
    /// Answers per backend.
    pub per_backend: BTreeMap<String, u64>,
    /// Connections that failed at any step.
    pub failures: u64,
    /// The first few failures' errors.
    pub errors: Vec<String>,
}

/// Opens `count` connections from `client` to `target`, at most
/// `concurrency` at a time; each sends one request, reads the answer and
/// closes. Blocks until all are done.
pub fn short_connections(
    lab: &Lab,
    client: ClientNode,
    target: SocketAddr,
    count: usize,
    concurrency: usize,
) -> Result<ShortReport> {
    let thread = lab.in_ns(client, move || {
        runtime().block_on(async move {
            let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let report = Arc::new(Mutex::new(ShortReport::default()));
            let workers: Vec<_> = (0..concurrency.max(1))
                .map(|_| {
                    let (next, report) = (next.clone(), report.clone());
                    tokio::spawn(async move {
                        while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < count {
                            let result = one_short_connection(target).await;
                            let mut report = report.lock().unwrap();
                            match result {
                                Ok(backend) => *report.per_backend.entry(backend).or_default() += 1,
                                Err(e) => {
                                    report.failures += 1;
                                    if report.errors.len() < ERROR_SAMPLES {
                                        report.errors.push(format!("{e:#}"));
                                    }
                                }
                            }
                        }
                    })
                })
                .collect();
            for worker in workers {
                let _ = worker.await;
            }
            let report = report.lock().unwrap().clone();
            report
        })
    });
    thread.join().map_err(|_| anyhow!("short-connection thread panicked"))
}

async fn one_short_connection(target: SocketAddr) -> Result<String> {
    let mut stream = connect(target).await?;
    stream.write_all(b"request\n").await.map_err(|e| anyhow!("write: {e}"))?;
    let mut read = BufReader::new(&mut stream);
    let mut line = Vec::new();
    match timeout(TCP_REPLY_TIMEOUT, read.read_until(b'\n', &mut line)).await {
        Err(_) => bail!("no reply within {TCP_REPLY_TIMEOUT:?}"),
        Ok(Err(e)) => bail!("read: {e}"),
        Ok(Ok(0)) => bail!("EOF"),
        Ok(Ok(_)) => Ok(String::from_utf8_lossy(&line).trim().to_string()),
    }
    // The stream drops here: the client closes first (FIN).
}

/// One TCP connection from `client` to `target` that sends `request` (which
/// should end in a newline) and returns the answer line, without its
/// newline, if it arrives within `within`.
pub fn one_request(
    lab: &Lab,
    client: ClientNode,
    target: SocketAddr,
    request: Vec<u8>,
    within: Duration,
) -> Result<Vec<u8>> {
    let thread = lab.in_ns(client, move || {
        runtime().block_on(async move {
            let mut stream = connect(target).await?;
            let exchange = async {
                stream.write_all(&request).await.map_err(|e| anyhow!("write: {e}"))?;
                let mut line = Vec::new();
                BufReader::new(&mut stream).read_until(b'\n', &mut line).await.map_err(|e| anyhow!("read: {e}"))?;
                if line.pop() != Some(b'\n') {
                    bail!("EOF after {} bytes", line.len());
                }
                Ok(line)
            };
            timeout(within, exchange).await.map_err(|_| anyhow!("no complete answer within {within:?}"))?
        })
    });
    thread.join().map_err(|_| anyhow!("request thread panicked"))?
}

/// Runs `flows` UDP flows from `client` to `target` at once, each from its
/// own socket (source port), sending `datagrams_per_flow` datagrams
/// `interval` apart. Blocks until all are done.
pub fn udp_flows(
    lab: &Lab,
    client: ClientNode,
    target: SocketAddr,
    flows: usize,
    datagrams_per_flow: usize,
    interval: Duration,
) -> Result<Vec<ConnReport>> {
    let thread = lab.in_ns(client, move || {
        runtime().block_on(async move {
            let tasks: Vec<_> =
                (0..flows).map(|id| tokio::spawn(udp_flow(id, target, datagrams_per_flow, interval))).collect();
            let mut reports = Vec::new();
            for task in tasks {
                reports.push(task.await.expect("udp flow task"));
            }
            reports
        })
    });
    thread.join().map_err(|_| anyhow!("UDP flow thread panicked"))
}

async fn udp_flow(id: usize, target: SocketAddr, datagrams: usize, interval: Duration) -> ConnReport {
    let mut report = ConnReport::new(id);
    if let Err(e) = udp_exchange(&mut report, target, datagrams, interval).await {
        report.error = Some(format!("{e:#}"));
    }
    report
}

async fn udp_exchange(report: &mut ConnReport, target: SocketAddr, datagrams: usize, interval: Duration) -> Result<()> {
    let any: SocketAddr = if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
    let socket = UdpSocket::bind(any).await.map_err(|e| anyhow!("bind: {e}"))?;
    // Connected: only the target's answers are accepted, and ICMP errors
    // (port unreachable, ...) come back as errors.
    socket.connect(target).await.map_err(|e| anyhow!("connect: {e}"))?;
    report.local = socket.local_addr().ok();
    let mut buf = [0u8; 2048];
    for seq in 0..datagrams {
        if seq > 0 {
            tokio::time::sleep(interval).await;
        }
        socket.send(format!("datagram {seq}").as_bytes()).await.map_err(|e| anyhow!("send: {e}"))?;
        match timeout(UDP_REPLY_TIMEOUT, socket.recv(&mut buf)).await {
            Err(_) => report.timeouts += 1,
            Ok(Err(e)) => bail!("recv: {e}"),
            Ok(Ok(n)) => report.answered_by(String::from_utf8_lossy(&buf[..n]).trim()),
        }
    }
    Ok(())
}

async fn connect(target: SocketAddr) -> Result<TcpStream> {
    let stream = match timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Err(_) => bail!("connect: no answer within {CONNECT_TIMEOUT:?}"),
        Ok(Err(e)) => bail!("connect: {e}"),
        Ok(Ok(s)) => s,
    };
    // Small request/answer exchanges: don't wait for Nagle.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

/// Resolves when either stop signal says stop (or its sender is gone).
async fn stopped([mut a, mut b]: [watch::Receiver<bool>; 2]) {
    tokio::select! {
        _ = a.wait_for(|&stop| stop) => {}
        _ = b.wait_for(|&stop| stop) => {}
    }
}
