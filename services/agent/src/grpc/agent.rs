//! The `kino.agent.v1` gRPC adapter (the local API on the agent's unix socket). Nothing behind
//! it yet: every RPC answers `UNIMPLEMENTED` (never a made-up result) until the endpoint
//! manager and datapath land with issue #4 and identities with issue #5.

use kino_api::agent::agent_service_server::{AgentService, AgentServiceServer};
use kino_api::agent::{
    CheckEndpointRequest, CheckEndpointResponse, CreateEndpointRequest, CreateEndpointResponse,
    DeleteEndpointRequest, DeleteEndpointResponse, GcRequest, GcResponse, GetEndpointRequest,
    GetEndpointResponse, ListBpfConntrackRequest, ListBpfConntrackResponse,
    ListBpfEndpointsRequest, ListBpfEndpointsResponse, ListBpfIpcacheRequest,
    ListBpfIpcacheResponse, ListBpfPolicyRequest, ListBpfPolicyResponse, ListEndpointsRequest,
    ListEndpointsResponse, StatusRequest, StatusResponse, UpdateEndpointLabelsRequest,
    UpdateEndpointLabelsResponse,
};
use tonic::{Request, Response, Status};

use super::not_yet;
use crate::{DATAPATH_ISSUE, IDENTITY_ISSUE};

/// Fully-qualified gRPC service name, for health checks.
pub const SERVICE_NAME: &str = kino_api::agent::agent_service_server::SERVICE_NAME;

/// The `kino.agent.v1.AgentService` implementation.
#[derive(Debug, Clone, Default)]
pub struct AgentGrpc {}

impl AgentGrpc {
    /// A service with nothing behind it yet.
    pub fn new() -> Self {
        AgentGrpc {}
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> AgentServiceServer<Self> {
        AgentServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl AgentService for AgentGrpc {
    async fn create_endpoint(
        &self,
        _request: Request<CreateEndpointRequest>,
    ) -> Result<Response<CreateEndpointResponse>, Status> {
        not_yet("agent CreateEndpoint (CNI ADD: endpoints)", DATAPATH_ISSUE)
    }

    async fn delete_endpoint(
        &self,
        _request: Request<DeleteEndpointRequest>,
    ) -> Result<Response<DeleteEndpointResponse>, Status> {
        not_yet("agent DeleteEndpoint (CNI DEL: endpoints)", DATAPATH_ISSUE)
    }

    async fn check_endpoint(
        &self,
        _request: Request<CheckEndpointRequest>,
    ) -> Result<Response<CheckEndpointResponse>, Status> {
        not_yet("agent CheckEndpoint (CNI CHECK: endpoints)", DATAPATH_ISSUE)
    }

    async fn list_endpoints(
        &self,
        _request: Request<ListEndpointsRequest>,
    ) -> Result<Response<ListEndpointsResponse>, Status> {
        not_yet("agent ListEndpoints (endpoints)", DATAPATH_ISSUE)
    }

    async fn get_endpoint(
        &self,
        _request: Request<GetEndpointRequest>,
    ) -> Result<Response<GetEndpointResponse>, Status> {
        not_yet("agent GetEndpoint (endpoints)", DATAPATH_ISSUE)
    }

    async fn update_endpoint_labels(
        &self,
        _request: Request<UpdateEndpointLabelsRequest>,
    ) -> Result<Response<UpdateEndpointLabelsResponse>, Status> {
        not_yet(
            "agent UpdateEndpointLabels (endpoint identities)",
            IDENTITY_ISSUE,
        )
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        not_yet("agent Status (datapath status)", DATAPATH_ISSUE)
    }

    async fn gc(&self, _request: Request<GcRequest>) -> Result<Response<GcResponse>, Status> {
        not_yet("agent Gc (CNI GC: endpoints)", DATAPATH_ISSUE)
    }

    async fn list_bpf_endpoints(
        &self,
        _request: Request<ListBpfEndpointsRequest>,
    ) -> Result<Response<ListBpfEndpointsResponse>, Status> {
        not_yet("agent ListBpfEndpoints (BPF maps)", DATAPATH_ISSUE)
    }

    async fn list_bpf_ipcache(
        &self,
        _request: Request<ListBpfIpcacheRequest>,
    ) -> Result<Response<ListBpfIpcacheResponse>, Status> {
        not_yet("agent ListBpfIpcache (BPF maps)", DATAPATH_ISSUE)
    }

    async fn list_bpf_policy(
        &self,
        _request: Request<ListBpfPolicyRequest>,
    ) -> Result<Response<ListBpfPolicyResponse>, Status> {
        not_yet("agent ListBpfPolicy (BPF maps)", DATAPATH_ISSUE)
    }

    async fn list_bpf_conntrack(
        &self,
        _request: Request<ListBpfConntrackRequest>,
    ) -> Result<Response<ListBpfConntrackResponse>, Status> {
        not_yet("agent ListBpfConntrack (BPF maps)", DATAPATH_ISSUE)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{assert_unimplemented, request};
    use super::*;

    #[tokio::test]
    async fn every_rpc_is_unimplemented_naming_its_issue() {
        let agent = AgentGrpc::new();
        assert_unimplemented("CreateEndpoint", 4, agent.create_endpoint(request()).await);
        assert_unimplemented("DeleteEndpoint", 4, agent.delete_endpoint(request()).await);
        assert_unimplemented("CheckEndpoint", 4, agent.check_endpoint(request()).await);
        assert_unimplemented("ListEndpoints", 4, agent.list_endpoints(request()).await);
        assert_unimplemented("GetEndpoint", 4, agent.get_endpoint(request()).await);
        assert_unimplemented(
            "UpdateEndpointLabels",
            5,
            agent.update_endpoint_labels(request()).await,
        );
        assert_unimplemented("Status", 4, agent.status(request()).await);
        assert_unimplemented("Gc", 4, agent.gc(request()).await);
        assert_unimplemented(
            "ListBpfEndpoints",
            4,
            agent.list_bpf_endpoints(request()).await,
        );
        assert_unimplemented("ListBpfIpcache", 4, agent.list_bpf_ipcache(request()).await);
        assert_unimplemented("ListBpfPolicy", 4, agent.list_bpf_policy(request()).await);
        assert_unimplemented(
            "ListBpfConntrack",
            4,
            agent.list_bpf_conntrack(request()).await,
        );
    }
}
