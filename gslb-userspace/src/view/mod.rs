//! The agent's outward contract and its rendering: the status snapshot
//! (`status`, `bgp`), its text form (`render`), its OpenMetrics form
//! (`metrics`; `decap` for `gslb decap`), the admin socket's requests and answers (`admin`), and the
//! time format they share (`time`). Plain data in, text out: nothing here
//! knows the agent.

pub mod admin;
pub mod bgp;
pub mod decap;
pub mod fleet;
pub mod metrics;
pub mod render;
pub mod status;
pub mod time;
