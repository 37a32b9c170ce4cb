//! The socket programs of `bpf/sock_lb.bpf.c`, loaded and attached: the object is loaded
//! with its maps pinned in the node's pin directory beside the datapath's (the datapath must
//! be loaded first: the programs report to its `kino_events`), and each program is attached
//! to the cgroup v2 root as a bpf link (multi-attach: every node's agent of the machine
//! attaches its own) pinned under `<pin dir>/cgroup/<program>`, so translation survives an
//! agent restart. A restarted agent attaches its freshly loaded programs and renames their
//! pins over the old ones: the old link goes with its last reference, without a moment with
//! neither. Removing the pins ([`remove_pins`], or removing the node's pin directory, as
//! `down.sh`, `cluster.sh down` and the test worlds do) detaches the programs.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use aya::programs::links::FdLink;
use aya::programs::{CgroupAttachMode, CgroupSockAddr};
use aya::{Ebpf, EbpfLoader};

use super::maps::LbMaps;
use super::netns::NetnsMap;
use crate::datapath::abi::{LB_MAGLEV_CHUNK, LB_MAGLEV_MAP, LB_MAPS, LB_NETNS_MAP, SOCK_LB_OBJECT};
use crate::datapath::map_access::{MapOpError, chain};

/// Sub-directory of the node's pin directory holding the cgroup link pins.
pub const CGROUP_LINKS_DIR: &str = "cgroup";

/// The programs of the object, in attach order.
pub const PROGRAMS: [&str; 8] = [
    "kino_sock4_connect",
    "kino_sock6_connect",
    "kino_sock4_sendmsg",
    "kino_sock6_sendmsg",
    "kino_sock4_recvmsg",
    "kino_sock6_recvmsg",
    "kino_sock4_getpeername",
    "kino_sock6_getpeername",
];

/// Where cgroup v2 is mounted when nothing says otherwise.
pub const DEFAULT_CGROUP_MOUNT: &str = "/sys/fs/cgroup";

/// Loading or attaching the socket programs failed.
#[derive(Debug, thiserror::Error)]
pub enum SockLbError {
    /// The object could not be loaded (its maps pinned in `pin_dir`).
    #[error("loading the socket load-balancing object (pins in {pin_dir}): {source}")]
    Load {
        /// The node's pin directory.
        pin_dir: PathBuf,
        /// aya's error.
        #[source]
        source: Box<aya::EbpfError>,
    },
    /// A program could not be loaded or attached.
    #[error("socket program {program}: {op}: {reason}")]
    Program {
        /// The program.
        program: &'static str,
        /// What was being done.
        op: &'static str,
        /// Why it failed (with its causes).
        reason: String,
    },
    /// A map of the object is missing.
    #[error("map {0} is missing from the socket load-balancing object")]
    MissingMap(&'static str),
    /// A map could not be typed.
    #[error(transparent)]
    Map(#[from] MapOpError),
    /// A pin or the cgroup could not be read or written.
    #[error("{path}: {source}")]
    Path {
        /// The path.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// No cgroup v2 mount was found.
    #[error(
        "no cgroup v2 (cgroup2) mount in /proc/self/mounts: socket load balancing needs one; \
         mount it or give --cgroup-root"
    )]
    NoCgroup2,
}

fn path_error(path: &Path) -> impl FnOnce(io::Error) -> SockLbError + '_ {
    move |source| SockLbError::Path {
        path: path.to_owned(),
        source,
    }
}

/// The cgroup v2 mount point (the first `cgroup2` line of `/proc/self/mounts`): the
/// default cgroup root (`/sys/fs/cgroup` on a unified host, `/sys/fs/cgroup/unified` on a
/// hybrid one).
pub fn cgroup2_mount() -> Result<PathBuf, SockLbError> {
    let mounts = fs::read_to_string("/proc/self/mounts")
        .map_err(path_error(Path::new("/proc/self/mounts")))?;
    cgroup2_mount_in(&mounts).ok_or(SockLbError::NoCgroup2)
}

fn cgroup2_mount_in(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, target, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (kind == "cgroup2").then(|| PathBuf::from(target))
    })
}

/// Capacity of `kino_lb_maglev` for tables of `table_size` slots: a table per possible
/// frontend, at most 2^20 chunks (the hash map's bucket array grows with it).
pub fn maglev_capacity(table_size: u32) -> u32 {
    let chunks = (table_size as usize).div_ceil(LB_MAGLEV_CHUNK) as u32;
    (crate::datapath::abi::LB_MAX_FRONTENDS * chunks).min(1 << 20)
}

/// The loaded socket programs of one node.
pub struct SockLb {
    ebpf: Ebpf,
    pin_dir: PathBuf,
}

impl std::fmt::Debug for SockLb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SockLb")
            .field("pin_dir", &self.pin_dir)
            .finish_non_exhaustive()
    }
}

/// Unpins LB maps whose layout or capacity differs from what this load wants (another agent
/// version, another table size), so they are created anew instead of misread.
fn remove_incompatible_pins(pin_dir: &Path, maglev_entries: u32) -> Result<(), SockLbError> {
    let object = aya_obj::Object::parse(SOCK_LB_OBJECT).map_err(|e| SockLbError::Load {
        pin_dir: pin_dir.to_owned(),
        source: Box::new(aya::EbpfError::ParseError(e)),
    })?;
    for name in LB_MAPS {
        let path = pin_dir.join(name);
        if !path.exists() {
            continue;
        }
        let def = object.maps.get(name).ok_or(SockLbError::MissingMap(name))?;
        let entries = if name == LB_MAGLEV_MAP {
            maglev_entries
        } else {
            def.max_entries()
        };
        let info = aya::maps::MapInfo::from_pin(&path).map_err(|e| SockLbError::Path {
            path: path.clone(),
            source: io::Error::other(chain(&e)),
        })?;
        if info.key_size() != def.key_size()
            || info.value_size() != def.value_size()
            || info.max_entries() != entries
        {
            tracing::warn!(
                map = name,
                "pinned map has another layout or capacity: replacing it"
            );
            fs::remove_file(&path).map_err(path_error(&path))?;
        }
    }
    Ok(())
}

impl SockLb {
    /// Loads the socket programs of the node whose pin directory is `pin_dir` (the
    /// datapath's, already loaded), pinning or adopting the LB maps there; returns them typed.
    pub fn load(
        pin_dir: &Path,
        maglev_table_size: u32,
    ) -> Result<(Self, LbMaps, NetnsMap), SockLbError> {
        let maglev_entries = maglev_capacity(maglev_table_size);
        remove_incompatible_pins(pin_dir, maglev_entries)?;
        let mut loader = EbpfLoader::new();
        // ALWAYS a pin directory: without one aya pins into the bpffs root.
        loader.default_map_pin_directory(pin_dir);
        loader.map_max_entries(LB_MAGLEV_MAP, maglev_entries);
        let mut ebpf = loader
            .load(SOCK_LB_OBJECT)
            .map_err(|source| SockLbError::Load {
                pin_dir: pin_dir.to_owned(),
                source: Box::new(source),
            })?;
        for name in PROGRAMS {
            program_mut(&mut ebpf, name)?
                .load()
                .map_err(|e| SockLbError::Program {
                    program: name,
                    op: "load",
                    reason: chain(&e),
                })?;
        }
        let mut take =
            |name: &'static str| ebpf.take_map(name).ok_or(SockLbError::MissingMap(name));
        let netns = NetnsMap::new(take(LB_NETNS_MAP)?)?;
        let mut taken = Vec::new();
        for name in LB_MAPS.into_iter().filter(|n| *n != LB_NETNS_MAP) {
            taken.push((name, take(name)?));
        }
        let maps = LbMaps::new(|name| {
            let at = taken
                .iter()
                .position(|(n, _)| *n == name)
                .expect("every LB map was taken");
            Ok(taken.swap_remove(at).1)
        })?;
        Ok((
            SockLb {
                ebpf,
                pin_dir: pin_dir.to_owned(),
            },
            maps,
            netns,
        ))
    }

    /// The directory of the cgroup link pins.
    pub fn links_dir(&self) -> PathBuf {
        self.pin_dir.join(CGROUP_LINKS_DIR)
    }

    /// Attaches every program to the cgroup `cgroup` (the cgroup v2 root), replacing the
    /// links a previous agent pinned; returns the link pins.
    pub fn attach(&mut self, cgroup: &Path) -> Result<Vec<PathBuf>, SockLbError> {
        let dir = self.links_dir();
        fs::create_dir_all(&dir).map_err(path_error(&dir))?;
        let cgroup_file = File::open(cgroup).map_err(path_error(cgroup))?;
        let mut pins = Vec::new();
        for name in PROGRAMS {
            let program = program_mut(&mut self.ebpf, name)?;
            let failed = |op, e: &dyn std::error::Error| SockLbError::Program {
                program: name,
                op,
                reason: format!("{}: {}", cgroup.display(), chain(e)),
            };
            // A bpf link takes no flags (EINVAL with BPF_F_ALLOW_MULTI): the kernel attaches
            // every cgroup link as BPF_F_ALLOW_MULTI, beside any other agent's.
            let id = program
                .attach(&cgroup_file, CgroupAttachMode::Single)
                .map_err(|e| failed("attach to the cgroup", &e))?;
            let link = program
                .take_link(id)
                .map_err(|e| failed("take the link", &e))?;
            let fd_link = FdLink::try_from(link).map_err(|e| failed("convert the link", &e))?;
            let pin = dir.join(name);
            let fresh = dir.join(format!("{name}-new"));
            let _ = fs::remove_file(&fresh);
            // If pinning fails the fd is dropped here, which detaches the program again.
            fd_link
                .pin(&fresh)
                .map_err(|e| failed("pin the link", &e))?;
            // Atomically over the previous agent's pin: its link goes with it.
            fs::rename(&fresh, &pin).map_err(path_error(&pin))?;
            pins.push(pin);
        }
        Ok(pins)
    }
}

fn program_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut CgroupSockAddr, SockLbError> {
    let program = ebpf.program_mut(name).ok_or(SockLbError::Program {
        program: name,
        op: "find",
        reason: "not in the object".into(),
    })?;
    program
        .try_into()
        .map_err(|e: aya::programs::ProgramError| SockLbError::Program {
            program: name,
            op: "type",
            reason: chain(&e),
        })
}

/// Detaches the node's socket programs (removes their link pins and directory). Nothing
/// there is fine.
pub fn detach(pin_dir: &Path) -> Result<usize, SockLbError> {
    let dir = pin_dir.join(CGROUP_LINKS_DIR);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(source) => return Err(SockLbError::Path { path: dir, source }),
    };
    let mut removed = 0;
    for entry in entries {
        let path = entry.map_err(path_error(&dir))?.path();
        fs::remove_file(&path).map_err(path_error(&path))?;
        removed += 1;
    }
    match fs::remove_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(SockLbError::Path { path: dir, source }),
    }
    Ok(removed)
}

/// Removes the node's socket LB pins: the links (detaching the programs), then the maps.
pub fn remove_pins(pin_dir: &Path) -> Result<(), SockLbError> {
    detach(pin_dir)?;
    for name in LB_MAPS {
        let path = pin_dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(SockLbError::Path { path, source }),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_is_found_on_unified_and_hybrid_hosts() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_mount_in(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        assert_eq!(
            cgroup2_mount_in(unified),
            Some(PathBuf::from(DEFAULT_CGROUP_MOUNT))
        );
        assert_eq!(cgroup2_mount_in("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn the_maglev_map_holds_a_table_per_frontend() {
        assert_eq!(maglev_capacity(997), 65_536);
        assert_eq!(maglev_capacity(2039), 3 * 65_536);
        assert_eq!(maglev_capacity(65_521), 1 << 20);
    }
}
