//! Every other node of the cluster, as its Node record says: list, then watch from the
//! listed revision, and list again when the watch cannot resume (compacted) — the
//! informer pattern. What is followed is the record only, never the node's liveness
//! (NodeHealth): an agent that is down keeps its node in the set, so nothing is removed
//! for it anywhere (cilium#9422); a node leaves the set only when its record is deleted,
//! which only an explicit node deletion does (cilium#5421).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use futures::StreamExt;
use kino_api::datastore::{EventType, Resource};
use kino_api::types::{Node, NodeAddressType, RoutingMode as RoutingModePb};
use kino_service_kit::records::{RecordClient, Spec, decode};
use tokio::sync::watch;
use tonic::Code;

use super::config::RoutingMode;

/// Another node, as far as reaching its pods goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerNode {
    /// Its name.
    pub name: String,
    /// The routing mode its agent runs in.
    pub mode: RoutingMode,
    /// Its pod CIDRs, both families: (network, prefix length).
    pub pod_cidrs: Vec<(IpAddr, u8)>,
    /// Its underlay addresses (InternalIP).
    pub underlay: Vec<IpAddr>,
    /// Every address it published (underlay, kino_host gateways, external): not to be
    /// masqueraded toward.
    pub addresses: Vec<IpAddr>,
}

impl PeerNode {
    /// The node's underlay address of `ip`'s family: where its pods of that family are
    /// routed in native mode.
    pub fn underlay_for(&self, ip: IpAddr) -> Option<IpAddr> {
        self.underlay
            .iter()
            .copied()
            .find(|u| u.is_ipv4() == ip.is_ipv4())
    }
}

/// Every node of the cluster but this one, by name.
pub type PeerNodes = BTreeMap<String, PeerNode>;

/// The peer a Node record describes.
pub fn peer_of(name: &str, node: &Node) -> PeerNode {
    let parse = |s: &str| s.parse::<IpAddr>().ok();
    let routing = node.routing.clone().unwrap_or_default();
    let mode = match RoutingModePb::try_from(routing.mode) {
        Ok(RoutingModePb::Native) => RoutingMode::Native,
        _ => RoutingMode::Tunnel,
    };
    let mut underlay: Vec<IpAddr> = node
        .addresses
        .iter()
        .filter(|a| a.r#type == NodeAddressType::InternalIp as i32)
        .filter_map(|a| parse(&a.address))
        .collect();
    // A record from before the addresses were published names its endpoint only here.
    for ip in [parse(&routing.tunnel_endpoint), parse(&routing.next_hop)]
        .into_iter()
        .flatten()
    {
        if !underlay.contains(&ip) {
            underlay.push(ip);
        }
    }
    let addresses = node
        .addresses
        .iter()
        .filter_map(|a| parse(&a.address))
        .collect();
    let pod_cidrs = node
        .pod_cidrs
        .iter()
        .filter_map(|c| parse_prefix(c))
        .collect();
    PeerNode {
        name: name.to_owned(),
        mode,
        pod_cidrs,
        underlay,
        addresses,
    }
}

/// `address/length` as (network address as written, length); `None` when malformed.
pub fn parse_prefix(prefix: &str) -> Option<(IpAddr, u8)> {
    let (ip, len) = prefix.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    (len <= if ip.is_ipv4() { 32 } else { 128 }).then_some((ip, len))
}

/// Follows the Node records of every node but `me` until the task is dropped, publishing
/// the whole set on `peers` after the first complete list and after every change. `None`
/// stays published until that first list: nobody may act on a partial view (removing
/// routes of nodes not yet listed would cut their pods off after an agent restart).
pub async fn follow(records: RecordClient, me: String, peers: watch::Sender<Option<PeerNodes>>) {
    let mut known = PeerNodes::new();
    let mut next_revision: Option<i64> = None;
    loop {
        let from = match next_revision {
            Some(revision) => revision,
            None => match records.list_all(Node::KIND, "", "", |_| false).await {
                Ok((resources, revision)) => {
                    known = resources
                        .iter()
                        .filter(|r| r.name != me)
                        .filter_map(peer_of_resource)
                        .map(|p| (p.name.clone(), p))
                        .collect();
                    publish(&peers, &known);
                    revision + 1
                }
                Err(e) => {
                    tracing::debug!(error = %e.message(), "cannot list Node records yet; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        next_revision = Some(from);
        let mut stream = match records.watch(Node::KIND, from).await {
            Ok(stream) => stream,
            Err(status) => {
                if status.code() == Code::OutOfRange {
                    next_revision = None;
                }
                tracing::debug!(code = ?status.code(), message = status.message(), "cannot watch Node records; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(item) = stream.next().await {
            match item {
                Ok(response) => {
                    let mut changed = false;
                    for event in response.events {
                        let Some(resource) = event.resource else {
                            continue;
                        };
                        next_revision = Some(resource.revision + 1);
                        if resource.name == me {
                            continue;
                        }
                        if event.r#type == EventType::Deleted as i32 {
                            changed |= known.remove(&resource.name).is_some();
                        } else if let Some(peer) = peer_of_resource(&resource)
                            && known.get(&peer.name) != Some(&peer)
                        {
                            known.insert(peer.name.clone(), peer);
                            changed = true;
                        }
                    }
                    if changed {
                        publish(&peers, &known);
                    }
                }
                Err(status) => {
                    if status.code() == Code::OutOfRange {
                        next_revision = None;
                    }
                    tracing::warn!(code = ?status.code(), message = status.message(), "the Node watch ended; resuming");
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn peer_of_resource(resource: &Resource) -> Option<PeerNode> {
    match decode::<Node>(resource) {
        Ok(node) => Some(peer_of(&resource.name, &node.value)),
        Err(e) => {
            tracing::warn!(node = %resource.name, error = %e, "ignoring an unreadable Node record");
            None
        }
    }
}

fn publish(peers: &watch::Sender<Option<PeerNodes>>, known: &PeerNodes) {
    tracing::debug!(nodes = known.len(), "cluster nodes changed");
    peers.send_replace(Some(known.clone()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use kino_api::types::{NodeAddress, NodeRouting};

    #[test]
    fn a_node_record_gives_its_pod_cidrs_and_underlay() {
        let node = Node {
            name: "n2".into(),
            addresses: vec![
                NodeAddress {
                    r#type: NodeAddressType::InternalIp as i32,
                    address: "192.0.2.12".into(),
                },
                NodeAddress {
                    r#type: NodeAddressType::KinoInternalIp as i32,
                    address: "10.0.1.1".into(),
                },
            ],
            pod_cidrs: vec![
                "10.0.1.0/24".into(),
                "fd00:0:0:1::/120".into(),
                "bad".into(),
            ],
            routing: Some(NodeRouting {
                mode: RoutingModePb::Native as i32,
                next_hop: "192.0.2.12".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let peer = peer_of("n2", &node);
        assert_eq!(peer.mode, RoutingMode::Native);
        assert_eq!(peer.pod_cidrs.len(), 2);
        assert_eq!(peer.underlay, vec!["192.0.2.12".parse::<IpAddr>().unwrap()]);
        assert_eq!(peer.addresses.len(), 2);
        assert_eq!(
            peer.underlay_for("10.0.1.5".parse().unwrap()),
            Some("192.0.2.12".parse().unwrap())
        );
        assert_eq!(peer.underlay_for("fd00::5".parse().unwrap()), None);
    }
}
