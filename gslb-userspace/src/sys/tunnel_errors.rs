//! Tunnel errors: ICMP errors about our own tunnel packets.
//!
//! A backend that passes its health checks (which go to its own address,
//! not through the tunnel) but cannot take tunnelled traffic is a black
//! hole. Some of those say so: a backend kernel without `decap` answers
//! IPv4-in-IP with ICMP "protocol unreachable" (IPv6: a parameter problem,
//! unrecognised next header), and a broken path gives "unreachable",
//! "prohibited", "too big" or "time exceeded". Each comes back to the
//! edge's tunnel source with our outer header embedded; `steer` passes it to
//! the kernel (it is not for a VIP), and raw ICMP and ICMPv6 sockets here
//! read it.
//!
//! Errors are counted per backend and kind, reported in `gslb status` and
//! the metrics, and logged (rate-limited) with the likely cause. They never
//! take a backend out of rotation: anyone can send an ICMP error naming any
//! address, so acting on them would hand an attacker a way to drain the
//! fleet. The operator decides (`gslb drain`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;
use tracing::warn;

/// At most one warning per backend in this time.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// What an ICMP error about a tunnel packet says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The backend's kernel has no handler for the tunnel protocol.
    ProtocolUnreachable,
    /// No route to the backend, or it does not answer neighbour requests.
    Unreachable,
    /// A filter on the way rejects the tunnel packets.
    Prohibited,
    /// A link on the way cannot carry the tunnel packets' size.
    TooBig,
    /// The tunnel packets loop.
    TimeExceeded,
}

impl Kind {
    pub const ALL: [Kind; 5] =
        [Kind::ProtocolUnreachable, Kind::Unreachable, Kind::Prohibited, Kind::TooBig, Kind::TimeExceeded];

    /// The name in status and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Kind::ProtocolUnreachable => "protocol_unreachable",
            Kind::Unreachable => "unreachable",
            Kind::Prohibited => "prohibited",
            Kind::TooBig => "too_big",
            Kind::TimeExceeded => "time_exceeded",
        }
    }

    fn likely_cause(self) -> &'static str {
        match self {
            Kind::ProtocolUnreachable => {
                "the backend does not strip the tunnel: is decap attached on the backend (`gslb decap --iface ... --address ...`)?"
            }
            Kind::Unreachable => "no route from this edge to the backend, or the backend does not answer on its link",
            Kind::Prohibited => "a firewall rejects tunnel packets (IP protocol 4/41) to the backend",
            Kind::TooBig => "the path to the backend cannot carry tunnel packets: raise its MTU or clamp clients' MSS",
            Kind::TimeExceeded => "tunnel packets to the backend loop between routers",
        }
    }
}

/// One ICMP error about one of our tunnel packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunnelError {
    /// The embedded packet's source: the tunnel source it was sent from.
    pub source: IpAddr,
    /// The embedded packet's destination: a backend, if it is ours.
    pub backend: IpAddr,
    /// Who sent the ICMP error (the backend, or a router on the way).
    pub reporter: IpAddr,
    pub kind: Kind,
}

/// Counts of tunnel errors, shared between the socket readers and status.
#[derive(Default)]
pub struct TunnelErrors {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    sources: BTreeSet<IpAddr>,
    backends: BTreeSet<IpAddr>,
    counts: BTreeMap<IpAddr, BTreeMap<Kind, u64>>,
    warned: BTreeMap<IpAddr, (Instant, u64)>,
}

impl TunnelErrors {
    pub fn new() -> Arc<TunnelErrors> {
        Arc::new(TunnelErrors::default())
    }

    /// Which tunnel sources are ours and which backends are configured;
    /// called on start and on every reload. Counts of backends still
    /// configured are kept.
    pub fn configure(&self, sources: impl IntoIterator<Item = IpAddr>, backends: impl IntoIterator<Item = IpAddr>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.sources = sources.into_iter().collect();
        state.backends = backends.into_iter().collect();
        let State { backends, counts, .. } = &mut *state;
        counts.retain(|b, _| backends.contains(b));
    }

    /// Counts of one backend, by kind name (empty if none).
    pub fn counts(&self, backend: IpAddr) -> BTreeMap<String, u64> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .counts
            .get(&backend)
            .map(|kinds| kinds.iter().map(|(k, n)| (k.name().to_string(), *n)).collect())
            .unwrap_or_default()
    }

    /// Counts `error` if it is about a tunnel packet of ours to a configured
    /// backend; returns whether it was.
    pub fn record(&self, error: &TunnelError) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !state.sources.contains(&error.source) || !state.backends.contains(&error.backend) {
            return false;
        }
        let kinds = state.counts.entry(error.backend).or_default();
        *kinds.entry(error.kind).or_default() += 1;
        let total: u64 = kinds.values().sum();
        let now = Instant::now();
        let due = state.warned.get(&error.backend).is_none_or(|(at, _)| now.duration_since(*at) >= WARN_EVERY);
        if due {
            let since = total - state.warned.get(&error.backend).map_or(0, |(_, n)| *n);
            state.warned.insert(error.backend, (now, total));
            warn!(
                backend = %error.backend,
                kind = error.kind.name(),
                reporter = %error.reporter,
                errors = since,
                "tunnel packets to backend {} come back as ICMP {}: {} (not taken out of rotation: ICMP can be forged; drain it with `gslb drain {}` if it is broken)",
                error.backend,
                error.kind.name(),
                error.kind.likely_cause(),
                error.backend
            );
        }
        true
    }
}

/// Opens raw ICMP and ICMPv6 sockets in this network namespace and feeds
/// every tunnel error to `errors` until the runtime stops. Must be called
/// inside a tokio runtime.
pub fn spawn(errors: Arc<TunnelErrors>) -> Result<()> {
    let v4 = raw_socket(Domain::IPV4, Protocol::ICMPV4).context("opening a raw ICMP socket")?;
    let v6 = raw_socket(Domain::IPV6, Protocol::ICMPV6).context("opening a raw ICMPv6 socket")?;
    let errors6 = errors.clone();
    tokio::spawn(read_loop(v4, move |d| {
        if let Some(error) = parse_icmpv4(d.bytes) {
            errors.record(&error);
        }
    }));
    // A raw ICMPv6 socket reads the message alone; its sender comes with
    // `recv_from`.
    tokio::spawn(read_loop(v6, move |d| {
        if let Some(error) = d.from.and_then(|from| parse_icmpv6(d.bytes, from)) {
            errors6.record(&error);
        }
    }));
    Ok(())
}

fn raw_socket(domain: Domain, protocol: Protocol) -> Result<AsyncFd<Socket>> {
    let socket = Socket::new(domain, Type::RAW, Some(protocol))?;
    socket.set_nonblocking(true)?;
    // SAFETY: the socket owns its descriptor, and nothing replaces or
    // closes it while the AsyncFd holds it.
    Ok(unsafe { AsyncFd::register(socket)? })
}

/// A datagram read from a raw socket, with its sender.
struct Datagram<'a> {
    bytes: &'a [u8],
    from: Option<IpAddr>,
}

async fn read_loop(socket: AsyncFd<Socket>, mut handle: impl FnMut(&Datagram) + Send + 'static) {
    let mut buf = vec![0u8; 2048];
    loop {
        let mut guard = match socket.readable().await {
            Ok(guard) => guard,
            Err(error) => {
                warn!("tunnel-error socket failed: {error}; tunnel errors are no longer counted");
                return;
            }
        };
        let read = guard.try_io(|inner| {
            let socket = inner.get_ref();
            // SAFETY: recv_from writes at most `buf.len()` initialised bytes
            // into `buf`, which u8's have no invalid values for.
            let uninit = unsafe { &mut *(buf.as_mut_slice() as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) };
            socket.recv_from(uninit)
        });
        match read {
            Ok(Ok((n, from))) => {
                let from = from.as_socket().map(|a| a.ip());
                handle(&Datagram { bytes: &buf[..n], from });
            }
            Ok(Err(error)) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(Err(error)) => {
                warn!("reading tunnel errors: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_would_block) => {}
        }
    }
}

const PROTO_IPIP: u8 = 4;
const PROTO_IPV6: u8 = 41;

/// An ICMP error about an IPv4 tunnel packet, from what a raw IPv4 ICMP
/// socket reads: the IPv4 header, the ICMP header, then the start of the
/// packet it is about.
pub fn parse_icmpv4(packet: &[u8]) -> Option<TunnelError> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    if packet[0] >> 4 != 4 || ihl < 20 {
        return None;
    }
    let reporter = Ipv4Addr::from(<[u8; 4]>::try_from(packet.get(12..16)?).ok()?);
    let icmp = packet.get(ihl..)?;
    let kind = match (*icmp.first()?, *icmp.get(1)?) {
        (3, 2) => Kind::ProtocolUnreachable,
        (3, 4) => Kind::TooBig,
        (3, 9 | 10 | 13) => Kind::Prohibited,
        (3, 0 | 1 | 5 | 6 | 7 | 11 | 12) => Kind::Unreachable,
        (11, _) => Kind::TimeExceeded,
        _ => return None,
    };
    let inner = icmp.get(8..)?;
    if inner.first()? >> 4 != 4 || !matches!(*inner.get(9)?, PROTO_IPIP | PROTO_IPV6) {
        return None;
    }
    let source = Ipv4Addr::from(<[u8; 4]>::try_from(inner.get(12..16)?).ok()?);
    let backend = Ipv4Addr::from(<[u8; 4]>::try_from(inner.get(16..20)?).ok()?);
    Some(TunnelError { source: source.into(), backend: backend.into(), reporter: reporter.into(), kind })
}

/// An ICMPv6 error about an IPv6 tunnel packet, from what a raw ICMPv6
/// socket reads (the message alone) and its sender.
pub fn parse_icmpv6(message: &[u8], reporter: IpAddr) -> Option<TunnelError> {
    let kind = match (*message.first()?, *message.get(1)?) {
        // Parameter problem, unrecognised next header.
        (4, 1) => Kind::ProtocolUnreachable,
        (1, 1 | 5 | 6) => Kind::Prohibited,
        (1, _) => Kind::Unreachable,
        (2, _) => Kind::TooBig,
        (3, _) => Kind::TimeExceeded,
        _ => return None,
    };
    let inner = message.get(8..)?;
    if inner.first()? >> 4 != 6 || !matches!(*inner.get(6)?, PROTO_IPIP | PROTO_IPV6) {
        return None;
    }
    let source = Ipv6Addr::from(<[u8; 16]>::try_from(inner.get(8..24)?).ok()?);
    let backend = Ipv6Addr::from(<[u8; 16]>::try_from(inner.get(24..40)?).ok()?);
    Some(TunnelError { source: source.into(), backend: backend.into(), reporter, kind })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EDGE: Ipv4Addr = Ipv4Addr::new(10, 2, 1, 2);
    const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 11, 1, 2);

    /// An ICMP error from `reporter` to the edge about a packet of
    /// protocol `proto` from `src` to `dst`, as a raw socket reads it.
    fn icmpv4(reporter: Ipv4Addr, icmp_type: u8, code: u8, src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 56, 0, 0, 0, 0, 64, 1, 0, 0];
        p.extend_from_slice(&reporter.octets());
        p.extend_from_slice(&EDGE.octets());
        p.extend_from_slice(&[icmp_type, code, 0, 0, 0, 0, 0, 0]);
        p.extend_from_slice(&[0x45, 0, 0, 60, 0, 0, 0x40, 0, 64, proto, 0, 0]);
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0, 0]);
        p
    }

    #[test]
    fn ipv4_errors_about_tunnel_packets_are_recognised() {
        let error = parse_icmpv4(&icmpv4(BACKEND, 3, 2, EDGE, BACKEND, 4)).unwrap();
        assert_eq!(
            error,
            TunnelError {
                source: EDGE.into(),
                backend: BACKEND.into(),
                reporter: BACKEND.into(),
                kind: Kind::ProtocolUnreachable
            }
        );
        let router = Ipv4Addr::new(10, 2, 1, 1);
        for (icmp_type, code, kind) in
            [(3, 1, Kind::Unreachable), (3, 13, Kind::Prohibited), (3, 4, Kind::TooBig), (11, 0, Kind::TimeExceeded)]
        {
            let error = parse_icmpv4(&icmpv4(router, icmp_type, code, EDGE, BACKEND, 41)).unwrap();
            assert_eq!((error.kind, error.reporter), (kind, router.into()));
        }
    }

    #[test]
    fn other_icmp_is_ignored() {
        // Not about a tunnel packet, not an error, port unreachable, cut short.
        assert_eq!(parse_icmpv4(&icmpv4(BACKEND, 3, 2, EDGE, BACKEND, 6)), None);
        assert_eq!(parse_icmpv4(&icmpv4(BACKEND, 0, 0, EDGE, BACKEND, 4)), None);
        assert_eq!(parse_icmpv4(&icmpv4(BACKEND, 3, 3, EDGE, BACKEND, 4)), None);
        let whole = icmpv4(BACKEND, 3, 2, EDGE, BACKEND, 4);
        for len in 0..48 {
            assert_eq!(parse_icmpv4(&whole[..len]), None, "{len} bytes");
        }
    }

    #[test]
    fn ipv6_unrecognised_next_header_is_protocol_unreachable() {
        let (edge, backend): (Ipv6Addr, Ipv6Addr) = ("fd00:2:1::2".parse().unwrap(), "fd00:11:1::2".parse().unwrap());
        let mut m = vec![4, 1, 0, 0, 0, 0, 0, 6];
        m.extend_from_slice(&[0x60, 0, 0, 0, 0, 40, 41, 64]);
        m.extend_from_slice(&edge.octets());
        m.extend_from_slice(&backend.octets());
        let error = parse_icmpv6(&m, backend.into()).unwrap();
        assert_eq!((error.source, error.backend, error.kind), (edge.into(), backend.into(), Kind::ProtocolUnreachable));
        m[8 + 6] = 17;
        assert_eq!(parse_icmpv6(&m, backend.into()), None, "not a tunnel packet");
        assert_eq!(parse_icmpv6(&[128, 0, 0, 0], backend.into()), None, "an echo request");
    }

    #[test]
    fn only_our_tunnels_to_configured_backends_count() {
        let errors = TunnelErrors::new();
        let other = Ipv4Addr::new(10, 11, 2, 2);
        errors.configure([IpAddr::V4(EDGE)], [IpAddr::V4(BACKEND), IpAddr::V4(other)]);
        let ours = parse_icmpv4(&icmpv4(BACKEND, 3, 2, EDGE, BACKEND, 4)).unwrap();
        assert!(errors.record(&ours) && errors.record(&ours));
        let spoofed_source = TunnelError { source: Ipv4Addr::new(192, 0, 2, 1).into(), ..ours };
        let unknown_backend = TunnelError { backend: Ipv4Addr::new(192, 0, 2, 2).into(), ..ours };
        assert!(!errors.record(&spoofed_source) && !errors.record(&unknown_backend));
        assert_eq!(errors.counts(BACKEND.into()), BTreeMap::from([("protocol_unreachable".to_string(), 2)]));
        assert!(errors.counts(other.into()).is_empty());
        // A backend leaving the config takes its counts along.
        errors.configure([IpAddr::V4(EDGE)], [IpAddr::V4(other)]);
        errors.configure([IpAddr::V4(EDGE)], [IpAddr::V4(BACKEND), IpAddr::V4(other)]);
        assert!(errors.counts(BACKEND.into()).is_empty());
    }
}
