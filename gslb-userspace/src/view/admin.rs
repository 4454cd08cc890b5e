//! The admin socket's contract: one JSON request and one JSON response per
//! line (the server is `serve::admin`), and the client the CLI uses.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::reconcile::Changes;
use crate::view::status::Status;

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
    /// An answer from a result: `fill` sets what succeeded.
    pub fn from_result<T>(result: Result<T>, fill: impl FnOnce(&mut Response, T)) -> Response {
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

/// Sends one request to the agent at `path` and waits for its answer.
pub fn request(path: &Path, request: &Request) -> Result<Response> {
    let mut stream = match std::os::unix::net::UnixStream::connect(path) {
        Ok(stream) => stream,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => bail!(
            "permission denied on the agent's admin socket {}: use it as root or as a member of the group that owns it (`ls -l` shows it; docs/operations.md, \"Running without root\")",
            path.display()
        ),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("connecting to the agent at {} (is `gslb run` running?)", path.display()))
        }
    };
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut text = serde_json::to_string(request)?;
    text.push('\n');
    stream.write_all(text.as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).context("reading the agent's answer")?;
    serde_json::from_str(&line).with_context(|| format!("the agent's answer is not valid: {line:?}"))
}
