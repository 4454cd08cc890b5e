//! The `decap` program on a backend: loading it and telling it the
//! backend's tunnel addresses and, for second chance, the edges it takes
//! hop lists from and the backends it may hand packets on to.

use std::collections::BTreeMap;
use std::net::IpAddr;

use anyhow::{ensure, Context, Result};
use aya::maps::{HashMap, MapData, PerCpuArray};
use aya::programs::Xdp;
use aya::{Ebpf, EbpfLoader};
use gslb_common::{addr_from_ip, names, Addr16, DecapStats, DEFAULT_GUE_PORT};

use super::maps::{sum, take};
use super::next_hops::NextHopMap;
use super::OBJECT;

/// The `decap` program and its maps.
pub struct Decap {
    pub ebpf: Ebpf,
    addrs: HashMap<MapData, Addr16, u32>,
    edges: HashMap<MapData, Addr16, u32>,
    /// Peer address -> its index in `NEXT_HOPS` (from 1).
    peers: HashMap<MapData, Addr16, u32>,
    /// The peers' next hops, kept resolved by `next_hops::spawn`.
    next_hops: NextHopMap,
    /// Peers `DECAP_PEERS` has room for.
    peer_room: u32,
    stats: PerCpuArray<MapData, DecapStats>,
}

/// What `decap` is told besides its own addresses: second chance.
#[derive(Clone, Debug, Default)]
pub struct HopLists {
    /// Edge tunnel sources whose hop-list packets are taken (none: hop
    /// lists are refused).
    pub edges: Vec<IpAddr>,
    /// Backends a packet may be handed on to.
    pub peers: Vec<IpAddr>,
    /// The UDP port of hop-list packets (`DEFAULT_GUE_PORT` if `None`).
    pub gue_port: Option<u16>,
}

impl Decap {
    /// Loads the object with the steering maps shrunk to nothing (a backend
    /// needs only `decap`), taking hop lists on `hop_lists.gue_port`, with
    /// room for its edges and peers (written by `configured`).
    pub fn load_with(hop_lists: &HopLists) -> Result<Decap> {
        let gue_port = hop_lists.gue_port.unwrap_or(DEFAULT_GUE_PORT);
        let peer_room = hop_lists.peers.len().max(1024) as u32;
        let mut ebpf = EbpfLoader::new()
            .override_global(names::DECAP_GUE_PORT, &gue_port, true)
            .map_max_entries(names::DECAP_EDGES, hop_lists.edges.len().max(64) as u32)
            .map_max_entries(names::DECAP_PEERS, peer_room)
            .map_max_entries(names::MAGLEV, 1)
            .map_max_entries(names::FLOWS, 1)
            .map_max_entries(names::BACKENDS, 1)
            // Indexed by peer (from 1).
            .map_max_entries(names::NEXT_HOPS, peer_room + 1)
            .map_max_entries(names::BACKEND_STATS, 1)
            .load(OBJECT)
            .context("loading the gslb eBPF object")?;
        let program: &mut Xdp = ebpf.program_mut("decap").context("no decap program")?.try_into()?;
        program.load().map_err(|e| super::kernel::refused("decap", e))?;
        Ok(Decap {
            addrs: take(&mut ebpf, names::DECAP_ADDRS)?,
            edges: take(&mut ebpf, names::DECAP_EDGES)?,
            peers: take(&mut ebpf, names::DECAP_PEERS)?,
            next_hops: NextHopMap::new(take(&mut ebpf, names::NEXT_HOPS)?, BTreeMap::new()),
            peer_room,
            stats: take(&mut ebpf, names::DECAP_STATS)?,
            ebpf,
        })
    }

    /// `load_with` the default GUE port and room for 64 edges and 1024 peers.
    pub fn load() -> Result<Decap> {
        Decap::load_with(&HopLists::default())
    }

    /// Loads `decap` for `addresses`, with second chance as `hop_lists` says.
    pub fn configured(addresses: &[IpAddr], hop_lists: &HopLists) -> Result<Decap> {
        let mut decap = Decap::load_with(hop_lists)?;
        for address in addresses {
            decap.add_address(*address)?;
        }
        // Routes to the peers are looked up from this backend's addresses.
        let v4 = addresses.iter().find_map(|a| match a {
            IpAddr::V4(a) => Some(*a),
            IpAddr::V6(_) => None,
        });
        let v6 = addresses.iter().find_map(|a| match a {
            IpAddr::V6(a) => Some(*a),
            IpAddr::V4(_) => None,
        });
        decap.next_hops.set_sources(v4, v6);
        for edge in &hop_lists.edges {
            decap.add_edge(*edge)?;
        }
        for peer in &hop_lists.peers {
            decap.add_peer(*peer)?;
        }
        Ok(decap)
    }

    pub fn program(&mut self) -> &mut Xdp {
        self.ebpf.program_mut("decap").and_then(|p| p.try_into().ok()).expect("decap was loaded")
    }

    /// Accepts tunnel packets addressed to `address`.
    pub fn add_address(&mut self, address: IpAddr) -> Result<()> {
        self.addrs.insert(addr_from_ip(address), 1, 0).context("writing DECAP_ADDRS")
    }

    /// Takes hop-list packets from edge tunnel source `address`.
    pub fn add_edge(&mut self, address: IpAddr) -> Result<()> {
        self.edges.insert(addr_from_ip(address), 1, 0).context("writing DECAP_EDGES")
    }

    /// May hand hop-list packets on to backend `address` (its next hop is
    /// resolved once `next_hops` is watched).
    pub fn add_peer(&mut self, address: IpAddr) -> Result<()> {
        let index = self.next_hops.targets().backends.len() as u32 + 1;
        ensure!(index <= self.peer_room, "more than {} peers", self.peer_room);
        self.next_hops.claim(index, address)?;
        self.peers.insert(addr_from_ip(address), index, 0).context("writing DECAP_PEERS")
    }

    /// Makes the kernel resolve the neighbour of every peer whose next hop
    /// is not resolved yet: one empty UDP datagram to its discard port (9),
    /// which the peer's kernel ignores or answers with a port unreachable.
    /// A peer on this backend's own segment that it never talked to has no
    /// neighbour entry until something is sent to it; the next-hop watcher
    /// then sees the entry appear and writes the peer's next hop.
    pub fn probe_unresolved_peers(hops: &NextHopMap) {
        let targets = hops.targets();
        for (&index, &peer) in &targets.backends {
            let resolved = hops.get(index).is_ok_and(|h| h.flags & gslb_common::NEXT_HOP_VALID != 0);
            if resolved {
                continue;
            }
            let any: IpAddr = if peer.is_ipv4() { [0u8; 4].into() } else { [0u16; 8].into() };
            let sent = std::net::UdpSocket::bind((any, 0)).and_then(|socket| socket.send_to(&[], (peer, 9)));
            if let Err(error) = sent {
                tracing::debug!(%peer, "probing the peer's neighbour: {error}");
            }
        }
    }

    /// The peers' next hops (`NEXT_HOPS`, by peer index from 1 in the
    /// order the peers were added): hand it to `next_hops::spawn` to keep
    /// them resolved.
    pub fn next_hops(&self) -> NextHopMap {
        self.next_hops.clone()
    }

    pub fn stats(&self) -> Result<DecapStats> {
        sum(&self.stats, 0)
    }
}
