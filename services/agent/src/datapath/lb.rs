//! The load balancer (issue #14, kube-proxy replacement): services' frontends and backends
//! in eBPF maps, translated at the socket by cgroup programs. [`maglev`] computes
//! consistent-hash tables (pure); [`maps`] types the service maps and [`netns`] the map of
//! network namespaces this node translates for; [`state`] programs the maps from what each
//! frontend should be, a few writes per change; [`sock`] loads the socket programs, attaches
//! them to the cgroup v2 root and pins their links. Layouts are in [`super::abi`]
//! (`abi/lb.rs`). See docs/services.md ("Datapath").
//!
//! Files import in this order only: `maglev`, `maps`, `netns` (nothing of each other) →
//! `state` (maglev, maps) → `sock` (maps, netns).

pub mod maglev;
pub mod maps;
pub mod netns;
pub mod sock;
pub mod state;

pub use maps::{L4Addr, L4Protocol, LbMaps};
pub use netns::{NetnsMap, NetnsOwner};
pub use sock::{SockLb, SockLbError};
pub use state::{
    Algorithm, BackendSpec, FrontendKind, FrontendSpec, LbConfig, LbError, LbState, Writes,
};
