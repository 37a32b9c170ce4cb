//! The `Store` trait: the one replaceable mechanism behind the gateway, with its backends.
//!
//! A store holds opaque values under string keys with etcd's revision model: one global
//! revision counter bumped by every write, per key a `create_revision` and a `revision` (etcd's
//! mod_revision), compare-and-swap on revision, leases whose expiry deletes the keys attached
//! to them, and a watchable history that can be compacted. Every backend passes the same
//! conformance suite (`tests/conformance.rs`).

pub mod embedded;
pub mod etcd;
pub mod instrumented;

use std::fmt;

use async_trait::async_trait;
use futures::stream::BoxStream;

/// A key-value pair as stored, with its revisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredObject {
    /// The key (`<kind>/<namespace>/<name>`, without any backend prefix).
    pub key: String,
    /// The opaque value.
    pub value: Vec<u8>,
    /// Revision at which the key was created.
    pub create_revision: i64,
    /// Revision of the last change to the key.
    pub revision: i64,
    /// Lease the key is attached to, 0 for none.
    pub lease: i64,
}

/// What happened to a key in one revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// The key was created or updated (created when `create_revision == revision`).
    Put,
    /// The key was deleted.
    Delete,
}

/// One change, as delivered to watchers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreEvent {
    /// Put or delete.
    pub change: ChangeKind,
    /// For a put: the new state. For a delete: the key with `revision` set to the delete's
    /// revision, and the last state (value, create_revision, lease) where the backend has it
    /// cheaply (embedded does; etcd reports only the key — the watch hub fills it in).
    pub object: StoredObject,
}

impl StoreEvent {
    /// The revision of the change.
    pub fn revision(&self) -> i64 {
        self.object.revision
    }
}

/// One page of a list.
#[derive(Clone, Debug, Default)]
pub struct ListPage {
    /// Objects in key order.
    pub objects: Vec<StoredObject>,
    /// Store revision the page was read at.
    pub revision: i64,
    /// True when more keys follow the last one returned.
    pub more: bool,
}

/// A granted or renewed lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The lease id (> 0).
    pub id: i64,
    /// Seconds until expiry unless renewed.
    pub ttl_seconds: i64,
}

/// Revisions of the store as a whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreStatus {
    /// "embedded" or "etcd".
    pub backend: &'static str,
    /// File path or endpoints.
    pub location: String,
    /// Current revision.
    pub revision: i64,
    /// Highest compacted revision.
    pub compact_revision: i64,
}

/// A stream of batches of changes, in revision order. Ends with an error if the backend fails.
pub type EventStream = BoxStream<'static, Result<Vec<StoreEvent>, StoreError>>;

/// Errors a store returns; each names the object and what to do.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The key does not exist.
    #[error("{key} not found")]
    NotFound {
        /// The missing key.
        key: String,
    },
    /// Create on a key that exists.
    #[error("{key} already exists (revision {revision}); use Update to change it")]
    AlreadyExists {
        /// The key.
        key: String,
        /// Its current revision.
        revision: i64,
    },
    /// Compare-and-swap failed.
    #[error(
        "{key} changed: expected revision {expected}, current revision is {current}; re-read it and retry"
    )]
    Conflict {
        /// The key.
        key: String,
        /// The revision the caller expected.
        expected: i64,
        /// The revision it has now.
        current: i64,
    },
    /// The requested history is gone.
    #[error(
        "revision {requested} has been compacted (history starts at revision {compact_revision}); re-list and watch from the list's revision + 1"
    )]
    Compacted {
        /// The start revision asked for.
        requested: i64,
        /// The compacted revision.
        compact_revision: i64,
    },
    /// The lease expired or never existed.
    #[error("lease {lease} not found (expired or revoked); grant a new lease")]
    LeaseNotFound {
        /// The lease id.
        lease: i64,
    },
    /// A request the backend refuses because of its arguments.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The offending field.
        field: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// The backend cannot be reached or failed.
    #[error("{backend} backend unavailable: {detail}")]
    Unavailable {
        /// "embedded" or "etcd".
        backend: &'static str,
        /// What went wrong.
        detail: String,
    },
}

impl StoreError {
    pub(crate) fn unavailable(backend: &'static str, detail: impl fmt::Display) -> Self {
        StoreError::Unavailable {
            backend,
            detail: detail.to_string(),
        }
    }
}

/// The backing store of the gateway.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads one key.
    async fn get(&self, key: &str) -> Result<Option<StoredObject>, StoreError>;

    /// Lists keys starting with `prefix` and greater than `after` (exclusive), at most `limit`.
    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ListPage, StoreError>;

    /// Number of keys starting with `prefix` (for metrics; reads no values).
    async fn count(&self, prefix: &str) -> Result<u64, StoreError>;

    /// Creates a key; `AlreadyExists` if present. `lease` 0 for none.
    async fn create(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: i64,
    ) -> Result<StoredObject, StoreError>;

    /// Replaces a key's value and lease if its revision is `expected_revision`.
    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: i64,
        expected_revision: i64,
    ) -> Result<StoredObject, StoreError>;

    /// Deletes a key (only at `expected_revision` when given); returns the deleted state and
    /// the delete's revision in `revision`.
    async fn delete(
        &self,
        key: &str,
        expected_revision: Option<i64>,
    ) -> Result<StoredObject, StoreError>;

    /// Watches keys under `prefix` from `start_revision` (inclusive); 0 means from now.
    async fn watch(&self, prefix: &str, start_revision: i64) -> Result<EventStream, StoreError>;

    /// Grants a lease.
    async fn grant_lease(&self, ttl_seconds: i64) -> Result<Lease, StoreError>;

    /// Renews a lease to its full TTL.
    async fn keep_alive(&self, lease: i64) -> Result<Lease, StoreError>;

    /// Revokes a lease, deleting its keys. Unknown leases are not an error.
    async fn revoke_lease(&self, lease: i64) -> Result<(), StoreError>;

    /// Discards the history before `revision` (etcd semantics: changes at `revision` stay).
    async fn compact(&self, revision: i64) -> Result<i64, StoreError>;

    /// Current revisions.
    async fn status(&self) -> Result<StoreStatus, StoreError>;
}
