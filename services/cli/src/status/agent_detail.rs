//! The agent's part of `kino status`: its own Status RPC (node, readiness, routing mode,
//! devices, endpoints, components), shown under the health table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use kino_api::agent::agent_service_client::AgentServiceClient;
use kino_api::agent::{StatusRequest, StatusResponse};
use kino_service_kit::TracedChannel;
use serde::Serialize;

/// The agent's own report (its Status RPC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentDetail {
    /// The agent can serve CreateEndpoint (CNI ADD).
    pub ready: bool,
    /// Node name.
    pub node_name: String,
    /// kino-agent version.
    pub version: String,
    /// Datapath routing mode: `tunnel` or `native`.
    pub routing_mode: String,
    /// Policy enforcement mode: `default`, `always` or `never`.
    pub policy_enforcement_mode: String,
    /// Number of endpoints on the node.
    pub endpoint_count: u32,
    /// The node's pod CIDRs.
    pub pod_cidrs: Vec<String>,
    /// Where the BPF maps are pinned.
    pub bpf_pin_path: String,
    /// Policy revision realized: the compiler's stream applied up to it.
    pub policy_revision: i64,
    /// The node devices (kino_host, kino_net, kino_vxlan).
    pub devices: Vec<DeviceDetail>,
    /// Health of each part of the agent.
    pub components: Vec<AgentComponentDetail>,
    /// Services the agent uses, by name.
    pub peers: BTreeMap<String, String>,
}

/// One node device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceDetail {
    /// Device name.
    pub name: String,
    /// ifindex in the node's namespace.
    pub ifindex: u32,
    /// MAC address.
    pub mac: String,
    /// Addresses (CIDR form).
    pub addresses: Vec<String>,
}

/// Health of one part of the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentComponentDetail {
    /// Component name, e.g. `datapath`.
    pub name: String,
    /// `OK`, `DEGRADED`, `FAILURE`, `DISABLED`.
    pub state: String,
    /// What works, or what fails and what to do.
    pub message: String,
}

fn word(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
}

impl From<StatusResponse> for AgentDetail {
    fn from(s: StatusResponse) -> Self {
        AgentDetail {
            ready: s.ready,
            routing_mode: word(s.routing_mode().as_str_name(), "ROUTING_MODE_"),
            policy_enforcement_mode: word(
                s.policy_enforcement_mode().as_str_name(),
                "POLICY_ENFORCEMENT_MODE_",
            ),
            node_name: s.node_name,
            version: s.version,
            endpoint_count: s.endpoint_count,
            pod_cidrs: s.pod_cidrs,
            bpf_pin_path: s.bpf_pin_path,
            policy_revision: s.policy_revision,
            devices: s
                .devices
                .into_iter()
                .map(|d| DeviceDetail {
                    name: d.name,
                    ifindex: d.ifindex,
                    mac: d.mac,
                    addresses: d.addresses,
                })
                .collect(),
            components: s
                .components
                .into_iter()
                .map(|c| AgentComponentDetail {
                    state: c
                        .state()
                        .as_str_name()
                        .trim_start_matches("HEALTH_STATE_")
                        .to_owned(),
                    name: c.name,
                    message: c.message,
                })
                .collect(),
            peers: s.peer_addresses.into_iter().collect(),
        }
    }
}

/// Asks a serving agent for its Status; the error is one line for the DETAIL column,
/// honest about an agent that does not implement it yet.
pub async fn agent_status(channel: TracedChannel) -> Result<AgentDetail, String> {
    match AgentServiceClient::new(channel)
        .status(StatusRequest {})
        .await
    {
        Ok(response) => Ok(response.into_inner().into()),
        Err(status) if status.code() == tonic::Code::Unimplemented => Err(format!(
            "serving, but its Status RPC is not implemented yet: {}",
            status.message()
        )),
        Err(status) => Err(format!(
            "serving, but its Status RPC failed: {:?}: {}",
            status.code(),
            status.message()
        )),
    }
}

/// One line: node, readiness, endpoints, mode.
pub fn describe_agent(a: &AgentDetail) -> String {
    let endpoints = if a.endpoint_count == 1 {
        "1 endpoint".to_owned()
    } else {
        format!("{} endpoints", a.endpoint_count)
    };
    format!(
        "node {}, {}, {endpoints}, {} routing",
        a.node_name,
        if a.ready { "ready" } else { "NOT READY" },
        a.routing_mode
    )
}

/// The section under the table: everything the agent reported, its realized policy
/// revision beside the latest one (`latest`: the policy-compiler's, when it answered).
pub fn render_agent_section(a: &AgentDetail, latest: Option<i64>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Agent on node {}:", a.node_name);
    let none = |list: &[String]| {
        if list.is_empty() {
            "-".to_owned()
        } else {
            list.join(", ")
        }
    };
    let rows = [
        ("ready", if a.ready { "yes" } else { "no" }.to_owned()),
        ("version", a.version.clone()),
        ("datapath mode", a.routing_mode.clone()),
        ("policy enforcement", a.policy_enforcement_mode.clone()),
        ("endpoints", a.endpoint_count.to_string()),
        ("pod CIDRs", none(&a.pod_cidrs)),
        ("BPF maps", a.bpf_pin_path.clone()),
        (
            "policy revision",
            match latest {
                Some(latest) if latest > a.policy_revision => {
                    format!("{} realized, latest {latest} (behind)", a.policy_revision)
                }
                Some(latest) => format!("{} realized, latest {latest}", a.policy_revision),
                None => format!(
                    "{} realized (latest unknown: the policy-compiler did not answer)",
                    a.policy_revision
                ),
            },
        ),
    ];
    for (key, value) in rows {
        let _ = writeln!(out, "  {:<20}{value}", format!("{key}:"));
    }
    if !a.devices.is_empty() {
        let _ = writeln!(out, "  devices:");
        let width = a.devices.iter().map(|d| d.name.len()).max().unwrap_or(0);
        for d in &a.devices {
            let line = format!(
                "    {:<width$}   ifindex {:<4}  {}   {}",
                d.name,
                d.ifindex,
                d.mac,
                none(&d.addresses)
            );
            let _ = writeln!(out, "{}", line.trim_end());
        }
    }
    if !a.components.is_empty() {
        let _ = writeln!(out, "  components:");
        let width = a.components.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for c in &a.components {
            let line = format!("    {:<width$}   {:<8}   {}", c.name, c.state, c.message);
            let _ = writeln!(out, "{}", line.trim_end());
        }
    }
    if !a.peers.is_empty() {
        let _ = writeln!(out, "  peers:");
        for (name, address) in &a.peers {
            let _ = writeln!(out, "    {name}: {address}");
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use kino_api::agent::{ComponentHealth, HealthState, NodeDevice};
    use kino_api::types::{PolicyEnforcementMode, RoutingMode};

    use super::*;

    pub(crate) fn sample_status() -> StatusResponse {
        StatusResponse {
            ready: true,
            node_name: "node-1".into(),
            version: "0.1.0".into(),
            start_time: None,
            routing_mode: RoutingMode::Tunnel as i32,
            policy_enforcement_mode: PolicyEnforcementMode::Default as i32,
            components: vec![
                ComponentHealth {
                    name: "datapath".into(),
                    state: HealthState::Ok as i32,
                    message: "programs attached".into(),
                    since: None,
                },
                ComponentHealth {
                    name: "policy-sync".into(),
                    state: HealthState::Degraded as i32,
                    message: "retrying 127.0.0.1:7403".into(),
                    since: None,
                },
            ],
            devices: vec![
                NodeDevice {
                    name: "kino_host".into(),
                    ifindex: 5,
                    mac: "5e:00:00:00:00:05".into(),
                    addresses: vec!["10.0.1.1/32".into()],
                },
                NodeDevice {
                    name: "kino_net".into(),
                    ifindex: 6,
                    mac: "5e:00:00:00:00:06".into(),
                    addresses: vec![],
                },
            ],
            pod_cidrs: vec!["10.0.1.0/24".into()],
            bpf_pin_path: "/sys/fs/bpf/kino/node-1".into(),
            endpoint_count: 2,
            policy_revision: 0,
            peer_addresses: [("ipam".to_owned(), "127.0.0.1:7402".to_owned())].into(),
        }
    }

    #[test]
    fn agent_status_converts_and_describes() {
        let detail = AgentDetail::from(sample_status());
        assert_eq!(detail.routing_mode, "tunnel");
        assert_eq!(detail.policy_enforcement_mode, "default");
        assert_eq!(detail.components[1].state, "DEGRADED");
        assert_eq!(
            describe_agent(&detail),
            "node node-1, ready, 2 endpoints, tunnel routing"
        );
    }

    #[test]
    fn agent_section_lists_devices_and_components() {
        let section = render_agent_section(&AgentDetail::from(sample_status()), Some(0));
        let expected = "\
Agent on node node-1:
  ready:              yes
  version:            0.1.0
  datapath mode:      tunnel
  policy enforcement: default
  endpoints:          2
  pod CIDRs:          10.0.1.0/24
  BPF maps:           /sys/fs/bpf/kino/node-1
  policy revision:    0 realized, latest 0
  devices:
    kino_host   ifindex 5     5e:00:00:00:00:05   10.0.1.1/32
    kino_net    ifindex 6     5e:00:00:00:00:06   -
  components:
    datapath      OK         programs attached
    policy-sync   DEGRADED   retrying 127.0.0.1:7403
  peers:
    ipam: 127.0.0.1:7402
";
        assert_eq!(section, expected, "\n{section}");
    }
}
