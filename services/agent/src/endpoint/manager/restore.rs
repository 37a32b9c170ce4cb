//! Start-up: the node's own addresses into the ipcache as host, and the adoption of the
//! endpoints a previous agent run checkpointed — those whose lxc still exists re-entered into
//! the maps, re-attached, their addresses re-claimed in IPAM (`ownership`) and re-published;
//! those whose pod went away meanwhile cleaned up.

use std::net::IpAddr;

use kino_api::agent::EndpointState;

use super::{
    EndpointManager, Inner, ManagerError, addresses_of, ipv4_of, ipv6_of, kernel, lxc_of, owner_of,
    ownership,
};
use crate::datapath::ipcache::IDENTITY_HOST;
use crate::datapath::{EndpointEntry, IpPrefix, IpcacheEntry};
use crate::endpoint::delete_endpoint_with;

impl EndpointManager {
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
        self.record_restored_netns(&adopted);
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
}
