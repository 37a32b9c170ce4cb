//! Writes of keys in the embedded store, each inside the writer's shared transaction: create
//! (refused when the key exists), update and delete with compare-and-swap on the key's
//! revision. A refusal returns before anything is written, as the writer requires.

use redb::WriteTransaction;

use super::super::{StoreError, StoredObject};
use super::leases::check_lease;
use super::tables::read_key;
use super::writer::Batch;

/// Creates `key`; refused when it exists or `lease` does not.
pub(super) fn create(
    txn: &WriteTransaction,
    batch: &mut Batch,
    key: String,
    value: Vec<u8>,
    lease: i64,
) -> Result<StoredObject, StoreError> {
    check_lease(txn, lease)?;
    if let Some(existing) = read_key(txn, &key)? {
        return Err(StoreError::AlreadyExists {
            key,
            revision: existing.revision,
        });
    }
    let object = StoredObject {
        key,
        value,
        create_revision: batch.revision,
        revision: batch.revision,
        lease,
    };
    batch.put(txn, object.clone(), 0)?;
    Ok(object)
}

/// Replaces `key` if it is still at `expected_revision`.
pub(super) fn update(
    txn: &WriteTransaction,
    batch: &mut Batch,
    key: String,
    value: Vec<u8>,
    lease: i64,
    expected_revision: i64,
) -> Result<StoredObject, StoreError> {
    let Some(current) = read_key(txn, &key)? else {
        return Err(StoreError::NotFound { key });
    };
    if current.revision != expected_revision {
        return Err(StoreError::Conflict {
            key,
            expected: expected_revision,
            current: current.revision,
        });
    }
    check_lease(txn, lease)?;
    let object = StoredObject {
        key,
        value,
        create_revision: current.create_revision,
        revision: batch.revision,
        lease,
    };
    batch.put(txn, object.clone(), current.lease)?;
    Ok(object)
}

/// Deletes `key` (only at `expected_revision` when given); returns it as deleted.
pub(super) fn delete(
    txn: &WriteTransaction,
    batch: &mut Batch,
    key: String,
    expected_revision: Option<i64>,
) -> Result<StoredObject, StoreError> {
    let Some(current) = read_key(txn, &key)? else {
        return Err(StoreError::NotFound { key });
    };
    if let Some(expected) = expected_revision.filter(|e| *e != current.revision) {
        return Err(StoreError::Conflict {
            key,
            expected,
            current: current.revision,
        });
    }
    batch.delete(txn, current)?;
    Ok(batch.events.last().expect("just deleted").object.clone())
}
