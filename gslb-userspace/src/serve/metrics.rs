//! The metrics endpoint: `GET /metrics` over HTTP/1, answered with what a
//! snapshot closure renders (the agent's status as OpenMetrics text).
//!
//! Wiring: bind with [`bind`] before the agent starts (so a taken port fails
//! start-up), then run [`serve_listener`] on the runtime with a closure that
//! takes a status snapshot and renders it. [`serve`] does both from an
//! address.

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;

use crate::view::metrics::CONTENT_TYPE_OPENMETRICS;

/// The path that serves the metrics.
pub const METRICS_PATH: &str = "/metrics";

/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 64;

/// How long a client may take to send its request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the metrics listener: a std listener, nonblocking, ready for
/// [`serve_listener`]. The error names the address.
pub fn bind(listen: SocketAddr) -> Result<StdTcpListener> {
    let listener = StdTcpListener::bind(listen).with_context(|| format!("binding the metrics listener on {listen}"))?;
    listener.set_nonblocking(true).with_context(|| format!("making the metrics listener on {listen} nonblocking"))?;
    Ok(listener)
}

/// Binds `listen` and serves `GET /metrics` on it until an error. A bind
/// failure is returned at once and names the address. `snapshot` runs once
/// per request on the blocking pool.
pub async fn serve(listen: SocketAddr, snapshot: impl Fn() -> Result<String> + Send + Sync + 'static) -> Result<()> {
    serve_listener(bind(listen)?, snapshot).await
}

/// Serves `GET /metrics` on a listener from [`bind`]: 200 with what
/// `snapshot` returns, 500 if it fails, 405 for other methods on
/// `/metrics`, 404 for any other path. `snapshot` runs once per request on
/// the blocking pool (it may take locks). Runs until accepting fails in a
/// way that retrying cannot cure; must be called inside a Tokio runtime.
pub async fn serve_listener(
    listener: StdTcpListener,
    snapshot: impl Fn() -> Result<String> + Send + Sync + 'static,
) -> Result<()> {
    listener.set_nonblocking(true).context("making the metrics listener nonblocking")?;
    let local = listener.local_addr().ok();
    let listener = tokio::net::TcpListener::from_std(listener).context("registering the metrics listener")?;
    let snapshot: Arc<dyn Fn() -> Result<String> + Send + Sync> = Arc::new(snapshot);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tracing::info!("serving metrics on http://{}{METRICS_PATH}", local.map_or("?".into(), |a| a.to_string()));
    loop {
        let permit = slots.clone().acquire_owned().await.context("metrics connection limit closed")?;
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait, then go on.
                tracing::warn!("metrics listener: accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let snapshot = snapshot.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |request| respond(request, snapshot.clone()));
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!("metrics connection from {peer}: {e}");
            }
        });
    }
}

fn response(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

async fn respond(
    request: Request<Incoming>,
    snapshot: Arc<dyn Fn() -> Result<String> + Send + Sync>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if request.uri().path() != METRICS_PATH {
        return Ok(response(StatusCode::NOT_FOUND, PLAIN, "not found: metrics are at /metrics\n"));
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut r = response(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "only GET and HEAD\n");
        r.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Ok(r);
    }
    let rendered = match tokio::task::spawn_blocking(move || snapshot()).await {
        Ok(rendered) => rendered,
        Err(e) => Err(anyhow::anyhow!("the metrics snapshot panicked: {e}")),
    };
    Ok(match rendered {
        Ok(text) => response(StatusCode::OK, CONTENT_TYPE_OPENMETRICS, text),
        Err(e) => {
            tracing::warn!("metrics snapshot failed: {e:#}");
            response(StatusCode::INTERNAL_SERVER_ERROR, PLAIN, format!("metrics unavailable: {e:#}\n"))
        }
    })
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::net::TcpStream;

    use super::*;
    use crate::view::metrics::render;
    use crate::view::status::sample_status as status;

    fn get(addr: SocketAddr, method: &str, path: &str) -> (String, String) {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(stream, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        let (head, body) = reply.split_once("\r\n\r\n").expect("a complete HTTP response");
        (head.to_string(), body.to_string())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serves_metrics_over_http() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = calls.clone();
        let server = tokio::spawn(serve_listener(listener, move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(render(&status()))
        }));

        let (head, body) = tokio::task::spawn_blocking(move || get(addr, "GET", "/metrics")).await.unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.to_ascii_lowercase().contains(&format!("content-type: {CONTENT_TYPE_OPENMETRICS}")), "{head}");
        assert!(body.contains(r#"gslb_info{edge="fra1"} 1"#), "{body}");
        assert!(body.contains(r#"gslb_packets_total{result="received"} 1000"#), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);

        let (head, _) = tokio::task::spawn_blocking(move || get(addr, "GET", "/")).await.unwrap();
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");
        let (head, _) = tokio::task::spawn_blocking(move || get(addr, "POST", "/metrics")).await.unwrap();
        assert!(head.starts_with("HTTP/1.1 405"), "{head}");
        // Neither of those took a snapshot.
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        server.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_snapshot_is_a_500() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve_listener(listener, || Err(anyhow::anyhow!("agent lock poisoned"))));
        let (head, body) = tokio::task::spawn_blocking(move || get(addr, "GET", "/metrics")).await.unwrap();
        assert!(head.starts_with("HTTP/1.1 500"), "{head}");
        assert!(body.contains("agent lock poisoned"), "{body}");
        server.abort();
    }

    #[tokio::test]
    async fn bind_failure_names_the_address() {
        let taken = StdTcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = serve(addr, || Ok(String::new())).await.unwrap_err();
        assert!(format!("{err:#}").contains(&addr.to_string()), "{err:#}");
    }
}
