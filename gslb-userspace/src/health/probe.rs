//! One health check of one backend: a TCP connect, or an HTTP(S) GET.
//!
//! A probe goes to the backend's own address and the monitor's `port`,
//! never through a proxy or DNS, and is bounded by the monitor's
//! `timeout_ms` from the start of the connect to the response's status
//! line. HTTP probes:
//!
//! - send `GET <path>` with `Host: <monitor.host>` exactly as configured, or,
//!   with no host, the address (with `:port` when it is not the scheme's
//!   default, as HTTP wants);
//! - over HTTPS, send the host as SNI (none without a host: SNI cannot carry
//!   an IP address) and verify the certificate against the system's roots
//!   and the host (or the address) only if `tls_verify`;
//! - use a fresh connection each time (no keep-alive: a probe must see a
//!   backend that stopped accepting connections), follow no redirects (a 3xx
//!   is a status like any other), and read only the status, never the body.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Once;
use std::time::Duration;

use reqwest::header::{HeaderValue, CONNECTION, HOST};
use reqwest::Url;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{ExpectedCodes, Monitor, MonitorProtocol};

/// Why a probe failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeError {
    /// No answer within the timeout (connect, TLS handshake and response
    /// headers together).
    Timeout(Duration),
    /// The connection was refused: nothing listens on the port.
    Refused,
    /// No route to the backend: "host unreachable", "network unreachable".
    Unreachable(String),
    /// The backend answered with a status not in `expected_codes`.
    Status(u16),
    /// The TLS handshake failed: bad certificate, protocol mismatch...
    Tls(String),
    /// Anything else: the connection was reset, the answer was not HTTP, the
    /// monitor cannot be probed...
    Io(String),
}

impl ProbeError {
    /// A short machine-friendly name: "timeout", "refused", "unreachable",
    /// "status", "tls" or "io".
    pub fn kind(&self) -> &'static str {
        match self {
            ProbeError::Timeout(_) => "timeout",
            ProbeError::Refused => "refused",
            ProbeError::Unreachable(_) => "unreachable",
            ProbeError::Status(_) => "status",
            ProbeError::Tls(_) => "tls",
            ProbeError::Io(_) => "io",
        }
    }

    /// Names the failure from the chain of causes (reqwest → hyper →
    /// connector → io::Error → io::Error → rustls::Error, for instance):
    /// the first rustls error or telling io::Error kind wins, else the
    /// innermost message.
    fn from_error(error: &(dyn std::error::Error + 'static)) -> ProbeError {
        let mut innermost = error.to_string();
        let mut cause = Some(error);
        while let Some(err) = cause {
            if let Some(tls) = err.downcast_ref::<rustls::Error>() {
                return ProbeError::Tls(tls.to_string());
            }
            innermost = err.to_string();
            cause = err.source();
            if let Some(io) = err.downcast_ref::<io::Error>() {
                let why = match io.kind() {
                    io::ErrorKind::ConnectionRefused => return ProbeError::Refused,
                    io::ErrorKind::HostUnreachable => "host unreachable",
                    io::ErrorKind::NetworkUnreachable => "network unreachable",
                    io::ErrorKind::NetworkDown => "network down",
                    _ => "",
                };
                if !why.is_empty() {
                    return ProbeError::Unreachable(why.to_string());
                }
                // io::Error::source skips the error it wraps: look inside.
                if let Some(inner) = io.get_ref() {
                    cause = Some(inner);
                }
            }
        }
        ProbeError::Io(innermost)
    }
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeError::Timeout(after) => write!(f, "timeout after {}ms", after.as_millis()),
            ProbeError::Refused => f.write_str("connection refused"),
            ProbeError::Unreachable(why) => f.write_str(why),
            ProbeError::Status(code) => write!(f, "status {code}"),
            ProbeError::Tls(why) => write!(f, "tls: {why}"),
            ProbeError::Io(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for ProbeError {}

/// Probes `address` once as `monitor` says; the RTT is the time from the
/// start of the connect to the connection being accepted (TCP) or to the
/// response's headers (HTTP).
///
/// Builds a [`Prober`] each time: to probe the same backend repeatedly,
/// keep a `Prober` (the scheduler does).
pub async fn probe(monitor: &Monitor, address: IpAddr) -> Result<Duration, ProbeError> {
    Prober::new(monitor, address)?.probe().await
}

/// Probes one backend as one monitor says, as often as asked.
#[derive(Debug, Clone)]
pub struct Prober {
    target: SocketAddr,
    timeout: Duration,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Tcp,
    Http { client: reqwest::Client, url: Url, host: Option<HeaderValue>, expected: ExpectedCodes },
}

impl Prober {
    /// Fails only when the monitor cannot be probed at all: protocol `None`,
    /// or a host that is not a valid header value (kind "io").
    pub fn new(monitor: &Monitor, address: IpAddr) -> Result<Prober, ProbeError> {
        let target = SocketAddr::new(address, monitor.port);
        let timeout = Duration::from_millis(u64::from(monitor.timeout_ms.max(1)));
        let kind = match monitor.protocol {
            MonitorProtocol::None => {
                return Err(ProbeError::Io("the monitor's protocol is none: nothing to probe".to_string()))
            }
            MonitorProtocol::Tcp => Kind::Tcp,
            MonitorProtocol::Http | MonitorProtocol::Https => http_kind(monitor, target)?,
        };
        Ok(Prober { target, timeout, kind })
    }

    /// Where the probes go.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// The bound on each probe.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// One probe: its RTT, or why it failed. Returns within the timeout
    /// (plus scheduling delays).
    pub async fn probe(&self) -> Result<Duration, ProbeError> {
        let start = Instant::now();
        let attempt = async {
            match &self.kind {
                Kind::Tcp => {
                    let stream = TcpStream::connect(self.target).await.map_err(|e| ProbeError::from_error(&e))?;
                    let rtt = start.elapsed();
                    drop(stream);
                    Ok(rtt)
                }
                Kind::Http { client, url, host, expected } => {
                    let mut request = client.get(url.clone()).header(CONNECTION, "close");
                    if let Some(host) = host {
                        request = request.header(HOST, host.clone());
                    }
                    let response = request.send().await.map_err(|e| ProbeError::from_error(&e))?;
                    let rtt = start.elapsed();
                    let code = response.status().as_u16();
                    // The body is not read: dropping the response closes the
                    // connection.
                    drop(response);
                    if expected.matches(code) {
                        Ok(rtt)
                    } else {
                        Err(ProbeError::Status(code))
                    }
                }
            }
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(ProbeError::Timeout(self.timeout)),
        }
    }
}

/// The URL, client and Host header of an HTTP(S) monitor.
///
/// With a host name, the URL names the host (so that rustls sends it as SNI
/// and checks the certificate against it) and the client resolves it to the
/// backend's address. With no host, or a host that is an IP address, the
/// URL names the backend's address.
fn http_kind(monitor: &Monitor, target: SocketAddr) -> Result<Kind, ProbeError> {
    ensure_crypto_provider();
    let scheme = if monitor.protocol == MonitorProtocol::Https { "https" } else { "http" };
    let path = if monitor.path.starts_with('/') { monitor.path.clone() } else { format!("/{}", monitor.path) };
    let bad = |what: &str, why: &dyn fmt::Display| ProbeError::Io(format!("cannot probe: {what}: {why}"));

    let host = match &monitor.host {
        Some(host) => Some(HeaderValue::from_str(host).map_err(|e| bad(&format!("host {host:?}"), &e))?),
        None => None,
    };
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .pool_max_idle_per_host(0)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("gslb-health-check/", env!("CARGO_PKG_VERSION")))
        .tls_danger_accept_invalid_certs(!monitor.tls_verify);

    let by_name = monitor.host.as_deref().and_then(host_name).and_then(|name| {
        let url = Url::parse(&format!("{scheme}://{name}:{}{path}", target.port())).ok()?;
        url.domain().is_some().then_some((name.to_string(), url))
    });
    let url = match by_name {
        Some((name, url)) => {
            builder = builder.resolve(&name, target);
            url
        }
        None => {
            let ip = match target.ip() {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("[{v6}]"),
            };
            Url::parse(&format!("{scheme}://{ip}:{}{path}", target.port()))
                .map_err(|e| bad(&format!("path {path:?}"), &e))?
        }
    };
    let client = builder.build().map_err(|e| bad("HTTP client", &e))?;
    Ok(Kind::Http { client, url, host, expected: monitor.expected_codes.clone() })
}

/// The name part of a Host value (without `:port`), unless it is an IP
/// address.
fn host_name(host: &str) -> Option<&str> {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    if name.is_empty() || name.contains(':') || bare.parse::<IpAddr>().is_ok() {
        return None;
    }
    Some(name)
}

/// reqwest is built without a crypto provider of its own (its default,
/// aws-lc-rs, needs cmake to build); install ring as rustls' process-wide
/// default, unless something installed one first.
fn ensure_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::testing::{monitor, HttpServer, Reply};

    #[test]
    fn host_names() {
        assert_eq!(host_name("example.com"), Some("example.com"));
        assert_eq!(host_name("example.com:8443"), Some("example.com"));
        assert_eq!(host_name("10.0.0.1"), None);
        assert_eq!(host_name("10.0.0.1:80"), None);
        assert_eq!(host_name("[::1]:80"), None);
        assert_eq!(host_name("::1"), None);
        assert_eq!(host_name(""), None);
    }

    #[test]
    fn error_kinds_and_reasons() {
        let cases = [
            (ProbeError::Timeout(Duration::from_millis(500)), "timeout", "timeout after 500ms"),
            (ProbeError::Refused, "refused", "connection refused"),
            (ProbeError::Unreachable("host unreachable".into()), "unreachable", "host unreachable"),
            (ProbeError::Status(503), "status", "status 503"),
            (
                ProbeError::Tls("invalid peer certificate: UnknownIssuer".into()),
                "tls",
                "tls: invalid peer certificate: UnknownIssuer",
            ),
            (ProbeError::Io("connection reset".into()), "io", "connection reset"),
        ];
        for (error, kind, reason) in cases {
            assert_eq!((error.kind(), error.to_string().as_str()), (kind, reason));
        }
        let unreachable = io::Error::from(io::ErrorKind::HostUnreachable);
        assert_eq!(ProbeError::from_error(&unreachable).to_string(), "host unreachable");
        let refused = io::Error::other(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(ProbeError::from_error(&refused), ProbeError::Refused);
        let tls = io::Error::other(io::Error::new(io::ErrorKind::InvalidData, rustls::Error::DecryptError));
        assert_eq!(ProbeError::from_error(&tls).kind(), "tls");
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(ProbeError::from_error(&reset), ProbeError::Io("connection reset".to_string()));
    }

    #[tokio::test]
    async fn none_cannot_be_probed() {
        let error = probe(&monitor(MonitorProtocol::None, 80), IpAddr::from([127, 0, 0, 1])).await.unwrap_err();
        assert_eq!(error.kind(), "io");
    }

    #[tokio::test]
    async fn tcp_up() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let rtt = probe(&monitor(MonitorProtocol::Tcp, port), IpAddr::from([127, 0, 0, 1])).await.unwrap();
        assert!(rtt < Duration::from_millis(500), "{rtt:?}");
    }

    #[tokio::test]
    async fn tcp_refused() {
        let port = crate::health::testing::closed_port();
        let error = probe(&monitor(MonitorProtocol::Tcp, port), IpAddr::from([127, 0, 0, 1])).await.unwrap_err();
        assert_eq!((error.kind(), error.to_string().as_str()), ("refused", "connection refused"));
    }

    #[tokio::test]
    async fn http_refused() {
        let port = crate::health::testing::closed_port();
        let error = probe(&monitor(MonitorProtocol::Http, port), IpAddr::from([127, 0, 0, 1])).await.unwrap_err();
        assert_eq!(error.kind(), "refused", "{error}");
    }

    #[tokio::test]
    async fn http_200_sends_path_and_address_host() {
        let server = HttpServer::start(Reply::status(200)).await;
        let mut m = monitor(MonitorProtocol::Http, server.port());
        m.path = "/healthz?deep=1".to_string();
        let rtt = probe(&m, server.ip()).await.unwrap();
        assert!(rtt < Duration::from_millis(500), "{rtt:?}");
        let requests = server.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].method, "GET");
        assert_eq!(requests[0].target, "/healthz?deep=1");
        assert_eq!(requests[0].host.as_deref(), Some(format!("127.0.0.1:{}", server.port()).as_str()));
    }

    #[tokio::test]
    async fn http_sends_configured_host() {
        let server = HttpServer::start(Reply::status(204)).await;
        let mut m = monitor(MonitorProtocol::Http, server.port());
        m.path = "/status".to_string();
        m.host = Some("www.example.test".to_string());
        probe(&m, server.ip()).await.unwrap();
        // An IP address as host: still sent as is, still connects to the backend.
        m.host = Some("192.0.2.7".to_string());
        probe(&m, server.ip()).await.unwrap();
        let requests = server.requests();
        assert_eq!(requests[0].target, "/status");
        assert_eq!(requests[0].host.as_deref(), Some("www.example.test"));
        assert_eq!(requests[1].host.as_deref(), Some("192.0.2.7"));
    }

    #[tokio::test]
    async fn http_503_fails_with_status() {
        let server = HttpServer::start(Reply::status(503)).await;
        let error = probe(&monitor(MonitorProtocol::Http, server.port()), server.ip()).await.unwrap_err();
        assert_eq!((error.kind(), error.to_string().as_str()), ("status", "status 503"));
    }

    #[tokio::test]
    async fn http_redirect_is_a_status() {
        let server = HttpServer::start(Reply::status(302)).await;
        let error = probe(&monitor(MonitorProtocol::Http, server.port()), server.ip()).await.unwrap_err();
        assert_eq!(error, ProbeError::Status(302));
        assert_eq!(server.requests().len(), 1);
    }

    #[tokio::test]
    async fn http_expected_codes_list() {
        let server = HttpServer::start(Reply::status(204)).await;
        let mut m = monitor(MonitorProtocol::Http, server.port());
        m.expected_codes = "200,301-302".parse().unwrap();
        assert_eq!(probe(&m, server.ip()).await, Err(ProbeError::Status(204)));
        m.expected_codes = "200,204".parse().unwrap();
        probe(&m, server.ip()).await.unwrap();
        server.set_reply(Reply::status(404));
        m.expected_codes = "2xx,404".parse().unwrap();
        probe(&m, server.ip()).await.unwrap();
        server.set_reply(Reply::status(500));
        assert_eq!(probe(&m, server.ip()).await, Err(ProbeError::Status(500)));
    }

    #[tokio::test]
    async fn http_slow_response_times_out() {
        let server = HttpServer::start(Reply::status(200).delay(Duration::from_secs(3))).await;
        let mut m = monitor(MonitorProtocol::Http, server.port());
        m.timeout_ms = 200;
        let start = std::time::Instant::now();
        let error = probe(&m, server.ip()).await.unwrap_err();
        let took = start.elapsed();
        assert_eq!((error.kind(), error.to_string().as_str()), ("timeout", "timeout after 200ms"));
        assert!(took >= Duration::from_millis(200) && took < Duration::from_millis(1000), "{took:?}");
    }

    #[tokio::test]
    async fn http_not_http_is_io() {
        let server = HttpServer::start(Reply::garbage()).await;
        let error = probe(&monitor(MonitorProtocol::Http, server.port()), server.ip()).await.unwrap_err();
        assert_eq!(error.kind(), "io", "{error}");
    }

    #[tokio::test]
    async fn https_self_signed_without_verification() {
        let server = HttpServer::start_tls(Reply::status(200), &["backend.example.test"]).await;
        let mut m = monitor(MonitorProtocol::Https, server.port());
        m.path = "/tls".to_string();
        m.host = Some("backend.example.test".to_string());
        m.tls_verify = false;
        probe(&m, server.ip()).await.unwrap();
        let requests = server.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].target, "/tls");
        assert_eq!(requests[0].host.as_deref(), Some("backend.example.test"));
        assert_eq!(requests[0].sni.as_deref(), Some("backend.example.test"));
    }

    #[tokio::test]
    async fn https_without_host_sends_no_sni() {
        let server = HttpServer::start_tls(Reply::status(200), &["127.0.0.1"]).await;
        let m = monitor(MonitorProtocol::Https, server.port());
        probe(&m, server.ip()).await.unwrap();
        let requests = server.requests();
        assert_eq!(requests[0].sni, None);
        assert_eq!(requests[0].host.as_deref(), Some(format!("127.0.0.1:{}", server.port()).as_str()));
    }

    #[tokio::test]
    async fn https_self_signed_with_verification_fails() {
        let server = HttpServer::start_tls(Reply::status(200), &["backend.example.test"]).await;
        let mut m = monitor(MonitorProtocol::Https, server.port());
        m.host = Some("backend.example.test".to_string());
        m.tls_verify = true;
        let error = probe(&m, server.ip()).await.unwrap_err();
        assert_eq!(error.kind(), "tls", "{error}");
        assert!(error.to_string().starts_with("tls: "), "{error}");
        assert!(server.requests().is_empty());
    }

    #[tokio::test]
    async fn https_against_plain_http_is_tls() {
        let server = HttpServer::start(Reply::status(200)).await;
        let error = probe(&monitor(MonitorProtocol::Https, server.port()), server.ip()).await.unwrap_err();
        assert_eq!(error.kind(), "tls", "{error}");
    }
}
