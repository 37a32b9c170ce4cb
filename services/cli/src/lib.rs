//! The `kino` command-line tool: one module per command group.
//!
//! [`status`] (`kino status`), [`endpoint`] (`kino endpoint list/get`) and [`bpf`] (`kino bpf
//! endpoint|ipcache|policy|ct list`), both from the agent over [`agent`], [`ipam`] (`kino ipam pools/allocations`), [`policy`] (`kino policy
//! import/validate/get/list/delete/trace`) and [`identity`] (`kino identity list/get`, both
//! from kino-policy-compiler over [`compiler`]) work now; the other groups the design names
//! are [`pending`] and say which issue brings them.

#![warn(missing_docs)]

pub mod agent;
pub mod bpf;
pub mod compiler;
pub mod endpoint;
pub mod identity;
pub mod ipam;
pub mod labels;
pub mod pending;
pub mod policy;
pub mod proto_json;
pub mod status;
pub mod table;
