//! `NEXT_HOPS`, shared by `Steer` and the next-hop watcher. `Steer` claims
//! a backend id for an address as it writes `BACKENDS` and frees it as it
//! clears it; the watcher writes hops only for the address an id holds, under
//! the same lock. So a hop resolved for an address an id no longer has is
//! never written, and a reused id never inherits its old next hop.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, Result};
use aya::maps::{Array, IterableMap, MapData};
use gslb_common::{NextHop, NEXT_HOP_VALID};
use tokio::sync::Notify;

/// What the watcher resolves: backend id -> address, and the tunnel
/// sources (the route lookup's source addresses).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Targets {
    pub backends: BTreeMap<u32, IpAddr>,
    pub source_v4: Option<Ipv4Addr>,
    pub source_v6: Option<Ipv6Addr>,
}

/// A handle on `NEXT_HOPS`; clones share the map and the targets.
#[derive(Clone)]
pub struct NextHopMap {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Woken when the targets change.
    changed: Notify,
}

struct State {
    map: Array<MapData, NextHop>,
    targets: Targets,
}

impl NextHopMap {
    /// Wraps the map. `backends` are the ids already written (adopted
    /// state): their entries stay until the watcher has checked them. Every
    /// other id's entry is clear: it is cleared before its backend is freed.
    pub fn new(map: Array<MapData, NextHop>, backends: BTreeMap<u32, IpAddr>) -> NextHopMap {
        let state = State { map, targets: Targets { backends, ..Targets::default() } };
        NextHopMap { shared: Arc::new(Shared { state: Mutex::new(state), changed: Notify::new() }) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Gives backend `id` to `address`. A new address clears the id's next
    /// hop before the caller writes the backend, so packets to the new
    /// address never use the old one's.
    pub fn claim(&self, id: u32, address: IpAddr) -> Result<()> {
        let mut state = self.lock();
        if state.targets.backends.get(&id) == Some(&address) {
            return Ok(());
        }
        state.write(id, NextHop::default())?;
        state.targets.backends.insert(id, address);
        drop(state);
        self.shared.changed.notify_one();
        Ok(())
    }

    /// Frees backend `id` and clears its next hop.
    pub fn release(&self, id: u32) -> Result<()> {
        let mut state = self.lock();
        state.write(id, NextHop::default())?;
        if state.targets.backends.remove(&id).is_some() {
            drop(state);
            self.shared.changed.notify_one();
        }
        Ok(())
    }

    /// Sets the source addresses the route lookups use (the tunnel sources
    /// on an edge, the backend's own addresses in `decap`).
    pub fn set_sources(&self, v4: Option<Ipv4Addr>, v6: Option<Ipv6Addr>) {
        let mut state = self.lock();
        if state.targets.source_v4 != v4 || state.targets.source_v6 != v6 {
            state.targets.source_v4 = v4;
            state.targets.source_v6 = v6;
            drop(state);
            self.shared.changed.notify_one();
        }
    }

    pub fn targets(&self) -> Targets {
        self.lock().targets.clone()
    }

    /// Waits until the targets change (a change since the last call counts).
    pub async fn changed(&self) {
        self.shared.changed.notified().await
    }

    /// Makes backend `id`'s entry `hop` (`None`: not valid, `steer` asks the
    /// kernel), if `id` still belongs to `address`. A valid entry that
    /// changes is first marked not valid, so no packet reads a mix of the
    /// old and new hop. Returns whether the entry changed.
    pub fn update(&self, id: u32, address: IpAddr, hop: Option<NextHop>) -> Result<bool> {
        let mut state = self.lock();
        if state.targets.backends.get(&id) != Some(&address) {
            return Ok(false);
        }
        let current = state.read(id)?;
        let wanted = hop.map(|h| NextHop { flags: h.flags | NEXT_HOP_VALID, ..h });
        let invalid = NextHop { flags: current.flags & !NEXT_HOP_VALID, ..current };
        match wanted {
            Some(wanted) if wanted == current => Ok(false),
            None if current.flags & NEXT_HOP_VALID == 0 => Ok(false),
            wanted => {
                if current.flags & NEXT_HOP_VALID != 0 {
                    state.write(id, invalid)?;
                }
                if let Some(wanted) = wanted {
                    state.write(id, wanted)?;
                }
                Ok(true)
            }
        }
    }

    /// Backend `id`'s entry as `steer` reads it.
    pub fn get(&self, id: u32) -> Result<NextHop> {
        self.lock().read(id)
    }

    /// Writes an entry as given, whoever holds the id (tests and tools).
    pub fn set(&self, id: u32, hop: NextHop) -> Result<()> {
        self.lock().write(id, hop)
    }

    pub fn pin(&self, path: &Path) -> Result<()> {
        self.lock().map.map().pin(path).with_context(|| format!("pinning map {}", path.display()))
    }
}

impl State {
    fn read(&self, id: u32) -> Result<NextHop> {
        self.map.get(&id, 0).with_context(|| format!("reading the next hop of backend {id}"))
    }

    fn write(&mut self, id: u32, hop: NextHop) -> Result<()> {
        self.map.set(id, hop, 0).with_context(|| format!("writing the next hop of backend {id}"))
    }
}
