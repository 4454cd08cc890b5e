//! The gslb agent. The tree follows the architecture:
//!
//! - `cli` parses the command line and calls `daemon` (the agent's runtime,
//!   `decap`) or `client` (commands to a running agent).
//! - `agent` owns the running state and reacts to events; `snapshot` turns
//!   it into the status contract.
//! - `config` reads and validates the TOML file; `health` probes backends;
//!   `announce` drives a BGP daemon.
//! - `decide` holds the pure decisions (plan, conditions, capacity,
//!   failover records); `reconcile` writes a plan's difference to the maps.
//! - `sys` is everything that touches the kernel.
//! - `view` is the outward contract and its rendering; `serve` runs the
//!   admin socket and the metrics endpoint.

pub mod agent;
pub mod announce;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod decide;
pub mod fleet;
pub mod health;
pub mod reconcile;
pub mod serve;
pub mod sys;
pub mod view;
