//! The admin socket: a Unix socket for the agent's user and group (and
//! root), serving the requests of `view::admin` with a handler the daemon
//! gives it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

use crate::view::admin::{Request, Response};

/// Answers one request (it may block: it runs on the blocking pool).
pub type Handler = Arc<dyn Fn(Request) -> Response + Send + Sync>;

/// Binds the admin socket: its directory is created 0750 if missing, the
/// socket itself is 0660, both with the agent's group: members of that
/// group may use it, nobody else (but root). A stale socket from a dead
/// agent is replaced.
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
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))?;
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
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves the admin socket until the task is dropped; each request is
/// answered by `handler` on the blocking pool.
pub async fn serve(listener: std::os::unix::net::UnixListener, handler: Handler) {
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
        let handler = handler.clone();
        tokio::spawn(async move {
            if let Err(error) = serve_one(stream, handler).await {
                debug!("admin connection: {error:#}");
            }
        });
    }
}

async fn serve_one(stream: UnixStream, handler: Handler) -> Result<()> {
    // Root, the agent's user and its group's members talk to the agent; the
    // socket's mode says so too, this holds even if someone loosens it.
    let peer = stream.peer_cred()?;
    let (read, mut write) = stream.into_split();
    let response = if !allowed(&peer) {
        Response {
            error: Some(format!(
                "uid {} may not use the admin socket (root, the agent's user and its group only)",
                peer.uid()
            )),
            ..Default::default()
        }
    } else {
        let mut line = String::new();
        AsyncBufReader::new(read).read_line(&mut line).await?;
        match serde_json::from_str::<Request>(&line) {
            Ok(request) => tokio::task::spawn_blocking(move || handler(request)).await?,
            Err(error) => Response { error: Some(format!("bad request: {error}")), ..Default::default() },
        }
    };
    let mut text = serde_json::to_string(&response)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    Ok(())
}

/// Whether the peer is root, the agent's own user, or in the agent's group
/// (as its primary group or one of its supplementary groups).
fn allowed(peer: &tokio::net::unix::UCred) -> bool {
    // SAFETY: geteuid and getegid cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if peer.uid() == 0 || peer.uid() == uid || peer.gid() == gid {
        return true;
    }
    // Supplementary groups are not in the peer's credentials: read them.
    let Some(pid) = peer.pid() else { return false };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("Groups:"))
        .is_some_and(|groups| groups.split_whitespace().any(|g| g.parse() == Ok(gid)))
}
