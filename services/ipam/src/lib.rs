//! kino-ipam: IP address management for Kinocilium (cluster pools → per-node pod CIDRs →
//! per-endpoint addresses).
//!
//! For now only the `kino.ipam.v1` API surface exists: [`grpc::IpamGrpc`] answers every RPC
//! with `UNIMPLEMENTED`, naming issue #3 where the allocator arrives.

#![warn(missing_docs)]

pub mod grpc;

/// The issue that brings pools, node CIDRs and endpoint allocation.
pub const IMPLEMENTATION_ISSUE: u32 = 3;
