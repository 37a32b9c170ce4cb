//! The node's own devices, in the agent's network namespace: the veth pair `kino_host` ↔
//! `kino_net` (Cilium's `cilium_host`/`cilium_net`), with `kino_host` holding the pods'
//! gateway IP as a /32 and owning the route to the node's pod CIDR, and IPv4 forwarding on.
//! On a dual-stack node ([`ensure_node_ipv6`]) `kino_host` also holds the IPv6 gateway as a
//! /128 and the IPv6 pod CIDR route, and IPv6 forwarding is on.
//!
//! Why this shape: pods have /32 addresses and a default route via the gateway. The gateway
//! is a local address of the node, so the kernel answers a pod's ARP for it on the pod's lxc
//! (no proxy ARP needed) and pod → node traffic is delivered locally. Each pod has its own
//! /32 route via its lxc; the pod CIDR route via `kino_host` catches addresses of pods that
//! do not exist (yet) so they never leave the node by its default route. IPv6 is the same
//! except for neighbour discovery: the kernel answers a solicitation only for addresses of
//! the interface it arrives on, so the datapath answers pods' solicitations for the gateway
//! itself (see `bpf/lib/ndp.h`, `answer_neighbour_solicitation`).
//!
//! Between nodes (issue #13), [`vxlan`] holds the overlay's device, `kino_vxlan`.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use crate::netlink::{LinkDetails, Netlink, NetlinkError};

pub mod vxlan;

pub use vxlan::{
    DEFAULT_TUNNEL_PORT, VXLAN_DEVICE, VxlanConfig, ensure_vxlan, remove_vxlan, tunnel_mtu,
};

/// The host side of the node's device pair; holds the gateway IP.
pub const HOST_DEVICE: &str = "kino_host";
/// The other side of the node's device pair.
pub const NET_DEVICE: &str = "kino_net";
/// Where the calling thread's network namespace keeps its IPv4 forwarding switch.
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// Where it keeps its IPv6 forwarding switch (`all`: every interface, and IPv6 forwarding
/// itself).
pub const IPV6_FORWARDING: &str = "/proc/sys/net/ipv6/conf/all/forwarding";

/// An IPv4 prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    /// The network address (host bits zero).
    pub network: Ipv4Addr,
    /// Prefix length, 0–32.
    pub prefix_len: u8,
}

impl std::str::FromStr for Ipv4Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a.b.c.d/len"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let prefix_len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= 32)
            .ok_or_else(|| format!("{s:?}: prefix length must be 0-32"))?;
        let mask = u32::MAX
            .checked_shl(32 - u32::from(prefix_len))
            .unwrap_or(0);
        Ok(Self {
            network: Ipv4Addr::from(u32::from(addr) & mask),
            prefix_len,
        })
    }
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// An IPv6 prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv6Cidr {
    /// The network address (host bits zero).
    pub network: Ipv6Addr,
    /// Prefix length, 0–128.
    pub prefix_len: u8,
}

impl std::str::FromStr for Ipv6Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not an IPv6 prefix (x::y/len)"))?;
        let addr: Ipv6Addr = addr.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let prefix_len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= 128)
            .ok_or_else(|| format!("{s:?}: prefix length must be 0-128"))?;
        let mask = u128::MAX
            .checked_shl(128 - u32::from(prefix_len))
            .unwrap_or(0);
        Ok(Self {
            network: Ipv6Addr::from(u128::from(addr) & mask),
            prefix_len,
        })
    }
}

impl std::fmt::Display for Ipv6Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// What the node's devices must look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeDevicesConfig {
    /// The pods' gateway: an address of the node's pod CIDR (usually its first), on `kino_host`.
    pub gateway: Ipv4Addr,
    /// The node's pod CIDR, routed to `kino_host` (the per-pod /32 routes are more specific).
    pub pod_cidr: Option<Ipv4Cidr>,
}

/// The node's devices as they are now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeDevices {
    /// `kino_host`.
    pub host: LinkDetails,
    /// `kino_net`.
    pub net: LinkDetails,
    /// False when an existing pair was adopted.
    pub created: bool,
}

/// Setting up the node's devices failed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A netlink request failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// A link disappeared right after being created or found.
    #[error("link {0} vanished while being set up; is another agent managing this node?")]
    Vanished(&'static str),
    /// The overlay device's settings are unusable.
    #[error("cannot set up kino_vxlan with {0}")]
    InvalidVxlan(String),
    /// Another VXLAN device of the namespace holds the overlay's UDP port.
    #[error(
        "cannot create kino_vxlan on UDP port {port}: another VXLAN device of this network \
         namespace uses that port (see `ip -d link show type vxlan`); delete it or give the \
         agent another tunnel port ({error})"
    )]
    VxlanPortInUse {
        /// The port.
        port: u16,
        /// The kernel's refusal.
        #[source]
        error: NetlinkError,
    },
    /// A sysctl could not be written.
    #[error("cannot write {path}: {source}")]
    Sysctl {
        /// The /proc/sys path.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

/// Creates or adopts `kino_host` ↔ `kino_net` in the namespace of `netlink`, puts the gateway
/// IP on `kino_host`, routes the pod CIDR to it, sets both up and turns IPv4 forwarding on (in
/// the calling thread's namespace: call it from the node's). Idempotent.
pub async fn ensure_node_devices(
    netlink: &Netlink,
    config: &NodeDevicesConfig,
) -> Result<NodeDevices, DeviceError> {
    let host = netlink.link_by_name(HOST_DEVICE).await?;
    let net = netlink.link_by_name(NET_DEVICE).await?;
    let adoptable =
        matches!((&host, &net), (Some(h), Some(_)) if h.kind.as_deref() == Some("veth"));
    if !adoptable {
        // Half a pair (or something else under our name) is left from a crash: start afresh.
        for link in [&host, &net].into_iter().flatten() {
            netlink.delete_link(link.index).await?;
        }
        netlink
            .add_veth(HOST_DEVICE, NET_DEVICE, None, None, None)
            .await?;
    }
    let host = netlink
        .link_by_name(HOST_DEVICE)
        .await?
        .ok_or(DeviceError::Vanished(HOST_DEVICE))?;
    let net = netlink
        .link_by_name(NET_DEVICE)
        .await?
        .ok_or(DeviceError::Vanished(NET_DEVICE))?;
    netlink
        .add_address(host.index, config.gateway.into(), 32)
        .await?;
    netlink.set_up(host.index).await?;
    netlink.set_up(net.index).await?;
    if let Some(cidr) = config.pod_cidr {
        netlink
            .add_route_v4(
                cidr.network,
                cidr.prefix_len,
                host.index,
                None,
                Some(config.gateway),
                true,
            )
            .await?;
    }
    enable_ip_forwarding()?;
    Ok(NodeDevices {
        host: LinkDetails { up: true, ..host },
        net: LinkDetails { up: true, ..net },
        created: !adoptable,
    })
}

/// The node's IPv6 pod network (a dual-stack pool).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeIpv6Config {
    /// The pods' IPv6 gateway (the first address of the node's IPv6 block), on `kino_host`.
    pub gateway: Ipv6Addr,
    /// The node's IPv6 pod CIDR, routed to `kino_host` (the per-pod /128 routes are more
    /// specific).
    pub pod_cidr: Option<Ipv6Cidr>,
}

/// Adds IPv6 to the node's devices (after [`ensure_node_devices`]): the gateway as a /128 on
/// `kino_host` without duplicate address detection (usable at once), the pod CIDR route, and
/// IPv6 forwarding on (in the calling thread's namespace). Idempotent.
pub async fn ensure_node_ipv6(
    netlink: &Netlink,
    config: &NodeIpv6Config,
) -> Result<(), DeviceError> {
    let host = netlink
        .link_by_name(HOST_DEVICE)
        .await?
        .ok_or(DeviceError::Vanished(HOST_DEVICE))?;
    netlink
        .add_address_v6_nodad(host.index, config.gateway, 128)
        .await?;
    if let Some(cidr) = config.pod_cidr {
        netlink
            .add_route_v6(cidr.network, cidr.prefix_len, host.index, None, true)
            .await?;
    }
    enable_ipv6_forwarding()
}

/// Deletes `kino_host` (and with it `kino_net`, its address and routes); `Ok(false)` when
/// there was nothing to delete.
pub async fn remove_node_devices(netlink: &Netlink) -> Result<bool, DeviceError> {
    let mut removed = false;
    for name in [HOST_DEVICE, NET_DEVICE] {
        if let Some(link) = netlink.link_by_name(name).await? {
            removed |= netlink.delete_link(link.index).await?;
        }
    }
    Ok(removed)
}

/// Turns IPv4 forwarding on in the calling thread's network namespace.
pub fn enable_ip_forwarding() -> Result<(), DeviceError> {
    write_sysctl(IP_FORWARD, "1")
}

/// Turns IPv6 forwarding on in the calling thread's network namespace. Like any router, the
/// namespace then ignores router advertisements on interfaces with `accept_ra=1`.
pub fn enable_ipv6_forwarding() -> Result<(), DeviceError> {
    write_sysctl(IPV6_FORWARDING, "1")
}

fn write_sysctl(path: &str, value: &str) -> Result<(), DeviceError> {
    std::fs::write(path, value).map_err(|source| DeviceError::Sysctl {
        path: PathBuf::from(path),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cidrs_masking_host_bits() {
        let cidr: Ipv4Cidr = "10.200.1.7/24".parse().expect("valid");
        assert_eq!(cidr.network, Ipv4Addr::new(10, 200, 1, 0));
        assert_eq!(cidr.to_string(), "10.200.1.0/24");
        assert_eq!(
            "0.0.0.0/0".parse::<Ipv4Cidr>().expect("valid").prefix_len,
            0
        );
        assert!("10.0.0.0/33".parse::<Ipv4Cidr>().is_err());
        assert!("10.0.0.0".parse::<Ipv4Cidr>().is_err());
    }

    #[test]
    fn parses_ipv6_cidrs_masking_host_bits() {
        let cidr: Ipv6Cidr = "fd00::1:7/120".parse().expect("valid");
        assert_eq!(cidr.network, "fd00::1:0".parse::<Ipv6Addr>().expect("v6"));
        assert_eq!(cidr.to_string(), "fd00::1:0/120");
        assert_eq!("::/0".parse::<Ipv6Cidr>().expect("valid").prefix_len, 0);
        assert!("fd00::/129".parse::<Ipv6Cidr>().is_err());
        assert!("fd00::".parse::<Ipv6Cidr>().is_err());
        assert!("10.0.0.0/8".parse::<Ipv6Cidr>().is_err());
    }
}
