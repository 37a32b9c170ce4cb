//! kino-ipam: IP address management for Kinocilium, in Cilium's cluster-pool style: pools of
//! cluster CIDRs are carved into per-node blocks, and endpoint addresses are allocated from a
//! node's blocks. All state lives in the datastore (through kino-datastore-gateway), written
//! with atomic creates and compare-and-swap, so any number of replicas can serve at once
//! without ever handing out an address twice.
//!
//! - [`prefix`], [`pool`], [`allocator`], [`owner`]: pure logic (CIDR arithmetic, pool
//!   validation and blocks, candidate addresses, owner identities), property-tested.
//! - [`records`]: the stored records as domain types and their protobuf specs.
//! - [`persistence`]: the datastore client and record names.
//! - [`service`]: [`service::Ipam`], the protocols over the datastore.
//! - [`node_watch`]: finishes node deletions that were interrupted.
//! - [`lb`]: load-balanced services (`kino.service.v1`): the service network, a service
//!   validated from a request, the claim records keeping frontends and ids unique; their
//!   protocol over the datastore is in [`service`] beside the addresses'. Why kino-ipam
//!   serves them: docs/services.md.
//! - [`grpc`]: the `kino.ipam.v1` adapter; [`node_grpc`]: the `kino.node.v1` adapter (nodes,
//!   their health, their explicit deletion); [`lb_grpc`]: the `kino.service.v1` adapter;
//!   [`authorization`]: who may call which method;
//!   [`metrics`]: what Prometheus sees.

#![warn(missing_docs)]

pub mod allocator;
pub mod authorization;
pub mod error;
pub mod grpc;
pub mod lb;
pub mod lb_grpc;
pub mod metrics;
pub mod node_grpc;
pub mod node_watch;
pub mod owner;
pub mod persistence;
pub mod pool;
pub mod prefix;
pub mod records;
pub mod service;

pub use error::IpamError;
pub use service::{Ipam, IpamOptions};
