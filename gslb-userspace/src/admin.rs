//! The agent's admin socket: one JSON request and one JSON response per
//! line, over a Unix socket only root may use.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

use crate::agent::Agent;
use crate::install::Changes;
use crate::status::Status;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    Status,
    Reload,
    /// No new flows for a backend (address) or a pool (name); with a
    /// duration, recorded flows are cut when it is over.
    Drain {
        target: String,
        duration_ms: Option<u64>,
    },
    Undrain {
        target: String,
    },
    /// Drain the whole edge from BGP: announce less preferred, then
    /// withdraw; with a duration, undrain when it is over.
    DrainEdge {
        duration_ms: Option<u64>,
    },
    UndrainEdge,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changes: Option<Changes>,
    /// The backends a drain or undrain applied to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<std::net::IpAddr>>,
}

impl Response {
    fn from_result<T>(result: Result<T>, fill: impl FnOnce(&mut Response, T)) -> Response {
        let mut response = Response::default();
        match result {
            Ok(value) => {
                response.ok = true;
                fill(&mut response, value);
            }
            Err(error) => response.error = Some(format!("{error:#}")),
        }
        response
    }
}

/// Answers one request against the agent.
pub fn handle(agent: &Mutex<Agent>, request: Request) -> Response {
    let mut agent = agent.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    match request {
        Request::Status => Response::from_result(Status::of(&agent), |r, s| r.status = Some(s)),
        Request::Reload => Response::from_result(agent.reload(), |r, c| r.changes = Some(c)),
        Request::Drain { target, duration_ms } => {
            let duration = duration_ms.map(Duration::from_millis);
            Response::from_result(agent.drain(&target, duration), |r, b| r.backends = Some(b))
        }
        Request::Undrain { target } => Response::from_result(agent.undrain(&target), |r, b| r.backends = Some(b)),
        Request::DrainEdge { duration_ms } => {
            Response::from_result(agent.drain_edge(duration_ms.map(Duration::from_millis)), |_, ()| ())
        }
        Request::UndrainEdge => Response::from_result(agent.undrain_edge(), |_, ()| ()),
    }
}

/// Binds the admin socket: its directory is created 0700 if missing, the
/// socket itself is 0600, and a stale socket from a dead agent is replaced.
pub fn bind(path: &Path) -> Result<std::os::unix::net::UnixListener> {
    const ADVICE: &str = "choose another edge.admin_socket, or create its directory on a writable filesystem";
    let shown = path.display();
    if let Some(dir) = path.parent() {
        match std::fs::metadata(dir) {
            Ok(meta) if !meta.is_dir() => {
                bail!("edge.admin_socket {shown}: {} is not a directory; {ADVICE}", dir.display())
            }
            Ok(_) => {}
            Err(_) => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    anyhow::anyhow!(
                        "edge.admin_socket {shown}: cannot create its directory {} ({e}); {ADVICE}",
                        dir.display()
                    )
                })?;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            }
        }
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("another agent is listening on {}; stop it or choose another edge.admin_socket", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("edge.admin_socket {shown}: cannot create the socket ({e}); {ADVICE}"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves the admin socket until the task is dropped.
pub async fn serve(listener: std::os::unix::net::UnixListener, agent: Arc<Mutex<Agent>>) {
    let listener = match UnixListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            warn!(%error, "cannot serve the admin socket");
            return;
        }
    };
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                warn!(%error, "admin socket accept failed");
                continue;
            }
        };
        let agent = agent.clone();
        tokio::spawn(async move {
            if let Err(error) = serve_one(stream, agent).await {
                debug!("admin connection: {error:#}");
            }
        });
    }
}

async fn serve_one(stream: UnixStream, agent: Arc<Mutex<Agent>>) -> Result<()> {
    // Only root talks to the agent; the socket mode says so too, this holds
    // even if someone loosens it.
    let peer = stream.peer_cred()?;
    let (read, mut write) = stream.into_split();
    let response = if peer.uid() != 0 {
        Response {
            error: Some(format!("uid {} may not use the admin socket (root only)", peer.uid())),
            ..Default::default()
        }
    } else {
        let mut line = String::new();
        AsyncBufReader::new(read).read_line(&mut line).await?;
        match serde_json::from_str::<Request>(&line) {
            Ok(request) => tokio::task::spawn_blocking(move || handle(&agent, request)).await?,
            Err(error) => Response { error: Some(format!("bad request: {error}")), ..Default::default() },
        }
    };
    let mut text = serde_json::to_string(&response)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    Ok(())
}

/// Sends one request to the agent at `path` and waits for its answer.
pub fn request(path: &Path, request: &Request) -> Result<Response> {
    let mut stream = std::os::unix::net::UnixStream::connect(path)
        .with_context(|| format!("connecting to the agent at {} (is `gslb run` running?)", path.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut text = serde_json::to_string(request)?;
    text.push('\n');
    stream.write_all(text.as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).context("reading the agent's answer")?;
    serde_json::from_str(&line).with_context(|| format!("the agent's answer is not valid: {line:?}"))
}
