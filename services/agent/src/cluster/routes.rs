//! The routes other nodes need on this one, and the reconciler that keeps the kernel's
//! routes equal to them.
//!
//! - Tunnel mode: each remote pod CIDR into `kino_vxlan`, link scope, with the route MTU
//!   (underlay − 50: a packet that cannot fit into the tunnel gets "fragmentation needed" /
//!   "packet too big" from the node's own forwarding, so path-MTU discovery converges —
//!   cilium#4323) and the pods' gateway as preferred source (what the node itself sends
//!   to remote pods comes from an address every node knows as remote-node).
//! - Native mode: each remote pod CIDR via that node's underlay address of the family
//!   (auto direct node routes: the nodes share an L2 segment).
//!
//! The reconciler lists the routes tagged with the agent's protocol number and makes them
//! exactly the wanted set: it adds what is missing, replaces what differs and removes what
//! nobody wants any more — at start-up (repairing what changed while the agent was down),
//! whenever the set of nodes changes, and every `interval` (repairing what was deleted or
//! changed behind its back, cilium#28137). Until the first complete list of nodes it does
//! nothing, so a restarted agent never removes a route it has not yet been told about.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::watch;

use super::config::RoutingMode;
use super::nodes::PeerNodes;
use crate::devices::VXLAN_DEVICE;
use crate::netlink::{ManagedRoute, Netlink, NetlinkError, RouteVia};

/// This node's side of the routes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalRouting {
    /// Routing mode.
    pub mode: RoutingMode,
    /// Route MTU of tunnel routes.
    pub route_mtu: u32,
    /// The pods' IPv4 gateway (`kino_host`): source of the node's own tunnel traffic.
    pub gateway_v4: Option<Ipv4Addr>,
    /// The pods' IPv6 gateway.
    pub gateway_v6: Option<Ipv6Addr>,
    /// This node's own pod CIDRs: never routed elsewhere, whatever a peer claims.
    pub own_pod_cidrs: Vec<(IpAddr, u8)>,
}

/// The routes `peers` need here; `vxlan` is `kino_vxlan`'s index (tunnel mode).
pub fn desired_routes(
    local: &LocalRouting,
    vxlan: Option<u32>,
    peers: &PeerNodes,
) -> BTreeSet<ManagedRoute> {
    let mut routes = BTreeSet::new();
    for peer in peers.values() {
        for &(destination, prefix_len) in &peer.pod_cidrs {
            if local.own_pod_cidrs.contains(&(destination, prefix_len)) {
                continue;
            }
            let via = match local.mode {
                RoutingMode::Tunnel => {
                    let Some(index) = vxlan else { continue };
                    let source = match destination {
                        IpAddr::V4(_) => local.gateway_v4.map(IpAddr::V4),
                        IpAddr::V6(_) => local.gateway_v6.map(IpAddr::V6),
                    };
                    RouteVia::Device {
                        index,
                        mtu: local.route_mtu,
                        source,
                    }
                }
                RoutingMode::Native => match peer.underlay_for(destination) {
                    Some(gateway) => RouteVia::Gateway(gateway),
                    None => continue,
                },
            };
            routes.insert(ManagedRoute {
                destination,
                prefix_len,
                via,
            });
        }
    }
    routes
}

/// What one reconciliation did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Routes added or replaced.
    pub installed: Vec<ManagedRoute>,
    /// Routes removed.
    pub removed: Vec<ManagedRoute>,
}

/// Makes the agent's routes in the kernel exactly `desired`. Every step is tried; the
/// errors of those that failed are returned together (the next pass tries them again).
pub async fn reconcile(
    netlink: &Netlink,
    desired: &BTreeSet<ManagedRoute>,
) -> Result<Reconciled, Vec<NetlinkError>> {
    let current: BTreeSet<ManagedRoute> = netlink
        .managed_routes()
        .await
        .map_err(|e| vec![e])?
        .into_iter()
        .collect();
    let mut done = Reconciled::default();
    let mut errors = Vec::new();
    // The destinations still wanted are replaced in place (no gap), not deleted first.
    let wanted: BTreeSet<(IpAddr, u8)> = desired
        .iter()
        .map(|r| (r.destination, r.prefix_len))
        .collect();
    for route in current.difference(desired) {
        if wanted.contains(&(route.destination, route.prefix_len)) {
            continue;
        }
        match netlink.delete_managed_route(route).await {
            Ok(_) => done.removed.push(*route),
            Err(e) => errors.push(e),
        }
    }
    for route in desired.difference(&current) {
        match netlink.replace_managed_route(route).await {
            Ok(()) => done.installed.push(*route),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(done)
    } else {
        Err(errors)
    }
}

/// (Re-)ensures the node's routing devices — `kino_vxlan` and its programs in tunnel mode
/// (returns its ifindex), `from_netdev` on the underlay devices in native mode (returns
/// `None`): called on every pass, so a device deleted or changed (or a program detached)
/// behind the agent's back is put back with the routes.
pub type DeviceKeeper =
    Arc<dyn Fn() -> BoxFuture<'static, Result<Option<u32>, String>> + Send + Sync>;

/// Keeps the routes of `peers` installed until the task is dropped: a pass whenever the
/// set of nodes changes and every `interval`. `devices` keeps the routing devices first
/// (without one, the tunnel device is only looked up).
pub async fn run(
    netlink: Netlink,
    local: LocalRouting,
    mut peers: watch::Receiver<Option<PeerNodes>>,
    interval: Duration,
    devices: Option<DeviceKeeper>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = peers.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
        let Some(nodes) = peers.borrow_and_update().clone() else {
            continue;
        };
        let kept = match &devices {
            Some(keep) => match keep().await {
                Ok(index) => index,
                // Native mode's routes do not need the device programs (the stack forwards
                // without them); tunnel routes need the device.
                Err(error) if local.mode == RoutingMode::Native => {
                    tracing::warn!(%error, "cannot ensure host routing on the underlay; retrying");
                    None
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot ensure {VXLAN_DEVICE}; retrying");
                    continue;
                }
            },
            None => None,
        };
        let vxlan = match (local.mode, kept) {
            (RoutingMode::Native, _) => None,
            (RoutingMode::Tunnel, Some(index)) => Some(index),
            (RoutingMode::Tunnel, None) => match netlink.link_by_name(VXLAN_DEVICE).await {
                Ok(Some(link)) => Some(link.index),
                Ok(None) => {
                    tracing::warn!(
                        device = VXLAN_DEVICE,
                        "tunnel mode without its device; routes to other nodes wait for it"
                    );
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot look up {VXLAN_DEVICE}");
                    continue;
                }
            },
        };
        let desired = desired_routes(&local, vxlan, &nodes);
        match reconcile(&netlink, &desired).await {
            Ok(done) => {
                for route in &done.installed {
                    tracing::info!(%route, "route to another node's pods installed");
                }
                for route in &done.removed {
                    tracing::info!(%route, "route of a node that is gone removed");
                }
            }
            Err(errors) => {
                for error in errors {
                    tracing::warn!(%error, "a route to another node's pods could not be reconciled; retrying");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::nodes::PeerNode;

    fn peer(name: &str, underlay: &[&str], cidrs: &[(&str, u8)]) -> PeerNode {
        PeerNode {
            name: name.into(),
            mode: RoutingMode::Tunnel,
            pod_cidrs: cidrs
                .iter()
                .map(|(ip, l)| (ip.parse().unwrap(), *l))
                .collect(),
            underlay: underlay.iter().map(|ip| ip.parse().unwrap()).collect(),
            addresses: Vec::new(),
        }
    }

    fn local(mode: RoutingMode) -> LocalRouting {
        LocalRouting {
            mode,
            route_mtu: 1450,
            gateway_v4: Some("10.0.0.1".parse().unwrap()),
            gateway_v6: Some("fd00::1".parse().unwrap()),
            own_pod_cidrs: vec![("10.0.0.0".parse().unwrap(), 24)],
        }
    }

    fn peers() -> PeerNodes {
        [
            peer(
                "n2",
                &["192.0.2.12"],
                &[("10.0.1.0", 24), ("fd00:0:0:1::", 120)],
            ),
            // Claims this node's CIDR: never routed away.
            peer(
                "n3",
                &["192.0.2.13", "2001:db8::13"],
                &[("10.0.0.0", 24), ("fd00:0:0:3::", 120)],
            ),
        ]
        .into_iter()
        .map(|p| (p.name.clone(), p))
        .collect()
    }

    #[test]
    fn tunnel_routes_go_into_the_vxlan_device_with_the_tunnel_mtu() {
        let routes = desired_routes(&local(RoutingMode::Tunnel), Some(7), &peers());
        let shown: Vec<String> = routes.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "10.0.1.0/24 dev #7 mtu 1450 src 10.0.0.1",
                "fd00:0:0:1::/120 dev #7 mtu 1450 src fd00::1",
                "fd00:0:0:3::/120 dev #7 mtu 1450 src fd00::1",
            ]
        );
        assert!(desired_routes(&local(RoutingMode::Tunnel), None, &peers()).is_empty());
    }

    #[test]
    fn native_routes_go_via_the_node_of_the_same_family() {
        let routes = desired_routes(&local(RoutingMode::Native), None, &peers());
        let shown: Vec<String> = routes.iter().map(ToString::to_string).collect();
        // n2 has no IPv6 underlay: its IPv6 pods cannot be routed natively.
        assert_eq!(
            shown,
            [
                "10.0.1.0/24 via 192.0.2.12",
                "fd00:0:0:3::/120 via 2001:db8::13"
            ]
        );
    }
}
