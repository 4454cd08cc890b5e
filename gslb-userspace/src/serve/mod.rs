//! The agent's servers: the admin socket (`admin`) and the metrics endpoint
//! (`metrics`). They serve what closures hand them and never see the agent.

pub mod admin;
pub mod metrics;
