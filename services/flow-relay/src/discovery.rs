//! Peer discovery from the datastore: the relay lists and watches the Node records through
//! the gateway and keeps the [`PeerSet`] equal to them — each node's flow observer at its
//! INTERNAL_IP node address and `--peer-port`. A Node record stays until the node is
//! explicitly deleted (an agent that is down keeps it), so a node whose agent is down is
//! still asked, and reported unavailable, until `kino node delete` removes it.
//!
//! After any failure (gateway down, watch ended, changes compacted away) it lists again and
//! watches from the listing's revision, so it never misses a change for long.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kino_api::datastore::EventType;
use kino_api::types::{Node, NodeAddressType};
use kino_service_kit::records::{RecordClient, Spec, decode};

use crate::peers::{Peer, PeerSet, Peers};

/// Pause between attempts after the gateway failed.
const RETRY: Duration = Duration::from_secs(1);

/// The flow observer of `node` on `port`: its first INTERNAL_IP address.
pub fn flow_address(node: &Node, port: u16) -> Option<Peer> {
    node.addresses
        .iter()
        .filter(|a| a.r#type == NodeAddressType::InternalIp as i32)
        .find_map(|a| a.address.trim().parse::<IpAddr>().ok())
        .map(|ip| Peer::at(&node.name, ip, port))
}

fn insert(nodes: &mut Peers, name: &str, node: Option<Node>, port: u16) {
    match node.as_ref().and_then(|n| flow_address(n, port)) {
        Some(peer) => {
            nodes.insert(name.to_owned(), peer.address);
        }
        None => {
            tracing::warn!(node = %name, "Node record without a usable INTERNAL_IP address: its flows cannot be read");
            nodes.remove(name);
        }
    }
}

/// Keeps `peers` equal to the datastore's Node records, until the task is dropped.
pub async fn follow_nodes(records: RecordClient, peers: Arc<PeerSet>, port: u16) {
    loop {
        match records.list_all(Node::KIND, "", "", |_| false).await {
            Ok((resources, revision)) => {
                let mut nodes = Peers::new();
                for resource in &resources {
                    let node = decode::<Node>(resource).ok().map(|stored| stored.value);
                    insert(&mut nodes, &resource.name, node, port);
                }
                tracing::info!(nodes = nodes.len(), revision, "peers from the Node records");
                peers.set_discovered(nodes.clone());
                match records.watch(Node::KIND, revision + 1).await {
                    Ok(mut stream) => {
                        while let Some(item) = stream.next().await {
                            let response = match item {
                                Ok(response) => response,
                                Err(status) => {
                                    tracing::warn!(code = ?status.code(), message = status.message(), "the Node watch ended; listing again");
                                    break;
                                }
                            };
                            for event in response.events {
                                let Some(resource) = event.resource else {
                                    continue;
                                };
                                if event.r#type == EventType::Deleted as i32 {
                                    tracing::info!(node = %resource.name, "node deleted: no longer asked for flows");
                                    nodes.remove(&resource.name);
                                } else {
                                    let node =
                                        decode::<Node>(&resource).ok().map(|stored| stored.value);
                                    insert(&mut nodes, &resource.name, node, port);
                                }
                            }
                            peers.set_discovered(nodes.clone());
                        }
                    }
                    Err(status) => {
                        tracing::debug!(code = ?status.code(), message = status.message(), "cannot watch Node records yet");
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot list Node records yet; retrying"),
        }
        tokio::time::sleep(RETRY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kino_api::types::NodeAddress;

    fn address(kind: NodeAddressType, ip: &str) -> NodeAddress {
        NodeAddress {
            r#type: kind as i32,
            address: ip.into(),
        }
    }

    #[test]
    fn the_flow_address_is_the_first_internal_ip() {
        let node = Node {
            name: "kino-node-2".into(),
            addresses: vec![
                address(NodeAddressType::KinoInternalIp, "10.0.2.1"),
                address(NodeAddressType::InternalIp, "not an ip"),
                address(NodeAddressType::InternalIp, "2001:db8::2"),
                address(NodeAddressType::InternalIp, "192.0.2.12"),
            ],
            ..Node::default()
        };
        assert_eq!(
            flow_address(&node, 7404),
            Some(Peer {
                name: "kino-node-2".into(),
                address: "[2001:db8::2]:7404".into()
            })
        );
        let without = Node {
            name: "n".into(),
            addresses: vec![address(NodeAddressType::ExternalIp, "198.18.0.1")],
            ..Node::default()
        };
        assert_eq!(flow_address(&without, 7404), None);
    }
}
