//! Next hops resolved by the agent, per backend, so `steer` sends tunnel
//! packets without a route lookup per packet (`NEXT_HOPS`). The watcher
//! resolves each installed backend the way the kernel routes its tunnel
//! packets (`kernel`, `resolve`) and keeps the answers current from the
//! kernel's link, neighbour and route notifications. Without an answer the
//! entry is not valid and `steer` asks the kernel's routing table, which is
//! always right, only slower.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use anyhow::Result;
use futures_util::{FutureExt, Stream, StreamExt};
use gslb_common::NextHop;
use tracing::{debug, info, warn};

mod kernel;
mod map;
mod resolve;

use kernel::{Kernel, Notification};
pub use map::{NextHopMap, Targets};
use resolve::Path;

/// Every backend is resolved again this often whatever the notifications
/// said: a safety net for what is not watched (policy rules, nexthop
/// objects, path MTUs the kernel learns).
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(30);

/// Starts the watcher on the current tokio runtime: it resolves every
/// backend now, then follows the kernel's notifications.
pub fn spawn(map: NextHopMap) -> Result<()> {
    let kernel = Kernel::connect()?;
    let notifications = kernel::subscribe()?;
    let watcher = Watcher { map, kernel, targets: Targets::default(), paths: BTreeMap::new() };
    tokio::spawn(watcher.run(notifications));
    Ok(())
}

/// An interface's name (for status), if it exists.
pub fn interface_name(ifindex: u32) -> Option<String> {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer holds IF_NAMESIZE bytes, as if_indextoname needs.
    let found = unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) };
    if found.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    Some(unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }.to_string_lossy().into_owned())
}

/// A MAC as `ip link` writes it.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// What to resolve again after a batch of notifications.
#[derive(Default)]
struct Work {
    all: bool,
    targets_changed: bool,
    backends: BTreeSet<u32>,
}

struct Watcher {
    map: NextHopMap,
    kernel: Kernel,
    /// The targets as last seen.
    targets: Targets,
    /// Each backend's path as last resolved (`None`: no route out of an up
    /// Ethernet interface): what neighbour notifications are matched to.
    paths: BTreeMap<u32, Option<Path>>,
}

impl Watcher {
    async fn run(mut self, mut notifications: impl Stream<Item = Notification> + Unpin) {
        let mut recheck = tokio::time::interval(RECHECK_INTERVAL);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut work = Work::default();
            tokio::select! {
                _ = recheck.tick() => work.all = true,
                _ = self.map.changed() => work.targets_changed = true,
                notification = notifications.next() => {
                    let Some(notification) = notification else {
                        warn!("the netlink notifications stopped; next hops are re-checked every {}s only", RECHECK_INTERVAL.as_secs());
                        return self.recheck_only().await;
                    };
                    self.note(notification, &mut work);
                    // Take the whole burst before asking the kernel again.
                    while let Some(Some(notification)) = notifications.next().now_or_never() {
                        self.note(notification, &mut work);
                    }
                }
            }
            self.apply(work).await;
        }
    }

    /// Without notifications: the periodic check and target changes only.
    async fn recheck_only(mut self) {
        let mut recheck = tokio::time::interval(RECHECK_INTERVAL);
        loop {
            let mut work = Work::default();
            tokio::select! {
                _ = recheck.tick() => work.all = true,
                _ = self.map.changed() => work.targets_changed = true,
            }
            self.apply(work).await;
        }
    }

    /// Acts on a neighbour change at once; notes what else to resolve again.
    fn note(&mut self, notification: Notification, work: &mut Work) {
        match notification {
            Notification::Lost => {
                warn!("netlink notifications were lost (socket overrun); resolving every next hop again");
                work.all = true;
            }
            Notification::Neighbour { ifindex, address, neighbour } => {
                let using: Vec<(u32, Path)> = self
                    .paths
                    .iter()
                    .filter_map(|(&id, path)| {
                        path.filter(|p| p.ifindex == ifindex && p.via == address).map(|p| (id, p))
                    })
                    .collect();
                for (id, path) in using {
                    self.write(id, resolve::hop(&path, Some(&neighbour)));
                }
            }
            Notification::Link { ifindex, link } => {
                let on_link: Vec<u32> = self
                    .paths
                    .iter()
                    .filter(|(_, path)| path.is_none_or(|p| p.ifindex == ifindex))
                    .map(|(&id, _)| id)
                    .collect();
                if !link.is_some_and(|l| l.up) {
                    // Down or gone: stop using it before anything else.
                    for &id in &on_link {
                        if self.paths.get(&id).is_some_and(Option::is_some) {
                            self.write(id, None);
                        }
                    }
                }
                work.backends.extend(on_link);
            }
            Notification::Route { prefix, len } => {
                let covered = self.targets.backends.iter().filter(|(_, &a)| resolve::covers(prefix, len, a));
                work.backends.extend(covered.map(|(&id, _)| id));
            }
        }
    }

    async fn apply(&mut self, mut work: Work) {
        if work.targets_changed {
            let targets = self.map.targets();
            let sources_changed =
                (targets.source_v4, targets.source_v6) != (self.targets.source_v4, self.targets.source_v6);
            work.all |= sources_changed;
            for (&id, address) in &targets.backends {
                if self.targets.backends.get(&id) != Some(address) {
                    work.backends.insert(id);
                }
            }
            self.paths.retain(|id, _| targets.backends.contains_key(id));
            self.targets = targets;
        }
        if work.all {
            self.targets = self.map.targets();
            self.paths.retain(|id, _| self.targets.backends.contains_key(id));
            work.backends = self.targets.backends.keys().copied().collect();
        }
        work.backends.retain(|id| self.targets.backends.contains_key(id));
        if !work.backends.is_empty() {
            self.resolve(&work.backends).await;
        }
    }

    /// Resolves `backends` from fresh answers of the kernel.
    async fn resolve(&mut self, backends: &BTreeSet<u32>) {
        let (links, neighbours) = match (self.kernel.links().await, self.kernel.neighbours().await) {
            (Ok(links), Ok(neighbours)) => (links, neighbours),
            (Err(error), _) | (_, Err(error)) => {
                warn!("cannot read links or neighbours ({error:#}); steer asks the kernel's routing table meanwhile");
                for &id in backends {
                    self.paths.insert(id, None);
                    self.write(id, None);
                }
                return;
            }
        };
        for &id in backends {
            let Some(&address) = self.targets.backends.get(&id) else { continue };
            let source = match address {
                IpAddr::V4(_) => self.targets.source_v4.map(IpAddr::V4),
                IpAddr::V6(_) => self.targets.source_v6.map(IpAddr::V6),
            };
            let route = self.kernel.route(address, source).await;
            let path = route.and_then(|r| resolve::path(address, &r, links.get(&r.ifindex)));
            let hop = path.and_then(|p| resolve::hop(&p, neighbours.get(&(p.ifindex, p.via))));
            self.paths.insert(id, path);
            self.write(id, hop);
        }
    }

    /// Writes backend `id`'s entry and says so when it changed.
    fn write(&self, id: u32, hop: Option<NextHop>) {
        let Some(&address) = self.targets.backends.get(&id) else { return };
        match self.map.update(id, address, hop) {
            Ok(false) => {}
            Ok(true) => match hop {
                Some(hop) => info!(
                    backend = %address,
                    interface = interface_name(hop.ifindex).unwrap_or_else(|| hop.ifindex.to_string()),
                    mac = format_mac(hop.dst_mac),
                    mtu = hop.mtu,
                    "next hop resolved"
                ),
                None => info!(backend = %address, "next hop not resolved; steer asks the kernel's routing table"),
            },
            Err(error) => warn!(backend = %address, "writing its next hop failed: {error:#}"),
        }
        debug!(id, backend = %address, ?hop, "next hop checked");
    }
}
