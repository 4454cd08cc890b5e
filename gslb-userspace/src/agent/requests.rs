//! The admin socket's requests, answered by the agent.

use std::time::Duration;

use super::Agent;
use crate::view::admin::{Request, Response};

impl Agent {
    /// Answers one admin request.
    pub fn answer(&mut self, request: Request) -> Response {
        match request {
            Request::Status => Response::from_result(self.status(), |r, s| r.status = Some(s)),
            Request::Reload => Response::from_result(self.reload(), |r, c| r.changes = Some(c)),
            Request::Drain { target, duration_ms } => {
                let duration = duration_ms.map(Duration::from_millis);
                Response::from_result(self.drain(&target, duration), |r, b| r.backends = Some(b))
            }
            Request::Undrain { target } => Response::from_result(self.undrain(&target), |r, b| r.backends = Some(b)),
            Request::DrainEdge { duration_ms } => {
                Response::from_result(self.drain_edge(duration_ms.map(Duration::from_millis)), |_, ()| ())
            }
            Request::UndrainEdge => Response::from_result(self.undrain_edge(), |_, ()| ()),
        }
    }
}
