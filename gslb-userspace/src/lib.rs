//! The gslb agent: config, planning, the data plane, and the command line.

pub mod admin;
pub mod agent;
pub mod announce;
pub mod attach;
pub mod cli;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod health;
pub mod install;
pub mod links;
pub mod metrics;
pub mod plan;
pub mod status;
pub mod tunnel_errors;
