//! Re-asserting what this node's endpoints own, as Cilium re-allocates the IPs of restored
//! endpoints: at start-up, before the agent serves a new ADD, and whenever the node had to
//! register again (its NodeHealth lease was lost, or the node was deleted under a running
//! agent), every endpoint's addresses are claimed again in IPAM (Allocate with the address
//! the pod already has, idempotent per owner) and its record written again.
//!
//! An address IPAM confirms (or gives back, if it was freed meanwhile) is the endpoint's. An
//! address IPAM refuses — held by another owner, or outside this node's pod CIDRs since the
//! node was deleted while its agent was down — means two pods would share it: the endpoint
//! is isolated instead (state `invalid` with the reason, its datapath entries and its record
//! removed) until its pod is deleted, so an address is never in use twice in the cluster.

use std::time::Duration;

use kino_api::agent::{Endpoint, EndpointState};
use kino_api::ipam::AllocateRequest;
use kino_api::types::IpFamily;
use tonic::Code;

use super::{EndpointManager, ManagerError, addresses_of, owner_of};
use crate::datapath::{IpPrefix, IpcacheEntry};
use crate::endpoint::peers::PeerError;

/// What IPAM said of an endpoint's addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// Every address is the endpoint's.
    Held,
    /// An address cannot be the endpoint's; the message says why.
    Conflict(String),
}

/// Longest pause between two attempts while IPAM is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl EndpointManager {
    /// Claims the endpoint's addresses again, retrying for as long as IPAM cannot answer (a
    /// restored endpoint is not trusted with its address before IPAM confirms it).
    pub(super) async fn reassert_addresses(&self, endpoint: &Endpoint) -> Ownership {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.try_reassert(endpoint).await {
                Ok(ownership) => return ownership,
                Err(e) => {
                    tracing::warn!(id = endpoint.id, error = %e, retry_in = ?backoff,
                        "cannot confirm the endpoint's addresses with IPAM yet; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// One attempt: `Err` only when IPAM could not answer.
    async fn try_reassert(&self, endpoint: &Endpoint) -> Result<Ownership, ManagerError> {
        let owner = owner_of(endpoint);
        let pool = endpoint
            .networking
            .as_ref()
            .and_then(|n| n.addressing.as_ref())
            .map(|a| a.ipam_pool.clone())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| self.config.pool.clone());
        for address in addresses_of(endpoint) {
            let family = if address.is_ipv4() {
                IpFamily::Ipv4
            } else {
                IpFamily::Ipv6
            };
            let request = AllocateRequest {
                node: self.config.node.clone(),
                pool: pool.clone(),
                family: family as i32,
                owner: Some(owner.clone()),
                requested_address: address.to_string(),
            };
            match self.peers.addresses.allocate(request).await {
                Ok(response) => {
                    let given = response.allocation.map(|a| a.address).unwrap_or_default();
                    if given != address.to_string() {
                        return Ok(Ownership::Conflict(format!(
                            "IPAM gave {given:?} instead of the endpoint's {address}"
                        )));
                    }
                    if !response.existing {
                        tracing::warn!(id = endpoint.id, %address, container = %owner.container_id,
                            "IPAM had freed the address of a running endpoint; claimed it back");
                    }
                }
                Err(PeerError::Ipam { status, .. })
                    if matches!(
                        status.code(),
                        Code::AlreadyExists
                            | Code::InvalidArgument
                            | Code::FailedPrecondition
                            | Code::ResourceExhausted
                            | Code::NotFound
                    ) =>
                {
                    return Ok(Ownership::Conflict(format!(
                        "IPAM refuses {address} to this endpoint: {}",
                        status.message()
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Ownership::Held)
    }

    /// Takes an endpoint whose address is not its own out of service: `invalid` with the
    /// reason, no datapath entries (its traffic is dropped as from an unknown endpoint), no
    /// record. Its lxc and checkpoint stay, so its pod's DEL still cleans up.
    pub(super) async fn isolate(&self, endpoint: &mut Endpoint, reason: String) {
        tracing::error!(id = endpoint.id, container = %endpoint.container_id, reason = %reason,
            "endpoint isolated: its address belongs to someone else in the cluster; delete its pod");
        endpoint.state = EndpointState::Invalid as i32;
        endpoint.state_reason = format!("isolated: {reason}; delete the pod to recreate it");
        {
            let mut inner = self.inner.lock().await;
            let datapath = &mut inner.datapath;
            for address in addresses_of(endpoint) {
                if let Ok(Some(entry)) = datapath.maps().get_ip(address)
                    && entry.id == endpoint.id
                    && let Err(e) = datapath.maps_mut().remove_entry(&entry)
                {
                    tracing::warn!(id = endpoint.id, error = %e, "removing an isolated endpoint's entry");
                }
                let prefix = IpPrefix::host(address);
                if let Ok(Some(IpcacheEntry { identity, .. })) = datapath.ipcache().get(&prefix)
                    && identity == endpoint.identity
                {
                    let _ = datapath.ipcache_mut().remove(&prefix);
                }
            }
            inner.endpoints.insert(endpoint.id, endpoint.clone());
        }
        if let Err(e) = self.unpublish(endpoint.id).await {
            tracing::warn!(id = endpoint.id, error = %e, "removing an isolated endpoint's record");
        }
    }

    /// Claims every endpoint's addresses again and re-writes their records (after the node
    /// registered again, while the agent serves). Returns how many endpoints were isolated.
    pub async fn reassert_all(&self) -> Result<usize, ManagerError> {
        let ids: Vec<u32> = self.inner.lock().await.endpoints.keys().copied().collect();
        let mut isolated = 0;
        for id in ids {
            let Some(endpoint) = self.current(id, None).await else {
                continue;
            };
            if endpoint.state == EndpointState::Invalid as i32 {
                continue;
            }
            let ownership = self.reassert_addresses(&endpoint).await;
            // The endpoint may have been deleted (or its labels changed) meanwhile: act on
            // what it is now, and give back what a deleted one was just given again.
            let Some(mut now) = self.current(id, Some(&endpoint.container_id)).await else {
                if ownership == Ownership::Held {
                    self.release(&owner_of(&endpoint)).await;
                }
                continue;
            };
            match ownership {
                Ownership::Held => self.publish(&now).await?,
                Ownership::Conflict(reason) => {
                    self.isolate(&mut now, reason).await;
                    isolated += 1;
                }
            }
        }
        Ok(isolated)
    }

    /// The endpoint `id` as it is now, if it exists (and belongs to `container`, if given).
    async fn current(&self, id: u32, container: Option<&str>) -> Option<Endpoint> {
        self.inner
            .lock()
            .await
            .endpoints
            .get(&id)
            .filter(|e| container.is_none_or(|c| e.container_id == c))
            .cloned()
    }
}
