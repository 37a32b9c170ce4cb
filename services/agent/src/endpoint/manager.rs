//! The endpoint manager: CNI ADD/DEL/CHECK/GC as the agent API sees them. An endpoint is an
//! IP from IPAM, a veth pair with the datapath attached (`super::create_endpoint`), an
//! `Endpoint` resource in the datastore (on no lease: it outlives its agent's absence) and a
//! local checkpoint (so an agent restart adopts it, re-claiming its addresses first). Every step of a creation is undone if a later one fails; a
//! deletion keeps going past errors and reports all of them.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kino_api::agent::{
    Attachment, CheckEndpointRequest, CniInterface, CniIpConfig, CniRoute, CreateEndpointRequest,
    CreateEndpointResponse, DropCounter, Endpoint, EndpointAddressing, EndpointCounters,
    EndpointNetworking, EndpointPolicyStatus, EndpointState, GcRequest, GcResponse,
};
use kino_api::ipam::{AllocateRequest, GcRequest as IpamGcRequest, Owner};
use kino_api::policy::WatchEndpointPolicyResponse;
use kino_api::types::{
    Direction, DropReason as PbDropReason, IpFamily, Label, Labels, PodRef, PolicyEnforcement,
    PolicyEnforcementMode,
};
use tokio::sync::Mutex;

use super::peers::{PeerError, Peers};
use super::veth::validate_mtu;
use super::{
    EndpointError, EndpointSpec, TeardownError, VethRequest, create_endpoint, delete_endpoint,
    delete_endpoint_with, list_lxcs, lxc_name,
};
use crate::datapath::ipcache::IDENTITY_HOST;
use crate::datapath::{
    CtListing, Datapath, DropReason, EndpointEntry, Enforcement, EntryChange, IpPrefix,
    IpcacheEntry, PolicyEntryInfo, PolicyKey, PolicyUpdate, Verdict,
};
use crate::endpoint::compiled_policy::{ipcache_entry_from_proto, policy_update_from_proto};
use crate::endpoint::release::PendingReleases;
use crate::endpoint::state::{StateDir, StateError};
use crate::netlink::{MacAddr, Netlink};

mod labels;
mod ownership;

pub use labels::{LabelsUpdated, edit_labels};

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

/// Maps the datapath's drop counters onto the API's drop reasons.
fn drop_reason(reason: DropReason) -> PbDropReason {
    match reason {
        DropReason::UnknownEndpoint => PbDropReason::Unspecified,
        DropReason::InvalidPacket => PbDropReason::InvalidPacket,
        DropReason::SpoofedSource => PbDropReason::SpoofedSource,
        DropReason::UnsupportedL3 => PbDropReason::UnsupportedL3Protocol,
        DropReason::PolicyDenied => PbDropReason::PolicyDenied,
        DropReason::CtInvalid => PbDropReason::CtUnknownState,
        DropReason::PolicyDeniedIngress => PbDropReason::PolicyDenied,
    }
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

    /// The MTU of a new endpoint's veth: the CNI config's `mtu` when set (`requested`), else
    /// the agent's default; `None` keeps the kernel's. Checked against the pod's families.
    fn endpoint_mtu(&self, requested: u32) -> Result<Option<u32>, ManagerError> {
        let (mtu, source) = match (requested, self.config.mtu) {
            (0, 0) => return Ok(None),
            (0, default) => (default, "the agent's --endpoint-mtu"),
            (requested, _) => (requested, "\"mtu\" of the CNI network config"),
        };
        validate_mtu(mtu, self.network.gateway_v6.is_some())
            .map_err(|e| ManagerError::Invalid(format!("invalid {source}: {e}")))?;
        Ok(Some(mtu))
    }

    /// CNI ADD: IP from IPAM, veth + datapath, datastore record, checkpoint — all or nothing.
    /// A retry of an ADD that succeeded returns the same endpoint.
    pub async fn create(
        &self,
        request: CreateEndpointRequest,
    ) -> Result<CreateEndpointResponse, ManagerError> {
        for (field, value) in [
            ("container_id", &request.container_id),
            ("netns_path", &request.netns_path),
            ("ifname", &request.ifname),
        ] {
            if value.is_empty() {
                return Err(ManagerError::Invalid(format!("{field} is required")));
            }
        }
        if !Path::new(&request.netns_path).exists() {
            return Err(ManagerError::Invalid(format!(
                "network namespace {} does not exist (CNI_NETNS)",
                kino_api::quote::quote(&request.netns_path)
            )));
        }
        // A path that is not a network namespace is the request's fault: said here, before
        // anything is allocated, rather than by the kernel in the middle of the veth.
        crate::netns::open_netns(Path::new(&request.netns_path)).map_err(kernel)?;
        let requested_mac = match request.requested_mac.as_str() {
            "" => None,
            mac => Some(mac.parse::<MacAddr>().map_err(|e| {
                ManagerError::Invalid(format!(
                    "requested MAC {} is invalid: {e}",
                    kino_api::quote::quote(mac)
                ))
            })?),
        };
        // Before anything is allocated: a bad MTU leaves nothing to undo.
        self.endpoint_mtu(request.mtu)?;
        // This ADD owns whatever IPAM holds for the attachment from now on (and gives it
        // back if it fails).
        let inherited = self
            .releases
            .cancel(&request.container_id, &request.ifname)
            .await;
        if let Some(existing) = self.existing(&request).await? {
            return Ok(self.response(&existing));
        }
        let pod = request
            .pod
            .clone()
            .filter(|p| !p.name.is_empty())
            .map(|p| PodRef {
                namespace: if p.namespace.is_empty() {
                    "default".into()
                } else {
                    p.namespace
                },
                name: p.name,
            });
        let owner = Owner {
            container_id: request.container_id.clone(),
            ifname: request.ifname.clone(),
            pod_namespace: pod
                .as_ref()
                .map(|p| p.namespace.clone())
                .unwrap_or_default(),
            pod_name: pod.as_ref().map(|p| p.name.clone()).unwrap_or_default(),
        };
        let pool = if request.ipam_pool.is_empty() {
            self.config.pool.clone()
        } else {
            request.ipam_pool.clone()
        };
        // The security identity (and its policy) and the address do not depend on each
        // other: both are asked for at once, which takes one of the two round trips off
        // every ADD. Without any label (no pod, no CNI labels) no policy can select the
        // endpoint: it keeps identity 0 (unknown).
        let labels = endpoint_labels(request.labels.as_ref(), pod.as_ref());
        let identity = async {
            let identity = self.identity_of(&labels).await?;
            if identity != 0 {
                tracing::info!(container = %request.container_id, identity, "identity allocated");
            }
            // Its policy before the endpoint exists: it starts enforced as compiled.
            self.prefetch_policy(identity).await?;
            Ok::<_, ManagerError>(identity)
        };
        // One address per family of the node (claims are per family: the two allocations
        // do not contend).
        let allocate = |family: IpFamily, requested: &str| {
            let request = AllocateRequest {
                node: self.config.node.clone(),
                pool: pool.clone(),
                family: family as i32,
                owner: Some(owner.clone()),
                requested_address: requested.to_owned(),
            };
            async move {
                self.peers
                    .addresses
                    .allocate(request)
                    .await?
                    .allocation
                    .ok_or_else(|| {
                        ManagerError::Internal(format!(
                            "IPAM returned no {} allocation",
                            family.as_str_name()
                        ))
                    })
            }
        };
        let address_v4 = allocate(IpFamily::Ipv4, &request.requested_ipv4);
        // Dual-stack: an IPv6 address too.
        let address_v6 = async {
            match self.network.gateway_v6 {
                None => Ok(None),
                Some(_) => allocate(IpFamily::Ipv6, &request.requested_ipv6)
                    .await
                    .map(Some),
            }
        };
        let (identity, allocation, allocation_v6) = tokio::join!(identity, address_v4, address_v6);
        let (identity, allocation, allocation_v6) = match (identity, allocation, allocation_v6) {
            (Ok(identity), Ok(allocation), Ok(allocation_v6)) => {
                (identity, allocation, allocation_v6)
            }
            (identity, allocation, allocation_v6) => {
                // Release what was allocated (both families) and report the first failure.
                if inherited || allocation.is_ok() || matches!(allocation_v6, Ok(Some(_))) {
                    self.release(&owner).await;
                }
                let error = [identity.err(), allocation.err(), allocation_v6.err()]
                    .into_iter()
                    .flatten()
                    .next();
                return Err(error.unwrap_or_else(|| {
                    ManagerError::Internal("allocation failed without an error".into())
                }));
            }
        };
        tracing::info!(container = %request.container_id, ip = %allocation.address, "address allocated");
        if let Some(allocation) = &allocation_v6 {
            tracing::info!(container = %request.container_id, ip = %allocation.address, "IPv6 address allocated");
        }
        match self
            .create_with_address(
                &request,
                pod,
                (labels, identity),
                &pool,
                (&allocation, allocation_v6.as_ref()),
                requested_mac,
            )
            .await
        {
            Ok(endpoint) => Ok(self.response(&endpoint)),
            Err(e) => {
                self.release(&owner).await;
                Err(e)
            }
        }
    }

    /// An endpoint that already exists for this attachment (a retried ADD).
    async fn existing(
        &self,
        request: &CreateEndpointRequest,
    ) -> Result<Option<Endpoint>, ManagerError> {
        let inner = self.inner.lock().await;
        let Some(endpoint) = inner.by_attachment(&request.container_id, &request.ifname) else {
            return Ok(None);
        };
        let netns = endpoint
            .networking
            .as_ref()
            .map(|n| n.netns_path.as_str())
            .unwrap_or_default();
        if netns != request.netns_path {
            return Err(ManagerError::Invalid(format!(
                "container {} already has endpoint {} on {} in network namespace {netns}; delete it (CNI DEL) first",
                request.container_id, endpoint.id, request.ifname
            )));
        }
        Ok(Some(endpoint.clone()))
    }

    async fn create_with_address(
        &self,
        request: &CreateEndpointRequest,
        pod: Option<PodRef>,
        (labels, identity): (Labels, u32),
        pool: &str,
        (allocation, allocation_v6): (
            &kino_api::ipam::IpAllocation,
            Option<&kino_api::ipam::IpAllocation>,
        ),
        mac: Option<MacAddr>,
    ) -> Result<Endpoint, ManagerError> {
        let ipv4: Ipv4Addr = allocation.address.parse().map_err(|e| {
            ManagerError::Internal(format!(
                "IPAM gave an invalid address {:?}: {e}",
                allocation.address
            ))
        })?;
        let gateway_v4: Ipv4Addr = allocation
            .gateway
            .parse()
            .unwrap_or(self.network.gateway_v4);
        let (ipv6, gateway_v6) = match (allocation_v6, self.network.gateway_v6) {
            (Some(allocation), Some(node_gateway)) => {
                let ipv6: Ipv6Addr = allocation.address.parse().map_err(|e| {
                    ManagerError::Internal(format!(
                        "IPAM gave an invalid IPv6 address {:?}: {e}",
                        allocation.address
                    ))
                })?;
                (
                    Some(ipv6),
                    Some(allocation.gateway.parse().unwrap_or(node_gateway)),
                )
            }
            _ => (None, None),
        };
        let mut inner = self.inner.lock().await;
        if inner
            .by_attachment(&request.container_id, &request.ifname)
            .is_some()
        {
            return Err(ManagerError::Invalid(format!(
                "container {} interface {} is being added concurrently; retry",
                request.container_id, request.ifname
            )));
        }
        let id = inner.next_id().ok_or_else(|| {
            ManagerError::Exhausted(format!(
                "all {MAX_ENDPOINT_ID} endpoint ids of node {} are in use",
                self.config.node
            ))
        })?;
        let spec = EndpointSpec {
            id,
            identity,
            veth: VethRequest {
                container_id: request.container_id.clone(),
                ifname: request.ifname.clone(),
                netns: PathBuf::from(&request.netns_path),
                ipv4,
                ipv6,
                gateway_v4,
                gateway_v6,
                mac,
                mtu: self.endpoint_mtu(request.mtu)?,
            },
        };
        let Inner {
            netlink,
            datapath,
            identity_policies,
            ..
        } = &mut *inner;
        let kernel = create_endpoint(netlink, datapath, &spec).await?;
        // Its identity's policy, if the stream already brought it (another local endpoint
        // has the identity); otherwise the stream brings it once the record is published.
        if let Some(policy) = identity_policies.get(&identity)
            && let Err(e) = datapath.policy_mut().apply(id, &policy.update())
        {
            tracing::warn!(id, identity, error = %e, "applying the identity's known policy");
        }
        let endpoint = Endpoint {
            id,
            node_name: self.config.node.clone(),
            container_id: request.container_id.clone(),
            pod,
            state: EndpointState::Ready as i32,
            state_reason: String::new(),
            labels: Some(labels),
            identity,
            networking: Some(EndpointNetworking {
                interface_name: kernel.veth.lxc_name.clone(),
                interface_index: kernel.veth.lxc_ifindex,
                mac: kernel.veth.pod_mac.to_string(),
                host_mac: kernel.veth.lxc_mac.to_string(),
                addressing: Some(EndpointAddressing {
                    ipv4: ipv4.to_string(),
                    ipv6: ipv6.map(|ip| ip.to_string()).unwrap_or_default(),
                    ipv4_gateway: gateway_v4.to_string(),
                    ipv6_gateway: gateway_v6.map(|ip| ip.to_string()).unwrap_or_default(),
                    ipam_pool: pool.to_owned(),
                }),
                container_interface_name: kernel.veth.pod_ifname.clone(),
                container_interface_index: kernel.veth.pod_ifindex,
                netns_path: request.netns_path.clone(),
                mtu: spec.veth.mtu.unwrap_or(DEFAULT_MTU),
            }),
            policy: Some(EndpointPolicyStatus {
                enforcement: Some(PolicyEnforcement {
                    ingress: false,
                    egress: false,
                }),
                mode: PolicyEnforcementMode::Default as i32,
                ..Default::default()
            }),
            counters: None,
            create_time: Some(now()),
            cni_network_name: request.cni_network_name.clone(),
        };
        let recorded = match self.publish(&endpoint).await {
            Ok(()) => self.state.save(&endpoint).map_err(ManagerError::from),
            Err(e) => Err(e),
        };
        if let Err(e) = recorded {
            // Undo in reverse: datastore record, kernel (the caller releases the address).
            self.unpublish(id).await.ok();
            if let Err(undo) = delete_endpoint_with(
                netlink,
                datapath,
                &kernel.veth.lxc_name,
                &addresses_of(&endpoint),
            )
            .await
            {
                tracing::warn!(error = %undo, "rolling back a failed ADD");
            }
            return Err(e);
        }
        inner.endpoints.insert(id, endpoint.clone());
        tracing::info!(id, lxc = %kernel.veth.lxc_name, ip = %ipv4, ipv6 = ?ipv6, "endpoint created");
        Ok(endpoint)
    }

    /// The CNI-facing answer for an endpoint.
    fn response(&self, endpoint: &Endpoint) -> CreateEndpointResponse {
        cni_response(endpoint)
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

    /// CNI DEL (by attachment) or `kino` (by id). Idempotent: a missing endpoint is
    /// success for an attachment (its lxc and address are still cleaned up by name).
    pub async fn delete(
        &self,
        target: kino_api::agent::delete_endpoint_request::Target,
    ) -> Result<Option<Endpoint>, ManagerError> {
        use kino_api::agent::delete_endpoint_request::Target;
        let mut inner = self.inner.lock().await;
        let found = match &target {
            Target::Id(id) => match inner.endpoints.get(id) {
                Some(e) => e.clone(),
                None => {
                    return Err(ManagerError::NotFound(format!(
                        "no endpoint {id} on node {}",
                        self.config.node
                    )));
                }
            },
            Target::Attachment(a) => match inner.by_attachment(&a.container_id, &a.ifname) {
                Some(e) => e.clone(),
                None => {
                    // Nothing recorded: make sure nothing is left either.
                    let Inner {
                        netlink, datapath, ..
                    } = &mut *inner;
                    let lxc = lxc_name(&a.container_id, &a.ifname);
                    let mut errors = Vec::new();
                    if let Err(e) = delete_endpoint(netlink, datapath, &lxc, None).await {
                        errors.push(ManagerError::Teardown(Box::new(e)));
                    }
                    drop(inner);
                    let owner = Owner {
                        container_id: a.container_id.clone(),
                        ifname: a.ifname.clone(),
                        ..Default::default()
                    };
                    if let Err(e) = self.release_owner(&owner).await {
                        errors.push(e);
                    }
                    return if errors.is_empty() {
                        Ok(None)
                    } else {
                        Err(ManagerError::Incomplete {
                            what: format!(
                                "the attachment of container {} interface {}",
                                a.container_id, a.ifname
                            ),
                            errors,
                        })
                    };
                }
            },
        };
        let mut errors = Vec::new();
        let Inner {
            netlink, datapath, ..
        } = &mut *inner;
        // The kernel teardown (its longest step, deleting the veth, waits for RCU grace
        // periods in the kernel), the address release and the record delete are independent,
        // so they run at once. Releasing the address before the lxc is gone is safe: only
        // this node's ADDs can get it back, and they wait for this lock before touching the
        // kernel.
        let (lxc, addresses, owner) = (lxc_of(&found), addresses_of(&found), owner_of(&found));
        let (kernel, released, unpublished) = tokio::join!(
            delete_endpoint_with(netlink, datapath, &lxc, &addresses),
            self.release_owner(&owner),
            self.unpublish(found.id),
        );
        if let Err(e) = kernel {
            errors.push(ManagerError::Teardown(Box::new(e)));
        }
        for result in [released, unpublished] {
            if let Err(e) = result {
                errors.push(e);
            }
        }
        // The checkpoint goes last, and only with everything else: a restarted agent still
        // knows an endpoint whose DEL is to be retried.
        if errors.is_empty()
            && let Err(e) = self.state.remove(found.id)
        {
            errors.push(e.into());
        }
        if errors.is_empty() {
            inner.endpoints.remove(&found.id);
            drop(inner);
            self.release_identity(found.identity).await;
            tracing::info!(id = found.id, lxc = %lxc_of(&found), "endpoint deleted");
            Ok(Some(found))
        } else {
            Err(ManagerError::Incomplete {
                what: format!("endpoint {}", found.id),
                errors,
            })
        }
    }

    /// CNI CHECK: the endpoint exists, its lxc and map entry are in place, and the pod side
    /// has the expected addresses and MAC.
    pub async fn check(&self, request: CheckEndpointRequest) -> Result<(), ManagerError> {
        let attachment = request
            .attachment
            .ok_or_else(|| ManagerError::Invalid("attachment is required".into()))?;
        let inner = self.inner.lock().await;
        let endpoint = inner
            .by_attachment(&attachment.container_id, &attachment.ifname)
            .cloned()
            .ok_or_else(|| {
                ManagerError::NotFound(format!(
                    "no endpoint for container {} interface {}",
                    attachment.container_id, attachment.ifname
                ))
            })?;
        let lxc = lxc_of(&endpoint);
        let link = inner.netlink.link_by_name(&lxc).await.map_err(kernel)?;
        let Some(link) = link else {
            return Err(ManagerError::CheckFailed(format!(
                "endpoint {}: its lxc {lxc} is missing",
                endpoint.id
            )));
        };
        let mut addresses = addresses_of(&endpoint);
        if addresses.is_empty() {
            addresses.push(Ipv4Addr::UNSPECIFIED.into());
        }
        for ip in &addresses {
            match inner.datapath.maps().get_ip(*ip) {
                Ok(Some(entry)) if entry.lxc_ifindex == link.index => {}
                Ok(_) => {
                    return Err(ManagerError::CheckFailed(format!(
                        "endpoint {}: the datapath has no entry for {ip} on {lxc}",
                        endpoint.id
                    )));
                }
                Err(e) => return Err(kernel(e)),
            }
        }
        let mine: Vec<String> = addresses
            .iter()
            .map(|ip| format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 }))
            .collect();
        if let Some(other) = request.expected_addresses.iter().find(|a| {
            !mine.contains(a) && !addresses.iter().any(|ip| a.starts_with(&format!("{ip}/")))
        }) {
            return Err(ManagerError::CheckFailed(format!(
                "endpoint {} has {}, the previous result says {other}",
                endpoint.id,
                mine.join(" and ")
            )));
        }
        let mac = endpoint
            .networking
            .as_ref()
            .map(|n| n.mac.clone())
            .unwrap_or_default();
        if !request.expected_mac.is_empty() && !request.expected_mac.eq_ignore_ascii_case(&mac) {
            return Err(ManagerError::CheckFailed(format!(
                "endpoint {} has MAC {mac}, the previous result says {}",
                endpoint.id, request.expected_mac
            )));
        }
        Ok(())
    }

    /// All endpoints with their counters.
    pub async fn list(&self) -> Vec<Endpoint> {
        let inner = self.inner.lock().await;
        inner
            .endpoints
            .values()
            .map(|e| with_counters(&inner.datapath, e))
            .collect()
    }

    /// One endpoint by id, IP, container id or pod.
    pub async fn get(
        &self,
        lookup: kino_api::agent::get_endpoint_request::Lookup,
    ) -> Result<Endpoint, ManagerError> {
        use kino_api::agent::get_endpoint_request::Lookup;
        let inner = self.inner.lock().await;
        let found = match &lookup {
            Lookup::Id(id) => inner.endpoints.get(id),
            Lookup::Ip(ip) => {
                let ip: IpAddr = ip
                    .parse()
                    .map_err(|e| ManagerError::Invalid(format!("ip {ip:?}: {e}")))?;
                inner.endpoints.values().find(|e| {
                    e.networking
                        .as_ref()
                        .and_then(|n| n.addressing.as_ref())
                        .is_some_and(|a| {
                            a.ipv4.parse::<IpAddr>().ok() == Some(ip)
                                || a.ipv6.parse::<IpAddr>().ok() == Some(ip)
                        })
                })
            }
            Lookup::ContainerId(c) => inner
                .endpoints
                .values()
                .filter(|e| &e.container_id == c)
                .min_by_key(|e| {
                    e.networking
                        .as_ref()
                        .map(|n| n.container_interface_name.clone())
                }),
            Lookup::Pod(p) => inner.endpoints.values().find(|e| {
                e.pod.as_ref().is_some_and(|q| {
                    q.name == p.name
                        && (q.namespace == p.namespace
                            || p.namespace.is_empty() && q.namespace == "default")
                })
            }),
        };
        found
            .map(|e| with_counters(&inner.datapath, e))
            .ok_or_else(|| {
                ManagerError::NotFound(format!(
                    "no endpoint matches {lookup:?} on node {}",
                    self.config.node
                ))
            })
    }

    /// Number of endpoints.
    pub async fn count(&self) -> usize {
        self.inner.lock().await.endpoints.len()
    }

    /// The datapath's endpoint map, one row per key (an endpoint's IPv4 and IPv6 address),
    /// for `kino bpf endpoint list`.
    pub async fn bpf_endpoints(&self) -> Result<Vec<(IpAddr, EndpointEntry)>, ManagerError> {
        let inner = self.inner.lock().await;
        inner.datapath.maps().list_ips().map_err(kernel)
    }

    /// How the programs sit on each endpoint's lxc (`tc`, `tcx`, `tc+tcx`, `none`), by lxc
    /// ifindex, for `kino bpf endpoint list`.
    pub async fn bpf_attach_modes(
        &self,
    ) -> Result<std::collections::HashMap<u32, &'static str>, ManagerError> {
        let inner = self.inner.lock().await;
        let mut modes = std::collections::HashMap::new();
        for endpoint in inner.endpoints.values() {
            let Some(net) = endpoint.networking.as_ref() else {
                continue;
            };
            let attachment = inner
                .datapath
                .attachment(&inner.netlink, &net.interface_name, net.interface_index)
                .await
                .map_err(kernel)?;
            modes.insert(net.interface_index, attachment.mode());
        }
        Ok(modes)
    }

    /// An endpoint's policy map as the datapath holds it, for `kino bpf policy list`.
    pub async fn bpf_policy(&self, endpoint_id: u32) -> Result<BpfPolicy, ManagerError> {
        let inner = self.inner.lock().await;
        let endpoint = inner.endpoints.get(&endpoint_id).ok_or_else(|| {
            ManagerError::NotFound(format!(
                "no endpoint {endpoint_id} on node {}; `kino endpoint list` shows them",
                self.config.node
            ))
        })?;
        let policy = inner.datapath.policy();
        let (enforcement, revision) = policy.enforcement(endpoint_id).map_err(kernel)?;
        Ok(BpfPolicy {
            identity: endpoint.identity,
            enforcement,
            revision,
            entries: policy.list(endpoint_id).map_err(kernel)?,
        })
    }

    /// The ipcache map, for `kino bpf ipcache list`.
    pub async fn bpf_ipcache(&self) -> Result<Vec<IpcacheEntry>, ManagerError> {
        let inner = self.inner.lock().await;
        inner.datapath.ipcache().list().map_err(kernel)
    }

    /// Up to `max` live conntrack entries (of one family, `KINO_FAMILY_*`, when given), for
    /// `kino bpf ct list`.
    pub async fn bpf_conntrack(
        &self,
        max: usize,
        family: Option<u8>,
    ) -> Result<CtListing, ManagerError> {
        let inner = self.inner.lock().await;
        inner.datapath.conntrack().list(max, family).map_err(kernel)
    }

    /// Puts every address of the node's namespace into the ipcache as host (so traffic from
    /// the node is told from world's) and drops host entries of addresses it no longer has.
    async fn sync_host_ipcache(&self) -> Result<(), ManagerError> {
        let mut inner = self.inner.lock().await;
        let mut addresses = inner.netlink.local_addresses().await.map_err(kernel)?;
        addresses.push(self.network.gateway_v4.into());
        addresses.extend(self.network.gateway_v6.map(IpAddr::from));
        let wanted: Vec<IpPrefix> = addresses.into_iter().map(IpPrefix::host).collect();
        let ipcache = inner.datapath.ipcache_mut();
        for entry in ipcache.list().map_err(kernel)? {
            let host_prefix = entry.prefix == IpPrefix::host(entry.prefix.addr());
            if entry.identity == IDENTITY_HOST && host_prefix && !wanted.contains(&entry.prefix) {
                ipcache.remove(&entry.prefix).map_err(kernel)?;
            }
        }
        for prefix in wanted {
            ipcache
                .upsert(&IpcacheEntry::new(prefix, IDENTITY_HOST))
                .map_err(kernel)?;
        }
        Ok(())
    }

    /// Where the maps are pinned.
    pub async fn pin_dir(&self) -> PathBuf {
        self.inner.lock().await.datapath.pin_dir().to_owned()
    }

    /// CNI GC: deletes every endpoint (of the given CNI network) whose attachment is not in
    /// the valid list, lxc devices no endpoint owns, and IPAM allocations of this node no
    /// endpoint holds.
    pub async fn gc(&self, request: GcRequest) -> Result<GcResponse, ManagerError> {
        let valid = |e: &Endpoint| {
            request.valid_attachments.iter().any(|a| {
                a.container_id == e.container_id
                    && e.networking
                        .as_ref()
                        .is_some_and(|n| n.container_interface_name == a.ifname)
            })
        };
        let candidates: Vec<Endpoint> = {
            let inner = self.inner.lock().await;
            inner
                .endpoints
                .values()
                .filter(|e| {
                    request.cni_network_name.is_empty()
                        || e.cni_network_name == request.cni_network_name
                })
                .filter(|e| !valid(e))
                .cloned()
                .collect()
        };
        let mut response = GcResponse::default();
        for endpoint in candidates {
            if request.dry_run {
                response.deleted.push(endpoint);
                continue;
            }
            match self
                .delete(kino_api::agent::delete_endpoint_request::Target::Id(
                    endpoint.id,
                ))
                .await
            {
                Ok(_) => response.deleted.push(endpoint),
                Err(e) => response.errors.push(e.to_string()),
            }
        }
        if !request.dry_run {
            response.errors.extend(self.remove_orphan_lxcs().await);
        }
        // IPAM: what no endpoint of this node holds (older than a minute, so an ADD racing
        // with this GC keeps its fresh address).
        let valid_owners: Vec<Owner> = self.list().await.iter().map(owner_of).collect();
        match self
            .peers
            .addresses
            .gc(IpamGcRequest {
                node: self.config.node.clone(),
                pool: String::new(),
                valid_owners,
                min_age: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: 0,
                }),
                dry_run: request.dry_run,
            })
            .await
        {
            Ok(freed) => response.released_addresses.extend(freed),
            Err(e) => response.errors.push(e.to_string()),
        }
        Ok(response)
    }

    /// Deletes lxc devices that no endpoint owns (left by a crash mid-ADD); returns errors.
    async fn remove_orphan_lxcs(&self) -> Vec<String> {
        let mut inner = self.inner.lock().await;
        let owned: Vec<String> = inner.endpoints.values().map(lxc_of).collect();
        let Inner {
            netlink, datapath, ..
        } = &mut *inner;
        let mut errors = Vec::new();
        match list_lxcs(netlink).await {
            Ok(lxcs) => {
                for lxc in lxcs.into_iter().filter(|l| !owned.contains(&l.name)) {
                    tracing::info!(lxc = %lxc.name, "removing an lxc no endpoint owns");
                    if let Err(e) = delete_endpoint(netlink, datapath, &lxc.name, None).await {
                        errors.push(e.to_string());
                    }
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
        errors
    }

    /// Adopts the endpoints of a previous agent run from the checkpoints: those whose lxc
    /// still exists are re-entered into the maps (if missing), re-attached, their addresses
    /// claimed again in IPAM (isolated if someone else holds one) and re-published;
    /// those whose pod is gone are cleaned up (lxc, map entry, address, record). Returns
    /// (adopted, removed).
    pub async fn restore(&self) -> Result<(usize, usize), ManagerError> {
        if let Err(e) = self.sync_host_ipcache().await {
            tracing::warn!(error = %e, "cannot put the node's addresses into the ipcache; traffic from the node is seen as world");
        }
        let saved = self.state.load_all()?;
        let (mut adopted, mut gone) = (Vec::new(), Vec::new());
        {
            let mut inner = self.inner.lock().await;
            for mut endpoint in saved {
                let lxc = lxc_of(&endpoint);
                let link = inner.netlink.link_by_name(&lxc).await.map_err(kernel)?;
                let Some(link) = link else {
                    gone.push(endpoint);
                    continue;
                };
                let Some(ip) = ipv4_of(&endpoint) else {
                    gone.push(endpoint);
                    continue;
                };
                let net = endpoint.networking.clone().unwrap_or_default();
                let entry = EndpointEntry {
                    id: endpoint.id,
                    identity: endpoint.identity,
                    ipv4: ip,
                    ipv6: ipv6_of(&endpoint),
                    lxc_ifindex: link.index,
                    lxc_mac: link.mac,
                    pod_mac: net.mac.parse().unwrap_or(link.mac),
                };
                let Inner {
                    datapath, netlink, ..
                } = &mut *inner;
                if datapath.maps().get(ip).ok().flatten().as_ref() != Some(&entry) {
                    datapath.maps_mut().upsert(&entry).map_err(kernel)?;
                }
                for address in addresses_of(&endpoint) {
                    datapath
                        .ipcache_mut()
                        .upsert(&IpcacheEntry::new(
                            IpPrefix::host(address),
                            endpoint.identity,
                        ))
                        .map_err(kernel)?;
                }
                let attachment = datapath
                    .adopt_endpoint(netlink, &lxc, link.index)
                    .await
                    .map_err(kernel)?;
                for hook in &attachment.hooks {
                    tracing::info!(
                        id = endpoint.id,
                        %lxc,
                        program = hook.hook.program(),
                        mode = hook.mode().as_str(),
                        change = ?hook.change,
                        "programs adopted"
                    );
                }
                endpoint.state = EndpointState::Ready as i32;
                if let Some(n) = endpoint.networking.as_mut() {
                    n.interface_index = link.index;
                }
                inner.endpoints.insert(endpoint.id, endpoint.clone());
                adopted.push(endpoint);
            }
        }
        // Before any new ADD is served: IPAM confirms (or gives back) every adopted
        // endpoint's addresses, so a new pod can never be given a running pod's address.
        for mut endpoint in adopted.iter().cloned() {
            match self.reassert_addresses(&endpoint).await {
                ownership::Ownership::Held => self.publish(&endpoint).await?,
                ownership::Ownership::Conflict(reason) => {
                    self.isolate(&mut endpoint, reason).await;
                }
            }
        }
        let removed = gone.len();
        for endpoint in gone {
            tracing::info!(id = endpoint.id, lxc = %lxc_of(&endpoint), "pod gone while the agent was down; cleaning up");
            {
                let mut inner = self.inner.lock().await;
                let Inner {
                    netlink, datapath, ..
                } = &mut *inner;
                if let Err(e) = delete_endpoint_with(
                    netlink,
                    datapath,
                    &lxc_of(&endpoint),
                    &addresses_of(&endpoint),
                )
                .await
                {
                    tracing::warn!(error = %e, "cleaning up a vanished endpoint");
                }
            }
            self.release(&owner_of(&endpoint)).await;
            self.unpublish(endpoint.id).await.ok();
            self.state.remove(endpoint.id).ok();
        }
        for e in self.remove_orphan_lxcs().await {
            tracing::warn!(error = %e, "removing an orphan lxc");
        }
        Ok((adopted.len(), removed))
    }

    /// The last synced policy revision applied.
    pub async fn realized_revision(&self) -> i64 {
        self.inner.lock().await.realized_revision
    }

    /// What the datapath realizes: the stream's last synced revision and, per endpoint, the
    /// revision whose policy its map holds — the synced revision once the stream delivers
    /// its identity's policy; before that (fetched at ADD or at a label change) the fetched
    /// policy's revision, capped by the synced one (the ipcache is the stream's).
    pub async fn realization(&self) -> Realization {
        let inner = self.inner.lock().await;
        let synced = inner.realized_revision;
        let endpoints = inner
            .endpoints
            .values()
            .map(|e| {
                let revision = if e.identity == 0 {
                    // No policy can select an endpoint without labels: nothing to realize.
                    synced
                } else {
                    match inner.identity_policies.get(&e.identity) {
                        Some(p) if p.streamed => synced,
                        Some(p) => p.revision.min(synced),
                        None => 0,
                    }
                };
                RealizedEndpoint {
                    id: e.id,
                    identity: e.identity,
                    revision,
                }
            })
            .collect();
        Realization {
            revision: synced,
            endpoints,
        }
    }

    /// Applies one `WatchEndpointPolicy` message: each identity's update to every local
    /// endpoint with that identity, and the ipcache changes (never the agent's own endpoint
    /// /32s or host entries). Validates every update before writing anything.
    pub async fn apply_policy_message(
        &self,
        message: &WatchEndpointPolicyResponse,
    ) -> Result<(), ManagerError> {
        let invalid = |e: &dyn std::fmt::Display| {
            ManagerError::Internal(format!(
                "policy stream at revision {}: {e}",
                message.revision
            ))
        };
        let mut updates = Vec::with_capacity(message.policy_updates.len());
        for (i, update) in message.policy_updates.iter().enumerate() {
            let converted = policy_update_from_proto(update, message.revision)
                .map_err(|e| invalid(&format!("policy_updates[{i}]: {e}")))?;
            updates.push((update.identity, converted));
        }
        let upserts = message
            .ipcache_upserts
            .iter()
            .enumerate()
            .map(|(i, e)| ipcache_entry_from_proto(e, &format!("ipcache_upserts[{i}]")))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(&e))?;
        let deletes = message
            .ipcache_deletes
            .iter()
            .map(|p| p.parse::<IpPrefix>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(&e))?;

        let mut guard = self.inner.lock().await;
        let inner = &mut *guard;
        if message.reset {
            inner.identity_policies.clear();
            inner.in_snapshot = true;
            // (Extended, not replaced: a snapshot may restart before the last one synced.)
            let streamed = std::mem::take(&mut inner.streamed_prefixes);
            inner.unconfirmed_prefixes.extend(streamed);
        }
        for (identity, update) in updates {
            let local: Vec<u32> = inner
                .endpoints
                .values()
                .filter(|e| e.identity == identity)
                .map(|e| e.id)
                .collect();
            match update {
                None => {
                    inner.identity_policies.remove(&identity);
                    for id in local {
                        inner.datapath.policy_mut().clear(id).map_err(kernel)?;
                    }
                }
                Some(update) => {
                    let cached = inner.identity_policies.entry(identity).or_default();
                    cached.enforcement = update.enforcement;
                    cached.revision = update.revision;
                    cached.streamed = true;
                    match &update.entries {
                        EntryChange::Replace(all) => cached.entries = all.clone(),
                        EntryChange::Delta { upserts, deletes } => {
                            for key in deletes {
                                cached.entries.remove(key);
                            }
                            for (key, verdict) in upserts {
                                cached.entries.insert(*key, *verdict);
                            }
                        }
                    }
                    for id in local {
                        inner
                            .datapath
                            .policy_mut()
                            .apply(id, &update)
                            .map_err(kernel)?;
                    }
                }
            }
        }
        for prefix in deletes {
            inner.streamed_prefixes.remove(&prefix);
            inner.unconfirmed_prefixes.remove(&prefix);
            if !protected(inner, &prefix) {
                inner
                    .datapath
                    .ipcache_mut()
                    .remove(&prefix)
                    .map_err(kernel)?;
            }
        }
        for entry in upserts {
            inner.unconfirmed_prefixes.remove(&entry.prefix);
            if protected(inner, &entry.prefix) {
                continue;
            }
            inner
                .datapath
                .ipcache_mut()
                .upsert(&entry)
                .map_err(kernel)?;
            inner.streamed_prefixes.insert(entry.prefix);
        }
        if message.synced {
            let ids: Vec<(u32, u32)> = inner
                .endpoints
                .values()
                .map(|e| (e.id, e.identity))
                .collect();
            for (id, identity) in ids {
                match inner.identity_policies.get(&identity) {
                    Some(policy) => {
                        let (enforcement, revision) =
                            inner.datapath.policy().enforcement(id).map_err(kernel)?;
                        if revision != message.revision || enforcement != policy.enforcement {
                            inner
                                .datapath
                                .policy_mut()
                                .set_enforcement(id, policy.enforcement, message.revision)
                                .map_err(kernel)?;
                        }
                    }
                    None if inner.in_snapshot => {
                        // The snapshot does not name its identity: no policy of old applies.
                        inner.datapath.policy_mut().clear(id).map_err(kernel)?;
                    }
                    None => {}
                }
            }
            if inner.in_snapshot {
                // Streamed before the snapshot and not in it: gone.
                for prefix in std::mem::take(&mut inner.unconfirmed_prefixes) {
                    if !protected(inner, &prefix) {
                        inner
                            .datapath
                            .ipcache_mut()
                            .remove(&prefix)
                            .map_err(kernel)?;
                    }
                }
            }
            inner.in_snapshot = false;
            inner.realized_revision = message.revision;
        }
        Ok(())
    }
}

/// What a node's datapath enforces (reported as the node's `PolicyRealization` record).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Realization {
    /// The last synced revision of the policy stream applied.
    pub revision: i64,
    /// Every endpoint, by id.
    pub endpoints: Vec<RealizedEndpoint>,
}

/// The realized policy revision of one endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RealizedEndpoint {
    /// Endpoint id.
    pub id: u32,
    /// Its identity.
    pub identity: u32,
    /// Its datapath enforces every policy written at or before this revision (0: none yet).
    pub revision: i64,
}

/// The CNI-facing answer for an endpoint: its interfaces (lxc, then the pod side), its
/// addresses (IPv4 /32 first, then the IPv6 /128 when it has one) and default routes.
pub fn cni_response(endpoint: &Endpoint) -> CreateEndpointResponse {
    let net = endpoint.networking.clone().unwrap_or_default();
    let addressing = net.addressing.clone().unwrap_or_default();
    // IPv4 first (what single-stack consumers read), then IPv6 when the pod has it.
    let mut ips = vec![CniIpConfig {
        address: format!("{}/32", addressing.ipv4),
        gateway: addressing.ipv4_gateway.clone(),
        interface: 1,
    }];
    let mut routes = vec![CniRoute {
        destination: "0.0.0.0/0".into(),
        gateway: addressing.ipv4_gateway.clone(),
    }];
    if !addressing.ipv6.is_empty() {
        ips.push(CniIpConfig {
            address: format!("{}/128", addressing.ipv6),
            gateway: addressing.ipv6_gateway.clone(),
            interface: 1,
        });
        routes.push(CniRoute {
            destination: "::/0".into(),
            gateway: addressing.ipv6_gateway.clone(),
        });
    }
    CreateEndpointResponse {
        endpoint: Some(endpoint.clone()),
        interfaces: vec![
            CniInterface {
                name: net.interface_name.clone(),
                mac: net.host_mac.clone(),
                sandbox: String::new(),
                mtu: net.mtu,
            },
            CniInterface {
                name: net.container_interface_name.clone(),
                mac: net.mac.clone(),
                sandbox: net.netns_path.clone(),
                mtu: net.mtu,
            },
        ],
        ips,
        routes,
        dns: None,
    }
}

/// Whether the policy stream must leave an ipcache prefix alone: a local endpoint's /32 or
/// a host entry the agent wrote.
fn protected(inner: &Inner, prefix: &IpPrefix) -> bool {
    if *prefix != IpPrefix::host(prefix.addr()) {
        return false;
    }
    let addr = prefix.addr();
    if inner
        .endpoints
        .values()
        .any(|e| addresses_of(e).contains(&addr))
    {
        return true;
    }
    // One kernel lookup (not a dump of the map: this runs once per streamed /32). Only the
    // agent writes the host identity, and only for host addresses.
    matches!(
        inner.datapath.ipcache().identity_of(addr),
        Ok(identity) if identity == IDENTITY_HOST
    )
}

/// An endpoint's policy as the datapath holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BpfPolicy {
    /// The endpoint's identity.
    pub identity: u32,
    /// Enforced directions.
    pub enforcement: Enforcement,
    /// Realized policy revision.
    pub revision: i64,
    /// The entries with their hit counters.
    pub entries: Vec<PolicyEntryInfo>,
}

/// The direction a drop counter belongs to.
fn drop_direction(reason: DropReason) -> Direction {
    match reason {
        DropReason::PolicyDeniedIngress => Direction::Ingress,
        _ => Direction::Egress,
    }
}

/// The endpoint with its current datapath counters and realized enforcement.
fn with_counters(datapath: &Datapath, endpoint: &Endpoint) -> Endpoint {
    let mut out = endpoint.clone();
    if let Ok((enforcement, revision)) = datapath.policy().enforcement(endpoint.id) {
        let (ingress_entries, egress_entries) = datapath.policy().counts(endpoint.id);
        let policy = out.policy.get_or_insert_with(Default::default);
        policy.enforcement = Some(PolicyEnforcement {
            ingress: enforcement.ingress,
            egress: enforcement.egress,
        });
        policy.realized_revision = revision;
        policy.ingress_entries = ingress_entries as u32;
        policy.egress_entries = egress_entries as u32;
    }
    if let Ok(c) = datapath.maps().counters(endpoint.id) {
        out.counters = Some(EndpointCounters {
            ingress_packets: c.to_container_packets,
            ingress_bytes: c.to_container_bytes,
            egress_packets: c.from_container_packets,
            egress_bytes: c.from_container_bytes,
            drops: DropReason::ALL
                .iter()
                .filter(|r| c.dropped(**r) > 0)
                .map(|r| DropCounter {
                    reason: drop_reason(*r) as i32,
                    direction: drop_direction(*r) as i32,
                    packets: c.dropped(*r),
                    bytes: 0,
                })
                .collect(),
        });
    }
    out
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
