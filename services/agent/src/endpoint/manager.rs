//! The endpoint manager: CNI ADD/DEL/CHECK/GC as the agent API sees them. An endpoint is an
//! IP from IPAM, a veth pair with the datapath attached (`super::create_endpoint`), an
//! `Endpoint` resource in the datastore (on no lease: it outlives its agent's absence) and a
//! local checkpoint (so an agent restart adopts it, re-claiming its addresses first). Every
//! step of a creation is undone if a later one fails; a deletion keeps going past errors and
//! reports all of them.
//!
//! This file holds the manager's types, its construction and the state its operations share
//! (the kernel handles and the endpoint table behind one lock, the peers of
//! [`super::peers`], the checkpoints and the pending releases). Each operation has a file of
//! its own, as ipam's `service/` does: `create` (ADD and its rollback), `delete` (DEL,
//! GC, orphans), `check` (CHECK), `restore` and `ownership` (adoption at start-up,
//! re-claiming addresses), `policy` (the policy stream applied, realization), `labels`
//! (label changes at run time), `sockets` (pods' network namespaces for the socket load
//! balancer) and `inspect` (list/get and the BPF map dumps). None of
//! them names the transport: the gRPC layer turns their errors into statuses
//! (`grpc/status.rs`).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::Arc;

use kino_api::agent::{Attachment, Endpoint};
use kino_api::ipam::Owner;
use kino_api::types::{Label, Labels, PodRef};
use tokio::sync::Mutex;

use super::peers::{PeerError, Peers};
use super::release::PendingReleases;
use super::state::{StateDir, StateError};
use super::{EndpointError, TeardownError};
use crate::datapath::{
    Datapath, Enforcement, EntryChange, IpPrefix, PolicyKey, PolicyUpdate, Verdict,
};
use crate::netlink::Netlink;

mod check;
mod create;
mod delete;
mod inspect;
mod labels;
mod ownership;
mod policy;
mod restore;
mod sockets;
mod tunnel;

pub use create::cni_response;
pub use inspect::BpfPolicy;
pub use labels::{LabelsUpdated, edit_labels};
pub use policy::{Realization, RealizedEndpoint};
pub use tunnel::TunnelError;

/// Largest endpoint id handed out (ids are per node).
pub const MAX_ENDPOINT_ID: u32 = 65_535;
/// MTU of a veth when none is set (the kernel's default).
pub const DEFAULT_MTU: u32 = 1500;

/// Why an endpoint operation failed; each maps onto one gRPC code (and so one CNI code).
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The request is invalid; nothing was changed.
    #[error("{0}")]
    Invalid(String),
    /// No such endpoint.
    #[error("{0}")]
    NotFound(String),
    /// The endpoint is not as it should be (CNI CHECK).
    #[error("{0}")]
    CheckFailed(String),
    /// A peer service (IPAM, the datastore, the policy-compiler) failed or refused.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// The kernel side failed.
    #[error(transparent)]
    Kernel(Box<EndpointError>),
    /// The kernel teardown of an endpoint met errors (every step was tried).
    #[error(transparent)]
    Teardown(Box<TeardownError>),
    /// The local checkpoint directory (`--state-dir`) could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// The node ran out of something (endpoint ids).
    #[error("{0}")]
    Exhausted(String),
    /// Some steps of a deletion failed; every step was tried and the deletion is to be
    /// retried (CNI DEL again).
    #[error("deleting {what} met errors (retry the delete): {}", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Incomplete {
        /// The endpoint or attachment.
        what: String,
        /// Every failure met.
        errors: Vec<ManagerError>,
    },
    /// A bug: a peer's answer broke its API, or an invariant of the agent's own state.
    #[error("{0}")]
    Internal(String),
}

/// A kernel (netlink, BPF map, program) failure as a manager error.
fn kernel(error: impl Into<EndpointError>) -> ManagerError {
    ManagerError::Kernel(Box::new(error.into()))
}

impl From<EndpointError> for ManagerError {
    fn from(e: EndpointError) -> Self {
        ManagerError::Kernel(Box::new(e))
    }
}

/// The node's network as IPAM gave it.
#[derive(Clone, Debug)]
pub struct NodeNetwork {
    /// Gateway of the node's IPv4 block (held by `kino_host`).
    pub gateway_v4: Ipv4Addr,
    /// Gateway of the node's IPv6 block (also on `kino_host`) when the pool is dual-stack
    /// and the node has IPv6: endpoints then get an IPv6 address too.
    pub gateway_v6: Option<Ipv6Addr>,
    /// Every pod CIDR of the node (all families).
    pub pod_cidrs: Vec<String>,
}

/// Settings of the manager.
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    /// This node's name.
    pub node: String,
    /// IPAM pool used when a request names none.
    pub pool: String,
    /// MTU of endpoint veths when the CNI config sets none (0 keeps the kernel's
    /// [`DEFAULT_MTU`]).
    pub mtu: u32,
}

/// The per-node endpoint manager.
pub struct EndpointManager {
    config: ManagerConfig,
    network: NodeNetwork,
    peers: Peers,
    state: StateDir,
    /// Releases of failed ADDs that could not reach IPAM, retried in the background.
    releases: Arc<PendingReleases>,
    inner: Mutex<Inner>,
    /// The socket load balancer's map of this node's network namespaces, once the agent
    /// turned socket LB on ([`EndpointManager::scope_sockets`]).
    lb_netns: std::sync::Mutex<Option<crate::datapath::lb::NetnsMap>>,
}

/// What changes together under the lock: the kernel handles and the endpoint table.
struct Inner {
    netlink: Netlink,
    datapath: Datapath,
    endpoints: BTreeMap<u32, Endpoint>,
    /// The compiler's policy per identity as last streamed (applied to endpoints created
    /// later with that identity).
    identity_policies: BTreeMap<u32, IdentityPolicy>,
    /// ipcache prefixes the policy stream put in the map.
    streamed_prefixes: std::collections::BTreeSet<IpPrefix>,
    /// The last synced policy revision applied (0 before the first).
    realized_revision: i64,
    /// A snapshot (reset) is being received: identities it does not name are cleared at
    /// its synced message.
    in_snapshot: bool,
    /// During a snapshot, the streamed prefixes it has not named yet: they keep their old
    /// entries (a CIDR peer does not turn into world mid-snapshot) and those still here at
    /// its synced message are removed.
    unconfirmed_prefixes: std::collections::BTreeSet<IpPrefix>,
}

/// One identity's compiled policy as the stream delivered it (or as fetched at an ADD or a
/// label change, before the stream covers the identity).
#[derive(Clone, Debug, Default)]
struct IdentityPolicy {
    enforcement: Enforcement,
    entries: BTreeMap<PolicyKey, Verdict>,
    revision: i64,
    /// The stream delivered it: it follows every synced step from then on. A fetched
    /// policy is only known to be current at its own revision.
    streamed: bool,
}

impl IdentityPolicy {
    fn update(&self) -> PolicyUpdate {
        PolicyUpdate {
            enforcement: self.enforcement,
            revision: self.revision,
            entries: EntryChange::Replace(self.entries.clone()),
        }
    }
}

impl Inner {
    fn by_attachment(&self, container_id: &str, ifname: &str) -> Option<&Endpoint> {
        self.endpoints.values().find(|e| {
            e.container_id == container_id
                && e.networking
                    .as_ref()
                    .is_some_and(|n| n.container_interface_name == ifname)
        })
    }

    fn next_id(&self) -> Option<u32> {
        (1..=MAX_ENDPOINT_ID).find(|id| !self.endpoints.contains_key(id))
    }
}

fn ipv6_of(endpoint: &Endpoint) -> Option<Ipv6Addr> {
    endpoint
        .networking
        .as_ref()
        .and_then(|n| n.addressing.as_ref())
        .and_then(|a| a.ipv6.parse().ok())
}

/// Every address of an endpoint (IPv4, then IPv6 if it has one).
fn addresses_of(endpoint: &Endpoint) -> Vec<IpAddr> {
    let mut addresses: Vec<IpAddr> = ipv4_of(endpoint).map(IpAddr::from).into_iter().collect();
    addresses.extend(ipv6_of(endpoint).map(IpAddr::from));
    addresses
}

fn ipv4_of(endpoint: &Endpoint) -> Option<Ipv4Addr> {
    endpoint
        .networking
        .as_ref()
        .and_then(|n| n.addressing.as_ref())
        .and_then(|a| a.ipv4.parse().ok())
}

fn lxc_of(endpoint: &Endpoint) -> String {
    endpoint
        .networking
        .as_ref()
        .map(|n| n.interface_name.clone())
        .unwrap_or_default()
}

fn owner_of(endpoint: &Endpoint) -> Owner {
    let pod = endpoint.pod.clone().unwrap_or_default();
    Owner {
        container_id: endpoint.container_id.clone(),
        ifname: endpoint
            .networking
            .as_ref()
            .map(|n| n.container_interface_name.clone())
            .unwrap_or_default(),
        pod_namespace: pod.namespace,
        pod_name: pod.name,
    }
}

/// The endpoint's security labels: those given (source "container" unless set) plus
/// `pod=<name>` and `namespace=<namespace>`, sorted by source then key.
pub fn endpoint_labels(given: Option<&Labels>, pod: Option<&PodRef>) -> Labels {
    let mut labels: BTreeMap<(String, String), String> = BTreeMap::new();
    for label in given.map(|l| l.labels.as_slice()).unwrap_or_default() {
        let source = if label.source.is_empty() {
            "container".to_owned()
        } else {
            label.source.clone()
        };
        labels.insert((source, label.key.clone()), label.value.clone());
    }
    if let Some(pod) = pod.filter(|p| !p.name.is_empty()) {
        labels.insert(("container".into(), "pod".into()), pod.name.clone());
        let namespace = if pod.namespace.is_empty() {
            "default"
        } else {
            &pod.namespace
        };
        labels.insert(
            ("container".into(), "namespace".into()),
            namespace.to_owned(),
        );
    }
    Labels {
        labels: labels
            .into_iter()
            .map(|((source, key), value)| Label { key, value, source })
            .collect(),
    }
}

fn now() -> prost_types::Timestamp {
    prost_types::Timestamp::from(std::time::SystemTime::now())
}

impl EndpointManager {
    /// A manager over a loaded datapath; call [`EndpointManager::restore`] before serving.
    pub fn new(
        config: ManagerConfig,
        network: NodeNetwork,
        peers: Peers,
        state_dir: &Path,
        netlink: Netlink,
        datapath: Datapath,
    ) -> Result<Self, ManagerError> {
        let state = StateDir::open(state_dir)?;
        let releases = PendingReleases::start(state_dir, peers.addresses.clone())?;
        Ok(EndpointManager {
            config,
            network,
            peers,
            state,
            releases,
            inner: Mutex::new(Inner {
                netlink,
                datapath,
                endpoints: BTreeMap::new(),
                identity_policies: BTreeMap::new(),
                streamed_prefixes: Default::default(),
                realized_revision: 0,
                in_snapshot: false,
                unconfirmed_prefixes: Default::default(),
            }),
            lb_netns: std::sync::Mutex::new(None),
        })
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.config.node
    }

    /// The node's network.
    pub fn network(&self) -> &NodeNetwork {
        &self.network
    }

    /// Writes the endpoint's datastore record (create, or replace a stale one).
    async fn publish(&self, endpoint: &Endpoint) -> Result<(), ManagerError> {
        Ok(self.peers.records.publish(endpoint).await?)
    }

    /// Deletes the endpoint's datastore record (a missing one is fine).
    async fn unpublish(&self, id: u32) -> Result<(), ManagerError> {
        Ok(self.peers.records.unpublish(id).await?)
    }

    /// Releases an owner's addresses on rollback; one IPAM cannot take now is retried in
    /// the background until it can ([`PendingReleases`]).
    async fn release(&self, owner: &Owner) {
        if let Err(e) = self.release_owner(owner).await {
            tracing::warn!(container = %owner.container_id, error = %e, "cannot release the address now; retrying in the background");
            self.releases.add(owner).await;
        }
    }

    /// The owners whose address release is pending (IPAM was unreachable).
    pub async fn pending_releases(&self) -> Vec<Owner> {
        self.releases.owners().await
    }

    async fn release_owner(&self, owner: &Owner) -> Result<(), ManagerError> {
        self.peers.addresses.release(owner.clone()).await?;
        Ok(())
    }
}

/// An attachment key, for messages.
pub fn attachment_of(endpoint: &Endpoint) -> Attachment {
    let owner = owner_of(endpoint);
    Attachment {
        container_id: owner.container_id,
        ifname: owner.ifname,
    }
}

#[cfg(test)]
mod tests;
