//! The node's routing devices beside the endpoints' datapath, (re-)ensured on demand: in
//! tunnel mode `kino_vxlan` with its overlay programs, in native mode `from_netdev` on the
//! underlay devices (BPF host routing); and the datapath's routing mode. The cluster's route
//! reconciler calls this on every pass, so a device deleted or changed behind the agent's back
//! (or its programs detached) is put back as the routes are (cilium#28137). An intact device
//! is adopted as it is; the programs are kept when they are the same.

use super::EndpointManager;
use crate::datapath::{DatapathError, Hook, RoutingConfig};
use crate::devices::{DeviceError, VXLAN_DEVICE, VxlanConfig, ensure_vxlan};
use crate::netlink::NetlinkError;

/// The node's routing devices could not be ensured.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// Creating or adopting `kino_vxlan` failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// Attaching its programs or writing the routing mode failed.
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    /// Looking the underlay device up failed.
    #[error("looking up the underlay device {device}: {source}")]
    Lookup {
        /// The device's name.
        device: String,
        /// What netlink said.
        source: NetlinkError,
    },
    /// The underlay device is not in the node's namespace.
    #[error(
        "the underlay device {0} is not in the node's network namespace; pods' traffic to other nodes takes the stack's routes until it is back"
    )]
    MissingDevice(String),
}

impl EndpointManager {
    /// Ensures `kino_vxlan` as `config` says, its overlay programs attached and the datapath
    /// in tunnel mode on it; returns its ifindex.
    pub async fn ensure_tunnel(&self, config: &VxlanConfig) -> Result<u32, TunnelError> {
        let mut inner = self.inner.lock().await;
        let inner = &mut *inner;
        let ifindex = ensure_vxlan(&inner.netlink, config).await?;
        inner
            .datapath
            .attach_device(&inner.netlink, VXLAN_DEVICE, ifindex, &Hook::OVERLAY)
            .await?;
        inner.datapath.set_node_config(RoutingConfig::Tunnel {
            vxlan_ifindex: ifindex,
        })?;
        Ok(ifindex)
    }

    /// Native mode: the datapath in native mode, and `from_netdev` on each underlay device
    /// of `devices` (the links holding the node's addresses), so packets between local pods
    /// and other nodes skip the node's IP forwarding. Every device is tried; the first error
    /// is returned (the next pass retries).
    pub async fn ensure_native(&self, devices: &[String]) -> Result<(), TunnelError> {
        let mut inner = self.inner.lock().await;
        let inner = &mut *inner;
        inner.datapath.set_node_config(RoutingConfig::Native)?;
        let mut first_error = None;
        for device in devices {
            let link = match inner.netlink.link_by_name(device).await {
                Ok(Some(link)) => link,
                Ok(None) => {
                    first_error.get_or_insert(TunnelError::MissingDevice(device.clone()));
                    continue;
                }
                Err(source) => {
                    first_error.get_or_insert(TunnelError::Lookup {
                        device: device.clone(),
                        source,
                    });
                    continue;
                }
            };
            if let Err(e) = inner
                .datapath
                .attach_device(&inner.netlink, device, link.index, &Hook::NETDEV)
                .await
            {
                first_error.get_or_insert(e.into());
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
