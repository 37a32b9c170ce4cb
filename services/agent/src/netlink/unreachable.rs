//! Unreachable routes the agent owns (issue #14): one per service CIDR, so a packet to a
//! service address that escaped translation gets "unreachable" on the node instead of
//! leaving it by a default route. Tagged with [`KINO_ROUTE_PROTOCOL`] like the routes to other
//! nodes' pods, but of type unreachable: that reconciler's list never includes them (it reads
//! routes with a gateway or a device), and this one lists only these.

use std::net::IpAddr;

use rtnetlink::RouteMessageBuilder;
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage, RouteProtocol, RouteType};

use super::route::KINO_ROUTE_PROTOCOL;
use super::{Netlink, NetlinkError, nl_err};

/// `RT_TABLE_MAIN`.
const MAIN_TABLE: u8 = 254;

fn message(destination: IpAddr, prefix_len: u8) -> Result<RouteMessage, NetlinkError> {
    Ok(RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(destination, prefix_len)
        .map_err(|e| NetlinkError {
            op: format!("build unreachable route {destination}/{prefix_len}"),
            source: rtnetlink::Error::InvalidNla(e.to_string()),
        })?
        .protocol(RouteProtocol::from(KINO_ROUTE_PROTOCOL))
        .kind(RouteType::Unreachable)
        .build())
}

fn prefix_of(message: &RouteMessage) -> Option<(IpAddr, u8)> {
    if message.header.protocol != RouteProtocol::from(KINO_ROUTE_PROTOCOL)
        || message.header.kind != RouteType::Unreachable
    {
        return None;
    }
    let mut table = u32::from(message.header.table);
    let mut destination = None;
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Destination(address) => {
                destination = match address {
                    rtnetlink::packet_route::route::RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
                    rtnetlink::packet_route::route::RouteAddress::Inet6(ip) => {
                        Some(IpAddr::V6(*ip))
                    }
                    _ => None,
                }
            }
            RouteAttribute::Table(t) => table = *t,
            _ => {}
        }
    }
    (table == u32::from(MAIN_TABLE))
        .then_some((destination?, message.header.destination_prefix_length))
}

impl Netlink {
    /// The agent's unreachable routes of the main table, both families, sorted.
    pub async fn unreachable_routes(&self) -> Result<Vec<(IpAddr, u8)>, NetlinkError> {
        let mut out: Vec<(IpAddr, u8)> = self
            .route_messages()
            .await?
            .iter()
            .filter_map(prefix_of)
            .collect();
        out.sort();
        Ok(out)
    }

    /// Installs an unreachable route for `destination/prefix_len` (replacing what the main
    /// table has for it).
    pub async fn replace_unreachable_route(
        &self,
        destination: IpAddr,
        prefix_len: u8,
    ) -> Result<(), NetlinkError> {
        self.handle
            .route()
            .add(message(destination, prefix_len)?)
            .replace()
            .execute()
            .await
            .map_err(nl_err(format!(
                "install unreachable route {destination}/{prefix_len}"
            )))
    }

    /// Deletes the agent's unreachable route `destination/prefix_len`; `Ok(false)` when it was
    /// not there.
    pub async fn delete_unreachable_route(
        &self,
        destination: IpAddr,
        prefix_len: u8,
    ) -> Result<bool, NetlinkError> {
        match self
            .handle
            .route()
            .del(message(destination, prefix_len)?)
            .execute()
            .await
        {
            Ok(()) => Ok(true),
            Err(e) => {
                let e = nl_err(format!(
                    "delete unreachable route {destination}/{prefix_len}"
                ))(e);
                if e.is_not_found() { Ok(false) } else { Err(e) }
            }
        }
    }
}
