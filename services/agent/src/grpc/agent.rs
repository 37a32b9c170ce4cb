//! The `kino.agent.v1` gRPC adapter (the local API on the agent's unix socket): translates
//! between the API and the [`EndpointManager`]; its errors become status codes through
//! [`crate::grpc::status`].
//! Label updates (identities, issue #5) answer `UNIMPLEMENTED`.

use std::collections::HashMap;
use std::sync::Arc;

use kino_api::agent::agent_service_server::{AgentService, AgentServiceServer};
use kino_api::agent::{
    BpfEndpointEntry, CheckEndpointRequest, CheckEndpointResponse, ComponentHealth,
    CreateEndpointRequest, CreateEndpointResponse, DeleteEndpointRequest, DeleteEndpointResponse,
    GcRequest, GcResponse, GetEndpointRequest, GetEndpointResponse, HealthState,
    ListBpfConntrackRequest, ListBpfConntrackResponse, ListBpfEndpointsRequest,
    ListBpfEndpointsResponse, ListBpfIpcacheRequest, ListBpfIpcacheResponse,
    ListBpfLoadBalancerRequest, ListBpfLoadBalancerResponse, ListBpfPolicyRequest,
    ListBpfPolicyResponse, ListEndpointsRequest, ListEndpointsResponse, NodeDevice, StatusRequest,
    StatusResponse, UpdateEndpointLabelsRequest, UpdateEndpointLabelsResponse,
};
use kino_api::types::{IpFamily, PolicyEnforcement, PolicyEnforcementMode, RoutingMode};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::datapath::lb::{LbMaps, listing};
use crate::datapath::maps::{FAMILY_IPV4, FAMILY_IPV6};
use crate::endpoint::manager::EndpointManager;
use crate::grpc::input_limits::{check_create, check_update_labels};
use crate::grpc::policy::{
    bpf_conntrack_entry, bpf_ipcache_entry, bpf_lb_frontend, bpf_policy_entry,
};
use crate::grpc::status::to_status;

/// Conntrack entries listed when a request names no limit.
const DEFAULT_CT_LIST: usize = 10_000;

/// Fully-qualified gRPC service name, for health checks.
pub const SERVICE_NAME: &str = kino_api::agent::agent_service_server::SERVICE_NAME;

/// What `Status` reports besides the endpoints.
#[derive(Debug, Clone, Default)]
pub struct AgentInfo {
    /// The node devices (kino_host, kino_net).
    pub devices: Vec<NodeDevice>,
    /// Peer addresses by role: ipam, policy-compiler, datastore-gateway.
    pub peers: HashMap<String, String>,
    /// How the datapath was loaded (adopted pins etc.), for the datapath component.
    pub datapath_detail: String,
    /// When the agent started.
    pub start_time: Option<prost_types::Timestamp>,
    /// Where the load balancer's maps are pinned; `None` with `--socket-lb=false`.
    pub lb_pin_dir: Option<std::path::PathBuf>,
}

/// The `kino.agent.v1.AgentService` implementation.
#[derive(Clone)]
pub struct AgentGrpc {
    manager: Arc<EndpointManager>,
    info: Arc<AgentInfo>,
}

impl AgentGrpc {
    /// The API over an endpoint manager.
    pub fn new(manager: Arc<EndpointManager>, info: AgentInfo) -> Self {
        AgentGrpc {
            manager,
            info: Arc::new(info),
        }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> AgentServiceServer<Self> {
        AgentServiceServer::new(self)
    }
}

fn component(name: &str, message: String) -> ComponentHealth {
    ComponentHealth {
        name: name.to_owned(),
        state: HealthState::Ok as i32,
        message,
        since: None,
    }
}

#[tonic::async_trait]
impl AgentService for AgentGrpc {
    async fn create_endpoint(
        &self,
        request: Request<CreateEndpointRequest>,
    ) -> Result<Response<CreateEndpointResponse>, Status> {
        let request = request.into_inner();
        check_create(&request)?;
        // The ADD's own span: the IPAM, policy-compiler and datastore calls are its children.
        let pod = request.pod.clone().unwrap_or_default();
        let span = tracing::info_span!(
            "endpoint.create",
            otel.name = "create endpoint",
            container.id = %request.container_id,
            k8s.pod.name = %pod.name,
            k8s.namespace.name = %pod.namespace,
            k8s.node.name = %self.manager.node(),
            endpoint.id = tracing::field::Empty,
            endpoint.ips = tracing::field::Empty,
            endpoint.identity = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        );
        match self.manager.create(request).instrument(span.clone()).await {
            Ok(response) => {
                if let Some(e) = &response.endpoint {
                    span.record("endpoint.id", e.id);
                    span.record("endpoint.identity", e.identity);
                }
                let ips: Vec<&str> = response.ips.iter().map(|ip| ip.address.as_str()).collect();
                span.record("endpoint.ips", ips.join(",").as_str());
                Ok(Response::new(response))
            }
            Err(e) => {
                let status = to_status(&e);
                span.record("otel.status_description", status.message());
                Err(status)
            }
        }
    }

    async fn delete_endpoint(
        &self,
        request: Request<DeleteEndpointRequest>,
    ) -> Result<Response<DeleteEndpointResponse>, Status> {
        let target = request
            .into_inner()
            .target
            .ok_or_else(|| Status::invalid_argument("target (id or attachment) is required"))?;
        let endpoint = self
            .manager
            .delete(target)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(DeleteEndpointResponse {
            endpoint,
            errors: Vec::new(),
        }))
    }

    async fn check_endpoint(
        &self,
        request: Request<CheckEndpointRequest>,
    ) -> Result<Response<CheckEndpointResponse>, Status> {
        let request = request.into_inner();
        let container_id = request
            .attachment
            .as_ref()
            .map(|a| a.container_id.clone())
            .unwrap_or_default();
        self.manager
            .check(request)
            .await
            .map_err(|e| to_status(&e))?;
        let endpoint = self
            .manager
            .get(kino_api::agent::get_endpoint_request::Lookup::ContainerId(
                container_id,
            ))
            .await
            .ok();
        Ok(Response::new(CheckEndpointResponse { endpoint }))
    }

    async fn list_endpoints(
        &self,
        request: Request<ListEndpointsRequest>,
    ) -> Result<Response<ListEndpointsResponse>, Status> {
        let namespace = request.into_inner().pod_namespace;
        let endpoints = self
            .manager
            .list()
            .await
            .into_iter()
            .filter(|e| {
                namespace.is_empty() || e.pod.as_ref().is_some_and(|p| p.namespace == namespace)
            })
            .collect();
        Ok(Response::new(ListEndpointsResponse { endpoints }))
    }

    async fn get_endpoint(
        &self,
        request: Request<GetEndpointRequest>,
    ) -> Result<Response<GetEndpointResponse>, Status> {
        let lookup = request.into_inner().lookup.ok_or_else(|| {
            Status::invalid_argument("lookup (id, ip, container_id or pod) is required")
        })?;
        let endpoint = self.manager.get(lookup).await.map_err(|e| to_status(&e))?;
        Ok(Response::new(GetEndpointResponse {
            endpoint: Some(endpoint),
        }))
    }

    async fn update_endpoint_labels(
        &self,
        request: Request<UpdateEndpointLabelsRequest>,
    ) -> Result<Response<UpdateEndpointLabelsResponse>, Status> {
        let request = request.into_inner();
        check_update_labels(&request)?;
        if request.id == 0 {
            return Err(Status::invalid_argument(
                "id: the endpoint id is required (`kino endpoint list` shows them)",
            ));
        }
        let add = request.add.map(|l| l.labels).unwrap_or_default();
        let updated = self
            .manager
            .update_labels(request.id, &add, &request.delete)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(UpdateEndpointLabelsResponse {
            endpoint: Some(updated.endpoint),
            previous_identity: updated.previous_identity,
        }))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let pin = self.manager.pin_dir().await;
        let count = self.manager.count().await;
        let policy_revision = self.manager.realized_revision().await;
        let network = self.manager.network();
        Ok(Response::new(StatusResponse {
            ready: true,
            node_name: self.manager.node().to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            start_time: self.info.start_time,
            routing_mode: RoutingMode::Unspecified as i32,
            policy_enforcement_mode: PolicyEnforcementMode::Default as i32,
            components: vec![
                component("datapath", self.info.datapath_detail.clone()),
                component(
                    "devices",
                    match network.gateway_v6 {
                        Some(v6) => format!(
                            "kino_host holds the pods' gateways {} and {v6}",
                            network.gateway_v4
                        ),
                        None => format!(
                            "kino_host holds the pods' gateway {} (IPv4 only)",
                            network.gateway_v4
                        ),
                    },
                ),
                component("endpoints", format!("{count} endpoints")),
            ],
            devices: self.info.devices.clone(),
            pod_cidrs: network.pod_cidrs.clone(),
            bpf_pin_path: pin.display().to_string(),
            endpoint_count: count as u32,
            policy_revision,
            peer_addresses: self.info.peers.clone(),
        }))
    }

    async fn gc(&self, request: Request<GcRequest>) -> Result<Response<GcResponse>, Status> {
        let response = self
            .manager
            .gc(request.into_inner())
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(response))
    }

    async fn list_bpf_endpoints(
        &self,
        _request: Request<ListBpfEndpointsRequest>,
    ) -> Result<Response<ListBpfEndpointsResponse>, Status> {
        let entries = self
            .manager
            .bpf_endpoints()
            .await
            .map_err(|e| to_status(&e))?;
        let modes = self
            .manager
            .bpf_attach_modes()
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(ListBpfEndpointsResponse {
            entries: entries
                .into_iter()
                .map(|(ip, e)| BpfEndpointEntry {
                    ip: ip.to_string(),
                    endpoint_id: e.id,
                    ifindex: e.lxc_ifindex,
                    mac: e.pod_mac.to_string(),
                    node_mac: e.lxc_mac.to_string(),
                    identity: e.identity,
                    flags: e.to_raw().flags,
                    attach_mode: modes.get(&e.lxc_ifindex).copied().unwrap_or("").to_owned(),
                })
                .collect(),
        }))
    }

    async fn list_bpf_ipcache(
        &self,
        _request: Request<ListBpfIpcacheRequest>,
    ) -> Result<Response<ListBpfIpcacheResponse>, Status> {
        let entries = self
            .manager
            .bpf_ipcache()
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(ListBpfIpcacheResponse {
            entries: entries.iter().map(bpf_ipcache_entry).collect(),
        }))
    }

    async fn list_bpf_policy(
        &self,
        request: Request<ListBpfPolicyRequest>,
    ) -> Result<Response<ListBpfPolicyResponse>, Status> {
        let endpoint_id = request.into_inner().endpoint_id;
        if endpoint_id == 0 {
            return Err(Status::invalid_argument("endpoint_id is required"));
        }
        let policy = self
            .manager
            .bpf_policy(endpoint_id)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(ListBpfPolicyResponse {
            endpoint_id,
            identity: policy.identity,
            enforcement: Some(PolicyEnforcement {
                ingress: policy.enforcement.ingress,
                egress: policy.enforcement.egress,
            }),
            realized_revision: policy.revision,
            entries: policy.entries.iter().map(bpf_policy_entry).collect(),
        }))
    }

    async fn list_bpf_conntrack(
        &self,
        request: Request<ListBpfConntrackRequest>,
    ) -> Result<Response<ListBpfConntrackResponse>, Status> {
        let request = request.into_inner();
        let family = match IpFamily::try_from(request.family) {
            Ok(IpFamily::Unspecified) => None,
            Ok(IpFamily::Ipv4) => Some(FAMILY_IPV4),
            Ok(IpFamily::Ipv6) => Some(FAMILY_IPV6),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "family {} is not an IpFamily",
                    request.family
                )));
            }
        };
        let max = match request.max_entries {
            0 => DEFAULT_CT_LIST,
            n => n as usize,
        };
        let listing = self
            .manager
            .bpf_conntrack(max, family)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(ListBpfConntrackResponse {
            entries: listing.entries.iter().map(bpf_conntrack_entry).collect(),
            truncated: listing.truncated,
        }))
    }

    async fn list_bpf_load_balancer(
        &self,
        _request: Request<ListBpfLoadBalancerRequest>,
    ) -> Result<Response<ListBpfLoadBalancerResponse>, Status> {
        let Some(pin_dir) = self.info.lb_pin_dir.clone() else {
            return Err(Status::failed_precondition(
                "this agent runs without a load balancer (--socket-lb=false): it has no service maps; start it with --socket-lb=true",
            ));
        };
        // A second handle on the pinned maps: reading needs no lock on the writer's state.
        let listing = tokio::task::spawn_blocking(move || {
            let maps = LbMaps::open_pinned(&pin_dir)?;
            listing::list(&maps)
        })
        .await
        .map_err(|e| Status::internal(format!("listing the load balancer's maps: {e}")))?
        .map_err(|e| Status::internal(format!("listing the load balancer's maps: {e}")))?;
        Ok(Response::new(ListBpfLoadBalancerResponse {
            entries: listing.iter().map(bpf_lb_frontend).collect(),
        }))
    }
}
