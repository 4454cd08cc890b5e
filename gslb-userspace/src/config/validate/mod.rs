//! The checks: from the raw file to a `Config`, or the first problem found,
//! located at the offending value. One file per TOML section (`edge`,
//! `vip`, `pool`, `monitor`, `bgp`); `values` holds the checks of single
//! values they share.
//!
//! Order: `[edge]`, then each `[[vip]]` on its own, then each `[[pool]]`
//! (which needs the VIP addresses) with its backends' monitors, then what a
//! VIP's pools (listed, steered to and fallback) must satisfy, then `[bgp]`.

use std::ops::Range;

use crate::config::raw::RawConfig;
use crate::config::{Bgp, Config, ConfigError, Edge, Pool, Source, Vip};
use bgp::check_bgp;
use edge::check_edge;
use fleet::check_fleet;
use pool::{check_pools, check_vip_pools};
use vip::check_vips;

mod bgp;
mod edge;
mod fleet;
mod monitor;
mod pool;
mod values;
mod vip;

pub(super) type Result<T> = std::result::Result<T, ConfigError>;

/// A VIP and where its parts are in the file.
pub(super) struct CheckedVip {
    pub(super) vip: Vip,
    pub(super) span: Range<usize>,
    pub(super) pools_span: Range<usize>,
    /// One per entry of `vip.pools`.
    pub(super) pool_spans: Vec<Range<usize>>,
    /// One per entry of `vip.steer`.
    pub(super) steer: Vec<CheckedSteer>,
    pub(super) fallback_span: Option<Range<usize>>,
    pub(super) min_healthy_span: Option<Range<usize>>,
}

/// Where a steer rule's parts are in the file.
pub(super) struct CheckedSteer {
    pub(super) pools_span: Range<usize>,
    /// One per entry of the rule's pools.
    pub(super) pool_spans: Vec<Range<usize>>,
}

/// A pool and where its backends are in the file.
pub(super) struct CheckedPool {
    pub(super) pool: Pool,
    /// One per backend: the span of its address.
    pub(super) backend_spans: Vec<Range<usize>>,
}

pub(super) fn validate(src: &Source, raw: RawConfig) -> Result<Config> {
    let Some(edge) = &raw.edge else {
        return Err(
            src.error(0..0, "missing [edge] section: it must give at least name, interfaces and tunnel_source_v4")
        );
    };
    let raw_edge = edge.get_ref();
    let mut edge = check_edge(src, raw_edge, edge.span())?;
    let fleet = match &raw.fleet {
        None => None,
        Some(fleet) => {
            // The fleet document is the one place VIPs and pools are
            // written: two would drift apart.
            let local =
                raw.vip.first().map(|v| (v.span(), "[[vip]]")).or(raw.pool.first().map(|p| (p.span(), "[[pool]]")));
            if let Some((span, what)) = local {
                return Err(src.error(
                    span,
                    format!(
                        "{what} in an edge file with [fleet]: VIPs and pools come from the fleet document \
                         (`gslb fleet push`); move them there, or remove [fleet]"
                    ),
                ));
            }
            let mut checked = check_fleet(src, fleet.get_ref(), &edge)?;
            // One state file per edge: fleet.state_file is another name
            // for edge.state_file (its default keeps the fleet's name).
            match (&raw_edge.state_file, &fleet.get_ref().state_file) {
                (Some(_), None) => checked.state_file = edge.state_file.clone(),
                (None, _) => edge.state_file = checked.state_file.clone(),
                (Some(_), Some(other)) if checked.state_file != edge.state_file => {
                    return Err(src.error(
                        other.span(),
                        format!(
                            "fleet.state_file {:?} and edge.state_file {:?} differ: they name the edge's one state \
                             file; give one of them",
                            checked.state_file, edge.state_file
                        ),
                    ));
                }
                (Some(_), Some(_)) => {}
            }
            Some(checked)
        }
    };
    let (vips, pools) = check_vips_and_pools(src, &raw, &edge)?;
    let bgp = match &raw.bgp {
        None => Bgp::default(),
        Some(bgp) => check_bgp(src, bgp.get_ref(), bgp.span())?,
    };
    Ok(Config { edge, vips, pools, bgp, fleet })
}

/// A fleet document: VIPs and pools only, checked against `edge`.
pub(super) fn validate_document(src: &Source, raw: RawConfig, edge: &Edge) -> Result<(Vec<Vip>, Vec<Pool>)> {
    let host_section = [
        raw.edge.as_ref().map(|s| (s.span(), "[edge]")),
        raw.bgp.as_ref().map(|s| (s.span(), "[bgp]")),
        raw.fleet.as_ref().map(|s| (s.span(), "[fleet]")),
    ];
    if let Some((span, what)) = host_section.into_iter().flatten().next() {
        return Err(src.error(
            span,
            format!("{what} in a fleet document: it belongs in each edge's own file; a fleet document holds only [[vip]] and [[pool]]"),
        ));
    }
    check_vips_and_pools(src, &raw, edge)
}

fn check_vips_and_pools(src: &Source, raw: &RawConfig, edge: &Edge) -> Result<(Vec<Vip>, Vec<Pool>)> {
    let vips = check_vips(src, edge, &raw.vip)?;
    let pools = check_pools(src, edge, &vips, &raw.pool)?;
    check_vip_pools(src, edge, &vips, &pools)?;
    Ok((vips.into_iter().map(|v| v.vip).collect(), pools.into_iter().map(|p| p.pool).collect()))
}
