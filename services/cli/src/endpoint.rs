//! `kino endpoint list` and `kino endpoint get`: the node's endpoints as the agent knows them,
//! in Cilium's words (ENDPOINT, POLICY ENFORCEMENT, IDENTITY, LABELS, IPv6, IPv4, STATUS;
//! networking with the lxc interface).

mod detail;
mod json;
mod relabel;
mod table;

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use kino_api::agent::{
    Endpoint, EndpointState, GetEndpointRequest, ListEndpointsRequest, get_endpoint_request,
};
use kino_api::types::PodRef;

pub use detail::render_detail;
pub use json::{endpoint_json, timestamp_rfc3339};
pub use relabel::{LabelEdit, render as render_labels};
pub use table::render_list;

use crate::agent::{AgentCallError, call};

/// `kino endpoint …`.
#[derive(Debug, clap::Args)]
pub struct EndpointArgs {
    #[command(subcommand)]
    command: EndpointCommand,
}

#[derive(Debug, clap::Subcommand)]
enum EndpointCommand {
    /// Every endpoint of this node (the agent's view).
    List {
        /// Only pods of this namespace.
        #[arg(long, short = 'n')]
        namespace: Option<String>,
    },
    /// One endpoint, with its networking (the lxc interface), labels, policy and counters.
    Get {
        /// Endpoint id, IP address, container id or NAMESPACE/POD; a prefix (`id:`, `ip:`,
        /// `container-id:`, `pod:`) says which.
        endpoint: String,
    },
    /// Show or change an endpoint's security labels (as `cilium endpoint labels`): the
    /// endpoint gets the identity of its new label set and that identity's policy.
    Labels {
        /// Endpoint id, IP address, container id or NAMESPACE/POD.
        endpoint: String,
        /// Labels to add or change: [SOURCE:]KEY=VALUE (source `container` if none);
        /// repeat the flag or separate with commas.
        #[arg(long, short = 'a', value_name = "LABEL")]
        add: Vec<String>,
        /// Labels to delete: KEY (any source) or SOURCE:KEY; repeat or separate with commas.
        #[arg(long, short = 'd', value_name = "KEY")]
        delete: Vec<String>,
    },
}

/// How `kino endpoint get` finds its endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// By endpoint id.
    Id(u32),
    /// By one of its addresses.
    Ip(IpAddr),
    /// By container id.
    ContainerId(String),
    /// By pod.
    Pod {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
}

impl Lookup {
    /// `123`, `10.0.1.5`, `fd00::5`, `default/web`, a container id, or any of those after
    /// `id:`, `ip:`, `container-id:` / `container:`, `pod:`.
    pub fn parse(text: &str) -> Result<Lookup, String> {
        let text = text.trim();
        let id = |t: &str| match t.parse::<u32>() {
            Ok(id) if (1..=65535).contains(&id) => Ok(Lookup::Id(id)),
            _ => Err(format!("{t:?} is not an endpoint id (1 to 65535)")),
        };
        let ip = |t: &str| {
            t.parse()
                .map(Lookup::Ip)
                .map_err(|_| format!("{t:?} is not an IP address"))
        };
        let pod = |t: &str| match t.split_once('/') {
            Some((namespace, name))
                if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
            {
                Ok(Lookup::Pod {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                })
            }
            _ if !t.is_empty() && !t.contains('/') => Ok(Lookup::Pod {
                namespace: "default".to_owned(),
                name: t.to_owned(),
            }),
            _ => Err(format!("{t:?} is not NAMESPACE/POD")),
        };
        let container = |t: &str| {
            if t.is_empty() {
                Err("the container id is empty".to_owned())
            } else {
                Ok(Lookup::ContainerId(t.to_owned()))
            }
        };
        if let Some((prefix, rest)) = text.split_once(':') {
            match prefix {
                "id" => return id(rest),
                "ip" | "ipv4" | "ipv6" => return ip(rest),
                "container-id" | "container" => return container(rest),
                "pod" => return pod(rest),
                _ => {}
            }
        }
        if text.is_empty() {
            return Err("name an endpoint: id, IP, container id or NAMESPACE/POD".to_owned());
        }
        if text.bytes().all(|b| b.is_ascii_digit()) && text.len() <= 5 {
            return id(text);
        }
        if let Ok(address) = text.parse() {
            return Ok(Lookup::Ip(address));
        }
        if text.contains('/') {
            return pod(text);
        }
        container(text)
    }

    /// The GetEndpoint lookup.
    pub fn to_proto(&self) -> get_endpoint_request::Lookup {
        use get_endpoint_request::Lookup as L;
        match self {
            Lookup::Id(id) => L::Id(*id),
            Lookup::Ip(ip) => L::Ip(ip.to_string()),
            Lookup::ContainerId(id) => L::ContainerId(id.clone()),
            Lookup::Pod { namespace, name } => L::Pod(PodRef {
                namespace: namespace.clone(),
                name: name.clone(),
            }),
        }
    }

    fn describe(&self) -> String {
        match self {
            Lookup::Id(id) => format!("id {id}"),
            Lookup::Ip(ip) => format!("IP {ip}"),
            Lookup::ContainerId(id) => format!("container id {id}"),
            Lookup::Pod { namespace, name } => format!("pod {namespace}/{name}"),
        }
    }
}

/// Cilium's word for an endpoint state (`ready`, `not-ready`, …).
pub fn state_word(state: EndpointState) -> &'static str {
    match state {
        EndpointState::Unspecified => "unknown",
        EndpointState::WaitingForIdentity => "waiting-for-identity",
        EndpointState::NotReady => "not-ready",
        EndpointState::Regenerating => "regenerating",
        EndpointState::Restoring => "restoring",
        EndpointState::Ready => "ready",
        EndpointState::Disconnecting => "disconnecting",
        EndpointState::Invalid => "invalid",
    }
}

/// Runs `kino endpoint …` against the agent at `socket`; prints the result (JSON when
/// `json`) or the error. Exit status 1 on failure, 2 on a bad argument.
pub async fn execute(args: &EndpointArgs, socket: &str, timeout: Duration, json: bool) -> ExitCode {
    let outcome = match &args.command {
        EndpointCommand::List { namespace } => {
            list(socket, timeout, namespace.clone().unwrap_or_default())
                .await
                .map_err(EndpointError::from)
                .map(|endpoints| {
                    if json {
                        json::list_json(&endpoints)
                    } else {
                        render_list(&endpoints)
                    }
                })
        }
        EndpointCommand::Get { endpoint } => {
            let lookup = match Lookup::parse(endpoint) {
                Ok(lookup) => lookup,
                Err(error) => {
                    eprintln!("error: {error}");
                    return ExitCode::from(2);
                }
            };
            get(socket, timeout, &lookup).await.map(|endpoint| {
                if json {
                    serde_json::to_string_pretty(&endpoint_json(&endpoint))
                        .expect("JSON values serialise")
                        + "\n"
                } else {
                    render_detail(&endpoint)
                }
            })
        }
        EndpointCommand::Labels {
            endpoint,
            add,
            delete,
        } => {
            let parsed = Lookup::parse(endpoint)
                .and_then(|lookup| LabelEdit::parse(add, delete).map(|edit| (lookup, edit)));
            let (lookup, edit) = match parsed {
                Ok(parsed) => parsed,
                Err(error) => {
                    eprintln!("error: {error}");
                    return ExitCode::from(2);
                }
            };
            relabel::labels(socket, timeout, &lookup, &edit, json).await
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

/// The node's endpoints (of `namespace` only, unless empty), sorted by id.
pub async fn list(
    socket: &str,
    timeout: Duration,
    namespace: String,
) -> Result<Vec<Endpoint>, AgentCallError> {
    let request = ListEndpointsRequest {
        pod_namespace: namespace,
    };
    let mut endpoints = call(socket, timeout, "ListEndpoints", |mut client| async move {
        client.list_endpoints(request).await
    })
    .await?
    .endpoints;
    endpoints.sort_by_key(|e| e.id);
    Ok(endpoints)
}

/// Why `kino endpoint …` failed.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The agent failed.
    #[error(transparent)]
    Agent(#[from] AgentCallError),
    /// No endpoint matches.
    #[error(
        "no endpoint with {lookup} on the node of the kino agent at {target}; `kino endpoint list` shows them"
    )]
    NotFound {
        /// What was looked up.
        lookup: String,
        /// The agent asked.
        target: String,
    },
}

/// One endpoint, with counters.
pub async fn get(
    socket: &str,
    timeout: Duration,
    lookup: &Lookup,
) -> Result<Endpoint, EndpointError> {
    let request = GetEndpointRequest {
        lookup: Some(lookup.to_proto()),
    };
    let not_found = || EndpointError::NotFound {
        lookup: lookup.describe(),
        target: crate::agent::agent_target(socket),
    };
    match call(socket, timeout, "GetEndpoint", |mut client| async move {
        client.get_endpoint(request).await
    })
    .await
    {
        Ok(response) => response.endpoint.ok_or_else(not_found),
        Err(error) if error.code() == Some(tonic::Code::NotFound) => Err(not_found()),
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use kino_api::agent::{
        DropCounter, EndpointAddressing, EndpointCounters, EndpointNetworking, EndpointPolicyStatus,
    };
    use kino_api::types::{DropReason, Label, Labels, PolicyEnforcement, PolicyEnforcementMode};

    use super::*;

    /// An endpoint as the agent reports a running pod.
    pub(crate) fn sample_endpoint() -> Endpoint {
        Endpoint {
            id: 1234,
            node_name: "node-1".into(),
            container_id: "3f6940ab5ab4".into(),
            pod: Some(PodRef {
                namespace: "default".into(),
                name: "web".into(),
            }),
            state: EndpointState::Ready as i32,
            state_reason: String::new(),
            labels: Some(Labels {
                labels: vec![
                    Label {
                        key: "app".into(),
                        value: "web".into(),
                        source: "container".into(),
                    },
                    Label {
                        key: "io.kubernetes.pod.namespace".into(),
                        value: "default".into(),
                        source: "k8s".into(),
                    },
                ],
            }),
            identity: 4321,
            networking: Some(EndpointNetworking {
                interface_name: "lxc5f3a9c2e1b7d".into(),
                interface_index: 17,
                mac: "0a:58:0a:00:01:17".into(),
                host_mac: "5e:3a:10:00:00:01".into(),
                addressing: Some(EndpointAddressing {
                    ipv4: "10.0.1.23".into(),
                    ipv6: String::new(),
                    ipv4_gateway: "10.0.1.1".into(),
                    ipv6_gateway: String::new(),
                    ipam_pool: "default".into(),
                }),
                container_interface_name: "eth0".into(),
                container_interface_index: 2,
                netns_path: "/run/netns/web".into(),
                mtu: 1500,
            }),
            policy: Some(EndpointPolicyStatus {
                enforcement: Some(PolicyEnforcement {
                    ingress: true,
                    egress: false,
                }),
                realized_revision: 7,
                desired_revision: 7,
                mode: PolicyEnforcementMode::Default as i32,
                audit_mode: false,
                ingress_entries: 3,
                egress_entries: 0,
            }),
            counters: Some(EndpointCounters {
                ingress_packets: 12,
                ingress_bytes: 1176,
                egress_packets: 10,
                egress_bytes: 980,
                drops: vec![DropCounter {
                    reason: DropReason::PolicyDenied as i32,
                    direction: kino_api::types::Direction::Ingress as i32,
                    packets: 2,
                    bytes: 196,
                }],
            }),
            create_time: None,
            cni_network_name: "kino".into(),
        }
    }

    #[test]
    fn lookups_parse_with_and_without_prefixes() {
        for (text, expected) in [
            ("1234", Lookup::Id(1234)),
            ("id:7", Lookup::Id(7)),
            ("10.0.1.23", Lookup::Ip("10.0.1.23".parse().unwrap())),
            ("fd00::17", Lookup::Ip("fd00::17".parse().unwrap())),
            ("ip:10.0.1.23", Lookup::Ip("10.0.1.23".parse().unwrap())),
            (
                "3f6940ab5ab43bc522569d15b23f8c1b",
                Lookup::ContainerId("3f6940ab5ab43bc522569d15b23f8c1b".into()),
            ),
            ("container-id:123456", Lookup::ContainerId("123456".into())),
            // All digits but too long for an id: a container id.
            ("1234567", Lookup::ContainerId("1234567".into())),
            (
                "shop/cart-0",
                Lookup::Pod {
                    namespace: "shop".into(),
                    name: "cart-0".into(),
                },
            ),
            (
                "pod:web",
                Lookup::Pod {
                    namespace: "default".into(),
                    name: "web".into(),
                },
            ),
        ] {
            assert_eq!(Lookup::parse(text), Ok(expected), "{text}");
        }
        for bad in ["", "0", "70000", "id:x", "ip:10.0.0", "pod:/x", "a/b/c/"] {
            assert!(Lookup::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lookups_become_proto() {
        use get_endpoint_request::Lookup as L;
        assert_eq!(Lookup::Id(5).to_proto(), L::Id(5));
        assert_eq!(
            Lookup::Ip("fd00::1".parse().unwrap()).to_proto(),
            L::Ip("fd00::1".into())
        );
        assert_eq!(
            Lookup::Pod {
                namespace: "a".into(),
                name: "b".into()
            }
            .to_proto(),
            L::Pod(PodRef {
                namespace: "a".into(),
                name: "b".into()
            })
        );
    }

    #[test]
    fn states_use_cilium_words() {
        assert_eq!(state_word(EndpointState::Ready), "ready");
        assert_eq!(
            state_word(EndpointState::WaitingForIdentity),
            "waiting-for-identity"
        );
        assert_eq!(state_word(EndpointState::NotReady), "not-ready");
    }

    #[tokio::test]
    async fn get_from_an_absent_agent_names_the_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("agent.sock");
        let socket = socket.to_str().expect("utf-8");
        let error = get(socket, Duration::from_secs(2), &Lookup::Id(1))
            .await
            .expect_err("no agent");
        let message = error.to_string();
        assert!(message.contains(&format!("unix:{socket}")), "{message}");
        assert!(message.contains("--agent-socket"), "{message}");
        let error = list(socket, Duration::from_secs(2), String::new())
            .await
            .expect_err("no agent");
        assert_eq!(error.rpc, "ListEndpoints");
    }
}
