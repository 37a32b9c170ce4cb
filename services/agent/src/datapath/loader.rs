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
//!
//! One file per concern under `loader/`, each an `impl Datapath` block or the types it works
//! with: `hook` (the programs and their hooks), `error`, `pins` (bpffs, the node's pin
//! directory, incompatible pins, link pins), `program` (program lookup and identity),
//! `attach` (tc filters, and what runs on an lxc), `tcx` (the TCX links of older agents),
//! `adoption` (what a load takes over from a previous agent), `overlay` (the node's routing
//! configuration and the programs of `kino_vxlan`). This file loads the object.
//! They import each other in that order only (a later one may use an earlier one).

use std::path::{Path, PathBuf};

use aya::{Ebpf, EbpfLoader};

use super::abi::{
    ALL_MAPS, CT_MAP, DATAPATH_OBJECT, ENDPOINTS_MAP, EP_POLICY_MAP, IPCACHE_MAP, LXC_MAP,
    METRICS_MAP, NODE_CONFIG_MAP, POLICY_MAP,
};
use super::conntrack::ConntrackMap;
use super::ipcache::IpcacheMap;
use super::maps::EndpointMaps;
use super::node_config::NodeConfigMap;
use super::policy::PolicyMaps;

mod adoption;
mod attach;
mod devices;
mod error;
mod hook;
mod pins;
mod program;
mod tcx;

pub use adoption::Adoption;
pub use attach::{
    AttachChange, AttachMode, AttachPoint, HookAttachment, LxcAttachment, TC_HANDLE, TC_PRIORITY,
};
pub use error::DatapathError;
pub use hook::Hook;
pub use pins::{LINKS_DIR, ensure_bpffs, is_bpffs, node_pin_dir};

use pins::{create_dir, remove_incompatible_pins};
use program::{ProgramIdentity, load_programs};

/// Part of the ABI ([`super::abi`]), still reachable here for callers that found it here.
pub use super::abi::MapCapacities;

/// Where bpffs is mounted.
pub const BPFFS_MOUNT: &str = "/sys/fs/bpf";

/// Default root of the agent's pins; a node's pins live in `<root>/<node>/`.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/kino";

/// The loaded datapath of one node: programs loaded, maps pinned and typed.
#[derive(Debug)]
pub struct Datapath {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    maps: EndpointMaps,
    policy: PolicyMaps,
    ipcache: IpcacheMap,
    conntrack: ConntrackMap,
    node_config: NodeConfigMap,
    adoption: Adoption,
    /// Each hook's loaded program, to tell it from a previous agent's.
    identities: Vec<(Hook, ProgramIdentity)>,
    /// [`Datapath::same_program`]'s answers by (hook, program id): a previous agent's
    /// program sits on every lxc, and finding its maps walks every program of the machine.
    same_program_seen: std::sync::Mutex<std::collections::HashMap<(Hook, u32), bool>>,
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
        let identities = load_programs(&mut ebpf)?;
        let mut take =
            |name: &'static str| ebpf.take_map(name).ok_or(DatapathError::MissingMap(name));
        let maps = EndpointMaps::new(take(ENDPOINTS_MAP)?, take(LXC_MAP)?, take(METRICS_MAP)?)?;
        let policy = PolicyMaps::new(take(POLICY_MAP)?, take(EP_POLICY_MAP)?)?;
        let ipcache = IpcacheMap::new(take(IPCACHE_MAP)?)?;
        let conntrack = ConntrackMap::new(take(CT_MAP)?)?;
        let node_config = NodeConfigMap::new(take(NODE_CONFIG_MAP)?)?;

        let mut datapath = Self {
            ebpf,
            pin_dir,
            maps,
            policy,
            ipcache,
            conntrack,
            node_config,
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
}
