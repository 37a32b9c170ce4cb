//! A small route-netlink wrapper: the handful of link, address and route operations the agent
//! needs, each idempotent where that is what callers want, with errors naming the object.
//!
//! A [`Netlink`] talks to the network namespace of the thread that called [`Netlink::connect`]
//! (the socket is bound there for its whole life), whichever thread uses it afterwards.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

mod address;
mod route;
mod tc;
mod unreachable;
mod vxlan;
pub use address::LinkAddress;
pub use route::{KINO_ROUTE_PROTOCOL, ManagedRoute, RouteVia};
pub use tc::{BpfFilter, TcHook};
pub use vxlan::VxlanDetails;

/// An Ethernet MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts
                .next()
                .ok_or_else(|| format!("{s:?} has fewer than 6 octets"))?;
            *byte = u8::from_str_radix(part, 16)
                .map_err(|_| format!("{s:?}: {part:?} is not a hex octet"))?;
        }
        if parts.next().is_some() {
            return Err(format!("{s:?} has more than 6 octets"));
        }
        Ok(Self(mac))
    }
}

/// A netlink request failed.
#[derive(Debug, thiserror::Error)]
#[error("netlink: {op} failed: {source}")]
pub struct NetlinkError {
    /// What was being done, naming the object (`"add address 10.0.0.5/32 on eth0"`).
    pub op: String,
    /// rtnetlink's error (carries the kernel's errno for netlink errors).
    #[source]
    pub source: rtnetlink::Error,
}

impl NetlinkError {
    /// The kernel's errno (positive), when the kernel refused the request.
    pub fn errno(&self) -> Option<i32> {
        match &self.source {
            rtnetlink::Error::NetlinkError(message) => Some(-message.raw_code()),
            _ => None,
        }
    }

    /// True when the kernel said the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc::ENODEV) | Some(libc::ENOENT) | Some(libc::ESRCH) | Some(libc::EADDRNOTAVAIL)
        )
    }

    /// True when the kernel said the object already exists.
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }
}

/// What the agent needs to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkDetails {
    /// Interface index in the link's network namespace.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Hardware address (all zeros for links without one, such as `lo`).
    pub mac: MacAddr,
    /// Administratively up.
    pub up: bool,
    /// The link kind (`veth`, `dummy`, …) when it has one.
    pub kind: Option<String>,
    /// Its MTU.
    pub mtu: u32,
}

impl LinkDetails {
    fn from_message(message: &LinkMessage) -> Self {
        let mut details = LinkDetails {
            index: message.header.index,
            name: String::new(),
            mac: MacAddr::default(),
            up: message.header.flags.contains(LinkFlags::Up),
            kind: None,
            mtu: 0,
        };
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::IfName(name) => details.name.clone_from(name),
                LinkAttribute::Mtu(mtu) => details.mtu = *mtu,
                LinkAttribute::Address(bytes) if bytes.len() == 6 => {
                    details.mac.0.copy_from_slice(bytes);
                }
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = info {
                            details.kind = Some(kind.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        details
    }
}

/// A route-netlink connection bound to one network namespace.
pub struct Netlink {
    handle: Handle,
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        // The connection task owns the socket (and so a reference to the netns): end it.
        self.connection.abort();
    }
}

impl fmt::Debug for Netlink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netlink").finish_non_exhaustive()
    }
}

fn nl_err(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let op = op.into();
    move |source| NetlinkError { op, source }
}

impl Netlink {
    /// Opens a connection in the calling thread's network namespace; needs a tokio runtime.
    pub fn connect() -> std::io::Result<Self> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        let connection = tokio::spawn(connection);
        Ok(Self { handle, connection })
    }

    /// The link named `name`, if there is one.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkDetails>, NetlinkError> {
        Ok(self
            .link_message_by_name(name)
            .await?
            .as_ref()
            .map(LinkDetails::from_message))
    }

    /// The kernel's message of the link named `name`, if there is one.
    async fn link_message_by_name(&self, name: &str) -> Result<Option<LinkMessage>, NetlinkError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(e) => {
                let e = nl_err(format!("get link {name}"))(e);
                if e.is_not_found() { Ok(None) } else { Err(e) }
            }
        }
    }

    /// The link with index `index`, if there is one.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<LinkDetails>, NetlinkError> {
        let mut links = self.handle.link().get().match_index(index).execute();
        match links.try_next().await {
            Ok(link) => Ok(link.as_ref().map(LinkDetails::from_message)),
            Err(e) => {
                let e = nl_err(format!("get link #{index}"))(e);
                if e.is_not_found() { Ok(None) } else { Err(e) }
            }
        }
    }

    /// Every link of the namespace.
    pub async fn links(&self) -> Result<Vec<LinkDetails>, NetlinkError> {
        let links: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl_err("list links"))?;
        Ok(links.iter().map(LinkDetails::from_message).collect())
    }

    /// Every address configured on any link of the namespace (IPv4 and IPv6, loopback
    /// included), without duplicates.
    pub async fn local_addresses(&self) -> Result<Vec<IpAddr>, NetlinkError> {
        let mut addresses: Vec<IpAddr> = self
            .link_addresses()
            .await?
            .into_iter()
            .map(|a| a.address)
            .collect();
        addresses.sort();
        addresses.dedup();
        Ok(addresses)
    }

    /// Creates a veth pair `name` ↔ `peer`. The peer is created directly in the network
    /// namespace `peer_netns` when given (so its name cannot clash with a link of this one),
    /// with the MAC `peer_mac` when given, both ends with the MTU `mtu` when given (in the
    /// same request: no extra round trip).
    pub async fn add_veth(
        &self,
        name: &str,
        peer: &str,
        peer_netns: Option<BorrowedFd<'_>>,
        peer_mac: Option<MacAddr>,
        mtu: Option<u32>,
    ) -> Result<(), NetlinkError> {
        let mut peer_message = LinkMessageBuilder::<LinkUnspec>::new().name(peer.to_owned());
        if let Some(fd) = peer_netns {
            peer_message = peer_message.setns_by_fd(fd.as_raw_fd());
        }
        if let Some(mac) = peer_mac {
            peer_message = peer_message.address(mac.0.to_vec());
        }
        let mut host = LinkVeth::new(name, peer);
        if let Some(mtu) = mtu {
            peer_message = peer_message.mtu(mtu);
            host = host.mtu(mtu);
        }
        let message = host
            .set_info_data(rtnetlink::packet_route::link::InfoData::Veth(
                rtnetlink::packet_route::link::InfoVeth::Peer(peer_message.build()),
            ))
            .build();
        self.handle
            .link()
            .add(message)
            .execute()
            .await
            .map_err(nl_err(format!("create veth pair {name} <-> {peer}")))
    }

    /// Deletes the link `index`; `Ok(false)` when it did not exist.
    pub async fn delete_link(&self, index: u32) -> Result<bool, NetlinkError> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(e) => {
                let e = nl_err(format!("delete link #{index}"))(e);
                if e.is_not_found() { Ok(false) } else { Err(e) }
            }
        }
    }

    /// Sets the link `index` administratively up.
    pub async fn set_up(&self, index: u32) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(nl_err(format!("set link #{index} up")))
    }

    /// Adds `address/prefix_len` on link `index`; already present is fine.
    pub async fn add_address(
        &self,
        index: u32,
        address: IpAddr,
        prefix_len: u8,
    ) -> Result<(), NetlinkError> {
        match self
            .handle
            .address()
            .add(index, address, prefix_len)
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = nl_err(format!(
                    "add address {address}/{prefix_len} on link #{index}"
                ))(e);
                if e.is_exists() { Ok(()) } else { Err(e) }
            }
        }
    }

    /// Adds the IPv6 address `address/prefix_len` on link `index` without duplicate address
    /// detection (`nodad`), so it is usable at once instead of "tentative" for a second;
    /// already present is fine.
    pub async fn add_address_v6_nodad(
        &self,
        index: u32,
        address: Ipv6Addr,
        prefix_len: u8,
    ) -> Result<(), NetlinkError> {
        use rtnetlink::packet_route::address::{
            AddressAttribute, AddressFlags, AddressHeaderFlags,
        };
        let mut request = self.handle.address().add(index, address.into(), prefix_len);
        let message = request.message_mut();
        message.header.flags = AddressHeaderFlags::Nodad;
        message
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
        match request.execute().await {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = nl_err(format!(
                    "add address {address}/{prefix_len} (nodad) on link #{index}"
                ))(e);
                if e.is_exists() { Ok(()) } else { Err(e) }
            }
        }
    }

    /// Adds (or, with `replace`, replaces) an IPv4 route to `destination/prefix_len` out of
    /// link `index`, via `gateway` when given (else a link-scope route), with preferred source
    /// `source` when given. Without `replace`, an existing route is an error.
    pub async fn add_route_v4(
        &self,
        destination: Ipv4Addr,
        prefix_len: u8,
        index: u32,
        gateway: Option<Ipv4Addr>,
        source: Option<Ipv4Addr>,
        replace: bool,
    ) -> Result<(), NetlinkError> {
        let mut route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(destination, prefix_len)
            .output_interface(index);
        route = match gateway {
            Some(gateway) => route.gateway(gateway),
            None => route.scope(RouteScope::Link),
        };
        if let Some(source) = source {
            route = route.pref_source(source);
        }
        let mut request = self.handle.route().add(route.build());
        if replace {
            request = request.replace();
        }
        request.execute().await.map_err(nl_err(format!(
            "add route {destination}/{prefix_len} dev #{index}{}",
            gateway.map(|g| format!(" via {g}")).unwrap_or_default()
        )))
    }

    /// The IPv6 counterpart of [`Netlink::add_route_v4`].
    pub async fn add_route_v6(
        &self,
        destination: Ipv6Addr,
        prefix_len: u8,
        index: u32,
        gateway: Option<Ipv6Addr>,
        replace: bool,
    ) -> Result<(), NetlinkError> {
        let mut route = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(destination, prefix_len)
            .output_interface(index);
        route = match gateway {
            Some(gateway) => route.gateway(gateway),
            None => route.scope(RouteScope::Link),
        };
        let mut request = self.handle.route().add(route.build());
        if replace {
            request = request.replace();
        }
        request.execute().await.map_err(nl_err(format!(
            "add route {destination}/{prefix_len} dev #{index}{}",
            gateway.map(|g| format!(" via {g}")).unwrap_or_default()
        )))
    }

    /// Deletes the IPv4 route to `destination/prefix_len` out of link `index`; `Ok(false)`
    /// when there was none.
    pub async fn delete_route_v4(
        &self,
        destination: Ipv4Addr,
        prefix_len: u8,
        index: u32,
    ) -> Result<bool, NetlinkError> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(destination, prefix_len)
            .output_interface(index)
            .build();
        match self.handle.route().del(route).execute().await {
            Ok(()) => Ok(true),
            Err(e) => {
                let e = nl_err(format!(
                    "delete route {destination}/{prefix_len} dev #{index}"
                ))(e);
                if e.is_not_found() { Ok(false) } else { Err(e) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_addresses_print_and_parse() {
        let mac = MacAddr([0x02, 0xfc, 0, 0x0a, 0xbc, 0xff]);
        assert_eq!(mac.to_string(), "02:fc:00:0a:bc:ff");
        assert_eq!("02:fc:00:0a:bc:ff".parse::<MacAddr>().expect("valid"), mac);
        assert!("02:fc:00:0a:bc".parse::<MacAddr>().is_err());
        assert!("02:fc:00:0a:bc:ff:00".parse::<MacAddr>().is_err());
        assert!("02:fc:00:0a:bc:zz".parse::<MacAddr>().is_err());
    }
}
