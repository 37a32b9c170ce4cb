//! The `kino.flow.v1` gRPC adapter (the flow observer). Nothing behind it yet: every RPC
//! answers `UNIMPLEMENTED` (never a made-up result) until flows land with issue #6.

use std::pin::Pin;

use kino_api::flow::flow_service_server::{FlowService, FlowServiceServer};
use kino_api::flow::{
    GetFlowsRequest, GetFlowsResponse, ServerStatusRequest, ServerStatusResponse,
};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::not_yet;
use crate::FLOWS_ISSUE;

/// Fully-qualified gRPC service name, for health checks.
pub const SERVICE_NAME: &str = kino_api::flow::flow_service_server::SERVICE_NAME;

/// The stream of flows sent to one `GetFlows` client.
pub type FlowStream = Pin<Box<dyn Stream<Item = Result<GetFlowsResponse, Status>> + Send>>;

/// The `kino.flow.v1.FlowService` implementation.
#[derive(Debug, Clone, Default)]
pub struct FlowGrpc {}

impl FlowGrpc {
    /// A service with nothing behind it yet.
    pub fn new() -> Self {
        FlowGrpc {}
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> FlowServiceServer<Self> {
        FlowServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl FlowService for FlowGrpc {
    type GetFlowsStream = FlowStream;

    async fn get_flows(
        &self,
        _request: Request<GetFlowsRequest>,
    ) -> Result<Response<Self::GetFlowsStream>, Status> {
        not_yet("flow observer GetFlows (flows)", FLOWS_ISSUE)
    }

    async fn server_status(
        &self,
        _request: Request<ServerStatusRequest>,
    ) -> Result<Response<ServerStatusResponse>, Status> {
        not_yet("flow observer ServerStatus (flows)", FLOWS_ISSUE)
    }
}

#[cfg(test)]
mod tests {
    use super::super::assert_unimplemented;
    use super::*;

    #[tokio::test]
    async fn every_rpc_is_unimplemented_naming_issue_6() {
        let flows = FlowGrpc::new();
        assert_unimplemented(
            "GetFlows",
            6,
            flows.get_flows(Request::new(Default::default())).await,
        );
        assert_unimplemented(
            "ServerStatus",
            6,
            flows.server_status(Request::new(Default::default())).await,
        );
    }
}
