//! The eBPF datapath of the node: the programs in `bpf/` loaded and attached by [`loader`],
//! their maps typed in [`maps`] (endpoints, counters), [`ipcache`], [`policy`],
//! [`conntrack`] and [`events`] (the flow event ring buffer). See docs/datapath.md.

pub mod conntrack;
pub mod events;
pub mod ipcache;
pub mod loader;
pub mod maps;
pub mod policy;

pub use conntrack::{ConntrackError, ConntrackMap, CtEntry, CtListing};
pub use ipcache::{IpPrefix, IpcacheEntry, IpcacheError, IpcacheMap};
pub use loader::{
    Adoption, AttachChange, AttachMode, AttachPoint, Datapath, DatapathError, Hook, HookAttachment,
    LxcAttachment, MapCapacities,
};
pub use maps::{DropReason, EndpointCounters, EndpointEntry, EndpointMaps, MapOpError};
pub use policy::{
    ApplyStats, Direction, Enforcement, EntryChange, PolicyEntryInfo, PolicyKey, PolicyMapError,
    PolicyMaps, PolicyUpdate, Verdict,
};
