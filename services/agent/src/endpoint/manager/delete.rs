//! CNI DEL and CNI GC: an endpoint's teardown (kernel side, address release and record
//! delete at once; the checkpoint last, so a DEL that met errors is retried), GC of the
//! endpoints a runtime no longer lists, of lxc devices no endpoint owns (a crash mid-ADD)
//! and of IPAM allocations no endpoint of the node holds.

use kino_api::agent::{Endpoint, GcRequest, GcResponse};
use kino_api::ipam::{GcRequest as IpamGcRequest, Owner};

use super::{EndpointManager, Inner, ManagerError, addresses_of, lxc_of, owner_of};
use crate::endpoint::{delete_endpoint, delete_endpoint_with, list_lxcs, lxc_name};

impl EndpointManager {
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
            self.forget_netns(found.id);
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
    pub(super) async fn remove_orphan_lxcs(&self) -> Vec<String> {
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
}
