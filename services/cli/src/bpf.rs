//! `kino bpf endpoint|ipcache|policy|ct|lb list`: the agent's BPF maps as the datapath holds
//! them (Cilium's `cilium bpf … list`): the endpoints map, the ipcache (prefix → identity),
//! one endpoint's policy map with hit counters, conntrack, and the service load balancer
//! ([`lb`]).

mod lb;

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use crate::agent::{AgentCallError, call};
use crate::endpoint::{EndpointError, Lookup};
use crate::proto_json;
use kino_api::agent::{
    BpfConntrackEntry, BpfEndpointEntry, BpfIpcacheEntry, ListBpfConntrackRequest,
    ListBpfConntrackResponse, ListBpfEndpointsRequest, ListBpfIpcacheRequest,
    ListBpfLoadBalancerRequest, ListBpfPolicyRequest, ListBpfPolicyResponse,
};
use kino_api::policy::PolicyMapKey;
use kino_api::policy::policy_map_key::Remote;
use kino_api::types::{Direction, IpFamily, PolicyVerdict, Protocol};

/// `kino bpf …`.
#[derive(Debug, clap::Args)]
pub struct BpfArgs {
    #[command(subcommand)]
    command: BpfCommand,
}

#[derive(Debug, clap::Subcommand)]
enum BpfCommand {
    /// The endpoints map (IP → local endpoint).
    Endpoint(ListOnly),
    /// The ipcache map (prefix → security identity).
    Ipcache(ListOnly),
    /// One endpoint's policy map: its entries with hit counters, and its enforcement.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// The conntrack map.
    Ct {
        #[command(subcommand)]
        command: CtCommand,
    },
    /// The service load balancer's maps: frontends, their backends and slots.
    Lb(ListOnly),
}

#[derive(Debug, clap::Args)]
struct ListOnly {
    #[command(subcommand)]
    command: ListCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ListCommand {
    /// Every entry.
    List,
}

#[derive(Debug, clap::Subcommand)]
enum PolicyCommand {
    /// The entries of one endpoint's policy map.
    List {
        /// Endpoint id, IP address, container id or NAMESPACE/POD (as `kino endpoint get`).
        endpoint: String,
    },
}

#[derive(Debug, clap::Subcommand)]
enum CtCommand {
    /// Live connections.
    List {
        /// Only this family.
        #[arg(long, value_enum)]
        family: Option<Family>,
        /// At most this many entries.
        #[arg(long, default_value_t = 10_000)]
        max: u32,
    },
}

/// An address family to filter on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Family {
    /// IPv4.
    Ipv4,
    /// IPv6.
    Ipv6,
}

/// Why `kino bpf …` failed.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// The agent failed.
    #[error(transparent)]
    Agent(#[from] AgentCallError),
    /// The endpoint could not be found.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
}

/// Runs `kino bpf …` against the agent at `socket`; prints the result (JSON when `json`) or
/// the error. Exit status 1 on failure, 2 on a bad argument.
pub async fn execute(args: &BpfArgs, socket: &str, timeout: Duration, json: bool) -> ExitCode {
    let outcome: Result<String, BpfError> = match &args.command {
        BpfCommand::Endpoint(_) => call(socket, timeout, "ListBpfEndpoints", |mut c| async move {
            c.list_bpf_endpoints(ListBpfEndpointsRequest {}).await
        })
        .await
        .map(|r| {
            if json {
                proto_json::to_string(&r)
            } else {
                render_endpoints(&r.entries)
            }
        })
        .map_err(BpfError::from),
        BpfCommand::Ipcache(_) => call(socket, timeout, "ListBpfIpcache", |mut c| async move {
            c.list_bpf_ipcache(ListBpfIpcacheRequest {}).await
        })
        .await
        .map(|r| {
            if json {
                proto_json::to_string(&r)
            } else {
                render_ipcache(&r.entries)
            }
        })
        .map_err(BpfError::from),
        BpfCommand::Lb(_) => call(socket, timeout, "ListBpfLoadBalancer", |mut c| async move {
            c.list_bpf_load_balancer(ListBpfLoadBalancerRequest {})
                .await
        })
        .await
        .map(|r| {
            if json {
                proto_json::to_string(&r)
            } else {
                lb::render(&r)
            }
        })
        .map_err(BpfError::from),
        BpfCommand::Policy {
            command: PolicyCommand::List { endpoint },
        } => {
            let lookup = match Lookup::parse(endpoint) {
                Ok(lookup) => lookup,
                Err(error) => {
                    eprintln!("error: {error}");
                    return ExitCode::from(2);
                }
            };
            policy(socket, timeout, &lookup).await.map(|r| {
                if json {
                    proto_json::to_string(&r)
                } else {
                    render_policy(&r)
                }
            })
        }
        BpfCommand::Ct {
            command: CtCommand::List { family, max },
        } => {
            let request = ListBpfConntrackRequest {
                family: match family {
                    None => IpFamily::Unspecified,
                    Some(Family::Ipv4) => IpFamily::Ipv4,
                    Some(Family::Ipv6) => IpFamily::Ipv6,
                } as i32,
                max_entries: *max,
            };
            call(socket, timeout, "ListBpfConntrack", |mut c| async move {
                c.list_bpf_conntrack(request).await
            })
            .await
            .map(|r| {
                if json {
                    proto_json::to_string(&r)
                } else {
                    render_conntrack(&r)
                }
            })
            .map_err(BpfError::from)
        }
    };
    match outcome {
        Ok(text) => {
            crate::stdout::print(&text);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The policy map of the endpoint `lookup` names (an id directly, anything else through
/// GetEndpoint first).
async fn policy(
    socket: &str,
    timeout: Duration,
    lookup: &Lookup,
) -> Result<ListBpfPolicyResponse, BpfError> {
    let endpoint_id = match lookup {
        Lookup::Id(id) => *id,
        other => crate::endpoint::get(socket, timeout, other).await?.id,
    };
    Ok(call(socket, timeout, "ListBpfPolicy", |mut c| async move {
        c.list_bpf_policy(ListBpfPolicyRequest { endpoint_id })
            .await
    })
    .await?)
}

/// Left-aligned columns separated by three spaces.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..headers.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([headers[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let _ = write!(line, "{cell:w$}   ", w = widths[i]);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// An identity with the name of the reserved ones: `1 (host)`, `16777217 (cidr)`.
pub fn identity_text(identity: u32) -> String {
    let name = match identity {
        0 => Some("unknown"),
        1 => Some("host"),
        2 => Some("world"),
        3 => Some("unmanaged"),
        4 => Some("health"),
        5 => Some("init"),
        6 => Some("remote-node"),
        id if id >= 1 << 24 => Some("cidr"),
        _ => None,
    };
    match name {
        Some(name) => format!("{identity} ({name})"),
        None => identity.to_string(),
    }
}

fn protocol_text(protocol: i32) -> String {
    match Protocol::try_from(protocol) {
        Ok(Protocol::Unspecified) => "ANY".to_owned(),
        Ok(Protocol::Icmp) => "ICMP".to_owned(),
        Ok(Protocol::Tcp) => "TCP".to_owned(),
        Ok(Protocol::Udp) => "UDP".to_owned(),
        Ok(Protocol::Icmpv6) => "ICMPv6".to_owned(),
        Ok(Protocol::Sctp) => "SCTP".to_owned(),
        Err(_) => protocol.to_string(),
    }
}

fn direction_text(direction: i32) -> &'static str {
    match Direction::try_from(direction) {
        Ok(Direction::Ingress) => "Ingress",
        Ok(Direction::Egress) => "Egress",
        _ => "-",
    }
}

fn remote_identity(key: &PolicyMapKey) -> Option<u32> {
    match &key.remote {
        None => Some(0),
        Some(Remote::RemoteIdentity(id)) => Some(*id),
        Some(Remote::RemoteCidr(_)) => None,
    }
}

/// `80/TCP`, `8000-8009/UDP`, `ANY` (every protocol), `*/TCP` (every port).
pub fn port_proto_text(key: &PolicyMapKey) -> String {
    let proto = protocol_text(key.protocol);
    if key.protocol == 0 {
        return proto;
    }
    match (key.port, key.end_port) {
        (0, _) => format!("*/{proto}"),
        (p, 0) => format!("{p}/{proto}"),
        (p, e) => format!("{p}-{e}/{proto}"),
    }
}

/// The `kino bpf endpoint list` table.
pub fn render_endpoints(entries: &[BpfEndpointEntry]) -> String {
    if entries.is_empty() {
        return "No entries in the endpoints map.\n".to_owned();
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.ip.clone(),
                e.endpoint_id.to_string(),
                e.ifindex.to_string(),
                e.mac.clone(),
                e.node_mac.clone(),
                identity_text(e.identity),
                e.attach_mode.clone(),
            ]
        })
        .collect();
    table(
        &[
            "IP ADDRESS",
            "ENDPOINT",
            "IFINDEX",
            "MAC",
            "NODE MAC",
            "IDENTITY",
            "ATTACH",
        ],
        &rows,
    )
}

/// The `kino bpf ipcache list` table.
pub fn render_ipcache(entries: &[BpfIpcacheEntry]) -> String {
    if entries.is_empty() {
        return "No entries in the ipcache.\n".to_owned();
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.prefix.clone(),
                identity_text(e.identity),
                if e.tunnel_endpoint.is_empty() {
                    "-".to_owned()
                } else {
                    e.tunnel_endpoint.clone()
                },
            ]
        })
        .collect();
    table(&["IP PREFIX/ADDRESS", "IDENTITY", "TUNNEL ENDPOINT"], &rows)
}

/// The `kino bpf policy list` output: a summary line, then the entries.
pub fn render_policy(policy: &ListBpfPolicyResponse) -> String {
    let enforced = |on: bool| if on { "enforced" } else { "not enforced" };
    let e = policy.enforcement.unwrap_or_default();
    let mut out = format!(
        "endpoint {}, identity {}: ingress {}, egress {}; policy revision {}\n",
        policy.endpoint_id,
        identity_text(policy.identity),
        enforced(e.ingress),
        enforced(e.egress),
        policy.realized_revision
    );
    if policy.entries.is_empty() {
        out.push_str(if e.ingress || e.egress {
            "No entries in its policy map: its enforced directions drop everything new.\n"
        } else {
            "No entries in its policy map (and nothing enforced: everything passes).\n"
        });
        return out;
    }
    let rows: Vec<Vec<String>> = policy
        .entries
        .iter()
        .map(|entry| {
            let key = entry.key.clone().unwrap_or_default();
            vec![
                match PolicyVerdict::try_from(entry.verdict) {
                    Ok(PolicyVerdict::Allow) => "Allow".to_owned(),
                    Ok(PolicyVerdict::Deny) => "Deny".to_owned(),
                    _ => "-".to_owned(),
                },
                direction_text(key.direction).to_owned(),
                match remote_identity(&key) {
                    Some(0) => "* (any)".to_owned(),
                    Some(id) => identity_text(id),
                    None => "-".to_owned(),
                },
                port_proto_text(&key),
                entry.packets.to_string(),
                entry.bytes.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "VERDICT",
            "DIRECTION",
            "IDENTITY",
            "PORT/PROTO",
            "PACKETS",
            "BYTES",
        ],
        &rows,
    ));
    out
}

fn ct_flags(entry: &BpfConntrackEntry) -> String {
    let flags: Vec<&str> = [
        (entry.tx_closing, "tx-closing"),
        (entry.rx_closing, "rx-closing"),
        (entry.seen_non_syn, "seen-non-syn"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    if flags.is_empty() {
        "-".to_owned()
    } else {
        flags.join(",")
    }
}

fn endpoint_text(address: &str, port: u32) -> String {
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

/// The `kino bpf ct list` table.
pub fn render_conntrack(listing: &ListBpfConntrackResponse) -> String {
    if listing.entries.is_empty() {
        return "No live connections in the conntrack map.\n".to_owned();
    }
    let rows: Vec<Vec<String>> = listing
        .entries
        .iter()
        .map(|e| {
            vec![
                protocol_text(e.protocol),
                direction_text(e.direction).to_owned(),
                endpoint_text(&e.source_address, e.source_port),
                endpoint_text(&e.destination_address, e.destination_port),
                format!("{}s", e.expires_in.map_or(0, |d| d.seconds)),
                format!("{}/{}", e.tx_packets, e.tx_bytes),
                format!("{}/{}", e.rx_packets, e.rx_bytes),
                ct_flags(e),
                identity_text(e.source_identity),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "PROTO",
            "POINT",
            "SOURCE",
            "DESTINATION",
            "EXPIRES",
            "TX PKTS/BYTES",
            "RX PKTS/BYTES",
            "FLAGS",
            "SOURCE IDENTITY",
        ],
        &rows,
    );
    if listing.truncated {
        out.push_str("(more entries exist; raise --max)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use kino_api::agent::BpfPolicyEntry;
    use kino_api::types::PolicyEnforcement;

    use super::*;

    fn key(
        direction: Direction,
        remote: u32,
        protocol: Protocol,
        port: u32,
        end: u32,
    ) -> PolicyMapKey {
        PolicyMapKey {
            direction: direction as i32,
            remote: Some(Remote::RemoteIdentity(remote)),
            protocol: protocol as i32,
            port,
            end_port: end,
        }
    }

    #[test]
    fn identities_and_ports_read_like_cilium() {
        assert_eq!(identity_text(1), "1 (host)");
        assert_eq!(identity_text(2), "2 (world)");
        assert_eq!(identity_text(300), "300");
        assert_eq!(identity_text(16_777_217), "16777217 (cidr)");
        assert_eq!(
            port_proto_text(&key(Direction::Ingress, 0, Protocol::Tcp, 80, 0)),
            "80/TCP"
        );
        assert_eq!(
            port_proto_text(&key(Direction::Ingress, 0, Protocol::Udp, 8000, 8009)),
            "8000-8009/UDP"
        );
        assert_eq!(
            port_proto_text(&key(Direction::Ingress, 0, Protocol::Tcp, 0, 0)),
            "*/TCP"
        );
        assert_eq!(
            port_proto_text(&key(Direction::Ingress, 0, Protocol::Unspecified, 0, 0)),
            "ANY"
        );
    }

    #[test]
    fn policy_table_and_json() {
        let response = ListBpfPolicyResponse {
            endpoint_id: 12,
            identity: 300,
            enforcement: Some(PolicyEnforcement {
                ingress: true,
                egress: false,
            }),
            realized_revision: 7,
            entries: vec![
                BpfPolicyEntry {
                    key: Some(key(Direction::Ingress, 301, Protocol::Tcp, 80, 0)),
                    verdict: PolicyVerdict::Allow as i32,
                    packets: 12,
                    bytes: 1024,
                },
                BpfPolicyEntry {
                    key: Some(key(Direction::Ingress, 0, Protocol::Unspecified, 0, 0)),
                    verdict: PolicyVerdict::Deny as i32,
                    packets: 0,
                    bytes: 0,
                },
            ],
        };
        let text = render_policy(&response);
        assert!(
            text.starts_with(
                "endpoint 12, identity 300: ingress enforced, egress not enforced; policy revision 7\n"
            ),
            "{text}"
        );
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].starts_with("VERDICT"), "{text}");
        assert!(
            lines[2].contains("Allow") && lines[2].contains("80/TCP") && lines[2].contains("1024")
        );
        assert!(
            lines[3].contains("Deny") && lines[3].contains("* (any)") && lines[3].contains("ANY")
        );
        let json = proto_json::to_value(&response);
        assert_eq!(json["entries"][0]["key"]["remoteIdentity"], 301);
        assert_eq!(json["entries"][0]["key"]["protocol"], "PROTOCOL_TCP");
        assert_eq!(json["entries"][1]["verdict"], "POLICY_VERDICT_DENY");
        assert_eq!(json["realizedRevision"], "7");
    }

    #[test]
    fn ipcache_and_conntrack_tables() {
        let text = render_ipcache(&[BpfIpcacheEntry {
            prefix: "192.0.2.0/24".into(),
            identity: 16_777_217,
            tunnel_endpoint: String::new(),
            flags: 0,
        }]);
        assert!(
            text.contains("192.0.2.0/24") && text.contains("16777217 (cidr)"),
            "{text}"
        );
        assert_eq!(render_ipcache(&[]), "No entries in the ipcache.\n");
        let listing = ListBpfConntrackResponse {
            entries: vec![BpfConntrackEntry {
                family: IpFamily::Ipv4 as i32,
                protocol: Protocol::Tcp as i32,
                source_address: "10.0.0.2".into(),
                source_port: 40000,
                destination_address: "10.0.0.3".into(),
                destination_port: 80,
                direction: Direction::Egress as i32,
                expires_in: Some(prost_types::Duration {
                    seconds: 21599,
                    nanos: 0,
                }),
                tx_packets: 7,
                tx_bytes: 500,
                rx_packets: 6,
                rx_bytes: 400,
                seen_non_syn: true,
                source_identity: 300,
                ..Default::default()
            }],
            truncated: true,
        };
        let text = render_conntrack(&listing);
        assert!(
            text.contains("10.0.0.2:40000") && text.contains("10.0.0.3:80"),
            "{text}"
        );
        assert!(
            text.contains("Egress") && text.contains("21599s") && text.contains("seen-non-syn")
        );
        assert!(text.ends_with("(more entries exist; raise --max)\n"));
        assert_eq!(
            proto_json::to_value(&listing)["entries"][0]["txPackets"],
            "7"
        );
    }
}
