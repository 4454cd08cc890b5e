//! The backend servers: inside each backend's namespace, TCP and UDP
//! listeners on both VIPs that answer with the backend's name, so clients
//! can tell which backend a VIP packet reached.
//!
//! TCP: one reply line (`{name}\n`) per request line. UDP: one datagram
//! (`{name}`) per datagram. Each backend runs on its own thread with a
//! current-thread tokio runtime; the thread has joined the namespace, so
//! its sockets live there.

use std::collections::BTreeMap;
use std::io;
use std::mem;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::FromRawFd;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::watch;

use crate::lab::{BackendNode, Lab, TCP_PORT, UDP_PORT, VIP_V4, VIP_V6};

/// Where each backend answers health checks, on its own addresses.
pub const HEALTH_PORT: u16 = 8080;

/// How long `start_*` waits for a server to bind.
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// Room for thousands of short connections arriving at once.
const LISTEN_BACKLOG: u32 = 1024;

/// How a backend's health endpoint answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthMode {
    /// `200 OK`.
    Ok,
    /// `503 Service Unavailable`: the check fails, the service still works.
    Failing,
    /// `200 OK`, after this long.
    Slow(Duration),
}

/// Health modes shared with the server threads.
type HealthModes = Arc<Mutex<BTreeMap<BackendNode, HealthMode>>>;

/// Running servers. Dropping this (or the lab) stops them.
pub struct Servers {
    lab_stop: watch::Receiver<bool>,
    health: HealthModes,
    running: BTreeMap<BackendNode, Running>,
}

struct Running {
    stop: watch::Sender<bool>,
    thread: JoinHandle<()>,
}

/// Starts a server on every backend; returns once all are listening.
pub fn start_servers(lab: &Lab) -> Result<Servers> {
    start_servers_on(lab, &BackendNode::ALL)
}

/// Starts servers on the given backends; returns once all are listening.
pub fn start_servers_on(lab: &Lab, backends: &[BackendNode]) -> Result<Servers> {
    let mut servers = Servers {
        lab_stop: lab.stop_signal(),
        health: Arc::new(Mutex::new(BTreeMap::new())),
        running: BTreeMap::new(),
    };
    // On error, `servers` drops here and stops the ones that did start.
    for &backend in backends {
        servers.start(lab, backend)?;
    }
    Ok(servers)
}

impl Servers {
    /// Starts (or restarts) the servers of one backend; returns once they
    /// listen.
    pub fn start(&mut self, lab: &Lab, backend: BackendNode) -> Result<()> {
        self.kill(backend);
        let (stop, stop_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = mpsc::channel();
        let stops = [stop_rx, self.lab_stop.clone()];
        let health = self.health.clone();
        let thread = lab.in_ns(backend, move || serve(backend, ready_tx, stops, health));
        self.running.insert(backend, Running { stop, thread });
        match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok((_, Ok(()))) => Ok(()),
            Ok((backend, Err(e))) => bail!("server on {backend}: {e}"),
            Err(_) => bail!("server on {backend} not ready within {READY_TIMEOUT:?}"),
        }
    }

    /// Kills one backend's servers: open connections close, new ones and
    /// health checks are refused, as when a server process dies.
    pub fn kill(&mut self, backend: BackendNode) {
        if let Some(running) = self.running.remove(&backend) {
            let _ = running.stop.send(true);
            // The thread only closes sockets now; join it so the ports are
            // free for a restart.
            if running.thread.join().is_err() {
                eprintln!("server thread of {backend} panicked");
            }
        }
    }

    /// Sets how a backend's health endpoint answers.
    pub fn set_health(&self, backend: BackendNode, mode: HealthMode) {
        self.health.lock().unwrap().insert(backend, mode);
    }

    /// Stops the servers and waits for their threads.
    pub fn stop(self) {
        // Drop does the work.
    }

    pub fn backends(&self) -> Vec<BackendNode> {
        self.running.keys().copied().collect()
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        let backends: Vec<BackendNode> = self.running.keys().copied().collect();
        for backend in backends {
            self.kill(backend);
        }
    }
}

type Ready = mpsc::Sender<(BackendNode, Result<(), String>)>;

/// The body of one backend's thread (already in its namespace).
fn serve(backend: BackendNode, ready: Ready, stops: [watch::Receiver<bool>; 2], health: HealthModes) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send((backend, Err(format!("tokio runtime: {e}"))));
            return;
        }
    };
    runtime.block_on(async move {
        let sockets = match bind_all(backend) {
            Ok(s) => s,
            Err(e) => {
                let _ = ready.send((backend, Err(format!("{e:#}"))));
                return;
            }
        };
        let _ = ready.send((backend, Ok(())));
        let name = backend.name();
        let (tcp4, tcp6, udp4, udp6, health4, health6) = sockets;
        tokio::select! {
            _ = accept_loop(tcp4, name) => {}
            _ = accept_loop(tcp6, name) => {}
            _ = health_loop(health4, backend, health.clone()) => {}
            _ = health_loop(health6, backend, health) => {}
            _ = udp_loop(udp4, name) => {}
            _ = udp_loop(udp6, name) => {}
            _ = stopped(stops) => {}
        }
    });
    // Dropping the runtime cancels the connection tasks, closing sockets.
}

/// Resolves when either stop signal says stop (or its sender is gone).
async fn stopped([mut a, mut b]: [watch::Receiver<bool>; 2]) {
    tokio::select! {
        _ = a.wait_for(|&stop| stop) => {}
        _ = b.wait_for(|&stop| stop) => {}
    }
}

type Sockets = (TcpListener, TcpListener, UdpSocket, UdpSocket, TcpListener, TcpListener);

fn bind_all(backend: BackendNode) -> Result<Sockets> {
    let health4 = SocketAddr::new(IpAddr::V4(backend.v4()), HEALTH_PORT);
    let health6 = SocketAddr::new(IpAddr::V6(backend.v6()), HEALTH_PORT);
    let tcp4 = SocketAddr::new(IpAddr::V4(VIP_V4), TCP_PORT);
    let tcp6 = SocketAddr::new(IpAddr::V6(VIP_V6), TCP_PORT);
    let udp4 = SocketAddr::new(IpAddr::V4(VIP_V4), UDP_PORT);
    let udp6 = SocketAddr::new(IpAddr::V6(VIP_V6), UDP_PORT);
    let with_addr = |addr: SocketAddr| move |e: io::Error| anyhow!("binding {addr}: {e}");
    Ok((
        tcp_listener(tcp4).map_err(with_addr(tcp4))?,
        tcp_listener(tcp6).map_err(with_addr(tcp6))?,
        udp_socket(udp4).map_err(with_addr(udp4))?,
        udp_socket(udp6).map_err(with_addr(udp6))?,
        tcp_listener(health4).map_err(with_addr(health4))?,
        tcp_listener(health6).map_err(with_addr(health6))?,
    ))
}

fn tcp_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    // A restarted server can rebind while old connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// A UDP socket with SO_REUSEADDR set before bind, which std can't do.
fn udp_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    let family = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket calls on an fd we own; the sockaddr structs are
    // fully initialised and passed with their own size.
    unsafe {
        let fd = libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // Owning the fd first means it is closed on every error path.
        let socket = std::net::UdpSocket::from_raw_fd(fd);
        let one: libc::c_int = 1;
        let rc = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            &one as *const _ as *const libc::c_void,
            mem::size_of_val(&one) as libc::socklen_t,
        );
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let rc = match addr {
            SocketAddr::V4(a) => {
                let mut sa: libc::sockaddr_in = mem::zeroed();
                sa.sin_family = libc::AF_INET as libc::sa_family_t;
                sa.sin_port = a.port().to_be();
                sa.sin_addr.s_addr = u32::from(*a.ip()).to_be();
                libc::bind(fd, &sa as *const _ as *const libc::sockaddr, mem::size_of_val(&sa) as libc::socklen_t)
            }
            SocketAddr::V6(a) => {
                let mut sa: libc::sockaddr_in6 = mem::zeroed();
                sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sa.sin6_port = a.port().to_be();
                sa.sin6_addr.s6_addr = a.ip().octets();
                libc::bind(fd, &sa as *const _ as *const libc::sockaddr, mem::size_of_val(&sa) as libc::socklen_t)
            }
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        UdpSocket::from_std(socket)
    }
}

async fn accept_loop(listener: TcpListener, name: &'static str) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(answer_lines(stream, name));
            }
            // E.g. EMFILE under a burst: back off briefly instead of spinning.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Answers every request line with the backend's name until EOF; a line
/// `bulk N` gets N dots before the name (a large answer, for path-MTU
/// tests).
async fn answer_lines(stream: TcpStream, name: &'static str) {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let reply = format!("{name}\n");
    let mut line = Vec::new();
    loop {
        line.clear();
        match read.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let bulk = std::str::from_utf8(&line)
                    .ok()
                    .and_then(|l| l.trim().strip_prefix("bulk ")?.parse::<usize>().ok())
                    .unwrap_or(0);
                let filler = vec![b'.'; bulk];
                if write.write_all(&filler).await.is_err() || write.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The health endpoint: answers any HTTP request on `HEALTH_PORT` as the
/// backend's current `HealthMode` says. A fixture, not a web server: it
/// reads the request head and answers once.
async fn health_loop(listener: TcpListener, backend: BackendNode, modes: HealthModes) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let mode = modes.lock().unwrap().get(&backend).copied().unwrap_or(HealthMode::Ok);
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let status = match mode {
                HealthMode::Failing => "503 Service Unavailable",
                HealthMode::Ok => "200 OK",
                HealthMode::Slow(delay) => {
                    tokio::time::sleep(delay).await;
                    "200 OK"
                }
            };
            let reply = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = stream.write_all(reply.as_bytes()).await;
        });
    }
}

async fn udp_loop(socket: UdpSocket, name: &'static str) {
    let mut buf = [0u8; 2048];
    loop {
        if let Ok((_, peer)) = socket.recv_from(&mut buf).await {
            // Lost replies show up as client timeouts; nothing to do here.
            let _ = socket.send_to(name.as_bytes(), peer).await;
        }
    }
}
