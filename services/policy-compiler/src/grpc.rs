//! The `kino.policy.v1` gRPC adapter. Nothing behind it yet: every RPC answers `UNIMPLEMENTED`
//! (never a made-up result) until identities and the compiler land with issue #5.

use std::pin::Pin;

use kino_api::policy::policy_service_server::{PolicyService, PolicyServiceServer};
use kino_api::policy::{
    AllocateIdentityRequest, AllocateIdentityResponse, DeletePolicyRequest, DeletePolicyResponse,
    GetEndpointPolicyRequest, GetEndpointPolicyResponse, GetIdentityRequest, GetIdentityResponse,
    GetPolicyRequest, GetPolicyResponse, ImportPoliciesRequest, ImportPoliciesResponse,
    ListIdentitiesRequest, ListIdentitiesResponse, ListPoliciesRequest, ListPoliciesResponse,
    ReleaseIdentityRequest, ReleaseIdentityResponse, TracePolicyRequest, TracePolicyResponse,
    ValidatePoliciesRequest, ValidatePoliciesResponse, WatchEndpointPolicyRequest,
    WatchEndpointPolicyResponse,
};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::IMPLEMENTATION_ISSUE;

/// Fully-qualified gRPC service name, for health checks.
pub const SERVICE_NAME: &str = kino_api::policy::policy_service_server::SERVICE_NAME;

/// The stream of compiled-policy updates sent to one agent.
pub type EndpointPolicyStream =
    Pin<Box<dyn Stream<Item = Result<WatchEndpointPolicyResponse, Status>> + Send>>;

/// The `kino.policy.v1.PolicyService` implementation.
#[derive(Debug, Clone, Default)]
pub struct PolicyGrpc {}

impl PolicyGrpc {
    /// A service with nothing behind it yet.
    pub fn new() -> Self {
        PolicyGrpc {}
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> PolicyServiceServer<Self> {
        PolicyServiceServer::new(self)
    }
}

/// `UNIMPLEMENTED` naming what is missing and the issue that brings it.
fn not_yet<T>(what: &str) -> Result<Response<T>, Status> {
    Err(Status::unimplemented(format!(
        "{what} is not implemented yet (issue #{IMPLEMENTATION_ISSUE})"
    )))
}

#[tonic::async_trait]
impl PolicyService for PolicyGrpc {
    async fn import_policies(
        &self,
        _request: Request<ImportPoliciesRequest>,
    ) -> Result<Response<ImportPoliciesResponse>, Status> {
        not_yet("policy ImportPolicies (policy import)")
    }

    async fn validate_policies(
        &self,
        _request: Request<ValidatePoliciesRequest>,
    ) -> Result<Response<ValidatePoliciesResponse>, Status> {
        not_yet("policy ValidatePolicies (policy validation)")
    }

    async fn get_policy(
        &self,
        _request: Request<GetPolicyRequest>,
    ) -> Result<Response<GetPolicyResponse>, Status> {
        not_yet("policy GetPolicy (stored policies)")
    }

    async fn list_policies(
        &self,
        _request: Request<ListPoliciesRequest>,
    ) -> Result<Response<ListPoliciesResponse>, Status> {
        not_yet("policy ListPolicies (stored policies)")
    }

    async fn delete_policy(
        &self,
        _request: Request<DeletePolicyRequest>,
    ) -> Result<Response<DeletePolicyResponse>, Status> {
        not_yet("policy DeletePolicy (stored policies)")
    }

    async fn allocate_identity(
        &self,
        _request: Request<AllocateIdentityRequest>,
    ) -> Result<Response<AllocateIdentityResponse>, Status> {
        not_yet("policy AllocateIdentity (security identities)")
    }

    async fn get_identity(
        &self,
        _request: Request<GetIdentityRequest>,
    ) -> Result<Response<GetIdentityResponse>, Status> {
        not_yet("policy GetIdentity (security identities)")
    }

    async fn list_identities(
        &self,
        _request: Request<ListIdentitiesRequest>,
    ) -> Result<Response<ListIdentitiesResponse>, Status> {
        not_yet("policy ListIdentities (security identities)")
    }

    async fn release_identity(
        &self,
        _request: Request<ReleaseIdentityRequest>,
    ) -> Result<Response<ReleaseIdentityResponse>, Status> {
        not_yet("policy ReleaseIdentity (security identities)")
    }

    type WatchEndpointPolicyStream = EndpointPolicyStream;

    async fn watch_endpoint_policy(
        &self,
        _request: Request<WatchEndpointPolicyRequest>,
    ) -> Result<Response<Self::WatchEndpointPolicyStream>, Status> {
        not_yet("policy WatchEndpointPolicy (compiled policy stream)")
    }

    async fn get_endpoint_policy(
        &self,
        _request: Request<GetEndpointPolicyRequest>,
    ) -> Result<Response<GetEndpointPolicyResponse>, Status> {
        not_yet("policy GetEndpointPolicy (compiled policy)")
    }

    async fn trace_policy(
        &self,
        _request: Request<TracePolicyRequest>,
    ) -> Result<Response<TracePolicyResponse>, Status> {
        not_yet("policy TracePolicy (policy trace)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_unimplemented<T>(rpc: &str, result: Result<Response<T>, Status>) {
        let Err(status) = result else {
            panic!("{rpc} must not return a result yet");
        };
        assert_eq!(
            status.code(),
            tonic::Code::Unimplemented,
            "{rpc}: {status:?}"
        );
        assert!(
            status.message().contains(rpc) && status.message().contains("(issue #5)"),
            "{rpc}: the message names the RPC and issue #5: {:?}",
            status.message()
        );
    }

    #[tokio::test]
    async fn every_rpc_is_unimplemented_naming_issue_5() {
        let policy = PolicyGrpc::new();
        assert_unimplemented(
            "ImportPolicies",
            policy
                .import_policies(Request::new(Default::default()))
                .await,
        );
        assert_unimplemented(
            "ValidatePolicies",
            policy
                .validate_policies(Request::new(Default::default()))
                .await,
        );
        assert_unimplemented(
            "GetPolicy",
            policy.get_policy(Request::new(Default::default())).await,
        );
        assert_unimplemented(
            "ListPolicies",
            policy.list_policies(Request::new(Default::default())).await,
        );
        assert_unimplemented(
            "DeletePolicy",
            policy.delete_policy(Request::new(Default::default())).await,
        );
        assert_unimplemented(
            "AllocateIdentity",
            policy
                .allocate_identity(Request::new(Default::default()))
                .await,
        );
        assert_unimplemented(
            "GetIdentity",
            policy.get_identity(Request::new(Default::default())).await,
        );
        assert_unimplemented(
            "ListIdentities",
            policy
                .list_identities(Request::new(Default::default()))
                .await,
        );
        assert_unimplemented(
            "ReleaseIdentity",
            policy
                .release_identity(Request::new(Default::default()))
                .await,
        );
        assert_unimplemented(
            "WatchEndpointPolicy",
            policy
                .watch_endpoint_policy(Request::new(Default::default()))
                .await,
        );
        assert_unimplemented(
            "GetEndpointPolicy",
            policy
                .get_endpoint_policy(Request::new(Default::default()))
                .await,
        );
        assert_unimplemented(
            "TracePolicy",
            policy.trace_policy(Request::new(Default::default())).await,
        );
    }
}
