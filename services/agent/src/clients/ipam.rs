//! [`Addresses`] over kino-ipam's `kino.ipam.v1.IpamService`.

use futures::future::BoxFuture;
use kino_api::ipam::ipam_service_client::IpamServiceClient;
use kino_api::ipam::{
    AllocateRequest, AllocateResponse, GcRequest, Owner, ReleaseRequest, release_request,
};
use kino_api::types::IpFamily;
use kino_service_kit::TracedChannel;

use crate::endpoint::peers::{Addresses, PeerError};

/// IPAM at `target`.
#[derive(Clone)]
pub struct IpamClient {
    client: IpamServiceClient<TracedChannel>,
    target: String,
}

impl IpamClient {
    /// A client of the IPAM service at `target` (its address, for messages).
    pub fn new(client: IpamServiceClient<TracedChannel>, target: impl Into<String>) -> Self {
        IpamClient {
            client,
            target: target.into(),
        }
    }

    fn failed(&self, status: tonic::Status) -> PeerError {
        PeerError::Ipam {
            target: self.target.clone(),
            status,
        }
    }
}

impl Addresses for IpamClient {
    fn allocate(
        &self,
        request: AllocateRequest,
    ) -> BoxFuture<'_, Result<AllocateResponse, PeerError>> {
        Box::pin(async move {
            let response = self.client.clone().allocate(request).await;
            response
                .map(tonic::Response::into_inner)
                .map_err(|s| self.failed(s))
        })
    }

    fn release(&self, owner: Owner) -> BoxFuture<'_, Result<Vec<String>, PeerError>> {
        Box::pin(async move {
            let request = ReleaseRequest {
                target: Some(release_request::Target::Owner(owner)),
                family: IpFamily::Unspecified as i32,
            };
            let response = self.client.clone().release(request).await;
            let released = response.map_err(|s| self.failed(s))?.into_inner().released;
            Ok(released.into_iter().map(|a| a.address).collect())
        })
    }

    fn gc(&self, request: GcRequest) -> BoxFuture<'_, Result<Vec<String>, PeerError>> {
        Box::pin(async move {
            let response = self.client.clone().gc(request).await;
            let freed = response.map_err(|s| self.failed(s))?.into_inner().freed;
            Ok(freed.into_iter().map(|a| a.address).collect())
        })
    }
}
