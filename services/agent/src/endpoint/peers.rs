//! What the endpoint manager needs from the suite's other services, as four small traits:
//! [`Addresses`] (IPAM), [`Identities`] and [`CompiledPolicies`] (the policy-compiler) and
//! [`EndpointRecords`] (the `Endpoint` resources in the datastore). The manager holds them as
//! [`Peers`] and never names a transport: the agent's binary plugs in the gRPC clients of
//! `clients/`, and the tests a fake that fails on demand, so that every step of the
//! all-or-nothing ADD can be broken and its rollback checked without live services.
//!
//! Payloads are the APIs' own messages (`kino.ipam.v1.Owner`, `kino.agent.v1.Endpoint`, …):
//! the manager already speaks them, and a fake answering in them answers as the real
//! service would. A failure is a [`PeerError`] that keeps the peer's status, so its code
//! reaches the agent's caller (`grpc/status.rs`).

use std::sync::Arc;

use futures::future::BoxFuture;
use kino_api::agent::Endpoint;
use kino_api::ipam::{AllocateRequest, AllocateResponse, GcRequest, Owner};
use kino_api::policy::EndpointPolicy;
use kino_api::types::Labels;

/// A peer service failed or refused a call.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// IPAM refused or is unreachable; its status is kept.
    #[error("IPAM ({target}): {}", status.message())]
    Ipam {
        /// IPAM's address.
        target: String,
        /// Its answer.
        status: tonic::Status,
    },
    /// The datastore refused or is unreachable.
    #[error("datastore ({target}): {}", status.message())]
    Datastore {
        /// The gateway's address.
        target: String,
        /// Its answer.
        status: tonic::Status,
    },
    /// The policy-compiler refused or is unreachable.
    #[error("policy-compiler ({target}): {}", status.message())]
    Policy {
        /// The compiler's address.
        target: String,
        /// Its answer.
        status: tonic::Status,
    },
    /// A concurrent change kept winning (a record kept changing under compare-and-swap);
    /// retry.
    #[error("{0}")]
    Conflict(String),
    /// The peer's answer broke its API (a bug on one side).
    #[error("{0}")]
    Internal(String),
}

/// Endpoint addresses (kino-ipam).
pub trait Addresses: Send + Sync {
    /// Allocates one address of `request.family` to `request.owner` (idempotent per owner:
    /// the same owner gets the same address back).
    fn allocate(
        &self,
        request: AllocateRequest,
    ) -> BoxFuture<'_, Result<AllocateResponse, PeerError>>;
    /// Releases every address `owner` holds (every family); returns those released.
    fn release(&self, owner: Owner) -> BoxFuture<'_, Result<Vec<String>, PeerError>>;
    /// Frees the node's allocations whose owner is not in `request.valid_owners`; returns
    /// the addresses freed.
    fn gc(&self, request: GcRequest) -> BoxFuture<'_, Result<Vec<String>, PeerError>>;
}

/// Security identities (kino-policy-compiler).
pub trait Identities: Send + Sync {
    /// The cluster-wide identity of a (non-empty) label set, allocated if new; never 0.
    fn allocate(&self, labels: Labels) -> BoxFuture<'_, Result<u32, PeerError>>;
    /// Tells the compiler this node no longer uses `identity`.
    fn release(&self, identity: u32) -> BoxFuture<'_, Result<(), PeerError>>;
}

/// Compiled policy (kino-policy-compiler), fetched before the stream covers an identity.
pub trait CompiledPolicies: Send + Sync {
    /// The full compiled policy of `identity` now.
    fn endpoint_policy(&self, identity: u32) -> BoxFuture<'_, Result<EndpointPolicy, PeerError>>;
}

/// This node's `Endpoint` records in the datastore (on no lease: they outlive an absent
/// agent).
pub trait EndpointRecords: Send + Sync {
    /// Writes the endpoint's record: creates it, or replaces a stale one.
    fn publish<'a>(&'a self, endpoint: &'a Endpoint) -> BoxFuture<'a, Result<(), PeerError>>;
    /// Deletes endpoint `id`'s record; a missing one is success.
    fn unpublish(&self, id: u32) -> BoxFuture<'_, Result<(), PeerError>>;
}

/// The services the manager calls.
#[derive(Clone)]
pub struct Peers {
    /// kino-ipam.
    pub addresses: Arc<dyn Addresses>,
    /// kino-policy-compiler's identities.
    pub identities: Arc<dyn Identities>,
    /// kino-policy-compiler's compiled policy.
    pub policies: Arc<dyn CompiledPolicies>,
    /// The datastore's Endpoint records.
    pub records: Arc<dyn EndpointRecords>,
}

impl Peers {
    /// Every peer served by one implementation (a fake of the whole suite).
    pub fn all<T>(peers: Arc<T>) -> Self
    where
        T: Addresses + Identities + CompiledPolicies + EndpointRecords + 'static,
    {
        Peers {
            addresses: peers.clone(),
            identities: peers.clone(),
            policies: peers.clone(),
            records: peers,
        }
    }
}
