//! The `kino` command-line tool: one module per command group.
//!
//! [`status`] (`kino status`), [`endpoint`] (`kino endpoint list/get`) and [`bpf`] (`kino bpf
//! endpoint|ipcache|policy|ct list`), both from the agent over [`agent`], [`ipam`] (`kino ipam
//! pools/allocations`), [`node`] (`kino node list/get/delete`) and [`service`] (`kino
//! service create/update/delete/list/get`), all from kino-ipam,
//! [`policy`] (`kino policy
//! import/validate/get/list/delete/trace`) and [`identity`] (`kino identity list/get`, both
//! from kino-policy-compiler over [`compiler`]) and [`observe`] (`kino observe`, flows from
//! the agent's flow observer) are every group the design names; [`pki`] (`kino pki
//! init|issue`) makes the certificates the suite's mTLS runs on.

#![warn(missing_docs)]

pub mod agent;
pub mod bpf;
pub mod compiler;
pub mod duration;
pub mod endpoint;
pub mod identity;
pub mod ipam;
pub mod labels;
pub mod node;
pub mod observe;
pub mod pki;
pub mod policy;
pub mod proto_json;
pub mod service;
pub mod status;
pub mod stdout;
pub mod table;
