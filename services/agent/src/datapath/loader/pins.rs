//! The node's pins on bpffs: mounting bpffs when needed, the node's pin directory
//! (`/sys/fs/bpf/kino/<node>/`), unpinning maps of another layout or capacity before a load
//! (so they are created anew rather than misread), the TCX link pins of lxcs (`links/`) and
//! removing a node's pins. The maps themselves are pinned by aya when the object is loaded.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use aya::programs::links::{FdLink, PinnedLink};
use nix::mount::MsFlags;
use nix::sys::statfs::{BPF_FS_MAGIC, statfs};

use super::Datapath;
use super::error::DatapathError;
use super::hook::Hook;
use crate::datapath::abi::{ALL_MAPS, DATAPATH_OBJECT, MapCapacities};
use crate::datapath::map_access::MapOpError;

/// Sub-directory of the node's pin directory holding the TCX link pins (of lxcs attached by
/// agents from before the switch to tc).
pub const LINKS_DIR: &str = "links";

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
pub(super) fn remove_incompatible_pins(
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

/// Creates `path` and its parents (the node's pin directory and its `links/`).
pub(super) fn create_dir(path: &Path) -> Result<(), DatapathError> {
    fs::create_dir_all(path).map_err(|source| DatapathError::PinPath {
        path: path.to_owned(),
        source,
    })
}

/// A link pin's file name: `<lxc>-<ifindex>-<program>` (bpffs refuses names with a '.');
/// the ifindex tells a live link from the dead one of a deleted lxc.
pub(super) fn link_pin_name(lxc: &str, ifindex: u32, hook: Hook) -> String {
    format!("{lxc}-{ifindex}-{}", hook.program())
}

/// The lxc, ifindex and hook a link pin's file name records; `None` for another file.
pub(super) fn parse_link_pin_name(name: &str) -> Option<(&str, u32, Hook)> {
    let mut parts = name.rsplitn(3, '-');
    let hook = Hook::from_program(parts.next()?)?;
    let ifindex = parts.next()?.parse().ok()?;
    Some((parts.next()?, ifindex, hook))
}

/// The id of the program behind the pinned link at `pin`.
pub(super) fn pinned_program(pin: &Path) -> Option<u32> {
    let link = PinnedLink::from_pin(pin).ok()?;
    FdLink::from(link).info().ok().map(|info| info.program_id())
}

/// Removes a pin; one already gone is fine.
pub(super) fn remove_pin(path: &Path) -> Result<(), DatapathError> {
    unless_missing(path, fs::remove_file(path))
}

/// Removes an empty pin directory; one already gone is fine.
fn remove_dir(path: &Path) -> Result<(), DatapathError> {
    unless_missing(path, fs::remove_dir(path))
}

/// The error of removing `path`, unless it says nothing was there.
fn unless_missing(path: &Path, removed: io::Result<()>) -> Result<(), DatapathError> {
    match removed {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DatapathError::PinPath {
            path: path.to_owned(),
            source,
        }),
    }
}

impl Datapath {
    /// The directory of the TCX link pins (`<pin dir>/links`).
    pub(super) fn links_dir(&self) -> PathBuf {
        self.pin_dir.join(LINKS_DIR)
    }

    /// The pin of the TCX link of `hook` on the lxc `lxc_name` (`ifindex`), if `pins` (from
    /// [`Datapath::link_pins`]) has one.
    pub(super) fn link_pin_of(
        &self,
        pins: &[(String, String, u32, Hook)],
        lxc_name: &str,
        ifindex: u32,
        hook: Hook,
    ) -> Option<PathBuf> {
        pins.iter()
            .find(|(_, lxc, index, h)| lxc == lxc_name && *index == ifindex && *h == hook)
            .map(|(file, ..)| self.links_dir().join(file))
    }

    /// Every well-formed link pin: (file name, lxc, ifindex, hook), sorted by file name.
    pub(super) fn link_pins(&self) -> Result<Vec<(String, String, u32, Hook)>, DatapathError> {
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

    /// Removes every pin of `node` under `pin_root` (links first, which detaches the programs,
    /// then maps; the socket load balancer's too) and its directory: the node's datapath is gone once no process holds it.
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
        // The service load balancer's cgroup links and maps (issue #14).
        crate::datapath::lb::sock::remove_pins(&pin_dir).map_err(|e| DatapathError::PinPath {
            path: pin_dir.clone(),
            source: io::Error::other(e.to_string()),
        })?;
        remove_dir(&pin_dir)
    }
}

#[cfg(test)]
mod tests {
    use super::super::DEFAULT_PIN_ROOT;
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
}
