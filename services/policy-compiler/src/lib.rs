//! kino-policy-compiler: policies, security identities and their compilation into
//! per-endpoint rule sets (the BPF policy map contents) streamed to agents.
//!
//! For now only the `kino.policy.v1` API surface exists: [`grpc::PolicyGrpc`] answers every
//! RPC with `UNIMPLEMENTED`, naming issue #5 where identities and the compiler arrive.

#![warn(missing_docs)]

pub mod grpc;

/// The issue that brings identities, policies, compilation and trace.
pub const IMPLEMENTATION_ISSUE: u32 = 5;
