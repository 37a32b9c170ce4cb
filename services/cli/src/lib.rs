//! The `kino` command-line tool: one module per command group.
//!
//! [`status`] (`kino status`), [`endpoint`] (`kino endpoint list/get`, from the agent over
//! [`agent`]) and [`ipam`] (`kino ipam pools/allocations`) work now; the other groups the
//! design names are [`pending`] and say which issue brings them.

#![warn(missing_docs)]

pub mod agent;
pub mod endpoint;
pub mod ipam;
pub mod pending;
pub mod status;
