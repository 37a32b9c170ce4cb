//! VXLAN links (issue #13): creating the collect-metadata ("external") device the overlay
//! runs on, and reading back how an existing VXLAN link is set up, so that the device can be
//! adopted when it is as wanted and replaced when it is not.

use rtnetlink::LinkVxlan;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags};
use rtnetlink::packet_route::link::{LinkInfo, LinkMessage};

use super::{Netlink, NetlinkError, nl_err};

/// How a VXLAN link is set up, as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanDetails {
    /// Interface index.
    pub index: u32,
    /// Collect-metadata ("external") mode: the VNI and remote come from each packet's
    /// tunnel key.
    pub external: bool,
    /// UDP destination port.
    pub port: u16,
    /// Learning of remote MACs into the FDB.
    pub learning: bool,
    /// The link's MTU.
    pub mtu: u32,
    /// ARP (and IPv6 neighbour discovery) off (`IFF_NOARP`).
    pub noarp: bool,
    /// Administratively up.
    pub up: bool,
}

impl VxlanDetails {
    /// The details of a link message; `None` when the link is not a VXLAN link.
    fn from_message(message: &LinkMessage) -> Option<Self> {
        let mut details = VxlanDetails {
            index: message.header.index,
            external: false,
            port: 0,
            learning: false,
            mtu: 0,
            noarp: message.header.flags.contains(LinkFlags::Noarp),
            up: message.header.flags.contains(LinkFlags::Up),
        };
        let mut vxlan = false;
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::Mtu(mtu) => details.mtu = *mtu,
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(InfoKind::Vxlan) => vxlan = true,
                            LinkInfo::Data(InfoData::Vxlan(data)) => {
                                for item in data {
                                    match item {
                                        InfoVxlan::CollectMetadata(on) => details.external = *on,
                                        InfoVxlan::Port(port) => details.port = *port,
                                        InfoVxlan::Learning(on) => details.learning = *on,
                                        _ => {}
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        vxlan.then_some(details)
    }
}

impl Netlink {
    /// The link `name` as a VXLAN link: `Ok(None)` when there is no such link, `Ok(Some(None))`
    /// when it is a link of another kind.
    pub async fn vxlan_by_name(
        &self,
        name: &str,
    ) -> Result<Option<Option<VxlanDetails>>, NetlinkError> {
        Ok(self
            .link_message_by_name(name)
            .await?
            .as_ref()
            .map(VxlanDetails::from_message))
    }

    /// Creates the collect-metadata VXLAN link `name` on UDP port `port` with MTU `mtu`:
    /// no learning, no ARP (its neighbours are never resolved: the tunnel key says where a
    /// packet goes), up. The link must not exist.
    pub async fn add_vxlan_external(
        &self,
        name: &str,
        port: u16,
        mtu: u32,
    ) -> Result<(), NetlinkError> {
        let message = LinkVxlan::new(name, 0)
            .append_info_data(InfoVxlan::CollectMetadata(true))
            .append_info_data(InfoVxlan::Learning(false))
            .port(port)
            .mtu(mtu)
            .arp(false)
            .up()
            .build();
        self.handle
            .link()
            .add(message)
            .execute()
            .await
            .map_err(nl_err(format!(
                "create VXLAN link {name} (external, dstport {port}, mtu {mtu})"
            )))
    }
}
