//! Pure decisions: what the data plane should hold (`plan`), from what the
//! agent knows of its backends (`conditions`), whether the pools survive
//! losing the busiest one (`capacity`), and how long failovers took
//! (`failover`). Nothing here touches the kernel or the clock.

pub mod capacity;
pub mod conditions;
pub mod failover;
pub mod plan;
