//! `kino node list|get|delete`: the cluster's nodes as kino-ipam's `kino.node.v1` knows them —
//! whether each node's agent is alive, its pod CIDRs and how full they are, its endpoints —
//! and the explicit deletion, the only way a node's addresses go back without its pods
//! releasing them. Tables for people, `-o json` (shaped like the proto) for scripts.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};
use kino_api::node::node_service_client::NodeServiceClient;
use kino_api::node::{
    DeleteNodeRequest, DeleteNodeResponse, GetNodeRequest, ListNodesRequest, NodeHealthState,
    NodeStatus,
};
use kino_api::types::{IpFamily, Node, NodeAddressType, RoutingMode};
use kino_service_kit::ClientTlsArgs;

use crate::ipam::{IpamCliError, connect, refused, within};
use crate::{proto_json, table};

/// `kino node ...`.
#[derive(Args, Debug)]
pub struct NodeArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: NodeCommand,
}

/// The `kino node` commands.
#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// Every node: health, pod CIDRs, endpoints, addresses in use, agent version.
    List,
    /// One node in detail.
    Get {
        /// Node name.
        name: String,
    },
    /// Remove a node for good: its pod CIDRs and addresses go back to IPAM and its endpoint,
    /// health and node records are deleted. Refused while the node's agent is live.
    Delete {
        /// Node name.
        name: String,
        /// Delete even though the node's agent is live (its running pods' addresses are
        /// freed and may be handed out again; stop the agent first if you can).
        #[arg(long)]
        force: bool,
    },
}

/// How long a deletion may take at least, whatever --timeout says: it walks every record of
/// the node.
const MIN_DELETE_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs a `kino node` command against kino-ipam and returns what to print.
pub async fn run(
    command: &NodeCommand,
    target: &str,
    tls: &ClientTlsArgs,
    timeout: Duration,
    json: bool,
) -> Result<String, IpamCliError> {
    let timeout = match command {
        NodeCommand::Delete { .. } => timeout.max(MIN_DELETE_TIMEOUT),
        _ => timeout,
    };
    let work = async {
        let mut client = NodeServiceClient::new(connect(target, tls).await?);
        match command {
            NodeCommand::List => {
                let response = client
                    .list_nodes(ListNodesRequest {})
                    .await
                    .map_err(refused)?
                    .into_inner();
                Ok(if json {
                    proto_json::to_string(&response)
                } else {
                    render_list(&response.nodes)
                })
            }
            NodeCommand::Get { name } => {
                let response = client
                    .get_node(GetNodeRequest { name: name.clone() })
                    .await
                    .map_err(refused)?
                    .into_inner();
                Ok(if json {
                    proto_json::to_string(&response)
                } else {
                    render_node(&response.node.unwrap_or_default(), SystemTime::now())
                })
            }
            NodeCommand::Delete { name, force } => {
                let response = client
                    .delete_node(DeleteNodeRequest {
                        name: name.clone(),
                        force: *force,
                    })
                    .await
                    .map_err(refused)?
                    .into_inner();
                Ok(if json {
                    proto_json::to_string(&response)
                } else {
                    render_deleted(name, &response)
                })
            }
        }
    };
    within(target, timeout, work).await
}

/// The health column: `live`, `unreachable`, `deleting`.
pub fn health_name(node: &NodeStatus) -> &'static str {
    match node.health() {
        NodeHealthState::Live => "live",
        NodeHealthState::Unreachable => "unreachable",
        NodeHealthState::Deleting => "deleting",
        NodeHealthState::Unspecified => "unknown",
    }
}

fn cidrs_of(node: &NodeStatus, family: IpFamily) -> String {
    let cidrs: Vec<&str> = node
        .pod_cidrs
        .iter()
        .filter(|c| c.family() == family)
        .map(|c| c.cidr.as_str())
        .collect();
    if cidrs.is_empty() {
        "-".to_owned()
    } else {
        cidrs.join("\n")
    }
}

/// `kino node list`: one row per node.
pub fn render_list(nodes: &[NodeStatus]) -> String {
    if nodes.is_empty() {
        return "No nodes. An agent registers its node when it starts.\n".to_owned();
    }
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                health_name(n).to_owned(),
                cidrs_of(n, IpFamily::Ipv4),
                cidrs_of(n, IpFamily::Ipv6),
                n.endpoints.to_string(),
                n.pod_cidrs
                    .iter()
                    .map(|c| c.allocated)
                    .sum::<u64>()
                    .to_string(),
                n.node
                    .as_ref()
                    .map(|r| r.agent_version.clone())
                    .filter(|v| !v.is_empty())
                    .unwrap_or_else(|| "-".to_owned()),
                n.node.as_ref().map(routing_mode).unwrap_or("-").to_owned(),
                n.node
                    .as_ref()
                    .map(|r| addresses_of(r, NodeAddressType::InternalIp))
                    .filter(|a| !a.is_empty())
                    .unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    table::render(
        &[
            "NAME",
            "HEALTH",
            "IPv4 POD CIDR",
            "IPv6 POD CIDR",
            "ENDPOINTS",
            "ADDRESSES",
            "AGENT",
            "ROUTING",
            "INTERNAL IP",
        ],
        &rows,
    )
}

/// The routing mode a Node record says its agent runs in.
fn routing_mode(node: &Node) -> &'static str {
    match node
        .routing
        .as_ref()
        .and_then(|r| RoutingMode::try_from(r.mode).ok())
    {
        Some(RoutingMode::Tunnel) => "tunnel",
        Some(RoutingMode::Native) => "native",
        _ => "-",
    }
}

/// A Node record's addresses of one type, comma-separated.
fn addresses_of(node: &Node, kind: NodeAddressType) -> String {
    node.addresses
        .iter()
        .filter(|a| a.r#type == kind as i32)
        .map(|a| a.address.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

fn timestamp(t: Option<&prost_types::Timestamp>, now: SystemTime) -> String {
    let Some(time) = t.and_then(|t| SystemTime::try_from(*t).ok()) else {
        return "-".to_owned();
    };
    let ago = now.duration_since(time).unwrap_or_default().as_secs();
    let rfc3339 = t.map(ToString::to_string).unwrap_or_default();
    format!("{rfc3339} ({ago}s ago)")
}

/// `kino node get`: the node in detail.
pub fn render_node(node: &NodeStatus, now: SystemTime) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "name:        {}", node.name);
    let _ = writeln!(out, "health:      {}", health_name(node));
    if let Some(record) = &node.node {
        let _ = writeln!(out, "agent:       kino-agent {}", record.agent_version);
        let routing = record.routing.clone().unwrap_or_default();
        let how = match routing_mode(record) {
            "tunnel" => format!(
                " (VXLAN to {}, UDP {})",
                routing.tunnel_endpoint, routing.tunnel_port
            ),
            "native" => format!(" (pod CIDRs via {})", routing.next_hop),
            _ => String::new(),
        };
        let _ = writeln!(out, "routing:     {}{how}", routing_mode(record));
        for (label, kind) in [
            ("internal IP", NodeAddressType::InternalIp),
            ("external IP", NodeAddressType::ExternalIp),
            ("kino_host", NodeAddressType::KinoInternalIp),
        ] {
            let addresses = addresses_of(record, kind);
            if !addresses.is_empty() {
                let _ = writeln!(out, "{:<13}{addresses}", format!("{label}:"));
            }
        }
        let _ = writeln!(
            out,
            "registered:  {}",
            timestamp(record.register_time.as_ref(), now)
        );
        if record.deletion_time.is_some() {
            let _ = writeln!(
                out,
                "deleting:    since {}",
                timestamp(record.deletion_time.as_ref(), now)
            );
        }
    } else {
        let _ = writeln!(
            out,
            "record:      none (only what the node held is left; `kino node delete` removes it)"
        );
    }
    match &node.heartbeat {
        Some(beat) => {
            let _ = writeln!(
                out,
                "heartbeat:   lease TTL {}s, agent started {}",
                beat.lease_ttl_seconds,
                timestamp(beat.agent_start_time.as_ref(), now)
            );
        }
        None => {
            let _ = writeln!(
                out,
                "heartbeat:   none (the agent is down, cut off, or its lease was revoked; its pods keep their addresses)"
            );
        }
    }
    let _ = writeln!(out, "endpoints:   {}", node.endpoints);
    let _ = writeln!(out, "pod CIDRs:");
    if node.pod_cidrs.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for cidr in &node.pod_cidrs {
        let _ = writeln!(
            out,
            "  {:<20} pool {:<12} {} allocated",
            cidr.cidr, cidr.pool, cidr.allocated
        );
    }
    out
}

/// What `kino node delete` says it did.
pub fn render_deleted(name: &str, deleted: &DeleteNodeResponse) -> String {
    let cidrs = if deleted.released_cidrs.is_empty() {
        "no pod CIDRs".to_owned()
    } else {
        format!("pod CIDRs {}", deleted.released_cidrs.join(", "))
    };
    format!(
        "node {name:?} deleted: {cidrs} and {} address(es) back in IPAM, {} endpoint record(s) removed\n",
        deleted.freed_addresses.len(),
        deleted.deleted_endpoints
    )
}

#[cfg(test)]
mod tests {
    use kino_api::node::PodCidr;

    use super::*;

    fn node(name: &str, health: NodeHealthState) -> NodeStatus {
        NodeStatus {
            name: name.into(),
            health: health as i32,
            node: Some(kino_api::types::Node {
                name: name.into(),
                agent_version: "0.1.0".into(),
                addresses: vec![kino_api::types::NodeAddress {
                    r#type: NodeAddressType::InternalIp as i32,
                    address: "192.0.2.11".into(),
                }],
                routing: Some(kino_api::types::NodeRouting {
                    mode: RoutingMode::Tunnel as i32,
                    tunnel_endpoint: "192.0.2.11".into(),
                    tunnel_port: 8472,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            heartbeat: None,
            pod_cidrs: vec![
                PodCidr {
                    pool: "default".into(),
                    cidr: "10.0.0.0/24".into(),
                    family: IpFamily::Ipv4 as i32,
                    allocated: 2,
                },
                PodCidr {
                    pool: "default".into(),
                    cidr: "fd00::/120".into(),
                    family: IpFamily::Ipv6 as i32,
                    allocated: 1,
                },
            ],
            endpoints: 2,
        }
    }

    #[test]
    fn list_has_one_row_per_node_with_its_health_and_cidrs() {
        let text = render_list(&[
            node("a", NodeHealthState::Live),
            node("b", NodeHealthState::Unreachable),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NAME"), "{text}");
        assert!(lines[1].contains("live") && lines[1].contains("10.0.0.0/24"));
        assert!(lines[1].contains("fd00::/120") && lines[1].contains("0.1.0"));
        assert!(lines[2].starts_with("b") && lines[2].contains("unreachable"));
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            [
                "a",
                "live",
                "10.0.0.0/24",
                "fd00::/120",
                "2",
                "3",
                "0.1.0",
                "tunnel",
                "192.0.2.11"
            ]
        );
        assert!(render_list(&[]).contains("No nodes"));
    }

    #[test]
    fn get_says_why_there_is_no_heartbeat() {
        let text = render_node(&node("b", NodeHealthState::Unreachable), SystemTime::now());
        assert!(text.contains("health:      unreachable"), "{text}");
        assert!(text.contains("keep their addresses"), "{text}");
        assert!(
            text.contains("routing:     tunnel (VXLAN to 192.0.2.11, UDP 8472)"),
            "{text}"
        );
        assert!(text.contains("internal IP: 192.0.2.11"), "{text}");
        assert!(
            text.contains("10.0.0.0/24") && text.contains("2 allocated"),
            "{text}"
        );
    }
}
