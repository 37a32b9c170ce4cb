//! CNI ADD: the endpoint's identity (and its compiled policy) and addresses asked for at
//! once, then the veth pair and the datapath's entries, the `Endpoint` record and the local
//! checkpoint — all or nothing: each step's failure undoes the steps before it (the record,
//! the kernel side, the addresses; see [`EndpointManager::create`]). A retried ADD of an
//! existing attachment answers with the same endpoint.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use kino_api::agent::{
    CniInterface, CniIpConfig, CniRoute, CreateEndpointRequest, CreateEndpointResponse, Endpoint,
    EndpointAddressing, EndpointNetworking, EndpointPolicyStatus, EndpointState,
};
use kino_api::ipam::{AllocateRequest, Owner};
use kino_api::types::{IpFamily, Labels, PodRef, PolicyEnforcement, PolicyEnforcementMode};

use super::{
    DEFAULT_MTU, EndpointManager, Inner, MAX_ENDPOINT_ID, ManagerError, addresses_of,
    endpoint_labels, kernel, now,
};
use crate::endpoint::veth::validate_mtu;
use crate::endpoint::{EndpointSpec, VethRequest, create_endpoint, delete_endpoint_with};
use crate::netlink::MacAddr;

impl EndpointManager {
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
                // Release what was (or may have been) allocated, both families, and
                // report the first failure. An allocation whose answer was lost (IPAM
                // killed after its commit, a broken connection) may hold an address: only
                // an answer that says nothing was done spares the release.
                let v6_may_hold = match &allocation_v6 {
                    Ok(v6) => v6.is_some(),
                    Err(e) => may_have_allocated(e),
                };
                let v4_may_hold = allocation.as_ref().err().is_none_or(may_have_allocated);
                if inherited || v4_may_hold || v6_may_hold {
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
        self.record_netns(&endpoint);
        tracing::info!(id, lxc = %kernel.veth.lxc_name, ip = %ipv4, ipv6 = ?ipv6, "endpoint created");
        Ok(endpoint)
    }

    /// The CNI-facing answer for an endpoint.
    fn response(&self, endpoint: &Endpoint) -> CreateEndpointResponse {
        cni_response(endpoint)
    }
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

/// Whether an allocation that failed with `error` may still hold an address in IPAM. Only
/// IPAM's own refusals (bad request, pool exhausted, no such pool or node, not allowed) say
/// that nothing was written; a lost answer (UNAVAILABLE, a reset connection, a deadline) or
/// any other failure may come after the commit.
fn may_have_allocated(error: &ManagerError) -> bool {
    use crate::endpoint::peers::PeerError;
    use tonic::Code;
    match error {
        ManagerError::Peer(PeerError::Ipam { status, .. }) => !matches!(
            status.code(),
            Code::InvalidArgument
                | Code::ResourceExhausted
                | Code::NotFound
                | Code::FailedPrecondition
                | Code::AlreadyExists
                | Code::OutOfRange
                | Code::PermissionDenied
                | Code::Unauthenticated
        ),
        _ => true,
    }
}
