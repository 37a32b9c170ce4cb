//! The datapath's programs and where each hooks — on an lxc, on `kino_vxlan` (the overlay,
//! issue #13), or on the node's underlay device (native mode's host routing): the names that tie a program in the object to its tc filter, its TCX link pin
//! and its attach point.

use aya::programs::TcAttachType;

use crate::netlink::TcHook;

/// A program of the datapath and where it hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    /// `from_container`: lxc ingress, packets the pod sends.
    FromContainer,
    /// `to_container`: lxc egress, packets the stack sends toward the pod.
    ToContainer,
    /// `from_overlay`: `kino_vxlan` ingress, decapsulated packets from other nodes.
    FromOverlay,
    /// `to_overlay`: `kino_vxlan` egress, packets about to be encapsulated.
    ToOverlay,
    /// `from_netdev`: the underlay device's ingress in native mode, packets for local pods.
    FromNetdev,
}

impl Hook {
    /// Every program of the object, in load order.
    pub const ALL: [Hook; 5] = [
        Hook::FromContainer,
        Hook::ToContainer,
        Hook::FromOverlay,
        Hook::ToOverlay,
        Hook::FromNetdev,
    ];

    /// The programs of an lxc, in attach order.
    pub const LXC: [Hook; 2] = [Hook::FromContainer, Hook::ToContainer];

    /// The programs of `kino_vxlan`, in attach order.
    pub const OVERLAY: [Hook; 2] = [Hook::FromOverlay, Hook::ToOverlay];

    /// The programs of the underlay device in native mode.
    pub const NETDEV: [Hook; 1] = [Hook::FromNetdev];

    /// The program's name in the object (and the suffix of its link pins).
    pub fn program(self) -> &'static str {
        match self {
            Hook::FromContainer => "from_container",
            Hook::ToContainer => "to_container",
            Hook::FromOverlay => "from_overlay",
            Hook::ToOverlay => "to_overlay",
            Hook::FromNetdev => "from_netdev",
        }
    }

    /// The name of its tc filter (`TCA_BPF_NAME`): how a restarted agent recognises its
    /// filters.
    pub fn filter_name(self) -> &'static str {
        match self {
            Hook::FromContainer => "kino_from_container",
            Hook::ToContainer => "kino_to_container",
            Hook::FromOverlay => "kino_from_overlay",
            Hook::ToOverlay => "kino_to_overlay",
            Hook::FromNetdev => "kino_from_netdev",
        }
    }

    pub(super) fn attach_type(self) -> TcAttachType {
        match self.tc_hook() {
            TcHook::Ingress => TcAttachType::Ingress,
            TcHook::Egress => TcAttachType::Egress,
        }
    }

    /// The device's hook it runs on: what arrives (ingress) or leaves (egress).
    pub(super) fn tc_hook(self) -> TcHook {
        match self {
            Hook::FromContainer | Hook::FromOverlay | Hook::FromNetdev => TcHook::Ingress,
            Hook::ToContainer | Hook::ToOverlay => TcHook::Egress,
        }
    }

    pub(super) fn from_program(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|h| h.program() == name)
    }
}
