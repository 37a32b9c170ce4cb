//! The node's devices in the loader (issue #13): the node's routing configuration
//! (`kino_node_config`), the programs of `kino_vxlan` in tunnel mode — `from_overlay` on its
//! ingress, `to_overlay` on its egress — and of the underlay device in native mode —
//! `from_netdev` on its ingress (BPF host routing) — attached as tc filters like an lxc's.
//! Filters live with the device, so they outlive the agent; a restarted agent adopts them
//! (kept when they run the same program over the same maps, replaced atomically otherwise)
//! by attaching again.

use super::Datapath;
use super::attach::HookAttachment;
use super::error::DatapathError;
use super::hook::Hook;
use crate::datapath::node_config::{NodeConfigError, RoutingConfig};
use crate::netlink::Netlink;

impl Datapath {
    /// Sets how pod traffic crosses nodes; packets see it from the next one on. In tunnel
    /// mode, attach the overlay programs to the device first ([`Datapath::attach_overlay`]):
    /// packets are redirected to it from then on.
    pub fn set_node_config(&mut self, routing: RoutingConfig) -> Result<(), DatapathError> {
        self.node_config.set(routing).map_err(DatapathError::from)
    }

    /// The routing configuration the programs use now.
    pub fn node_config(&self) -> Result<RoutingConfig, NodeConfigError> {
        self.node_config.get()
    }

    /// Makes the programs `hooks` ([`Hook::OVERLAY`] on the VXLAN device, [`Hook::NETDEV`]
    /// on the underlay device) run on the device `name` (`ifindex`, in the namespace of
    /// `netlink`), as tc filters on its `clsact` qdisc (made if missing). Idempotent and
    /// without a gap: filters of a previous agent running the same program over the same
    /// maps are kept, others are replaced atomically; each [`HookAttachment::change`] says
    /// which.
    pub async fn attach_device(
        &mut self,
        netlink: &Netlink,
        name: &str,
        ifindex: u32,
        hooks: &[Hook],
    ) -> Result<Vec<HookAttachment>, DatapathError> {
        self.adopt_hooks(netlink, name, ifindex, hooks).await
    }

    /// Our programs `hooks` on the device `name` (`ifindex`) as the kernel has them now (a
    /// hook missing here has no program of ours).
    pub async fn device_attachment(
        &self,
        netlink: &Netlink,
        name: &str,
        ifindex: u32,
        hooks: &[Hook],
    ) -> Result<Vec<HookAttachment>, DatapathError> {
        let mut hooks_found = Vec::new();
        for &hook in hooks {
            let filters = self.filters(netlink, name, ifindex, hook).await?;
            if let Some(f) = filters.iter().find(|f| f.name == hook.filter_name()) {
                hooks_found.push(HookAttachment::filter(hook, f, None));
            }
        }
        Ok(hooks_found)
    }

    /// Removes our filters `hooks` from the device `name` (`ifindex`); other filters stay.
    /// Returns how many were removed (0: none was there, or the device is gone).
    pub async fn detach_device(
        &self,
        netlink: &Netlink,
        name: &str,
        ifindex: u32,
        hooks: &[Hook],
    ) -> Result<usize, DatapathError> {
        let mut removed = 0;
        for hook in self
            .device_attachment(netlink, name, ifindex, hooks)
            .await?
        {
            let super::attach::AttachPoint::Filter { priority, handle } = hook.point else {
                continue;
            };
            let deleted = netlink
                .delete_filter(ifindex, hook.hook.tc_hook(), priority, handle)
                .await
                .map_err(|source| DatapathError::Filter {
                    op: "detach",
                    program: hook.hook.program(),
                    interface: name.to_owned(),
                    source: Box::new(source),
                })?;
            removed += usize::from(deleted);
        }
        Ok(removed)
    }
}
