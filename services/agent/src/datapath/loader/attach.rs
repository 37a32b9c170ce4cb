//! Attaching the programs to an lxc as tc filters (a direct-action `bpf` filter per hook on
//! its `clsact` qdisc, over netlink), and reading back what runs on an lxc — our filters or
//! the TCX links of an older agent — as the kernel has it now.

use std::os::fd::AsFd;
use std::path::PathBuf;

use super::Datapath;
use super::error::DatapathError;
use super::hook::Hook;
use super::pins::pinned_program;
use super::program::{program, program_error};
use crate::datapath::abi::LXC_PREFIX;
use crate::netlink::{BpfFilter, Netlink};

/// Priority of the agent's tc filters on an lxc (runs before any other filter).
pub const TC_PRIORITY: u16 = 1;

/// Handle of the agent's tc filters within [`TC_PRIORITY`].
pub const TC_HANDLE: u32 = 1;

/// How a program sits on an lxc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AttachMode {
    /// A direct-action `bpf` filter on the lxc's `clsact` qdisc, set over netlink: how the
    /// agent attaches. Lives with the device; nothing pinned.
    Tc,
    /// A TCX link pinned in `links/`, as agents before the switch to tc attached. Adopted
    /// (its program replaced) and kept until the lxc goes.
    Tcx,
}

impl AttachMode {
    /// `tc` or `tcx`, as `kino bpf endpoint list` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            AttachMode::Tc => "tc",
            AttachMode::Tcx => "tcx",
        }
    }
}

/// Where a hook's program is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachPoint {
    /// A tc filter (`tc filter show dev <lxc> ingress|egress`).
    Filter {
        /// Its priority.
        priority: u16,
        /// Its handle.
        handle: u32,
    },
    /// A pinned TCX link.
    Link {
        /// The pin.
        pin: PathBuf,
    },
}

/// What attaching did to a hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachChange {
    /// Nothing was there: the program was attached.
    Attached,
    /// Another program was there (another build, or other maps): switched atomically.
    Replaced,
    /// The same program over the same maps was already there: left alone.
    Kept,
}

/// One hook's program on an lxc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookAttachment {
    /// The hook.
    pub hook: Hook,
    /// Where it is attached.
    pub point: AttachPoint,
    /// The id of the program running there.
    pub program_id: u32,
    /// What the call that returned this did; `None` in a listing.
    pub change: Option<AttachChange>,
}

impl HookAttachment {
    /// The hook's program as the tc filter `filter` runs it.
    pub(super) fn filter(hook: Hook, filter: &BpfFilter, change: Option<AttachChange>) -> Self {
        HookAttachment {
            hook,
            point: AttachPoint::Filter {
                priority: filter.priority,
                handle: filter.handle,
            },
            program_id: filter.program_id,
            change,
        }
    }

    /// How it is attached.
    pub fn mode(&self) -> AttachMode {
        match self.point {
            AttachPoint::Filter { .. } => AttachMode::Tc,
            AttachPoint::Link { .. } => AttachMode::Tcx,
        }
    }
}

/// The programs of one lxc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LxcAttachment {
    /// The lxc's name.
    pub lxc_name: String,
    /// Its ifindex.
    pub ifindex: u32,
    /// Each attached hook, in [`Hook::LXC`] order (a hook missing here has no program).
    pub hooks: Vec<HookAttachment>,
}

impl LxcAttachment {
    /// The attach mode of its hooks: `tc`, `tcx`, `tc+tcx` when they differ (an lxc a
    /// TCX-era agent attached only half of), `none` when nothing is attached.
    pub fn mode(&self) -> &'static str {
        let tc = self.hooks.iter().any(|h| h.mode() == AttachMode::Tc);
        let tcx = self.hooks.iter().any(|h| h.mode() == AttachMode::Tcx);
        match (tc, tcx) {
            (true, true) => "tc+tcx",
            (true, false) => "tc",
            (false, true) => "tcx",
            (false, false) => "none",
        }
    }

    /// Whether both programs are attached.
    pub fn complete(&self) -> bool {
        Hook::LXC
            .iter()
            .all(|hook| self.hooks.iter().any(|h| h.hook == *hook))
    }
}

impl Datapath {
    /// Attaches both programs to the NEW lxc `lxc_name` (`ifindex`, in the namespace of
    /// `netlink`) as tc filters: its `clsact` qdisc, then one direct-action filter per hook
    /// at [`TC_PRIORITY`]/[`TC_HANDLE`] — three netlink round trips, none waiting for an RCU
    /// grace period. A filter already there is an error (use [`Datapath::adopt_endpoint`]
    /// for an lxc of a previous run). Nothing to undo on failure beyond deleting the lxc,
    /// which removes its qdisc and filters.
    pub async fn attach_endpoint(
        &self,
        netlink: &Netlink,
        lxc_name: &str,
        ifindex: u32,
    ) -> Result<LxcAttachment, DatapathError> {
        netlink
            .ensure_clsact(ifindex)
            .await
            .map_err(|source| DatapathError::Filter {
                op: "add the clsact qdisc for",
                program: Hook::FromContainer.program(),
                interface: lxc_name.to_owned(),
                source: Box::new(source),
            })?;
        let mut hooks = Vec::new();
        for hook in Hook::LXC {
            self.set_filter(
                netlink,
                lxc_name,
                ifindex,
                hook,
                TC_PRIORITY,
                TC_HANDLE,
                false,
            )
            .await?;
            hooks.push(HookAttachment {
                hook,
                point: AttachPoint::Filter {
                    priority: TC_PRIORITY,
                    handle: TC_HANDLE,
                },
                program_id: self.identity(hook).id,
                change: Some(AttachChange::Attached),
            });
        }
        Ok(LxcAttachment {
            lxc_name: lxc_name.to_owned(),
            ifindex,
            hooks,
        })
    }

    /// The programs on the lxc `lxc_name` (`ifindex`): its pinned TCX links and our tc
    /// filters, as the kernel has them now.
    pub async fn attachment(
        &self,
        netlink: &Netlink,
        lxc_name: &str,
        ifindex: u32,
    ) -> Result<LxcAttachment, DatapathError> {
        let pins = self.link_pins()?;
        let mut hooks = Vec::new();
        for hook in Hook::LXC {
            if let Some(pin) = self.link_pin_of(&pins, lxc_name, ifindex, hook) {
                let program_id = pinned_program(&pin).unwrap_or(0);
                hooks.push(HookAttachment {
                    hook,
                    point: AttachPoint::Link { pin },
                    program_id,
                    change: None,
                });
                continue;
            }
            let filters = self.filters(netlink, lxc_name, ifindex, hook).await?;
            if let Some(f) = filters.iter().find(|f| f.name == hook.filter_name()) {
                hooks.push(HookAttachment::filter(hook, f, None));
            }
        }
        Ok(LxcAttachment {
            lxc_name: lxc_name.to_owned(),
            ifindex,
            hooks,
        })
    }

    /// Every lxc of `netlink`'s namespace with at least one of our programs, sorted by name.
    pub async fn attachments(
        &self,
        netlink: &Netlink,
    ) -> Result<Vec<LxcAttachment>, DatapathError> {
        let links = netlink
            .links()
            .await
            .map_err(|source| DatapathError::Filter {
                op: "list the links to find",
                program: Hook::FromContainer.program(),
                interface: "lxc*".to_owned(),
                source: Box::new(source),
            })?;
        let mut lxcs: Vec<_> = links
            .into_iter()
            .filter(|l| l.name.starts_with(LXC_PREFIX))
            .collect();
        lxcs.sort_by(|a, b| a.name.cmp(&b.name));
        let mut attachments = Vec::new();
        for lxc in lxcs {
            let attachment = self.attachment(netlink, &lxc.name, lxc.index).await?;
            if !attachment.hooks.is_empty() {
                attachments.push(attachment);
            }
        }
        Ok(attachments)
    }

    /// The `bpf` filters on `hook` of the lxc (ours and any other).
    pub(super) async fn filters(
        &self,
        netlink: &Netlink,
        lxc: &str,
        ifindex: u32,
        hook: Hook,
    ) -> Result<Vec<BpfFilter>, DatapathError> {
        netlink
            .bpf_filters(ifindex, hook.tc_hook())
            .await
            .map_err(|source| DatapathError::Filter {
                op: "list the filters of",
                program: hook.program(),
                interface: lxc.to_owned(),
                source: Box::new(source),
            })
    }

    /// Attaches our program of `hook` as the lxc's filter at `priority`/`handle` (with
    /// `replace`: atomically replaces the program of the filter there).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn set_filter(
        &self,
        netlink: &Netlink,
        lxc: &str,
        ifindex: u32,
        hook: Hook,
        priority: u16,
        handle: u32,
        replace: bool,
    ) -> Result<(), DatapathError> {
        let fd = program(&self.ebpf, hook)?
            .fd()
            .map_err(program_error(hook))?;
        netlink
            .set_bpf_filter(
                ifindex,
                hook.tc_hook(),
                priority,
                handle,
                fd.as_fd(),
                hook.filter_name(),
                replace,
            )
            .await
            .map_err(|source| DatapathError::Filter {
                op: if replace { "replace" } else { "attach" },
                program: hook.program(),
                interface: lxc.to_owned(),
                source: Box::new(source),
            })
    }
}
