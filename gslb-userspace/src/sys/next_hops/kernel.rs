//! The kernel's routes, neighbours and links over rtnetlink: queries for
//! resolving next hops, and the notifications that say when they change.

use std::collections::BTreeMap;
use std::net::IpAddr;

use anyhow::{Context, Result};
use futures_util::stream::{Stream, TryStreamExt};
use netlink_packet_core::NetlinkMessage;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkLayerType, LinkMessage};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteMetric, RouteType, RouteVia};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::AsyncSocket;
use rtnetlink::{Handle, MulticastGroup};

use super::resolve::{usable, Link, Neighbour, RouteAnswer};

/// The notification socket's receive buffer: large, so bursts (a link
/// going down flushes many neighbours and routes) rarely overrun it.
const NOTIFY_BUFFER: usize = 4 << 20;

/// A connection for queries.
pub struct Kernel {
    handle: Handle,
}

impl Kernel {
    /// Opens the query socket; its connection runs as a task on the current
    /// tokio runtime.
    pub fn connect() -> Result<Kernel> {
        let (connection, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
        tokio::spawn(connection);
        Ok(Kernel { handle })
    }

    /// Every interface, by ifindex.
    pub async fn links(&self) -> Result<BTreeMap<u32, Link>> {
        let messages: Vec<LinkMessage> =
            self.handle.link().get().execute().try_collect().await.context("listing links")?;
        Ok(messages.iter().map(link_of).collect())
    }

    /// Every IPv4 and IPv6 neighbour entry, by (ifindex, address).
    pub async fn neighbours(&self) -> Result<BTreeMap<(u32, IpAddr), Neighbour>> {
        let mut entries = BTreeMap::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let messages: Vec<NeighbourMessage> = self
                .handle
                .neighbours()
                .get()
                .set_address_family(family)
                .execute()
                .try_collect()
                .await
                .context("listing neighbours")?;
            entries.extend(messages.iter().filter_map(neighbour_of));
        }
        Ok(entries)
    }

    /// The route a packet from `source` to `destination` takes
    /// (`ip route get DESTINATION from SOURCE`). `None`: no unicast route
    /// out of an interface. A source that is not a local address is left
    /// out rather than failing the lookup.
    pub async fn route(&self, destination: IpAddr, source: Option<IpAddr>) -> Option<RouteAnswer> {
        if let Some(source) = source {
            match self.get_route(destination, Some(source)).await {
                Ok(answer) => return answer,
                Err(error) => tracing::debug!(%destination, %source, "route lookup from the tunnel source: {error:#}"),
            }
        }
        match self.get_route(destination, None).await {
            Ok(answer) => answer,
            Err(error) => {
                tracing::debug!(%destination, "no route: {error:#}");
                None
            }
        }
    }

    async fn get_route(&self, destination: IpAddr, source: Option<IpAddr>) -> Result<Option<RouteAnswer>> {
        let mut request = RouteMessage::default();
        let full = if destination.is_ipv4() { 32 } else { 128 };
        request.header.address_family = if destination.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
        request.header.destination_prefix_length = full;
        request.attributes.push(RouteAttribute::Destination(destination.into()));
        if let Some(source) = source.filter(|s| s.is_ipv4() == destination.is_ipv4()) {
            request.header.source_prefix_length = full;
            request.attributes.push(RouteAttribute::Source(source.into()));
        }
        let answers: Vec<RouteMessage> = self.handle.route().get(request).execute().try_collect().await?;
        Ok(answers.first().and_then(route_answer))
    }
}

/// A notification: a link, neighbour or route changed, or some were lost.
pub enum Notification {
    Link {
        ifindex: u32,
        link: Option<Link>,
    },
    /// An entry changed; its MAC is `None` when it is gone or not usable.
    Neighbour {
        ifindex: u32,
        address: IpAddr,
        neighbour: Neighbour,
    },
    Route {
        prefix: IpAddr,
        len: u8,
    },
    /// The socket overran: notifications were lost.
    Lost,
}

/// Subscribes to link, neighbour, IPv4 and IPv6 route notifications; the
/// socket's connection runs as a task on the current tokio runtime.
pub fn subscribe() -> Result<impl Stream<Item = Notification> + Unpin> {
    use futures_util::StreamExt;
    let groups = [MulticastGroup::Link, MulticastGroup::Neigh, MulticastGroup::Ipv4Route, MulticastGroup::Ipv6Route];
    let (mut connection, _, messages) =
        rtnetlink::new_multicast_connection(&groups).context("subscribing to netlink notifications")?;
    connection
        .socket_mut()
        .socket_mut()
        .set_rx_buf_sz(NOTIFY_BUFFER)
        .context("sizing the netlink notification socket")?;
    tokio::spawn(connection);
    Ok(messages.filter_map(|(message, _)| std::future::ready(notification(message))))
}

fn notification(message: NetlinkMessage<RouteNetlinkMessage>) -> Option<Notification> {
    use netlink_packet_core::NetlinkPayload;
    use RouteNetlinkMessage::*;
    match message.payload {
        NetlinkPayload::Overrun(_) => Some(Notification::Lost),
        NetlinkPayload::InnerMessage(NewLink(m)) => {
            Some(Notification::Link { ifindex: m.header.index, link: Some(link_of(&m).1) })
        }
        NetlinkPayload::InnerMessage(DelLink(m)) => Some(Notification::Link { ifindex: m.header.index, link: None }),
        NetlinkPayload::InnerMessage(NewNeighbour(m)) => {
            let ((ifindex, address), neighbour) = neighbour_of(&m)?;
            Some(Notification::Neighbour { ifindex, address, neighbour })
        }
        NetlinkPayload::InnerMessage(DelNeighbour(m)) => {
            let ((ifindex, address), _) = neighbour_of(&m)?;
            Some(Notification::Neighbour { ifindex, address, neighbour: Neighbour { mac: None } })
        }
        NetlinkPayload::InnerMessage(NewRoute(m) | DelRoute(m)) => {
            let prefix = m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(address) => ip_of(address),
                _ => None,
            });
            // No destination attribute: a default route.
            let prefix = prefix.or(match m.header.address_family {
                AddressFamily::Inet => Some(IpAddr::from([0u8; 4])),
                AddressFamily::Inet6 => Some(IpAddr::from([0u8; 16])),
                _ => None,
            })?;
            Some(Notification::Route { prefix, len: m.header.destination_prefix_length })
        }
        _ => None,
    }
}

fn link_of(message: &LinkMessage) -> (u32, Link) {
    let mut link = Link {
        name: String::new(),
        up: message.header.flags.contains(LinkFlags::Up) && message.header.flags.contains(LinkFlags::Running),
        mac: None,
        mtu: 0,
    };
    let ethernet = message.header.link_layer_type == LinkLayerType::Ether;
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name.clone_from(name),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::Address(mac) if ethernet => link.mac = mac.as_slice().try_into().ok(),
            _ => {}
        }
    }
    (message.header.index, link)
}

fn neighbour_of(message: &NeighbourMessage) -> Option<((u32, IpAddr), Neighbour)> {
    let mut address = None;
    let mut mac = None;
    for attribute in &message.attributes {
        match attribute {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => address = Some(IpAddr::V4(*a)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => address = Some(IpAddr::V6(*a)),
            NeighbourAttribute::LinkLayerAddress(bytes) => mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            _ => {}
        }
    }
    let mac = mac.filter(|_| usable(message.header.state));
    Some(((message.header.ifindex, address?), Neighbour { mac }))
}

fn route_answer(message: &RouteMessage) -> Option<RouteAnswer> {
    if message.header.kind != RouteType::Unicast {
        return None;
    }
    let (mut ifindex, mut gateway, mut mtu) = (None, None, None);
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Oif(index) => ifindex = Some(*index),
            RouteAttribute::Gateway(address) => gateway = ip_of(address),
            RouteAttribute::Via(RouteVia::Inet(a)) => gateway = Some(IpAddr::V4(*a)),
            RouteAttribute::Via(RouteVia::Inet6(a)) => gateway = Some(IpAddr::V6(*a)),
            RouteAttribute::Metrics(metrics) => {
                mtu = metrics.iter().find_map(|m| if let RouteMetric::Mtu(v) = m { Some(*v) } else { None })
            }
            _ => {}
        }
    }
    Some(RouteAnswer { ifindex: ifindex?, gateway, mtu })
}

fn ip_of(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}
