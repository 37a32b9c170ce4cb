//! kino-trust-probe: calls every state-changing RPC of every Kinocilium service, and every
//! flow read, with whatever credentials it is given (none, a role's certificate, …), and
//! prints one JSON line per call: `{"method": "/kino.…/X", "outcome": "<gRPC code>" |
//! "NotConnected", "message": …}`. The trust tests run it as an unprivileged user and as each
//! role, and compare what got through with who may call what.
//!
//! Every request is one that, once authorized, fails validation or finds nothing (an
//! oversized spec, an unknown pool, a dry run, …): probing changes no state. What matters is
//! whether the answer came from the authorization layer (UNAUTHENTICATED,
//! PERMISSION_DENIED), from the transport (NotConnected: the connection or HTTP/2 failed, no
//! gRPC status came back), or from the service behind it (anything else: the call was let
//! through).

use std::future::Future;
use std::pin::Pin;

use clap::Parser;
use kino_api::agent::agent_service_client::AgentServiceClient;
use kino_api::datastore::datastore_service_client::DatastoreServiceClient;
use kino_api::flow::flow_service_client::FlowServiceClient;
use kino_api::ipam::ipam_service_client::IpamServiceClient;
use kino_api::node::node_service_client::NodeServiceClient;
use kino_api::policy::policy_service_client::PolicyServiceClient;
use kino_api::{agent, datastore, flow, ipam, policy};
use kino_service_kit::{ClientTlsArgs, TracedChannel};
use tonic::Status;

/// Probe every state-changing RPC and flow read of a running suite.
#[derive(Parser, Debug)]
#[command(name = "kino-trust-probe")]
struct Args {
    /// The datastore-gateway.
    #[arg(long)]
    datastore: String,
    /// kino-ipam.
    #[arg(long)]
    ipam: String,
    /// kino-policy-compiler.
    #[arg(long)]
    policy: String,
    /// The agent's flow observer.
    #[arg(long)]
    flows: String,
    /// The agent's local API socket (unix:/path).
    #[arg(long)]
    agent: Option<String>,
    /// The node whose records the requests name (an agent's own node, or another).
    #[arg(long)]
    node: String,
    #[command(flatten)]
    tls: ClientTlsArgs,
}

type Call = Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>;

/// A spec over the gateway's 1 MiB value limit: an authorized Create/Update fails its size
/// check after authorization, before anything is written.
fn oversized_spec() -> prost_types::Any {
    prost_types::Any {
        type_url: "type.googleapis.com/kino.trust.Probe".into(),
        value: vec![0; 2 * 1024 * 1024],
    }
}

fn datastore_calls(
    c: DatastoreServiceClient<TracedChannel>,
    node: &str,
) -> Vec<(&'static str, Call)> {
    let endpoint = datastore::Resource {
        kind: "Endpoint".into(),
        namespace: node.to_owned(),
        name: "trust-probe".into(),
        spec: Some(oversized_spec()),
        ..Default::default()
    };
    let key = datastore::ResourceKey {
        kind: "Endpoint".into(),
        namespace: node.to_owned(),
        name: "trust-probe-missing".into(),
    };
    vec![
        ("/kino.datastore.v1.DatastoreService/Create", {
            let (mut c, resource) = (c.clone(), endpoint.clone());
            Box::pin(async move {
                c.create(datastore::CreateRequest {
                    resource: Some(resource),
                })
                .await
                .map(drop)
            }) as Call
        }),
        ("/kino.datastore.v1.DatastoreService/Update", {
            let (mut c, resource) = (c.clone(), endpoint);
            Box::pin(async move {
                c.update(datastore::UpdateRequest {
                    resource: Some(resource),
                    expected_revision: 1,
                })
                .await
                .map(drop)
            })
        }),
        ("/kino.datastore.v1.DatastoreService/Delete", {
            let mut c = c.clone();
            Box::pin(async move {
                c.delete(datastore::DeleteRequest {
                    key: Some(key),
                    expected_revision: 0,
                })
                .await
                .map(drop)
            })
        }),
        ("/kino.datastore.v1.DatastoreService/GrantLease", {
            let mut c = c.clone();
            Box::pin(async move {
                c.grant_lease(datastore::GrantLeaseRequest { ttl_seconds: 0 })
                    .await
                    .map(drop)
            })
        }),
        ("/kino.datastore.v1.DatastoreService/KeepAliveLease", {
            let mut c = c.clone();
            Box::pin(async move {
                c.keep_alive_lease(datastore::KeepAliveLeaseRequest {
                    lease_id: 987_654_321,
                })
                .await
                .map(drop)
            })
        }),
        ("/kino.datastore.v1.DatastoreService/RevokeLease", {
            let mut c = c.clone();
            Box::pin(async move {
                c.revoke_lease(datastore::RevokeLeaseRequest {
                    lease_id: 987_654_321,
                })
                .await
                .map(drop)
            })
        }),
        ("/kino.datastore.v1.DatastoreService/Compact", {
            let mut c = c.clone();
            Box::pin(async move {
                c.compact(datastore::CompactRequest { revision: 0 })
                    .await
                    .map(drop)
            })
        }),
    ]
}

fn ipam_calls(channel: TracedChannel, node: &str) -> Vec<(&'static str, Call)> {
    let c = IpamServiceClient::new(channel.clone());
    let nodes = NodeServiceClient::new(channel);
    let node = node.to_owned();
    let missing_pool = "trust-probe-missing".to_owned();
    let owner = ipam::Owner {
        container_id: "trust-probe-missing".into(),
        ifname: "eth0".into(),
        ..Default::default()
    };
    vec![
        ("/kino.ipam.v1.IpamService/CreatePool", {
            let mut c = c.clone();
            Box::pin(async move {
                // No family: INVALID_ARGUMENT once authorized.
                c.create_pool(ipam::CreatePoolRequest {
                    pool: Some(ipam::IpPool {
                        name: "trust-probe".into(),
                        ..Default::default()
                    }),
                })
                .await
                .map(drop)
            }) as Call
        }),
        ("/kino.ipam.v1.IpamService/DeletePool", {
            let (mut c, name) = (c.clone(), missing_pool.clone());
            Box::pin(async move {
                c.delete_pool(ipam::DeletePoolRequest { name })
                    .await
                    .map(drop)
            })
        }),
        ("/kino.ipam.v1.IpamService/AllocateNodeCidrs", {
            let (mut c, node, pool) = (c.clone(), node.clone(), missing_pool.clone());
            Box::pin(async move {
                c.allocate_node_cidrs(ipam::AllocateNodeCidrsRequest {
                    node,
                    pool,
                    ..Default::default()
                })
                .await
                .map(drop)
            })
        }),
        ("/kino.ipam.v1.IpamService/ReleaseNodeCidrs", {
            let (mut c, pool) = (c.clone(), missing_pool.clone());
            Box::pin(async move {
                c.release_node_cidrs(ipam::ReleaseNodeCidrsRequest {
                    node: "trust-probe-missing".into(),
                    pool,
                    force: false,
                })
                .await
                .map(drop)
            })
        }),
        ("/kino.ipam.v1.IpamService/Allocate", {
            let (mut c, node, pool, owner) =
                (c.clone(), node.clone(), missing_pool.clone(), owner.clone());
            Box::pin(async move {
                c.allocate(ipam::AllocateRequest {
                    node,
                    pool,
                    owner: Some(owner),
                    family: kino_api::types::IpFamily::Ipv4 as i32,
                    ..Default::default()
                })
                .await
                .map(drop)
            })
        }),
        ("/kino.ipam.v1.IpamService/Release", {
            let mut c = c.clone();
            Box::pin(async move {
                c.release(ipam::ReleaseRequest {
                    target: Some(ipam::release_request::Target::Owner(owner)),
                    family: 0,
                })
                .await
                .map(drop)
            })
        }),
        ("/kino.ipam.v1.IpamService/Gc", {
            let mut c = c.clone();
            Box::pin(async move {
                c.gc(ipam::GcRequest {
                    node,
                    pool: missing_pool,
                    dry_run: true,
                    ..Default::default()
                })
                .await
                .map(drop)
            })
        }),
        ("/kino.node.v1.NodeService/DeleteNode", {
            let mut nodes = nodes.clone();
            Box::pin(async move {
                nodes
                    .delete_node(kino_api::node::DeleteNodeRequest {
                        name: "trust-probe-missing".into(),
                        force: false,
                    })
                    .await
                    .map(drop)
            })
        }),
    ]
}

fn policy_calls(c: PolicyServiceClient<TracedChannel>) -> Vec<(&'static str, Call)> {
    vec![
        ("/kino.policy.v1.PolicyService/ImportPolicies", {
            let mut c = c.clone();
            Box::pin(async move {
                c.import_policies(policy::ImportPoliciesRequest {
                    documents: "kind: NotAPolicy\n".into(),
                    default_namespace: String::new(),
                })
                .await
                .map(drop)
            }) as Call
        }),
        ("/kino.policy.v1.PolicyService/DeletePolicy", {
            let mut c = c.clone();
            Box::pin(async move {
                c.delete_policy(policy::DeletePolicyRequest {
                    policy: Some(policy::PolicyRef {
                        namespace: "trust-probe".into(),
                        name: "missing".into(),
                    }),
                })
                .await
                .map(drop)
            })
        }),
        ("/kino.policy.v1.PolicyService/AllocateIdentity", {
            let mut c = c.clone();
            Box::pin(async move {
                c.allocate_identity(policy::AllocateIdentityRequest { labels: None })
                    .await
                    .map(drop)
            })
        }),
        ("/kino.policy.v1.PolicyService/ReleaseIdentity", {
            let mut c = c.clone();
            Box::pin(async move {
                c.release_identity(policy::ReleaseIdentityRequest { id: 0 })
                    .await
                    .map(drop)
            })
        }),
    ]
}

fn agent_calls(c: AgentServiceClient<TracedChannel>) -> Vec<(&'static str, Call)> {
    vec![
        ("/kino.agent.v1.AgentService/CreateEndpoint", {
            let mut c = c.clone();
            Box::pin(async move {
                c.create_endpoint(agent::CreateEndpointRequest::default())
                    .await
                    .map(drop)
            }) as Call
        }),
        ("/kino.agent.v1.AgentService/DeleteEndpoint", {
            let mut c = c.clone();
            Box::pin(async move {
                c.delete_endpoint(agent::DeleteEndpointRequest::default())
                    .await
                    .map(drop)
            })
        }),
        ("/kino.agent.v1.AgentService/UpdateEndpointLabels", {
            let mut c = c.clone();
            Box::pin(async move {
                c.update_endpoint_labels(agent::UpdateEndpointLabelsRequest::default())
                    .await
                    .map(drop)
            })
        }),
        ("/kino.agent.v1.AgentService/Gc", {
            let mut c = c.clone();
            Box::pin(async move {
                c.gc(agent::GcRequest {
                    dry_run: true,
                    ..Default::default()
                })
                .await
                .map(drop)
            })
        }),
    ]
}

fn flow_calls(c: FlowServiceClient<TracedChannel>) -> Vec<(&'static str, Call)> {
    vec![
        ("/kino.flow.v1.FlowService/GetFlows", {
            let mut c = c.clone();
            Box::pin(async move {
                let mut stream = c
                    .get_flows(flow::GetFlowsRequest {
                        number: 1,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                // The status of a server stream may come with its first message.
                stream.message().await.map(drop)
            }) as Call
        }),
        ("/kino.flow.v1.FlowService/ServerStatus", {
            let mut c = c.clone();
            Box::pin(async move {
                c.server_status(flow::ServerStatusRequest {})
                    .await
                    .map(drop)
            })
        }),
    ]
}

fn report(method: &str, outcome: &str, message: &str) {
    println!(
        "{}",
        serde_json::json!({"method": method, "outcome": outcome, "message": message})
    );
}

/// Connects now (TCP, TLS and HTTP/2 handshakes): a server that speaks no gRPC to these
/// credentials is reported for each of its methods as `NotConnected`.
async fn probe(
    target: &str,
    tls: &ClientTlsArgs,
    methods: &[&'static str],
    calls: impl FnOnce(TracedChannel) -> Vec<(&'static str, Call)>,
) {
    match kino_service_kit::connect(target, tls).await {
        Err(error) => {
            for method in methods {
                report(method, "NotConnected", &error.to_string());
            }
        }
        Ok(channel) => {
            for (method, call) in calls(channel) {
                match call.await {
                    Ok(()) => report(method, "Ok", ""),
                    // A status with a source was made by our transport (an HTTP/2 or
                    // TLS failure), not sent by a server: nothing was let through.
                    Err(status) if std::error::Error::source(&status).is_some() => {
                        report(method, "NotConnected", &status.to_string())
                    }
                    Err(status) => {
                        report(method, &format!("{:?}", status.code()), status.message())
                    }
                }
            }
        }
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let node = args.node.clone();
    let names = |calls: Vec<(&'static str, Call)>| -> Vec<&'static str> {
        calls.into_iter().map(|(method, _)| method).collect()
    };
    // The method names, from a client that never connects.
    let idle = kino_service_kit::connect_lazy("http://127.0.0.1:9", &ClientTlsArgs::default())
        .expect("a lazy channel");
    let datastore_methods = names(datastore_calls(
        DatastoreServiceClient::new(idle.clone()),
        &node,
    ));
    let ipam_methods = names(ipam_calls(idle.clone(), &node));
    let policy_methods = names(policy_calls(PolicyServiceClient::new(idle.clone())));
    let agent_methods = names(agent_calls(AgentServiceClient::new(idle.clone())));
    let flow_methods = names(flow_calls(FlowServiceClient::new(idle)));

    probe(&args.datastore, &args.tls, &datastore_methods, |ch| {
        datastore_calls(
            DatastoreServiceClient::new(ch).max_encoding_message_size(8 * 1024 * 1024),
            &node,
        )
    })
    .await;
    probe(&args.ipam, &args.tls, &ipam_methods, |ch| {
        ipam_calls(ch, &node)
    })
    .await;
    probe(&args.policy, &args.tls, &policy_methods, |ch| {
        policy_calls(PolicyServiceClient::new(ch))
    })
    .await;
    probe(&args.flows, &args.tls, &flow_methods, |ch| {
        flow_calls(FlowServiceClient::new(ch))
    })
    .await;
    if let Some(agent) = &args.agent {
        probe(agent, &args.tls, &agent_methods, |ch| {
            agent_calls(AgentServiceClient::new(ch))
        })
        .await;
    }
}
