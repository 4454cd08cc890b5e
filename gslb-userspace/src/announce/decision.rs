//! Which VIP addresses this edge announces, and how: a pure state machine
//! stepped with the time (`Instant`, passed in, so tests simulate it).
//!
//! Per address: announced after `announce_after` of continuous good state,
//! withdrawn after `withdraw_after` of continuous bad state. The guard holds
//! announcements while every check fails at once, and an edge drain first
//! marks every route less preferred, then withdraws them all.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// One announced route: a VIP address as a host prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Route {
    pub address: IpAddr,
    /// Announced with the drain attribute (less preferred).
    pub drain: bool,
}

/// What the agent sees of one VIP when it steps the decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipView {
    pub name: String,
    pub address: IpAddr,
    /// Its plan has a serving pool: a backend up in its table, from its
    /// listed pools or, when those have none, its fallback pool.
    pub serving: bool,
}

/// What the agent sees when it steps the decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inputs {
    /// `steer` is attached on at least one interface.
    pub steer_attached: bool,
    /// Every monitored backend of every VIP fails its checks (and there is
    /// at least one).
    pub all_failing: bool,
    /// The fleet's verdicts say this edge cannot reach backends that other
    /// edges reach (`fleet.withdraw_unreachable_share`): withdraw.
    pub fleet_unreachable: bool,
    pub vips: Vec<VipView>,
}

/// Why an address is, or is not, announced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// Every VIP on the address can serve.
    Serving,
    /// Good, waiting for `announce_after` to pass.
    Settling,
    /// Bad, waiting for `withdraw_after` to pass (still announced).
    Withdrawing,
    /// The named VIP has no serving pool.
    NoServingPool(String),
    SteerNotAttached,
    /// Announced with the drain attribute, withdrawn after `drain_wait`.
    EdgeDraining,
    EdgeDrained,
    /// Held: every check fails at once, most likely the edge's own fault.
    Guard,
    /// This edge cannot reach backends the fleet sees up.
    FleetUnreachable,
}

impl Reason {
    /// The words `gslb status` shows.
    pub fn describe(&self) -> String {
        match self {
            Reason::Serving => "serving".into(),
            Reason::Settling => "serving, waiting for announce_after_ms".into(),
            Reason::Withdrawing => "cannot serve, waiting for withdraw_after_ms".into(),
            Reason::NoServingPool(vip) => format!("no serving pool (vip {vip})"),
            Reason::SteerNotAttached => "steer not attached".into(),
            Reason::EdgeDraining => "edge draining: announced less preferred".into(),
            Reason::EdgeDrained => "edge drained".into(),
            Reason::Guard => "guard: all checks failing, announcement held".into(),
            Reason::FleetUnreachable => {
                "this edge cannot reach backends the fleet sees up (fleet.withdraw_unreachable_share)".into()
            }
        }
    }
}

/// One address's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressState {
    pub vips: Vec<String>,
    pub announced: bool,
    /// When `announced` last changed (or the address appeared).
    pub since: Instant,
    pub reason: Reason,
    /// When the current good or bad streak began.
    streak: (bool, Instant),
}

/// An operator's drain of the whole edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EdgeDrain {
    pub since: Instant,
    /// When it ends by itself (`--for`).
    pub until: Option<Instant>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timers {
    pub announce_after: Duration,
    pub withdraw_after: Duration,
    pub drain_wait: Duration,
    /// The guard is on (`keep_on_total_failure`).
    pub guard: bool,
}

#[derive(Clone, Debug)]
pub struct Decision {
    pub timers: Timers,
    pub addresses: BTreeMap<IpAddr, AddressState>,
    pub drain: Option<EdgeDrain>,
    /// The guard is holding announcements now.
    pub guard_active: bool,
}

impl Decision {
    pub fn new(timers: Timers) -> Decision {
        Decision { timers, addresses: BTreeMap::new(), drain: None, guard_active: false }
    }

    pub fn drain_edge(&mut self, now: Instant, duration: Option<Duration>) {
        self.drain = Some(EdgeDrain { since: now, until: duration.map(|d| now + d) });
    }

    pub fn undrain_edge(&mut self) {
        self.drain = None;
    }

    /// Whether the drain has reached its withdraw phase.
    pub fn drained(&self, now: Instant) -> bool {
        self.drain.is_some_and(|d| now >= d.since + self.timers.drain_wait)
    }

    /// Takes one look at `inputs` and returns the routes to announce now.
    pub fn step(&mut self, now: Instant, inputs: &Inputs) -> BTreeMap<IpAddr, Route> {
        if self.drain.is_some_and(|d| d.until.is_some_and(|u| now >= u)) {
            self.drain = None;
        }
        // Per address: the first reason it cannot be served, if any.
        let mut wanted: BTreeMap<IpAddr, (Vec<String>, Option<Reason>)> = BTreeMap::new();
        for vip in &inputs.vips {
            let entry = wanted.entry(vip.address).or_default();
            entry.0.push(vip.name.clone());
            if entry.1.is_none() {
                if !inputs.steer_attached {
                    entry.1 = Some(Reason::SteerNotAttached);
                } else if inputs.fleet_unreachable {
                    entry.1 = Some(Reason::FleetUnreachable);
                } else if !vip.serving {
                    entry.1 = Some(Reason::NoServingPool(vip.name.clone()));
                }
            }
        }
        self.addresses.retain(|a, _| wanted.contains_key(a));
        self.guard_active = self.timers.guard && inputs.all_failing && inputs.steer_attached;
        let drained = self.drained(now);
        let draining = self.drain.is_some();
        let mut routes = BTreeMap::new();
        for (address, (vips, bad)) in wanted {
            let good = bad.is_none();
            let state = self.addresses.entry(address).or_insert(AddressState {
                vips: Vec::new(),
                announced: false,
                since: now,
                reason: Reason::Settling,
                streak: (good, now),
            });
            state.vips = vips;
            if state.streak.0 != good {
                state.streak = (good, now);
            }
            let lasted = now.saturating_duration_since(state.streak.1);
            let (announce, reason) = if good {
                if state.announced || lasted >= self.timers.announce_after {
                    (true, Reason::Serving)
                } else {
                    (false, Reason::Settling)
                }
            } else {
                let bad = bad.expect("bad has a reason");
                let guarded = self.guard_active && matches!(bad, Reason::NoServingPool(_));
                if state.announced && guarded {
                    (true, Reason::Guard)
                } else if state.announced && lasted < self.timers.withdraw_after {
                    (true, Reason::Withdrawing)
                } else {
                    (false, bad)
                }
            };
            // The edge drain overrides: it is the operator's word. While it
            // lasts nothing new is announced.
            let (announce, reason, drain) = match (announce, draining, drained) {
                (_, true, true) => (false, Reason::EdgeDrained, false),
                (true, true, false) if state.announced => (true, Reason::EdgeDraining, true),
                (true, true, false) => (false, Reason::EdgeDraining, false),
                (false, true, false) => (false, reason, false),
                (announce, false, _) => (announce, reason, false),
            };
            if announce != state.announced {
                state.announced = announce;
                state.since = now;
            }
            state.reason = reason;
            if announce {
                routes.insert(address, Route { address, drain });
            }
        }
        routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "203.0.113.10";
    const B: &str = "2001:db8::53";

    fn timers() -> Timers {
        Timers {
            announce_after: Duration::from_millis(2000),
            withdraw_after: Duration::from_millis(300),
            drain_wait: Duration::from_millis(5000),
            guard: true,
        }
    }

    fn inputs(serving: &[(&str, &str, bool)]) -> Inputs {
        Inputs {
            steer_attached: true,
            all_failing: false,
            fleet_unreachable: false,
            vips: serving
                .iter()
                .map(|(name, address, serving)| VipView {
                    name: name.to_string(),
                    address: address.parse().unwrap(),
                    serving: *serving,
                })
                .collect(),
        }
    }

    fn announced(routes: &BTreeMap<IpAddr, Route>) -> Vec<String> {
        routes.values().map(|r| format!("{}{}", r.address, if r.drain { " drain" } else { "" })).collect()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn announces_only_after_continuous_good_state() {
        let t0 = Instant::now();
        let mut d = Decision::new(timers());
        let good = inputs(&[("web", A, true)]);
        let bad = inputs(&[("web", A, false)]);
        assert!(d.step(t0, &good).is_empty());
        assert_eq!(d.addresses[&A.parse().unwrap()].reason, Reason::Settling);
        // A bad moment restarts the count.
        assert!(d.step(t0 + ms(1500), &bad).is_empty());
        assert!(d.step(t0 + ms(1600), &good).is_empty());
        assert!(d.step(t0 + ms(3500), &good).is_empty());
        assert_eq!(announced(&d.step(t0 + ms(3600), &good)), vec![A]);
        let state = &d.addresses[&A.parse().unwrap()];
        assert_eq!((state.announced, state.since, &state.reason), (true, t0 + ms(3600), &Reason::Serving));
    }

    #[test]
    fn withdraws_only_after_continuous_bad_state() {
        let t0 = Instant::now();
        let mut d = Decision::new(timers());
        let good = inputs(&[("web", A, true), ("dns", B, true)]);
        let web_bad = inputs(&[("web", A, false), ("dns", B, true)]);
        d.step(t0, &good);
        assert_eq!(d.step(t0 + ms(2000), &good).len(), 2);
        // A short blip does not withdraw.
        assert_eq!(d.step(t0 + ms(2100), &web_bad).len(), 2);
        assert_eq!(d.addresses[&A.parse().unwrap()].reason, Reason::Withdrawing);
        assert_eq!(d.step(t0 + ms(2300), &good).len(), 2);
        assert_eq!(d.step(t0 + ms(2400), &web_bad).len(), 2);
        // Only the VIP that cannot serve goes.
        assert_eq!(announced(&d.step(t0 + ms(2700), &web_bad)), vec![B]);
        assert_eq!(d.addresses[&A.parse().unwrap()].reason, Reason::NoServingPool("web".into()));
    }

    #[test]
    fn an_address_needs_every_vip_on_it_serving() {
        let t0 = Instant::now();
        let mut d = Decision::new(timers());
        let mixed = inputs(&[("web", A, true), ("web-udp", A, false)]);
        d.step(t0, &mixed);
        assert!(d.step(t0 + ms(5000), &mixed).is_empty());
        let state = &d.addresses[&A.parse().unwrap()];
        assert_eq!(state.vips, vec!["web", "web-udp"]);
        assert_eq!(state.reason, Reason::NoServingPool("web-udp".into()));
    }

    #[test]
    fn steer_detached_withdraws_everything_even_under_the_guard() {
        let t0 = Instant::now();
        let mut d = Decision::new(timers());
        let good = inputs(&[("web", A, true)]);
        d.step(t0, &good);
        assert_eq!(d.step(t0 + ms(2000), &good).len(), 1);
        let detached = Inputs { steer_attached: false, all_failing: true, ..good.clone() };
        assert_eq!(d.step(t0 + ms(2100), &detached).len(), 1);
        assert!(d.step(t0 + ms(2400), &detached).is_empty());
        assert_eq!(d.addresses[&A.parse().unwrap()].reason, Reason::SteerNotAttached);
    }

    #[test]
    fn guard_holds_announcements_when_every_check_fails() {
        let t0 = Instant::now();
        let mut d = Decision::new(timers());
        let good = inputs(&[("web", A, true), ("dns", B, true)]);
        d.step(t0, &good);
        assert_eq!(d.step(t0 + ms(2000), &good).len(), 2);
        let all_bad = Inputs { all_failing: true, ..inputs(&[("web", A, false), ("dns", B, false)]) };
        assert_eq!(d.step(t0 + ms(5000), &all_bad).len(), 2);
        assert_eq!(d.step(t0 + ms(60_000), &all_bad).len(), 2);
        assert!(d.guard_active);
        assert_eq!(d.addresses[&A.parse().unwrap()].reason, Reason::Guard);
        // Once one check passes again, the guard lets go: the bad VIP goes.
        let one_back = inputs(&[("web", A, false), ("dns", B, true)]);
        assert_eq!(announced(&d.step(t0 + ms(60_100), &one_back)), vec![B]);
        assert!(!d.guard_active);
    }

    #[test]
    fn guard_announces_nothing_new_and_can_be_turned_off() {
        let t0 = Instant::now();
        let all_bad = Inputs { all_failing: true, ..inputs(&[("web", A, false)]) };
        let mut d = Decision::new(timers());
        assert!(d.step(t0 + ms(10_000), &all_bad).is_empty());
        let mut d = Decision::new(Timers { guard: false, ..timers() });
        let good = inputs(&[("web", A, true)]);
        d.step(t0, &good);
        d.step(t0 + ms(2000), &good);
        d.step(t0 + ms(2100), &all_bad);
        assert!(d.step(t0 + ms(2400), &all_bad).is_empty());
        assert!(!d.guard_active);
    }

    #[test]
    fn edge_drain_marks_then_withdraws_then_ends() {
        let t0 = Instant::now();
        let mut d = Decision::new(timers());
        let good = inputs(&[("web", A, true), ("dns", B, true)]);
        d.step(t0, &good);
        assert_eq!(d.step(t0 + ms(2000), &good).len(), 2);
        d.drain_edge(t0 + ms(3000), Some(ms(20_000)));
        let routes = d.step(t0 + ms(3000), &good);
        assert_eq!(announced(&routes), vec![format!("{A} drain"), format!("{B} drain")]);
        assert_eq!(d.addresses[&A.parse().unwrap()].reason, Reason::EdgeDraining);
        assert_eq!(d.step(t0 + ms(7999), &good).len(), 2);
        assert!(d.step(t0 + ms(8000), &good).is_empty());
        assert_eq!(d.addresses[&A.parse().unwrap()].reason, Reason::EdgeDrained);
        // `--for 20s` over: announced again at once, the VIPs stayed good.
        assert_eq!(announced(&d.step(t0 + ms(23_000), &good)), vec![A, B]);
        assert!(d.drain.is_none());
    }

    #[test]
    fn undrain_restores_and_a_drain_announces_nothing_new() {
        let t0 = Instant::now();
        let mut d = Decision::new(timers());
        let good = inputs(&[("web", A, true)]);
        d.drain_edge(t0, None);
        assert!(d.step(t0, &good).is_empty());
        assert!(d.step(t0 + ms(3000), &good).is_empty());
        assert!(d.step(t0 + ms(60_000), &good).is_empty());
        d.undrain_edge();
        assert_eq!(d.step(t0 + ms(60_001), &good).len(), 1);
    }

    #[test]
    fn removed_vips_are_forgotten() {
        let t0 = Instant::now();
        let mut d = Decision::new(timers());
        d.step(t0, &inputs(&[("web", A, true)]));
        assert_eq!(d.step(t0 + ms(2000), &inputs(&[("web", A, true)])).len(), 1);
        assert!(d.step(t0 + ms(2001), &inputs(&[])).is_empty());
        assert!(d.addresses.is_empty());
    }
}
