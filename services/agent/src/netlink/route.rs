//! Routes the agent owns, told apart from every other route of the namespace by their
//! protocol number ([`KINO_ROUTE_PROTOCOL`], as Cilium tags its routes): listing only those
//! is what lets the agent reconcile what it installed against what it wants (a route deleted
//! or changed behind its back, or while it was down, is found and repaired) without ever
//! touching an operator's own routes.

use std::fmt;
use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::RouteMessageBuilder;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteMetric, RouteProtocol, RouteScope, RouteType,
};

use super::{Netlink, NetlinkError, nl_err};

/// The protocol number of the agent's routes (`ip route show proto 202`): outside the
/// numbers iproute2 names, so no routing daemon uses it.
pub const KINO_ROUTE_PROTOCOL: u8 = 202;

/// How a managed route leaves the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteVia {
    /// Out of a device without a gateway (link scope), with a route MTU and a preferred
    /// source address: remote pod CIDRs into `kino_vxlan` in tunnel mode.
    Device {
        /// The device's index.
        index: u32,
        /// Route MTU (0: the device's).
        mtu: u32,
        /// Preferred source address of what the node itself sends.
        source: Option<IpAddr>,
    },
    /// Via a gateway on a directly connected network: remote pod CIDRs via the other node's
    /// underlay address in native mode.
    Gateway(IpAddr),
}

/// One route the agent owns, in the main table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ManagedRoute {
    /// Destination network address (host bits zero).
    pub destination: IpAddr,
    /// Destination prefix length.
    pub prefix_len: u8,
    /// Where it goes.
    pub via: RouteVia,
}

impl fmt::Display for ManagedRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.destination, self.prefix_len)?;
        match self.via {
            RouteVia::Device { index, mtu, source } => {
                write!(f, " dev #{index}")?;
                if mtu != 0 {
                    write!(f, " mtu {mtu}")?;
                }
                if let Some(source) = source {
                    write!(f, " src {source}")?;
                }
                Ok(())
            }
            RouteVia::Gateway(gateway) => write!(f, " via {gateway}"),
        }
    }
}

impl ManagedRoute {
    fn message(&self) -> Result<RouteMessage, NetlinkError> {
        let mut builder = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(self.destination, self.prefix_len)
            .map_err(invalid(self))?
            .protocol(RouteProtocol::from(KINO_ROUTE_PROTOCOL))
            .kind(RouteType::Unicast);
        match self.via {
            RouteVia::Device { index, source, .. } => {
                builder = builder.output_interface(index).scope(RouteScope::Link);
                if let Some(source) = source {
                    builder = builder.pref_source(source).map_err(invalid(self))?;
                }
            }
            RouteVia::Gateway(gateway) => {
                builder = builder.gateway(gateway).map_err(invalid(self))?;
            }
        }
        let mut message = builder.build();
        if let RouteVia::Device { mtu, .. } = self.via
            && mtu != 0
        {
            message
                .attributes
                .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
        }
        Ok(message)
    }

    /// The managed route a kernel route message describes; `None` for a route of another
    /// protocol or table, or a shape the agent never installs.
    fn from_message(message: &RouteMessage) -> Option<ManagedRoute> {
        if message.header.protocol != RouteProtocol::from(KINO_ROUTE_PROTOCOL) {
            return None;
        }
        let mut destination = None;
        let mut gateway = None;
        let mut index = None;
        let mut mtu = 0;
        let mut source = None;
        let mut table = u32::from(message.header.table);
        for attribute in &message.attributes {
            match attribute {
                RouteAttribute::Destination(address) => destination = ip_of(address),
                RouteAttribute::Gateway(address) => gateway = ip_of(address),
                RouteAttribute::Oif(i) => index = Some(*i),
                RouteAttribute::PrefSource(address) => source = ip_of(address),
                RouteAttribute::Table(t) => table = *t,
                RouteAttribute::Metrics(metrics) => {
                    for metric in metrics {
                        if let RouteMetric::Mtu(m) = metric {
                            mtu = *m;
                        }
                    }
                }
                _ => {}
            }
        }
        if table != u32::from(MAIN_TABLE) {
            return None;
        }
        let via = match (gateway, index) {
            (Some(gateway), _) => RouteVia::Gateway(gateway),
            (None, Some(index)) => RouteVia::Device { index, mtu, source },
            (None, None) => return None,
        };
        Some(ManagedRoute {
            destination: destination?,
            prefix_len: message.header.destination_prefix_length,
            via,
        })
    }
}

/// A route the builder refuses (an address of the wrong family for the route).
fn invalid<E: fmt::Display>(route: &ManagedRoute) -> impl FnOnce(E) -> NetlinkError {
    let op = format!("build route {route}");
    move |e| NetlinkError {
        op,
        source: rtnetlink::Error::InvalidNla(e.to_string()),
    }
}

/// `RT_TABLE_MAIN`.
const MAIN_TABLE: u8 = 254;

fn ip_of(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

impl Netlink {
    /// Every route of the namespace, both families, as the kernel dumps them.
    pub(super) async fn route_messages(&self) -> Result<Vec<RouteMessage>, NetlinkError> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut filter = RouteMessageBuilder::<IpAddr>::new().build();
            filter.header.address_family = family;
            let messages: Vec<RouteMessage> = self
                .handle
                .route()
                .get(filter)
                .execute()
                .try_collect()
                .await
                .map_err(nl_err(format!("list {family:?} routes")))?;
            out.extend(messages);
        }
        Ok(out)
    }

    /// Every route of the main table installed with [`KINO_ROUTE_PROTOCOL`], both families.
    pub async fn managed_routes(&self) -> Result<Vec<ManagedRoute>, NetlinkError> {
        let mut out: Vec<ManagedRoute> = self
            .route_messages()
            .await?
            .iter()
            .filter_map(ManagedRoute::from_message)
            .collect();
        out.sort();
        Ok(out)
    }

    /// Installs `route`, replacing whatever route the main table has for its destination.
    pub async fn replace_managed_route(&self, route: &ManagedRoute) -> Result<(), NetlinkError> {
        self.handle
            .route()
            .add(route.message()?)
            .replace()
            .execute()
            .await
            .map_err(nl_err(format!("replace route {route}")))
    }

    /// Deletes `route`; `Ok(false)` when it was not there.
    pub async fn delete_managed_route(&self, route: &ManagedRoute) -> Result<bool, NetlinkError> {
        match self.handle.route().del(route.message()?).execute().await {
            Ok(()) => Ok(true),
            Err(e) => {
                let e = nl_err(format!("delete route {route}"))(e);
                if e.is_not_found() { Ok(false) } else { Err(e) }
            }
        }
    }
}
