//! The `kino.ipam.v1` gRPC adapter. Nothing behind it yet: every RPC answers `UNIMPLEMENTED`
//! (never a made-up result) until the allocator lands with issue #3.

use kino_api::ipam::ipam_service_server::{IpamService, IpamServiceServer};
use kino_api::ipam::{
    AllocateNodeCidrsRequest, AllocateNodeCidrsResponse, AllocateRequest, AllocateResponse,
    CreatePoolRequest, CreatePoolResponse, DeletePoolRequest, DeletePoolResponse, GcRequest,
    GcResponse, GetNodeCidrsRequest, GetNodeCidrsResponse, GetPoolRequest, GetPoolResponse,
    ListAllocationsRequest, ListAllocationsResponse, ListPoolsRequest, ListPoolsResponse,
    PoolStatusRequest, PoolStatusResponse, ReleaseNodeCidrsRequest, ReleaseNodeCidrsResponse,
    ReleaseRequest, ReleaseResponse,
};
use tonic::{Request, Response, Status};

use crate::IMPLEMENTATION_ISSUE;

/// Fully-qualified gRPC service name, for health checks.
pub const SERVICE_NAME: &str = kino_api::ipam::ipam_service_server::SERVICE_NAME;

/// The `kino.ipam.v1.IpamService` implementation.
#[derive(Debug, Clone, Default)]
pub struct IpamGrpc {}

impl IpamGrpc {
    /// A service with nothing behind it yet.
    pub fn new() -> Self {
        IpamGrpc {}
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> IpamServiceServer<Self> {
        IpamServiceServer::new(self)
    }
}

/// `UNIMPLEMENTED` naming what is missing and the issue that brings it.
fn not_yet<T>(what: &str) -> Result<Response<T>, Status> {
    Err(Status::unimplemented(format!(
        "{what} is not implemented yet (issue #{IMPLEMENTATION_ISSUE})"
    )))
}

#[tonic::async_trait]
impl IpamService for IpamGrpc {
    async fn create_pool(
        &self,
        _request: Request<CreatePoolRequest>,
    ) -> Result<Response<CreatePoolResponse>, Status> {
        not_yet("IPAM CreatePool (IP pools)")
    }

    async fn get_pool(
        &self,
        _request: Request<GetPoolRequest>,
    ) -> Result<Response<GetPoolResponse>, Status> {
        not_yet("IPAM GetPool (IP pools)")
    }

    async fn list_pools(
        &self,
        _request: Request<ListPoolsRequest>,
    ) -> Result<Response<ListPoolsResponse>, Status> {
        not_yet("IPAM ListPools (IP pools)")
    }

    async fn delete_pool(
        &self,
        _request: Request<DeletePoolRequest>,
    ) -> Result<Response<DeletePoolResponse>, Status> {
        not_yet("IPAM DeletePool (IP pools)")
    }

    async fn allocate_node_cidrs(
        &self,
        _request: Request<AllocateNodeCidrsRequest>,
    ) -> Result<Response<AllocateNodeCidrsResponse>, Status> {
        not_yet("IPAM AllocateNodeCidrs (per-node pod CIDRs)")
    }

    async fn release_node_cidrs(
        &self,
        _request: Request<ReleaseNodeCidrsRequest>,
    ) -> Result<Response<ReleaseNodeCidrsResponse>, Status> {
        not_yet("IPAM ReleaseNodeCidrs (per-node pod CIDRs)")
    }

    async fn get_node_cidrs(
        &self,
        _request: Request<GetNodeCidrsRequest>,
    ) -> Result<Response<GetNodeCidrsResponse>, Status> {
        not_yet("IPAM GetNodeCidrs (per-node pod CIDRs)")
    }

    async fn allocate(
        &self,
        _request: Request<AllocateRequest>,
    ) -> Result<Response<AllocateResponse>, Status> {
        not_yet("IPAM Allocate (endpoint IP allocation)")
    }

    async fn release(
        &self,
        _request: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseResponse>, Status> {
        not_yet("IPAM Release (endpoint IP release)")
    }

    async fn gc(&self, _request: Request<GcRequest>) -> Result<Response<GcResponse>, Status> {
        not_yet("IPAM Gc (leaked allocation GC)")
    }

    async fn list_allocations(
        &self,
        _request: Request<ListAllocationsRequest>,
    ) -> Result<Response<ListAllocationsResponse>, Status> {
        not_yet("IPAM ListAllocations (endpoint IP allocations)")
    }

    async fn pool_status(
        &self,
        _request: Request<PoolStatusRequest>,
    ) -> Result<Response<PoolStatusResponse>, Status> {
        not_yet("IPAM PoolStatus (pool utilisation)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_unimplemented<T: std::fmt::Debug>(rpc: &str, result: Result<Response<T>, Status>) {
        let status = result.expect_err(rpc);
        assert_eq!(
            status.code(),
            tonic::Code::Unimplemented,
            "{rpc}: {status:?}"
        );
        assert!(
            status.message().contains(rpc) && status.message().contains("(issue #3)"),
            "{rpc}: the message names the RPC and issue #3: {:?}",
            status.message()
        );
    }

    #[tokio::test]
    async fn every_rpc_is_unimplemented_naming_issue_3() {
        let ipam = IpamGrpc::new();
        assert_unimplemented(
            "CreatePool",
            ipam.create_pool(Request::new(Default::default())).await,
        );
        assert_unimplemented(
            "GetPool",
            ipam.get_pool(Request::new(Default::default())).await,
        );
        assert_unimplemented(
            "ListPools",
            ipam.list_pools(Request::new(Default::default())).await,
        );
        assert_unimplemented(
            "DeletePool",
            ipam.delete_pool(Request::new(Default::default())).await,
        );
        assert_unimplemented(
            "AllocateNodeCidrs",
            ipam.allocate_node_cidrs(Request::new(Default::default()))
                .await,
        );
        assert_unimplemented(
            "ReleaseNodeCidrs",
            ipam.release_node_cidrs(Request::new(Default::default()))
                .await,
        );
        assert_unimplemented(
            "GetNodeCidrs",
            ipam.get_node_cidrs(Request::new(Default::default())).await,
        );
        assert_unimplemented(
            "Allocate",
            ipam.allocate(Request::new(Default::default())).await,
        );
        assert_unimplemented(
            "Release",
            ipam.release(Request::new(Default::default())).await,
        );
        assert_unimplemented("Gc", ipam.gc(Request::new(Default::default())).await);
        assert_unimplemented(
            "ListAllocations",
            ipam.list_allocations(Request::new(Default::default()))
                .await,
        );
        assert_unimplemented(
            "PoolStatus",
            ipam.pool_status(Request::new(Default::default())).await,
        );
    }
}
