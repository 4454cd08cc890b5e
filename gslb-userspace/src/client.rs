//! The commands that talk to a running agent over its admin socket, and
//! the one-shot checks (`check`, `verify`).

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::config::{self, Limits};
use crate::sys::decap::Decap;
use crate::sys::steer::Steer;
use crate::view::admin::{self, Request, Response};

/// `gslb reload`.
pub fn reload(socket: &Path) -> Result<()> {
    let response = admin::request(socket, &Request::Reload)?;
    if let Some(error) = response.error {
        bail!("reload refused: {error}");
    }
    println!("reloaded: {}", serde_json::to_string(&response.changes)?);
    Ok(())
}

/// `gslb status`, as text or JSON.
pub fn status(socket: &Path, json: bool) -> Result<()> {
    let response = admin::request(socket, &Request::Status)?;
    let Some(status) = response.status else {
        bail!("status failed: {}", response.error.unwrap_or_default());
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status.render());
    }
    Ok(())
}

/// `gslb drain TARGET`: a backend or a pool.
pub fn drain(socket: &Path, target: String, duration: Option<Duration>) -> Result<()> {
    let request = Request::Drain { target, duration_ms: duration.map(|d| d.as_millis() as u64) };
    print_backends("drained", admin::request(socket, &request)?)
}

/// `gslb undrain TARGET`.
pub fn undrain(socket: &Path, target: String) -> Result<()> {
    print_backends("undrained", admin::request(socket, &Request::Undrain { target })?)
}

/// `gslb drain --edge`.
pub fn drain_edge(socket: &Path, duration: Option<Duration>) -> Result<()> {
    let request = Request::DrainEdge { duration_ms: duration.map(|d| d.as_millis() as u64) };
    print_edge(
        "edge drained: VIPs announced less preferred, withdrawn after bgp.drain_wait_ms",
        admin::request(socket, &request)?,
    )
}

/// `gslb undrain --edge`.
pub fn undrain_edge(socket: &Path) -> Result<()> {
    print_edge("edge undrained", admin::request(socket, &Request::UndrainEdge)?)
}

/// `gslb check`: validates a config file.
pub fn check(path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the configuration file", path.display()))?;
    // A file of VIPs and pools without [edge] is a fleet document
    // (`gslb fleet push`): checked as every edge will check it.
    let is_document = text
        .parse::<toml::Table>()
        .is_ok_and(|t| !t.contains_key("edge") && (t.contains_key("vip") || t.contains_key("pool")));
    let (what, vips, pools) = if is_document {
        let (vips, pools) = config::parse_fleet_document(&text, path, &config::Edge::permissive())?;
        ("valid fleet document", vips, pools)
    } else {
        let parsed = config::parse(&text, path)?;
        ("valid", parsed.vips, parsed.pools)
    };
    println!(
        "{}: {what} ({} VIPs, {} pools, {} backends)",
        path.display(),
        vips.len(),
        pools.len(),
        pools.iter().map(|p| p.backends.len()).sum::<usize>()
    );
    Ok(())
}

/// `gslb verify`: loads both programs through the kernel verifier.
pub fn verify() -> Result<()> {
    crate::sys::capabilities::require_xdp("gslb verify")?;
    crate::sys::kernel::require_supported_here()?;
    Steer::load(Limits::default())?;
    Decap::load()?;
    println!("steer and decap passed the verifier");
    Ok(())
}

fn print_edge(what: &str, response: Response) -> Result<()> {
    if let Some(error) = response.error {
        bail!("{error}");
    }
    println!("{what}");
    Ok(())
}

fn print_backends(what: &str, response: Response) -> Result<()> {
    if let Some(error) = response.error {
        bail!("{error}");
    }
    let backends: Vec<String> = response.backends.unwrap_or_default().iter().map(|b| b.to_string()).collect();
    println!("{what}: {}", backends.join(" "));
    Ok(())
}
