//! Why loading, pinning or attaching the datapath failed: one error for the whole loader, with
//! messages that name the pin, program, map or interface and say what to do.

use std::io;
use std::path::PathBuf;

use aya::programs::ProgramError;

use super::BPFFS_MOUNT;
use crate::datapath::conntrack::ConntrackError;
use crate::datapath::ipcache::IpcacheError;
use crate::datapath::map_access::MapOpError;
use crate::datapath::policy::PolicyMapError;
use crate::netlink::NetlinkError;

/// Loading, pinning or attaching the datapath failed.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// bpffs is not mounted and could not be mounted.
    #[error(
        "cannot mount bpffs at {path}: {source}; mount it (mount -t bpf bpffs {path}) or run the agent as root"
    )]
    Bpffs {
        /// The mount point.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: nix::Error,
    },
    /// The pin directory is not on a bpffs.
    #[error(
        "pin directory {path} is not on a bpf filesystem; pins must live under a bpffs mount such as {BPFFS_MOUNT}"
    )]
    NotBpffs {
        /// The directory.
        path: PathBuf,
    },
    /// A pin directory or pin file could not be created, read or removed.
    #[error("pin path {path}: {source}")]
    PinPath {
        /// The path.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The node name cannot name a pin directory.
    #[error("node name {0:?} cannot name a pin directory (use a DNS name)")]
    NodeName(String),
    /// aya could not load the object (maps creation, relocation, BTF).
    #[error("loading the datapath object (pins in {pin_dir}): {source}")]
    Load {
        /// The node's pin directory.
        pin_dir: PathBuf,
        /// aya's error.
        #[source]
        source: Box<aya::EbpfError>,
    },
    /// A program is missing from the object or was refused by the verifier.
    #[error("program {program}: {source}")]
    Program {
        /// The program's name.
        program: &'static str,
        /// aya's error (the verifier log, for a refused program).
        #[source]
        source: Box<ProgramError>,
    },
    /// A map is missing from the object.
    #[error("map {0} is missing from the datapath object")]
    MissingMap(&'static str),
    /// A pinned map could not be used (another layout, or an I/O error).
    #[error(transparent)]
    Map(#[from] MapOpError),
    /// The policy maps could not be opened or read back.
    #[error(transparent)]
    PolicyMap(#[from] PolicyMapError),
    /// The ipcache could not be opened.
    #[error(transparent)]
    Ipcache(#[from] IpcacheError),
    /// The conntrack map could not be opened.
    #[error(transparent)]
    Conntrack(#[from] ConntrackError),
    /// The interface to attach to does not exist in this network namespace.
    #[error("interface {name} not found in the agent's network namespace: {source}")]
    Interface {
        /// The interface name.
        name: String,
        /// The operating system's error.
        #[source]
        source: nix::Error,
    },
    /// Reading, adding or replacing a tc filter failed.
    #[error("{op} {program} on {interface}: {source}")]
    Filter {
        /// What was being done.
        op: &'static str,
        /// The program's name.
        program: &'static str,
        /// The interface.
        interface: String,
        /// The netlink error.
        #[source]
        source: Box<NetlinkError>,
    },
    /// Attaching, replacing or pinning a TCX link failed.
    #[error("{op} {program} on {interface}: {reason}")]
    Link {
        /// What was being done.
        op: &'static str,
        /// The program's name.
        program: &'static str,
        /// The interface.
        interface: String,
        /// What failed.
        reason: String,
    },
}
