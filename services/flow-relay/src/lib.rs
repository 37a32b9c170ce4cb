//! kino-flow-relay: the cluster's flows in one `kino.flow.v1` API, as Hubble Relay is to
//! Hubble. Every node's agent serves its own flows (`kino.flow.v1` on `:7404`); the relay
//! asks the nodes a request concerns, merges their answers by time and serves the result,
//! so `kino observe --server <relay>` shows the whole cluster and `--node-name` narrows it.
//!
//! Layers, top to bottom (a module imports its own layer and those below):
//! - adapters: [`grpc`] (the served API, headers naming unavailable nodes, status codes),
//!   [`upstream`] (the tonic client of the nodes' flow observers), [`discovery`] (the Node
//!   records watched through the gateway), [`authorization`];
//! - [`relay`]: a request over the nodes — finite answers merged and cut to `number`,
//!   follows merged within a reorder window with nodes joining, leaving and coming back;
//! - ground: [`merge`] (k-way merge, reorder window), [`selection`] (which nodes a request
//!   asks), [`peers`] (static `--peer` flags and discovered nodes), [`error`].
//!
//! See docs/flow-relay.md.

#![warn(missing_docs)]

pub mod authorization;
pub mod discovery;
pub mod error;
pub mod grpc;
pub mod merge;
pub mod peers;
pub mod relay;
pub mod selection;
pub mod upstream;

pub use error::RelayError;
pub use relay::{NodeFlows, Relay, RelayOptions};
