//! Loads the datapath object (compiled by build.rs, embedded here) with aya, pins its maps
//! under `/sys/fs/bpf/kino/<node>/`, attaches its programs to lxcs as direct-action `bpf`
//! filters on their `clsact` qdisc (netlink tc, [`AttachMode::Tc`]), and adopts what a
//! previous agent left: pinned maps are reused as they are (their entries and counters
//! survive), the filters of each known lxc are kept when they run the same program over the
//! same maps and switched atomically otherwise, and the pinned TCX links of agents from
//! before the switch to tc ([`AttachMode::Tcx`]) are switched atomically to the freshly
//! loaded program and kept. Traffic keeps flowing across an agent restart (even `kill -9`).
//!
//! Why tc and not TCX for lxcs: creating (and releasing) a TCX link waits for an RCU grace
//! period under `rtnl_lock` — 11-16 ms per program here, the largest part of a CNI ADD —
//! where a filter change does not wait. Filters live with the device, so they need no pins:
//! deleting the lxc removes them.
//!
//! TCX pins resolve interface names in the calling thread's network namespace: call
//! [`Datapath::load`] from the node's namespace, and attach through a [`Netlink`] opened
//! there.

use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{LinkOrder, ProgramError, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use nix::mount::MsFlags;
use nix::sys::statfs::{BPF_FS_MAGIC, statfs};

use super::abi::{
    ALL_MAPS, CT_MAP, ENDPOINTS_MAP, EP_POLICY_MAP, IPCACHE_MAP, LXC_MAP, LXC_PREFIX, METRICS_MAP,
    POLICY_MAP,
};
use super::conntrack::{ConntrackError, ConntrackMap};
use super::ipcache::{IpcacheError, IpcacheMap};
use super::map_access::MapOpError;
use super::maps::EndpointMaps;
use super::policy::{PolicyMapError, PolicyMaps};
use crate::netlink::{Netlink, NetlinkError, TcHook};

/// Part of the ABI ([`super::abi`]), still reachable here for callers that found it here.
pub use super::abi::{DATAPATH_OBJECT, MapCapacities};

/// Where bpffs is mounted.
pub const BPFFS_MOUNT: &str = "/sys/fs/bpf";
/// Default root of the agent's pins; a node's pins live in `<root>/<node>/`.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/kino";
/// Sub-directory of the node's pin directory holding the TCX link pins (of lxcs attached by
/// agents from before the switch to tc).
pub const LINKS_DIR: &str = "links";
/// Priority of the agent's tc filters on an lxc (runs before any other filter).
pub const TC_PRIORITY: u16 = 1;
/// Handle of the agent's tc filters within [`TC_PRIORITY`].
pub const TC_HANDLE: u32 = 1;

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

    fn attach_type(self) -> TcAttachType {
        match self {
            Hook::FromContainer => TcAttachType::Ingress,
            Hook::ToContainer => TcAttachType::Egress,
        }
    }

    fn tc_hook(self) -> TcHook {
        match self {
            Hook::FromContainer => TcHook::Ingress,
            Hook::ToContainer => TcHook::Egress,
        }
    }

    fn from_program(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|h| h.program() == name)
    }
}

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
    /// Each attached hook, in [`Hook::ALL`] order (a hook missing here has no program).
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
        Hook::ALL
            .iter()
            .all(|hook| self.hooks.iter().any(|h| h.hook == *hook))
    }
}

/// What identifies a loaded program for adoption: two programs with the same tag over the
/// same pinned maps behave the same. (Maps that are not pinned — per-CPU scratch space — are
/// each load's own and hold nothing the agent writes, so they do not count.)
#[derive(Debug, Clone, PartialEq, Eq)]
struct ProgramIdentity {
    id: u32,
    tag: [u8; 8],
    /// The ids of the pinned maps it uses, sorted.
    pinned_maps: Vec<u32>,
}

/// Of the maps `ids`, those that are one of the node's pinned maps (by name, as the kernel
/// keeps it: at most 15 bytes), sorted.
fn pinned_maps(ids: &[u32]) -> Vec<u32> {
    let pinned = |name: &str| {
        ALL_MAPS
            .iter()
            .any(|m| m.as_bytes()[..m.len().min(15)] == *name.as_bytes())
    };
    let mut ids: Vec<u32> = ids
        .iter()
        .copied()
        .filter(|id| {
            aya::maps::MapInfo::from_id(*id)
                .ok()
                .is_some_and(|info| info.name_as_str().is_some_and(pinned))
        })
        .collect();
    ids.sort_unstable();
    ids
}

/// The loaded datapath of one node: programs loaded, maps pinned and typed.
#[derive(Debug)]
pub struct Datapath {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    maps: EndpointMaps,
    policy: PolicyMaps,
    ipcache: IpcacheMap,
    conntrack: ConntrackMap,
    adoption: Adoption,
    /// Each hook's loaded program, to tell it from a previous agent's.
    identities: Vec<(Hook, ProgramIdentity)>,
    /// [`Datapath::same_program`]'s answers by (hook, program id): a previous agent's
    /// program sits on every lxc, and finding its maps walks every program of the machine.
    same_program_seen: std::sync::Mutex<std::collections::HashMap<(Hook, u32), bool>>,
}

/// Mounts bpffs at `path` unless a bpffs is already there; `Ok(true)` if it mounted one.
pub fn ensure_bpffs(path: &Path) -> Result<bool, DatapathError> {
    // Two loads of one process racing here would stack two mounts.
    static MOUNTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _serialised = MOUNTING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if is_bpffs(path) {
        return Ok(false);
    }
    fs::create_dir_all(path).map_err(|source| DatapathError::PinPath {
        path: path.to_owned(),
        source,
    })?;
    nix::mount::mount(
        Some("bpffs"),
        path,
        Some("bpf"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| DatapathError::Bpffs {
        path: path.to_owned(),
        source,
    })?;
    Ok(true)
}

/// True when `path` is on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC)
}

/// Unpins the node's maps whose key or value size differs from the object's definition of
/// them, so the loader creates them anew instead of reusing a map whose layout the programs
/// would misread (aya reuses a pin by name without looking at it), and those whose capacity
/// is not the one asked for (an operator changed it). Returns their names.
fn remove_incompatible_pins(
    pin_dir: &Path,
    capacities: &MapCapacities,
) -> Result<Vec<&'static str>, DatapathError> {
    let pinned: Vec<&'static str> = ALL_MAPS
        .into_iter()
        .filter(|name| pin_dir.join(name).exists())
        .collect();
    if pinned.is_empty() {
        return Ok(Vec::new());
    }
    let object = aya_obj::Object::parse(DATAPATH_OBJECT).map_err(|e| DatapathError::Load {
        pin_dir: pin_dir.to_owned(),
        source: Box::new(aya::EbpfError::ParseError(e)),
    })?;
    let mut replaced = Vec::new();
    for name in pinned {
        let Some(def) = object.maps.get(name) else {
            return Err(DatapathError::MissingMap(name));
        };
        let path = pin_dir.join(name);
        let info = aya::maps::MapInfo::from_pin(&path).map_err(|source| MapOpError {
            map: name,
            op: format!("reading the layout of the pinned map {}", path.display()),
            source,
        })?;
        let max_entries = capacities
            .sized()
            .into_iter()
            .find(|(map, _)| *map == name)
            .map_or(def.max_entries(), |(_, entries)| entries);
        if info.key_size() != def.key_size()
            || info.value_size() != def.value_size()
            || info.max_entries() != max_entries
        {
            tracing::warn!(
                map = name,
                pinned_key_size = info.key_size(),
                pinned_value_size = info.value_size(),
                pinned_max_entries = info.max_entries(),
                key_size = def.key_size(),
                value_size = def.value_size(),
                max_entries,
                "pinned map has another layout or capacity (another agent version or \
                 configuration): replacing it"
            );
            fs::remove_file(&path).map_err(|source| DatapathError::PinPath {
                path: path.clone(),
                source,
            })?;
            replaced.push(name);
        }
    }
    Ok(replaced)
}

/// The pin directory of `node` under `pin_root`.
pub fn node_pin_dir(pin_root: &Path, node: &str) -> Result<PathBuf, DatapathError> {
    crate::node::validate_node_name(node).map_err(|_| DatapathError::NodeName(node.to_owned()))?;
    Ok(pin_root.join(node))
}

fn create_dir(path: &Path) -> Result<(), DatapathError> {
    fs::create_dir_all(path).map_err(|source| DatapathError::PinPath {
        path: path.to_owned(),
        source,
    })
}

fn ifindex_of(name: &str) -> Result<u32, DatapathError> {
    nix::net::if_::if_nametoindex(name).map_err(|source| DatapathError::Interface {
        name: name.to_owned(),
        source,
    })
}

/// A link pin's file name: `<lxc>-<ifindex>-<program>` (bpffs refuses names with a '.');
/// the ifindex tells a live link from the dead one of a deleted lxc.
fn link_pin_name(lxc: &str, ifindex: u32, hook: Hook) -> String {
    format!("{lxc}-{ifindex}-{}", hook.program())
}

fn parse_link_pin_name(name: &str) -> Option<(&str, u32, Hook)> {
    let mut parts = name.rsplitn(3, '-');
    let hook = Hook::from_program(parts.next()?)?;
    let ifindex = parts.next()?.parse().ok()?;
    Some((parts.next()?, ifindex, hook))
}

impl Datapath {
    /// Loads the datapath of `node`, pinning its maps in `<pin_root>/<node>/` (bpffs is
    /// mounted at [`BPFFS_MOUNT`] first if `pin_root` is below it and nothing is mounted),
    /// and adopts the maps and links a previous agent pinned there. Maps get their default
    /// capacities.
    pub fn load(pin_root: &Path, node: &str) -> Result<Self, DatapathError> {
        Self::load_with(pin_root, node, MapCapacities::default())
    }

    /// [`Datapath::load`] with the capacities of the policy-sized maps.
    pub fn load_with(
        pin_root: &Path,
        node: &str,
        capacities: MapCapacities,
    ) -> Result<Self, DatapathError> {
        if pin_root.starts_with(BPFFS_MOUNT) {
            ensure_bpffs(Path::new(BPFFS_MOUNT))?;
        }
        let pin_dir = node_pin_dir(pin_root, node)?;
        create_dir(&pin_dir.join(LINKS_DIR))?;
        if !is_bpffs(&pin_dir) {
            return Err(DatapathError::NotBpffs { path: pin_dir });
        }
        let maps_replaced = remove_incompatible_pins(&pin_dir, &capacities)?;
        let maps_reused = ALL_MAPS
            .into_iter()
            .filter(|name| pin_dir.join(name).exists())
            .collect();

        // The pin directory is ALWAYS set: without it aya pins into the bpffs root, where
        // another object's map of the same name would be silently reused.
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(&pin_dir);
        for (map, entries) in capacities.sized() {
            loader.map_max_entries(map, entries);
        }
        let mut ebpf = loader
            .load(DATAPATH_OBJECT)
            .map_err(|source| DatapathError::Load {
                pin_dir: pin_dir.clone(),
                source: Box::new(source),
            })?;
        let mut identities = Vec::new();
        for hook in Hook::ALL {
            let program = program_mut(&mut ebpf, hook)?;
            let program_error = |source| DatapathError::Program {
                program: hook.program(),
                source: Box::new(source),
            };
            program.load().map_err(program_error)?;
            let info = program.info().map_err(program_error)?;
            identities.push((
                hook,
                ProgramIdentity {
                    id: info.id(),
                    tag: info.tag().to_be_bytes(),
                    pinned_maps: pinned_maps(
                        &info.map_ids().map_err(program_error)?.unwrap_or_default(),
                    ),
                },
            ));
        }
        let mut take =
            |name: &'static str| ebpf.take_map(name).ok_or(DatapathError::MissingMap(name));
        let maps = EndpointMaps::new(take(ENDPOINTS_MAP)?, take(LXC_MAP)?, take(METRICS_MAP)?)?;
        let policy = PolicyMaps::new(take(POLICY_MAP)?, take(EP_POLICY_MAP)?)?;
        let ipcache = IpcacheMap::new(take(IPCACHE_MAP)?)?;
        let conntrack = ConntrackMap::new(take(CT_MAP)?)?;

        let mut datapath = Self {
            ebpf,
            pin_dir,
            maps,
            policy,
            ipcache,
            conntrack,
            adoption: Adoption {
                maps_reused,
                maps_replaced,
                ..Adoption::default()
            },
            identities,
            same_program_seen: Default::default(),
        };
        datapath.adopt_links()?;
        Ok(datapath)
    }

    /// The node's pin directory (`/sys/fs/bpf/kino/<node>`).
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// What this load adopted from a previous agent.
    pub fn adoption(&self) -> &Adoption {
        &self.adoption
    }

    /// The endpoint maps.
    pub fn maps(&self) -> &EndpointMaps {
        &self.maps
    }

    /// The endpoint maps, to change them.
    pub fn maps_mut(&mut self) -> &mut EndpointMaps {
        &mut self.maps
    }

    /// The policy maps (entries and enforcement of every endpoint).
    pub fn policy(&self) -> &PolicyMaps {
        &self.policy
    }

    /// The policy maps, to change them.
    pub fn policy_mut(&mut self) -> &mut PolicyMaps {
        &mut self.policy
    }

    /// The ipcache.
    pub fn ipcache(&self) -> &IpcacheMap {
        &self.ipcache
    }

    /// The ipcache, to change it.
    pub fn ipcache_mut(&mut self) -> &mut IpcacheMap {
        &mut self.ipcache
    }

    /// The conntrack map.
    pub fn conntrack(&self) -> &ConntrackMap {
        &self.conntrack
    }

    /// The conntrack map, to remove entries.
    pub fn conntrack_mut(&mut self) -> &mut ConntrackMap {
        &mut self.conntrack
    }

    fn links_dir(&self) -> PathBuf {
        self.pin_dir.join(LINKS_DIR)
    }

    /// Switches every live pinned link to the programs just loaded; removes dead ones.
    fn adopt_links(&mut self) -> Result<(), DatapathError> {
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

    /// Every well-formed link pin: (file name, lxc, ifindex, hook), sorted by file name.
    fn link_pins(&self) -> Result<Vec<(String, String, u32, Hook)>, DatapathError> {
        let dir = self.links_dir();
        let entries = fs::read_dir(&dir).map_err(|source| DatapathError::PinPath {
            path: dir.clone(),
            source,
        })?;
        let mut pins = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| DatapathError::PinPath {
                path: dir.clone(),
                source,
            })?;
            let file = entry.file_name().to_string_lossy().into_owned();
            if let Some((lxc, ifindex, hook)) = parse_link_pin_name(&file) {
                pins.push((file.clone(), lxc.to_owned(), ifindex, hook));
            }
        }
        pins.sort();
        Ok(pins)
    }

    /// Atomically replaces the program behind the pinned link at `path` with ours.
    fn replace_program(&mut self, path: &Path, lxc: &str, hook: Hook) -> Result<(), DatapathError> {
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
        for hook in Hook::ALL {
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
        let pins = self.link_pins()?;
        let mut hooks = Vec::new();
        let mut have_qdisc = false;
        for hook in Hook::ALL {
            let pinned = pins
                .iter()
                .find(|(_, lxc, index, h)| lxc == lxc_name && *index == ifindex && *h == hook);
            if let Some((file, ..)) = pinned {
                let pin = self.links_dir().join(file);
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
                    hooks.push(HookAttachment {
                        hook,
                        point: AttachPoint::Filter {
                            priority: f.priority,
                            handle: f.handle,
                        },
                        program_id: f.program_id,
                        change: Some(AttachChange::Kept),
                    });
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
        for hook in Hook::ALL {
            let pinned = pins
                .iter()
                .find(|(_, lxc, index, h)| lxc == lxc_name && *index == ifindex && *h == hook);
            if let Some((file, ..)) = pinned {
                let pin = self.links_dir().join(file);
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
                hooks.push(HookAttachment {
                    hook,
                    point: AttachPoint::Filter {
                        priority: f.priority,
                        handle: f.handle,
                    },
                    program_id: f.program_id,
                    change: None,
                });
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

    fn identity(&self, hook: Hook) -> &ProgramIdentity {
        &self
            .identities
            .iter()
            .find(|(h, _)| *h == hook)
            .expect("load records every hook's program")
            .1
    }

    /// Whether the program `id` (tag `tag`) does what ours of `hook` does: it is ours, or the
    /// same instructions over the same pinned maps (a previous agent of this build with the
    /// pins it left). Another build, or maps created anew, differ.
    fn same_program(&self, hook: Hook, id: u32, tag: &[u8; 8]) -> bool {
        let ours = self.identity(hook);
        if id == ours.id {
            return true;
        }
        if *tag != ours.tag {
            return false;
        }
        let mut seen = self
            .same_program_seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *seen.entry((hook, id)).or_insert_with(|| {
            aya::programs::loaded_programs()
                .flatten()
                .find(|p| p.id() == id)
                .and_then(|p| p.map_ids().ok().flatten())
                .is_some_and(|maps| pinned_maps(&maps) == ours.pinned_maps)
        })
    }

    async fn filters(
        &self,
        netlink: &Netlink,
        lxc: &str,
        ifindex: u32,
        hook: Hook,
    ) -> Result<Vec<crate::netlink::BpfFilter>, DatapathError> {
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

    #[allow(clippy::too_many_arguments)]
    async fn set_filter(
        &self,
        netlink: &Netlink,
        lxc: &str,
        ifindex: u32,
        hook: Hook,
        priority: u16,
        handle: u32,
        replace: bool,
    ) -> Result<(), DatapathError> {
        let program = self
            .ebpf
            .program(hook.program())
            .ok_or_else(|| DatapathError::Program {
                program: hook.program(),
                source: Box::new(ProgramError::UnexpectedProgramType),
            })?;
        let program: &SchedClassifier =
            program
                .try_into()
                .map_err(|source| DatapathError::Program {
                    program: hook.program(),
                    source: Box::new(source),
                })?;
        let fd = program.fd().map_err(|source| DatapathError::Program {
            program: hook.program(),
            source: Box::new(source),
        })?;
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

    /// Attaches both programs to the lxc `lxc_name` (in this thread's network namespace) as
    /// pinned TCX links, as agents before the switch to tc did; already attached: the
    /// programs are replaced by ours. Not used by the agent any more: it makes the lxcs of an
    /// older agent for the tests of [`Datapath::adopt_endpoint`]. On failure the links this
    /// call created are removed again.
    pub fn attach_endpoint_tcx(&mut self, lxc_name: &str) -> Result<LxcAttachment, DatapathError> {
        let ifindex = ifindex_of(lxc_name)?;
        let mut hooks = Vec::new();
        let mut created = Vec::new();
        for hook in Hook::ALL {
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

    /// Removes every pin of `node` under `pin_root` (links first, which detaches the programs,
    /// then maps) and its directory: the node's datapath is gone once no process holds it.
    /// Nothing there is fine.
    pub fn remove_pins(pin_root: &Path, node: &str) -> Result<(), DatapathError> {
        let pin_dir = node_pin_dir(pin_root, node)?;
        let links = pin_dir.join(LINKS_DIR);
        if let Ok(entries) = fs::read_dir(&links) {
            for entry in entries.flatten() {
                remove_pin(&entry.path())?;
            }
        }
        remove_dir(&links)?;
        for name in ALL_MAPS {
            remove_pin(&pin_dir.join(name))?;
        }
        remove_dir(&pin_dir)
    }
}

/// `error` and its sources, so aya's terse top-level messages keep their cause (errno).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The id of the program behind the pinned link at `pin`.
fn pinned_program(pin: &Path) -> Option<u32> {
    let link = PinnedLink::from_pin(pin).ok()?;
    FdLink::from(link).info().ok().map(|info| info.program_id())
}

fn program_mut(ebpf: &mut Ebpf, hook: Hook) -> Result<&mut SchedClassifier, DatapathError> {
    let program = ebpf
        .program_mut(hook.program())
        .ok_or_else(|| DatapathError::Program {
            program: hook.program(),
            source: Box::new(ProgramError::UnexpectedProgramType),
        })?;
    program.try_into().map_err(|source| DatapathError::Program {
        program: hook.program(),
        source: Box::new(source),
    })
}

fn remove_pin(path: &Path) -> Result<(), DatapathError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DatapathError::PinPath {
            path: path.to_owned(),
            source,
        }),
    }
}

fn remove_dir(path: &Path) -> Result<(), DatapathError> {
    match fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DatapathError::PinPath {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_pin_names_round_trip() {
        for hook in Hook::ALL {
            let name = link_pin_name("lxc0123456789ab", 42, hook);
            assert_eq!(
                parse_link_pin_name(&name),
                Some(("lxc0123456789ab", 42, hook))
            );
        }
        assert_eq!(parse_link_pin_name("lxc1-x-from_container"), None);
        assert_eq!(parse_link_pin_name("lxc1-4-other"), None);
        assert_eq!(parse_link_pin_name("junk"), None);
    }

    #[test]
    fn node_pin_dirs_need_dns_names() {
        assert_eq!(
            node_pin_dir(Path::new(DEFAULT_PIN_ROOT), "node-1").expect("valid"),
            PathBuf::from("/sys/fs/bpf/kino/node-1")
        );
        for bad in ["", "..", "a/b", "Node"] {
            assert!(
                node_pin_dir(Path::new(DEFAULT_PIN_ROOT), bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_object_has_both_programs_and_all_maps() {
        let object = aya_obj_names();
        for hook in Hook::ALL {
            assert!(
                object.contains(&hook.program().to_owned()),
                "{}",
                hook.program()
            );
        }
        for map in ALL_MAPS {
            assert!(object.contains(&map.to_owned()), "{map}");
        }
    }

    fn aya_obj_names() -> Vec<String> {
        use object::{Object, ObjectSymbol};
        let file = object::File::parse(DATAPATH_OBJECT).expect("ELF");
        file.symbols()
            .filter_map(|s| s.name().ok().map(str::to_owned))
            .collect()
    }
}
