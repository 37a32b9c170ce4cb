//! Adoption: what a load takes over from a previous agent of the node, so traffic keeps
//! flowing across an agent restart (even `kill -9`). Pinned maps are reused by the load itself
//! (see [`super::pins`]); here, the programs already on lxcs: live TCX link pins are switched
//! to the new programs and dead ones removed when the datapath loads, and
//! [`Datapath::adopt_endpoint`] makes each known lxc run the new programs without a gap.

use super::Datapath;
use super::attach::{
    AttachChange, AttachPoint, HookAttachment, LxcAttachment, TC_HANDLE, TC_PRIORITY,
};
use super::error::DatapathError;
use super::hook::Hook;
use super::pins::{pinned_program, remove_pin};
use crate::netlink::Netlink;

/// What [`Datapath::load`] found and adopted from a previous agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Adoption {
    /// Maps that were already pinned and are reused with their contents.
    pub maps_reused: Vec<&'static str>,
    /// Pinned maps of another layout (key or value size) than this agent's object — left by
    /// an agent of another version — or of another capacity than configured, unpinned and
    /// created anew (empty). The agent refills them: endpoints from its checkpoint, policy
    /// and ipcache from the compiler's stream; conntrack starts over (running connections
    /// are looked up as new).
    pub maps_replaced: Vec<&'static str>,
    /// Link pins whose program was replaced by the newly loaded one (file names).
    pub links_adopted: Vec<String>,
    /// Link pins of lxcs that no longer exist, removed.
    pub stale_links_removed: Vec<String>,
}

impl Datapath {
    /// Switches every live pinned link to the programs just loaded; removes dead ones.
    pub(super) fn adopt_links(&mut self) -> Result<(), DatapathError> {
        for (file, lxc, ifindex, hook) in self.link_pins()? {
            let path = self.links_dir().join(&file);
            let live = nix::net::if_::if_nametoindex(lxc.as_str()).ok() == Some(ifindex);
            if !live {
                remove_pin(&path)?;
                self.adoption.stale_links_removed.push(file);
                continue;
            }
            self.replace_program(&path, &lxc, hook)?;
            self.adoption.links_adopted.push(file);
        }
        Ok(())
    }

    /// Makes the programs of this load run on the lxc `lxc_name` (`ifindex`) of a previous
    /// run, hook by hook, without a gap:
    ///
    /// - a TCX link pinned for this lxc and ifindex (an agent from before tc): its program is
    ///   replaced atomically (`bpf_link_update`) and the link kept — TCX runs before the
    ///   clsact hook and decides every packet, so the two are never combined on one hook;
    /// - our tc filter (by [`Hook::filter_name`]): kept when it runs the same program (same
    ///   tag) over the same maps, else replaced in place atomically;
    /// - nothing: attached as a tc filter (qdisc first, if missing).
    ///
    /// Idempotent; each hook's [`HookAttachment::change`] says what was done.
    pub async fn adopt_endpoint(
        &mut self,
        netlink: &Netlink,
        lxc_name: &str,
        ifindex: u32,
    ) -> Result<LxcAttachment, DatapathError> {
        let hooks = self
            .adopt_hooks(netlink, lxc_name, ifindex, &Hook::LXC)
            .await?;
        Ok(LxcAttachment {
            lxc_name: lxc_name.to_owned(),
            ifindex,
            hooks,
        })
    }

    /// [`Datapath::adopt_endpoint`] for the programs `hooks` of the device `name`: the
    /// lxc's, or `kino_vxlan`'s (which never has TCX link pins).
    pub(super) async fn adopt_hooks(
        &mut self,
        netlink: &Netlink,
        lxc_name: &str,
        ifindex: u32,
        wanted: &[Hook],
    ) -> Result<Vec<HookAttachment>, DatapathError> {
        let pins = self.link_pins()?;
        let mut hooks = Vec::new();
        let mut have_qdisc = false;
        for &hook in wanted {
            if let Some(pin) = self.link_pin_of(&pins, lxc_name, ifindex, hook) {
                // Load already switched live pins to our program (adopt_links).
                let change = if pinned_program(&pin) == Some(self.identity(hook).id) {
                    AttachChange::Kept
                } else {
                    self.replace_program(&pin, lxc_name, hook)?;
                    AttachChange::Replaced
                };
                hooks.push(HookAttachment {
                    hook,
                    point: AttachPoint::Link { pin },
                    program_id: self.identity(hook).id,
                    change: Some(change),
                });
                continue;
            }
            let filters = self.filters(netlink, lxc_name, ifindex, hook).await?;
            have_qdisc |= !filters.is_empty();
            let ours = filters.iter().find(|f| f.name == hook.filter_name());
            let (priority, handle, change) = match ours {
                Some(f) if self.same_program(hook, f.program_id, &f.tag) => {
                    hooks.push(HookAttachment::filter(hook, f, Some(AttachChange::Kept)));
                    continue;
                }
                Some(f) => (f.priority, f.handle, AttachChange::Replaced),
                None => {
                    if !have_qdisc {
                        netlink.ensure_clsact(ifindex).await.map_err(|source| {
                            DatapathError::Filter {
                                op: "add the clsact qdisc for",
                                program: hook.program(),
                                interface: lxc_name.to_owned(),
                                source: Box::new(source),
                            }
                        })?;
                        have_qdisc = true;
                    }
                    (TC_PRIORITY, TC_HANDLE, AttachChange::Attached)
                }
            };
            let replace = change == AttachChange::Replaced;
            self.set_filter(netlink, lxc_name, ifindex, hook, priority, handle, replace)
                .await?;
            hooks.push(HookAttachment {
                hook,
                point: AttachPoint::Filter { priority, handle },
                program_id: self.identity(hook).id,
                change: Some(change),
            });
        }
        Ok(hooks)
    }
}
