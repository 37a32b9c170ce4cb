//! TCX links, as agents before the switch to tc attached: a pinned link per hook in the node's
//! `links/` directory. The agent no longer creates them (a TCX link waits for an RCU grace
//! period under `rtnl_lock`); it switches their program atomically to its own on adoption and
//! removes their pins when the lxc goes. [`Datapath::attach_endpoint_tcx`] still makes them,
//! for the tests of adoption.

use std::path::Path;

use aya::programs::LinkOrder;
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};

use super::Datapath;
use super::attach::{AttachChange, AttachPoint, HookAttachment, LxcAttachment};
use super::error::DatapathError;
use super::hook::Hook;
use super::pins::{link_pin_name, remove_pin};
use super::program::program_mut;
use crate::datapath::map_access::chain;

impl Datapath {
    /// Attaches both programs to the lxc `lxc_name` (in this thread's network namespace) as
    /// pinned TCX links, as agents before the switch to tc did; already attached: the
    /// programs are replaced by ours. Not used by the agent any more: it makes the lxcs of an
    /// older agent for the tests of [`Datapath::adopt_endpoint`]. On failure the links this
    /// call created are removed again.
    pub fn attach_endpoint_tcx(&mut self, lxc_name: &str) -> Result<LxcAttachment, DatapathError> {
        let ifindex = ifindex_of(lxc_name)?;
        let mut hooks = Vec::new();
        let mut created = Vec::new();
        for hook in Hook::LXC {
            let path = self
                .links_dir()
                .join(link_pin_name(lxc_name, ifindex, hook));
            let result = if path.exists() {
                self.replace_program(&path, lxc_name, hook)
                    .map(|()| AttachChange::Replaced)
            } else {
                self.attach_new(lxc_name, hook, &path).map(|()| {
                    created.push(path.clone());
                    AttachChange::Attached
                })
            };
            match result {
                Ok(change) => hooks.push(HookAttachment {
                    hook,
                    point: AttachPoint::Link { pin: path },
                    program_id: self.identity(hook).id,
                    change: Some(change),
                }),
                Err(e) => {
                    for pinned in &created {
                        let _ = remove_pin(pinned);
                    }
                    return Err(e);
                }
            }
        }
        Ok(LxcAttachment {
            lxc_name: lxc_name.to_owned(),
            ifindex,
            hooks,
        })
    }

    /// Attaches our program of `hook` to the lxc as a new TCX link and pins it at `pin`.
    fn attach_new(&mut self, lxc: &str, hook: Hook, pin: &Path) -> Result<(), DatapathError> {
        let link_error = |op, reason: String| DatapathError::Link {
            op,
            program: hook.program(),
            interface: lxc.to_owned(),
            reason,
        };
        let program = program_mut(&mut self.ebpf, hook)?;
        let id = program
            .attach_with_options(
                lxc,
                hook.attach_type(),
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(|e| link_error("attach", chain(&e)))?;
        let link = program
            .take_link(id)
            .map_err(|e| link_error("take link of", chain(&e)))?;
        let fd_link =
            FdLink::try_from(link).map_err(|e| link_error("convert link of", chain(&e)))?;
        // TCX links die with the process unless pinned; if pinning fails the fd is dropped
        // here and the program detached again.
        fd_link
            .pin(pin)
            .map_err(|e| link_error("pin link of", format!("{}: {}", pin.display(), chain(&e))))?;
        Ok(())
    }

    /// Atomically replaces the program behind the pinned link at `path` with ours.
    pub(super) fn replace_program(
        &mut self,
        path: &Path,
        lxc: &str,
        hook: Hook,
    ) -> Result<(), DatapathError> {
        let link_error = |op, reason: String| DatapathError::Link {
            op,
            program: hook.program(),
            interface: lxc.to_owned(),
            reason,
        };
        let pinned = PinnedLink::from_pin(path).map_err(|e| {
            link_error(
                "open pinned link of",
                format!("{}: {}", path.display(), chain(&e)),
            )
        })?;
        let link = SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|e| {
            link_error(
                "adopt pinned link of",
                format!("{}: {}", path.display(), chain(&e)),
            )
        })?;
        let program = program_mut(&mut self.ebpf, hook)?;
        let id = program
            .attach_to_link(link)
            .map_err(|e| link_error("replace", chain(&e)))?;
        // The pin owns the link; our fd is not needed (dropping it does not detach).
        drop(
            program
                .take_link(id)
                .map_err(|e| link_error("release", chain(&e)))?,
        );
        Ok(())
    }

    /// Removes the TCX link pins of the lxc `lxc_name` (whatever ifindex they recorded, so
    /// this works after the lxc is gone), which detaches those programs. Returns how many
    /// pins were removed; 0 for an lxc attached by tc, whose filters go with the device.
    pub fn detach_endpoint(&mut self, lxc_name: &str) -> Result<usize, DatapathError> {
        let mut removed = 0;
        for (file, lxc, _, _) in self.link_pins()? {
            if lxc == lxc_name {
                remove_pin(&self.links_dir().join(file))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// The ifindex of the interface `name` in this thread's network namespace.
fn ifindex_of(name: &str) -> Result<u32, DatapathError> {
    nix::net::if_::if_nametoindex(name).map_err(|source| DatapathError::Interface {
        name: name.to_owned(),
        source,
    })
}
