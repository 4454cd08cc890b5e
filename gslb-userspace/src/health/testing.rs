//! Test helpers: monitors, and HTTP(S) servers on 127.0.0.1 that record
//! what they were asked.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use super::{Monitor, MonitorProtocol};

/// A monitor of `protocol` on `port` with the config's defaults otherwise.
pub fn monitor(protocol: MonitorProtocol, port: u16) -> Monitor {
    Monitor { protocol, port, ..Monitor::default() }
}

/// A port on 127.0.0.1 where nothing listens (it was free a moment ago).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// How the server answers.
#[derive(Debug, Clone)]
pub struct Reply {
    status: u16,
    delay: Duration,
    garbage: bool,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply { status, delay: Duration::ZERO, garbage: false }
    }

    /// Answers something that is not HTTP.
    pub fn garbage() -> Reply {
        Reply { status: 0, delay: Duration::ZERO, garbage: true }
    }

    /// Waits this long after reading the request before answering.
    pub fn delay(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

/// One request the server read.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub host: Option<String>,
    /// TLS only: the SNI the client sent.
    pub sni: Option<String>,
}

struct Shared {
    reply: Reply,
    requests: Vec<Request>,
}

/// A one-request-per-connection HTTP/1.1 server, plain or TLS with a
/// self-signed certificate. Stops when dropped.
pub struct HttpServer {
    address: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    task: JoinHandle<()>,
}

impl HttpServer {
    pub async fn start(reply: Reply) -> HttpServer {
        HttpServer::spawn(reply, None).await
    }

    /// TLS with a fresh self-signed certificate for `names`.
    pub async fn start_tls(reply: Reply, names: &[&str]) -> HttpServer {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let key = rcgen::generate_simple_self_signed(names).unwrap();
        let cert = key.cert.der().clone();
        let private = rustls::pki_types::PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], private)
            .unwrap();
        HttpServer::spawn(reply, Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn spawn(reply: Reply, tls: Option<tokio_rustls::TlsAcceptor>) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let shared = Arc::new(Mutex::new(Shared { reply, requests: Vec::new() }));
        let task = tokio::spawn({
            let shared = shared.clone();
            async move {
                let mut connections = JoinSet::new();
                loop {
                    let Ok((stream, _)) = listener.accept().await else { continue };
                    let (shared, tls) = (shared.clone(), tls.clone());
                    connections.spawn(async move {
                        match tls {
                            None => serve(stream, None, &shared).await,
                            Some(acceptor) => {
                                let Ok(stream) = acceptor.accept(stream).await else { return };
                                let sni = stream.get_ref().1.server_name().map(str::to_string);
                                serve(stream, Some(sni), &shared).await
                            }
                        }
                    });
                    while connections.try_join_next().is_some() {}
                }
            }
        });
        HttpServer { address, shared, task }
    }

    pub fn ip(&self) -> IpAddr {
        self.address.ip()
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    pub fn set_reply(&self, reply: Reply) {
        self.shared.lock().unwrap().reply = reply;
    }

    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().unwrap().requests.clone()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request's head, records it and answers. `sni` is `Some` for
/// TLS connections.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, sni: Option<Option<String>>, shared: &Mutex<Shared>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let Ok(n) = stream.read(&mut buf).await else { return };
        if n == 0 {
            return;
        }
        head.extend_from_slice(&buf[..n]);
        if head.first() == Some(&0x16) {
            // A TLS ClientHello on a plain port: answer as web servers do.
            let _ =
                stream.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
            return;
        }
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.len() > 16 * 1024 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let request = Request {
        method: first.next().unwrap_or("").to_string(),
        target: first.next().unwrap_or("").to_string(),
        host: lines
            .filter_map(|line| line.split_once(':'))
            .find(|(name, _)| name.eq_ignore_ascii_case("host"))
            .map(|(_, value)| value.trim().to_string()),
        sni: sni.flatten(),
    };
    let reply = {
        let mut shared = shared.lock().unwrap();
        shared.requests.push(request);
        shared.reply.clone()
    };
    tokio::time::sleep(reply.delay).await;
    let answer = if reply.garbage {
        "SSH-2.0-OpenSSH_9.6\r\n".to_string()
    } else {
        format!("HTTP/1.1 {} Whatever\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", reply.status)
    };
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.shutdown().await;
}
