//! CNI CHECK: the endpoint exists, its lxc and datapath entries are in place, and it still
//! has the addresses and MAC the runtime's previous result names.

use std::net::Ipv4Addr;

use kino_api::agent::CheckEndpointRequest;

use super::{EndpointManager, ManagerError, addresses_of, kernel, lxc_of};

impl EndpointManager {
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
}
