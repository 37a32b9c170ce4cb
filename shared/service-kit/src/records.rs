//! Records in the datastore, for services that keep their state there: typed records over
//! the gateway's `kino.datastore.v1` API, written once for every service.
//!
//! - [`Records`]: get, create, compare-and-swap update, create-or-replace ([`Records::put`]),
//!   delete, listing and watch of values that are a [`Spec`] — a protobuf message with its
//!   type URL and the kind of record holding it — returning [`Stored`] values with their
//!   revisions, and the service's own error type (anything `From<`[`RecordError`]`>`).
//! - [`WriteError`]: why a write did not happen (taken, changed, gone, lease gone, failed),
//!   the answer every compare-and-swap loop branches on.
//! - [`RecordClient`]: the untyped client underneath, for callers that work on raw
//!   resources.
//!
//! Each service keeps what is its own: the domain types it stores (their `Spec` impls), how
//! [`RecordError`] reads for its callers, and its queries over its records.

mod client;
mod error;
mod spec;
mod typed;

pub use client::{MAX_PAGE, Page, RecordClient, resource_key};
pub use error::{RecordError, RecordFailure, WriteError};
pub use spec::{Spec, Stored, decode, spec_bytes, to_resource};
pub use typed::Records;
