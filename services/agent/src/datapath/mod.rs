//! The eBPF datapath of the node: the programs in `bpf/` loaded and attached by [`loader`],
//! their maps typed in [`maps`]. See docs/datapath.md.

pub mod loader;
pub mod maps;

pub use loader::{Adoption, Datapath, DatapathError, Hook, LxcAttachment};
pub use maps::{DropReason, EndpointCounters, EndpointEntry, EndpointMaps, MapOpError};
