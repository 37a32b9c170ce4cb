//! The node's tunnel device beside the endpoints' datapath: `kino_vxlan`, its overlay
//! programs and the datapath's routing mode, (re-)ensured on demand. The cluster's route
//! reconciler calls this on every pass in tunnel mode, so a device deleted or changed behind
//! the agent's back (or its programs detached) is put back as the routes are (cilium#28137).
//! An intact device is adopted as it is; the programs are kept when they are the same.

use super::EndpointManager;
use crate::datapath::{DatapathError, RoutingConfig};
use crate::devices::{DeviceError, VXLAN_DEVICE, VxlanConfig, ensure_vxlan};

/// The tunnel device could not be ensured.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// Creating or adopting `kino_vxlan` failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// Attaching its programs or writing the routing mode failed.
    #[error(transparent)]
    Datapath(#[from] DatapathError),
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
            .attach_overlay(&inner.netlink, VXLAN_DEVICE, ifindex)
            .await?;
        inner.datapath.set_node_config(RoutingConfig::Tunnel {
            vxlan_ifindex: ifindex,
        })?;
        Ok(ifindex)
    }
}
