//! The agent's cluster settings: routing mode, underlay addresses, tunnel port and MTU.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use kino_api::types::{NodeAddress, NodeAddressType, NodeRouting, RoutingMode as RoutingModePb};

use crate::devices::VxlanConfig;
use crate::netlink::{LinkAddress, LinkDetails};

/// How pod traffic reaches other nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RoutingMode {
    /// VXLAN overlay through `kino_vxlan`, the source identity in the VNI.
    #[default]
    Tunnel,
    /// No encapsulation: routes to other nodes' pod CIDRs via their underlay addresses.
    Native,
}

impl RoutingMode {
    /// The mode as the Node record says it.
    pub fn to_proto(self) -> RoutingModePb {
        match self {
            RoutingMode::Tunnel => RoutingModePb::Tunnel,
            RoutingMode::Native => RoutingModePb::Native,
        }
    }
}

impl fmt::Display for RoutingMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RoutingMode::Tunnel => "tunnel",
            RoutingMode::Native => "native",
        })
    }
}

impl FromStr for RoutingMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tunnel" => Ok(RoutingMode::Tunnel),
            "native" => Ok(RoutingMode::Native),
            other => Err(format!(
                "routing mode {other:?} is unknown; use tunnel (VXLAN, the default) or native"
            )),
        }
    }
}

/// What this node tells the others (its Node record) and how it routes to them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Routing mode.
    pub mode: RoutingMode,
    /// The node's underlay addresses (at most one per family): other nodes' tunnel remote
    /// or next hop for this node's pods.
    pub node_ips: Vec<IpAddr>,
    /// UDP port of `kino_vxlan`.
    pub tunnel_port: u16,
    /// MTU of pod routes and of what fits into the tunnel (underlay MTU − 50 in tunnel
    /// mode, the underlay MTU in native mode).
    pub route_mtu: u32,
    /// Masquerade pod traffic leaving the cluster.
    pub masquerade: bool,
    /// Destinations never masqueraded besides the cluster's pod CIDRs and node addresses
    /// (`--native-routing-cidr`: a routable range that reaches pods directly).
    pub native_routing_cidrs: Vec<String>,
    /// The links holding `node_ips` (the underlay devices): where native mode's host
    /// routing attaches `from_netdev`.
    pub underlay_devices: Vec<String>,
}

impl ClusterConfig {
    /// `kino_vxlan` as tunnel mode wants it: the tunnel port, MTU = the route MTU.
    pub fn vxlan(&self) -> VxlanConfig {
        VxlanConfig {
            port: self.tunnel_port,
            mtu: self.route_mtu,
        }
    }

    /// The node's IPv4 underlay address, if it has one.
    pub fn node_ipv4(&self) -> Option<IpAddr> {
        self.node_ips.iter().copied().find(IpAddr::is_ipv4)
    }

    /// The node's IPv6 underlay address, if it has one.
    pub fn node_ipv6(&self) -> Option<IpAddr> {
        self.node_ips.iter().copied().find(IpAddr::is_ipv6)
    }

    /// The node's addresses for its Node record: the underlay ones (InternalIP) and the
    /// pods' gateways on `kino_host` (KinoInternalIP).
    pub fn node_addresses(&self, gateways: &[IpAddr]) -> Vec<NodeAddress> {
        let address = |kind: NodeAddressType, ip: &IpAddr| NodeAddress {
            r#type: kind as i32,
            address: ip.to_string(),
        };
        self.node_ips
            .iter()
            .map(|ip| address(NodeAddressType::InternalIp, ip))
            .chain(
                gateways
                    .iter()
                    .map(|ip| address(NodeAddressType::KinoInternalIp, ip)),
            )
            .collect()
    }

    /// How other nodes reach this node's pods, for its Node record.
    pub fn node_routing(&self) -> NodeRouting {
        let primary = self
            .node_ipv4()
            .or(self.node_ipv6())
            .map(|ip| ip.to_string())
            .unwrap_or_default();
        match self.mode {
            RoutingMode::Tunnel => NodeRouting {
                mode: RoutingModePb::Tunnel as i32,
                tunnel_endpoint: primary,
                tunnel_port: u32::from(self.tunnel_port),
                next_hop: String::new(),
            },
            RoutingMode::Native => NodeRouting {
                mode: RoutingModePb::Native as i32,
                tunnel_endpoint: String::new(),
                tunnel_port: 0,
                next_hop: primary,
            },
        }
    }
}

/// The node's underlay addresses when none are configured: the first global address of
/// each family on a link that is not the agent's own (`kino_*`, `lxc*`) nor loopback.
pub fn detect_node_ips(links: &[LinkDetails], addresses: &[LinkAddress]) -> Vec<IpAddr> {
    let underlay = |index: u32| {
        links.iter().any(|l| {
            l.index == index
                && l.name != "lo"
                && !l.name.starts_with("kino_")
                && !l.name.starts_with("lxc")
        })
    };
    let mut candidates: Vec<&LinkAddress> = addresses
        .iter()
        .filter(|a| a.global && underlay(a.index))
        .filter(|a| match a.address {
            IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local(),
            IpAddr::V6(v6) => !v6.is_loopback() && !v6.is_unicast_link_local(),
        })
        .collect();
    // Lowest link index first: the node's first real interface.
    candidates.sort_by_key(|a| a.index);
    let v4 = candidates.iter().find(|a| a.address.is_ipv4());
    let v6 = candidates.iter().find(|a| a.address.is_ipv6());
    v4.into_iter().chain(v6).map(|a| a.address).collect()
}

/// The MTU of the link holding `ip` (the underlay's), when a link of the namespace has it.
pub fn mtu_of(links: &[LinkDetails], addresses: &[LinkAddress], ip: IpAddr) -> Option<u32> {
    let index = addresses.iter().find(|a| a.address == ip)?.index;
    links
        .iter()
        .find(|l| l.index == index)
        .map(|l| l.mtu)
        .filter(|mtu| *mtu > 0)
}

/// The names of the links holding `ips` (the underlay devices), each once, in `ips` order.
pub fn devices_of(links: &[LinkDetails], addresses: &[LinkAddress], ips: &[IpAddr]) -> Vec<String> {
    let mut devices: Vec<String> = Vec::new();
    for ip in ips {
        let Some(link) = addresses
            .iter()
            .find(|a| a.address == *ip)
            .and_then(|a| links.iter().find(|l| l.index == a.index))
        else {
            continue;
        };
        if !devices.contains(&link.name) {
            devices.push(link.name.clone());
        }
    }
    devices
}

/// The node's own network a pod CIDR would shadow, as `"<link> has <address>/<len>"`: an
/// address of a link that is not the agent's own (`kino_*`, `lxc*`) whose network and the pod
/// CIDR overlap. Routing such a CIDR to the pods would take the node's own neighbours — its
/// default gateway, say — away from it.
pub fn shadowed_by_pod_cidr(
    network: IpAddr,
    prefix_len: u8,
    links: &[LinkDetails],
    addresses: &[LinkAddress],
) -> Option<String> {
    let mask = |ip: IpAddr, len: u8| -> u128 {
        match ip {
            IpAddr::V4(v4) => {
                let bits = u128::from(u32::from(v4));
                let keep = u32::MAX
                    .checked_shl(32 - u32::from(len.min(32)))
                    .unwrap_or(0);
                bits & u128::from(keep)
            }
            IpAddr::V6(v6) => {
                let keep = u128::MAX
                    .checked_shl(128 - u32::from(len.min(128)))
                    .unwrap_or(0);
                u128::from(v6) & keep
            }
        }
    };
    addresses.iter().find_map(|a| {
        if a.address.is_ipv4() != network.is_ipv4() || a.address.is_loopback() {
            return None;
        }
        let link = links.iter().find(|l| l.index == a.index)?;
        if link.name.starts_with("kino_") || link.name.starts_with("lxc") {
            return None;
        }
        // Two prefixes overlap when the shorter one holds the other's network.
        let shorter = prefix_len.min(a.prefix_len);
        (mask(network, shorter) == mask(a.address, shorter))
            .then(|| format!("{} has {}/{}", link.name, a.address, a.prefix_len))
    })
}

/// Checks configured underlay addresses: at most one per family.
pub fn check_node_ips(ips: &[IpAddr]) -> Result<(), String> {
    let v4 = ips.iter().filter(|ip| ip.is_ipv4()).count();
    let v6 = ips.len() - v4;
    if v4 > 1 || v6 > 1 {
        return Err(format!(
            "--node-ip was given {v4} IPv4 and {v6} IPv6 addresses; give at most one of each family"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::DEFAULT_TUNNEL_PORT;
    use crate::netlink::MacAddr;

    fn link(index: u32, name: &str) -> LinkDetails {
        LinkDetails {
            index,
            name: name.into(),
            mac: MacAddr::default(),
            up: true,
            kind: None,
            mtu: 1500,
        }
    }

    fn address(index: u32, ip: &str, global: bool) -> LinkAddress {
        LinkAddress {
            index,
            address: ip.parse().unwrap(),
            prefix_len: 24,
            global,
        }
    }

    #[test]
    fn the_underlay_is_found_on_the_first_real_link() {
        let links = [
            link(1, "lo"),
            link(2, "kino_host"),
            link(3, "eth0"),
            link(4, "eth1"),
            link(5, "lxc12ab"),
        ];
        let addresses = [
            address(1, "127.0.0.1", false),
            address(2, "10.0.0.1", true),
            address(4, "198.18.0.9", true),
            address(3, "192.0.2.11", true),
            address(3, "fe80::1", false),
            address(3, "2001:db8::11", true),
        ];
        let ips = detect_node_ips(&links, &addresses);
        assert_eq!(
            ips,
            vec![
                "192.0.2.11".parse::<IpAddr>().unwrap(),
                "2001:db8::11".parse().unwrap()
            ]
        );
        assert!(detect_node_ips(&links[..2], &addresses).is_empty());
        assert_eq!(mtu_of(&links, &addresses, ips[0]), Some(1500));
        assert_eq!(
            mtu_of(&links, &addresses, "192.0.2.99".parse().unwrap()),
            None
        );
        // Both families on eth0: one device; an address no link holds: none.
        assert_eq!(
            devices_of(&links, &addresses, &ips),
            vec!["eth0".to_owned()]
        );
        let elsewhere = [
            "198.18.0.9".parse().unwrap(),
            "203.0.113.1".parse().unwrap(),
        ];
        assert_eq!(
            devices_of(&links, &addresses, &elsewhere),
            vec!["eth1".to_owned()]
        );
    }

    #[test]
    fn a_pod_cidr_over_the_nodes_own_network_is_caught() {
        let links = [link(1, "lo"), link(2, "eth0"), link(3, "kino_host")];
        let mut uplink = address(2, "fd00::2", true);
        uplink.prefix_len = 64;
        let addresses = [
            address(1, "127.0.0.1", false),
            uplink,
            address(2, "192.0.2.2", true),
            address(3, "10.0.0.1", true),
        ];
        let v6 = |ip: &str, len| shadowed_by_pod_cidr(ip.parse().unwrap(), len, &links, &addresses);
        assert_eq!(v6("fd00::", 120).as_deref(), Some("eth0 has fd00::2/64"));
        assert_eq!(v6("fd00:0:0:1::", 120), None);
        assert_eq!(v6("fd00::", 48).as_deref(), Some("eth0 has fd00::2/64"));
        // kino_host's own gateway address is not the node's network.
        assert_eq!(v6("10.0.0.0", 24), None);
        assert_eq!(
            v6("192.0.2.0", 28).as_deref(),
            Some("eth0 has 192.0.2.2/24")
        );
        assert_eq!(v6("192.0.3.0", 24), None);
    }

    #[test]
    fn the_node_record_says_how_to_reach_its_pods() {
        let mut config = ClusterConfig {
            mode: RoutingMode::Tunnel,
            node_ips: vec![
                "192.0.2.11".parse().unwrap(),
                "2001:db8::11".parse().unwrap(),
            ],
            tunnel_port: DEFAULT_TUNNEL_PORT,
            route_mtu: 1450,
            masquerade: true,
            native_routing_cidrs: Vec::new(),
            underlay_devices: vec!["eth0".into()],
        };
        let routing = config.node_routing();
        assert_eq!(routing.mode, RoutingModePb::Tunnel as i32);
        assert_eq!(routing.tunnel_endpoint, "192.0.2.11");
        assert_eq!(routing.tunnel_port, 8472);
        config.mode = RoutingMode::Native;
        let routing = config.node_routing();
        assert_eq!(
            (routing.next_hop.as_str(), routing.tunnel_port),
            ("192.0.2.11", 0)
        );
        let addresses = config.node_addresses(&["10.0.0.1".parse().unwrap()]);
        assert_eq!(addresses.len(), 3);
        assert_eq!(addresses[2].r#type, NodeAddressType::KinoInternalIp as i32);
        assert!(
            "vxlan"
                .parse::<RoutingMode>()
                .unwrap_err()
                .contains("tunnel")
        );
        assert!(check_node_ips(&config.node_ips).is_ok());
        assert!(
            check_node_ips(&["192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap()]).is_err()
        );
    }
}
