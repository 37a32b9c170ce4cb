//! [`Identities`] and [`CompiledPolicies`] over kino-policy-compiler's
//! `kino.policy.v1.PolicyService`.

use futures::future::BoxFuture;
use kino_api::policy::policy_service_client::PolicyServiceClient;
use kino_api::policy::{
    AllocateIdentityRequest, EndpointPolicy, GetEndpointPolicyRequest, ReleaseIdentityRequest,
};
use kino_api::types::Labels;
use kino_service_kit::TracedChannel;

use crate::endpoint::peers::{CompiledPolicies, Identities, PeerError};

/// The policy-compiler at `target`.
#[derive(Clone)]
pub struct PolicyCompilerClient {
    client: PolicyServiceClient<TracedChannel>,
    target: String,
}

impl PolicyCompilerClient {
    /// A client of the policy-compiler at `target` (its address, for messages).
    pub fn new(client: PolicyServiceClient<TracedChannel>, target: impl Into<String>) -> Self {
        PolicyCompilerClient {
            client,
            target: target.into(),
        }
    }

    fn failed(&self, status: tonic::Status) -> PeerError {
        PeerError::Policy {
            target: self.target.clone(),
            status,
        }
    }
}

impl Identities for PolicyCompilerClient {
    fn allocate(&self, labels: Labels) -> BoxFuture<'_, Result<u32, PeerError>> {
        Box::pin(async move {
            let request = AllocateIdentityRequest {
                labels: Some(labels),
            };
            let response = self.client.clone().allocate_identity(request).await;
            response
                .map_err(|s| self.failed(s))?
                .into_inner()
                .identity
                .map(|i| i.id)
                .filter(|id| *id != 0)
                .ok_or_else(|| {
                    PeerError::Internal("the policy-compiler returned no identity".into())
                })
        })
    }

    fn release(&self, identity: u32) -> BoxFuture<'_, Result<(), PeerError>> {
        Box::pin(async move {
            let request = ReleaseIdentityRequest { id: identity };
            let response = self.client.clone().release_identity(request).await;
            response.map(|_| ()).map_err(|s| self.failed(s))
        })
    }
}

impl CompiledPolicies for PolicyCompilerClient {
    fn endpoint_policy(&self, identity: u32) -> BoxFuture<'_, Result<EndpointPolicy, PeerError>> {
        Box::pin(async move {
            let request = GetEndpointPolicyRequest { identity };
            let response = self.client.clone().get_endpoint_policy(request).await;
            response
                .map_err(|s| self.failed(s))?
                .into_inner()
                .policy
                .ok_or_else(|| {
                    PeerError::Internal(format!(
                        "the policy-compiler returned no policy for identity {identity}"
                    ))
                })
        })
    }
}
