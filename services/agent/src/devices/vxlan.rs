//! The overlay's device (issue #13): `kino_vxlan`, a collect-metadata ("external") VXLAN
//! device as Cilium's `cilium_vxlan` — one device for every other node, the remote and the
//! VNI coming from each packet's tunnel key (set by the datapath), no learning, no ARP (the
//! routes via it need no neighbour: the key says where a packet goes), its MTU the tunnel
//! MTU (the underlay's MTU less the encapsulation). [`ensure_vxlan`] creates it or adopts
//! the one a previous agent left when it is set up as wanted, and replaces it otherwise.

use crate::netlink::{Netlink, NetlinkError, VxlanDetails};

use super::DeviceError;

/// The overlay device.
pub const VXLAN_DEVICE: &str = "kino_vxlan";
/// Default UDP port of the overlay (Cilium's and the Linux default's 8472).
pub const DEFAULT_TUNNEL_PORT: u16 = 8472;
/// What VXLAN adds to a packet over an IPv4 underlay: outer IPv4 (20), UDP (8), VXLAN (8)
/// and the inner Ethernet header (14).
pub const VXLAN_OVERHEAD_IPV4: u32 = 50;
/// What VXLAN adds over an IPv6 underlay (the outer IPv6 header is 40 bytes).
pub const VXLAN_OVERHEAD_IPV6: u32 = 70;

/// The MTU of the tunnel (of `kino_vxlan`, and of the routes via it) over an underlay of MTU
/// `underlay_mtu`: 1450 over a 1500-byte IPv4 underlay.
pub fn tunnel_mtu(underlay_mtu: u32, ipv6_underlay: bool) -> u32 {
    let overhead = if ipv6_underlay {
        VXLAN_OVERHEAD_IPV6
    } else {
        VXLAN_OVERHEAD_IPV4
    };
    underlay_mtu.saturating_sub(overhead)
}

/// What `kino_vxlan` must look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VxlanConfig {
    /// UDP destination (and listening) port.
    pub port: u16,
    /// Its MTU: the tunnel MTU ([`tunnel_mtu`]).
    pub mtu: u32,
}

impl Default for VxlanConfig {
    fn default() -> Self {
        VxlanConfig {
            port: DEFAULT_TUNNEL_PORT,
            mtu: tunnel_mtu(1500, false),
        }
    }
}

/// The smallest MTU the device accepts with IPv6 inner packets (IPv6's minimum link MTU).
const MIN_MTU: u32 = 1280;

/// Creates `kino_vxlan` in the namespace of `netlink`, or adopts the one there when it is
/// set up as `config` asks (external, that port, no learning, that MTU, no ARP), setting it
/// up; a link of that name set up otherwise (another port, MTU, kind) is deleted and created
/// anew. Returns its ifindex. Idempotent.
pub async fn ensure_vxlan(netlink: &Netlink, config: &VxlanConfig) -> Result<u32, DeviceError> {
    if config.port == 0 || config.mtu < MIN_MTU {
        return Err(DeviceError::InvalidVxlan(format!(
            "UDP port {} and MTU {}: the port must not be 0 and the MTU at least {MIN_MTU} \
             (an underlay MTU of at least {} bytes)",
            config.port,
            config.mtu,
            MIN_MTU + VXLAN_OVERHEAD_IPV4
        )));
    }
    match netlink.vxlan_by_name(VXLAN_DEVICE).await? {
        Some(Some(found)) if as_wanted(&found, config) => {
            if !found.up {
                netlink.set_up(found.index).await?;
            }
            return Ok(found.index);
        }
        Some(found) => {
            let index = match &found {
                Some(vxlan) => vxlan.index,
                None => {
                    netlink
                        .link_by_name(VXLAN_DEVICE)
                        .await?
                        .ok_or(DeviceError::Vanished(VXLAN_DEVICE))?
                        .index
                }
            };
            tracing::info!(
                device = VXLAN_DEVICE,
                ?found,
                ?config,
                "the overlay device is set up otherwise: replacing it"
            );
            netlink.delete_link(index).await?;
        }
        None => {}
    }
    netlink
        .add_vxlan_external(VXLAN_DEVICE, config.port, config.mtu)
        .await
        .map_err(|e| port_in_use(e, config.port))?;
    match netlink.vxlan_by_name(VXLAN_DEVICE).await? {
        Some(Some(created)) => Ok(created.index),
        _ => Err(DeviceError::Vanished(VXLAN_DEVICE)),
    }
}

/// Deletes `kino_vxlan` (its routes go with it); `Ok(false)` when there was none.
pub async fn remove_vxlan(netlink: &Netlink) -> Result<bool, DeviceError> {
    match netlink.link_by_name(VXLAN_DEVICE).await? {
        Some(link) => Ok(netlink.delete_link(link.index).await?),
        None => Ok(false),
    }
}

fn as_wanted(found: &VxlanDetails, config: &VxlanConfig) -> bool {
    found.external
        && found.port == config.port
        && !found.learning
        && found.mtu == config.mtu
        && found.noarp
}

/// The error of creating the device: the kernel refuses a second collect-metadata device on
/// a port (EEXIST) and a port another socket holds (EADDRINUSE).
fn port_in_use(error: NetlinkError, port: u16) -> DeviceError {
    match error.errno() {
        Some(libc::EEXIST) | Some(libc::EADDRINUSE) => DeviceError::VxlanPortInUse { port, error },
        _ => DeviceError::Netlink(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tunnel_mtu_leaves_room_for_the_encapsulation() {
        assert_eq!(tunnel_mtu(1500, false), 1450);
        assert_eq!(tunnel_mtu(1500, true), 1430);
        assert_eq!(tunnel_mtu(9000, false), 8950);
        assert_eq!(tunnel_mtu(20, false), 0);
        assert_eq!(VxlanConfig::default().mtu, 1450);
    }
}
