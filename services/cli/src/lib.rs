//! The `kino` command-line tool: one module per command group.
//!
//! [`status`] (`kino status`) works now; the other groups the design names are [`pending`]
//! and say which issue brings them.

#![warn(missing_docs)]

pub mod pending;
pub mod status;
