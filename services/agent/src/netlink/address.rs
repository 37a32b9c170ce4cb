//! The addresses of each link, with their scope: what the agent looks at to find the node's
//! own underlay address when none is configured.

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage, AddressScope};

use super::{Netlink, NetlinkError, nl_err};

/// One address of one link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkAddress {
    /// The link's index.
    pub index: u32,
    /// The address.
    pub address: IpAddr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// Global scope (not host- or link-local).
    pub global: bool,
}

impl Netlink {
    /// Every address of every link of the namespace.
    pub async fn link_addresses(&self) -> Result<Vec<LinkAddress>, NetlinkError> {
        let messages: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl_err("list addresses"))?;
        Ok(messages
            .iter()
            .filter_map(|m| {
                // IFA_LOCAL where present (point-to-point links), else IFA_ADDRESS.
                let local = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(ip) => Some(*ip),
                    _ => None,
                });
                let address = local.or_else(|| {
                    m.attributes.iter().find_map(|a| match a {
                        AddressAttribute::Address(ip) => Some(*ip),
                        _ => None,
                    })
                })?;
                Some(LinkAddress {
                    index: m.header.index,
                    address,
                    prefix_len: m.header.prefix_len,
                    global: m.header.scope == AddressScope::Universe,
                })
            })
            .collect())
    }
}
