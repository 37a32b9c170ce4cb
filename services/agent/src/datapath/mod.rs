//! The eBPF datapath of the node: the programs in `bpf/` loaded and attached by [`loader`],
//! their maps typed in [`maps`] (endpoints, counters), [`ipcache`], [`policy`],
//! [`conntrack`], [`events`] (the flow event ring buffer) and [`node_config`] (how pod
//! traffic crosses nodes: tunnel or native), all over [`abi`], the one Rust
//! twin of `bpf/kino_maps.h`. [`lb`] is the service load balancer (issue #14): its maps and
//! the socket programs, loaded beside the datapath. See docs/datapath.md.
//!
//! Layers, each importing only those below it: [`abi`] (layouts, names, numbers; imports
//! nothing of the datapath) → [`map_access`] (what every typed map shares) → the typed maps
//! (each imports only the two above, never another typed map) → [`loader`] (loads, pins,
//! attaches and adopts; holds the typed maps).

pub mod abi;
pub mod conntrack;
pub mod events;
pub mod ipcache;
pub mod lb;
pub mod loader;
pub mod map_access;
pub mod maps;
pub mod node_config;
pub mod policy;

pub use abi::{Direction, DropReason, MapCapacities};
pub use conntrack::{ConntrackError, ConntrackMap, CtEntry, CtListing};
pub use ipcache::{IpPrefix, IpcacheEntry, IpcacheError, IpcacheMap};
pub use loader::{
    Adoption, AttachChange, AttachMode, AttachPoint, Datapath, DatapathError, Hook, HookAttachment,
    LxcAttachment,
};
pub use map_access::MapOpError;
pub use maps::{EndpointCounters, EndpointEntry, EndpointMaps};
pub use node_config::{NodeConfigError, NodeConfigMap, RoutingConfig};
pub use policy::{
    ApplyStats, Enforcement, EntryChange, PolicyEntryInfo, PolicyKey, PolicyMapError, PolicyMaps,
    PolicyUpdate, Verdict,
};
