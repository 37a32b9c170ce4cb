//! Leases in the embedded store: the table of leases with their deadlines, the keys attached
//! to each, granting and keeping alive, and the task that revokes expired leases (deleting
//! their keys in one revision), as etcd does.

use std::sync::Weak;
use std::time::Duration;

use redb::{ReadableTable, WriteTransaction};

use super::super::{Lease, StoreError};
use super::Inner;
use super::tables::{
    LEASE_KEYS, LEASES, META_LEASE_SEQ, meta, now_ms, read_key, set_meta, storage_err,
};
use super::writer::Batch;

impl Inner {
    /// Revokes `lease` from a blocking thread.
    fn revoke(&self, lease: i64) -> Result<(), StoreError> {
        self.write(move |txn, batch| revoke_in(txn, batch, lease))
    }
}

/// Refuses a write that attaches a lease that does not exist (0 is no lease).
pub(super) fn check_lease(txn: &WriteTransaction, lease: i64) -> Result<(), StoreError> {
    if lease == 0 {
        return Ok(());
    }
    let leases = txn.open_table(LEASES).map_err(storage_err)?;
    match leases.get(lease).map_err(storage_err)? {
        Some(_) => Ok(()),
        None => Err(StoreError::LeaseNotFound { lease }),
    }
}

/// Deletes every key attached to `lease` (one revision) and forgets the lease.
pub(super) fn revoke_in(
    txn: &WriteTransaction,
    batch: &mut Batch,
    lease: i64,
) -> Result<(), StoreError> {
    let keys: Vec<String> = {
        let lk = txn.open_table(LEASE_KEYS).map_err(storage_err)?;
        lk.range((lease, "")..(lease + 1, ""))
            .map_err(storage_err)?
            .map(|r| r.map(|(k, _)| k.value().1.to_string()))
            .collect::<Result<_, _>>()
            .map_err(storage_err)?
    };
    for key in keys {
        if let Some(prev) = read_key(txn, &key)? {
            batch.delete(txn, prev)?;
        }
    }
    txn.open_table(LEASES)
        .map_err(storage_err)?
        .remove(lease)
        .map_err(storage_err)?;
    Ok(())
}

/// Grants a lease of `ttl_seconds` (lease bookkeeping does not bump the revision, as in
/// etcd).
pub(super) fn grant(txn: &WriteTransaction, ttl_seconds: i64) -> Result<Lease, StoreError> {
    let id = meta(txn, META_LEASE_SEQ)? + 1;
    set_meta(txn, META_LEASE_SEQ, id)?;
    txn.open_table(LEASES)
        .map_err(storage_err)?
        .insert(id, (ttl_seconds, now_ms() + ttl_seconds * 1000))
        .map_err(storage_err)?;
    Ok(Lease { id, ttl_seconds })
}

/// Gives a live lease a fresh deadline; a lease past its deadline is gone.
pub(super) fn keep_alive(txn: &WriteTransaction, lease: i64) -> Result<Lease, StoreError> {
    let mut leases = txn.open_table(LEASES).map_err(storage_err)?;
    let ttl = leases
        .get(lease)
        .map_err(storage_err)?
        .map(|v| v.value())
        .filter(|(_, deadline)| *deadline > now_ms())
        .map(|(ttl, _)| ttl)
        .ok_or(StoreError::LeaseNotFound { lease })?;
    leases
        .insert(lease, (ttl, now_ms() + ttl * 1000))
        .map_err(storage_err)?;
    Ok(Lease {
        id: lease,
        ttl_seconds: ttl,
    })
}

/// Revokes every lease past its deadline, every `interval`, until the store is dropped.
pub(super) async fn expire_leases(inner: Weak<Inner>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(inner) = inner.upgrade() else { return };
        let result = tokio::task::spawn_blocking(move || -> Result<usize, StoreError> {
            let expired: Vec<i64> = {
                let txn = inner.db.begin_read().map_err(storage_err)?;
                let leases = txn.open_table(LEASES).map_err(storage_err)?;
                let now = now_ms();
                leases
                    .iter()
                    .map_err(storage_err)?
                    .filter_map(|r| match r {
                        Ok((k, v)) if v.value().1 <= now => Some(Ok(k.value())),
                        Ok(_) => None,
                        Err(e) => Some(Err(storage_err(e))),
                    })
                    .collect::<Result<_, _>>()?
            };
            for lease in &expired {
                inner.revoke(*lease)?;
                tracing::info!(lease, "lease expired; its resources were deleted");
            }
            Ok(expired.len())
        })
        .await;
        match result {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "lease expiry failed; will retry"),
            Err(e) => tracing::warn!(error = %e, "lease expiry task panicked; will retry"),
        }
    }
}
