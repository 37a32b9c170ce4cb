//! Loads the datapath object (compiled by build.rs, embedded here) with aya, pins its maps
//! under `/sys/fs/bpf/kino/<node>/`, attaches its programs to lxcs as pinned TCX links, and
//! adopts what a previous agent left: pinned maps are reused as they are (their entries and
//! counters survive) and every pinned link is switched atomically to the freshly loaded
//! program, so traffic keeps flowing across an agent restart (even `kill -9`).
//!
//! Attaching resolves interface names in the calling thread's network namespace: call
//! [`Datapath::load`] and [`Datapath::attach_endpoint`] from the node's namespace.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{LinkOrder, ProgramError, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use nix::mount::MsFlags;
use nix::sys::statfs::{BPF_FS_MAGIC, statfs};

use super::conntrack::{CT_MAP, ConntrackError, ConntrackMap};
use super::ipcache::{IPCACHE_MAP, IpcacheError, IpcacheMap};
use super::maps::{ALL_MAPS, ENDPOINTS_MAP, EndpointMaps, LXC_MAP, METRICS_MAP, MapOpError};
use super::policy::{EP_POLICY_MAP, POLICY_MAP, PolicyMapError, PolicyMaps};

/// The datapath object, as compiled by build.rs from `bpf/datapath.bpf.c`.
pub static DATAPATH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/datapath.bpf.o"));

/// Where bpffs is mounted.
pub const BPFFS_MOUNT: &str = "/sys/fs/bpf";
/// Default root of the agent's pins; a node's pins live in `<root>/<node>/`.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/kino";
/// Sub-directory of the node's pin directory holding the TCX link pins.
pub const LINKS_DIR: &str = "links";

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

    fn attach_type(self) -> TcAttachType {
        match self {
            Hook::FromContainer => TcAttachType::Ingress,
            Hook::ToContainer => TcAttachType::Egress,
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
    /// Link pins whose program was replaced by the newly loaded one (file names).
    pub links_adopted: Vec<String>,
    /// Link pins of lxcs that no longer exist, removed.
    pub stale_links_removed: Vec<String>,
}

/// The programs of one lxc, as pinned links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LxcAttachment {
    /// The lxc's name.
    pub lxc_name: String,
    /// Its ifindex when attached.
    pub ifindex: u32,
    /// The pinned link of each hook.
    pub pins: Vec<(Hook, PathBuf)>,
}

/// Capacities of the maps that grow with policy, for [`Datapath::load_with`]. They apply
/// when a map is created; a map adopted from a previous agent keeps its capacity (remove the
/// node's pins to change it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapCapacities {
    /// Prefixes in `kino_policy` (all endpoints; a port range takes up to 30).
    pub policy: u32,
    /// Prefixes in `kino_ipcache`.
    pub ipcache: u32,
    /// Connections in `kino_ct` (preallocated: about 150 bytes each).
    pub conntrack: u32,
}

impl Default for MapCapacities {
    fn default() -> Self {
        MapCapacities {
            policy: super::policy::POLICY_MAX_ENTRIES,
            ipcache: super::ipcache::IPCACHE_MAX_ENTRIES,
            conntrack: super::conntrack::CT_MAX_ENTRIES,
        }
    }
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
        let maps_reused = ALL_MAPS
            .into_iter()
            .filter(|name| pin_dir.join(name).exists())
            .collect();

        // The pin directory is ALWAYS set: without it aya pins into the bpffs root, where
        // another object's map of the same name would be silently reused.
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pin_dir)
            .map_max_entries(POLICY_MAP, capacities.policy)
            .map_max_entries(IPCACHE_MAP, capacities.ipcache)
            .map_max_entries(CT_MAP, capacities.conntrack)
            .load(DATAPATH_OBJECT)
            .map_err(|source| DatapathError::Load {
                pin_dir: pin_dir.clone(),
                source: Box::new(source),
            })?;
        for hook in Hook::ALL {
            program_mut(&mut ebpf, hook)?
                .load()
                .map_err(|source| DatapathError::Program {
                    program: hook.program(),
                    source: Box::new(source),
                })?;
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
                ..Adoption::default()
            },
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

    /// Attaches both programs to the lxc `lxc_name` (in this thread's network namespace) as
    /// pinned TCX links. Already attached: the programs are replaced by ours (idempotent).
    /// On failure the links this call created are removed again.
    pub fn attach_endpoint(&mut self, lxc_name: &str) -> Result<LxcAttachment, DatapathError> {
        let ifindex = ifindex_of(lxc_name)?;
        let mut pins = Vec::new();
        let mut created = Vec::new();
        for hook in Hook::ALL {
            let path = self
                .links_dir()
                .join(link_pin_name(lxc_name, ifindex, hook));
            let result = if path.exists() {
                self.replace_program(&path, lxc_name, hook)
            } else {
                self.attach_new(lxc_name, hook, &path)
                    .map(|()| created.push(path.clone()))
            };
            if let Err(e) = result {
                for pinned in &created {
                    let _ = remove_pin(pinned);
                }
                return Err(e);
            }
            pins.push((hook, path));
        }
        Ok(LxcAttachment {
            lxc_name: lxc_name.to_owned(),
            ifindex,
            pins,
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

    /// Detaches both programs from the lxc `lxc_name` by removing its link pins (whatever
    /// ifindex they recorded, so this works after the lxc is gone). Returns how many pins were
    /// removed; 0 when it was not attached.
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

    /// Every lxc with pinned links, sorted by name.
    pub fn attachments(&self) -> Result<Vec<LxcAttachment>, DatapathError> {
        let mut attachments: Vec<LxcAttachment> = Vec::new();
        for (file, lxc, ifindex, hook) in self.link_pins()? {
            let path = self.links_dir().join(file);
            match attachments.last_mut() {
                Some(last) if last.lxc_name == lxc && last.ifindex == ifindex => {
                    last.pins.push((hook, path));
                }
                _ => attachments.push(LxcAttachment {
                    lxc_name: lxc,
                    ifindex,
                    pins: vec![(hook, path)],
                }),
            }
        }
        Ok(attachments)
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
