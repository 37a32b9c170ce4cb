//! The datapath's programs and where each hooks on an lxc: the names that tie a program in the
//! object to its tc filter, its TCX link pin and its attach point.

use aya::programs::TcAttachType;

use crate::netlink::TcHook;

/// A program of the datapath and where it hooks on an lxc.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    /// `from_container`: lxc ingress, packets the pod sends.
    FromContainer,
    /// `to_container`: lxc egress, packets the stack sends toward the pod.
    ToContainer,
}

impl Hook {
    /// Both hooks, in attach order.
    pub const ALL: [Hook; 2] = [Hook::FromContainer, Hook::ToContainer];

    /// The program's name in the object (and the suffix of its link pins).
    pub fn program(self) -> &'static str {
        match self {
            Hook::FromContainer => "from_container",
            Hook::ToContainer => "to_container",
        }
    }

    /// The name of its tc filter on an lxc (`TCA_BPF_NAME`): how a restarted agent
    /// recognises its filters.
    pub fn filter_name(self) -> &'static str {
        match self {
            Hook::FromContainer => "kino_from_container",
            Hook::ToContainer => "kino_to_container",
        }
    }

    pub(super) fn attach_type(self) -> TcAttachType {
        match self {
            Hook::FromContainer => TcAttachType::Ingress,
            Hook::ToContainer => TcAttachType::Egress,
        }
    }

    pub(super) fn tc_hook(self) -> TcHook {
        match self {
            Hook::FromContainer => TcHook::Ingress,
            Hook::ToContainer => TcHook::Egress,
        }
    }

    pub(super) fn from_program(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|h| h.program() == name)
    }
}
