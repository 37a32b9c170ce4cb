//! The embedded store's on-disk layout: its redb tables, the byte encoding of key records and
//! change-log records, and the small accessors every transaction uses. Kept apart so the
//! format is read in one place (a change here is a change of the file format).

use std::time::{SystemTime, UNIX_EPOCH};

use redb::{ReadableTable, TableDefinition, WriteTransaction};

use super::super::{ChangeKind, StoreError, StoreEvent, StoredObject};

/// The backend's name, in errors and status.
pub(super) const BACKEND: &str = "embedded";
/// Key → record (create revision, mod revision, lease, value).
pub(super) const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// (revision, sequence in the revision) → change-log record.
pub(super) const LOG: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("log");
/// Counters: the revision, the compaction revision, the last lease id.
pub(super) const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
/// Lease id → (TTL in seconds, deadline in ms since the epoch).
pub(super) const LEASES: TableDefinition<i64, (i64, i64)> = TableDefinition::new("leases");
/// (lease id, key) for every key attached to a lease.
pub(super) const LEASE_KEYS: TableDefinition<(i64, &str), ()> = TableDefinition::new("lease_keys");

pub(super) const META_REVISION: &str = "revision";
pub(super) const META_COMPACT: &str = "compact_revision";
pub(super) const META_LEASE_SEQ: &str = "lease_seq";

pub(super) fn storage_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::unavailable(BACKEND, e)
}

pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Key-table record: create revision, mod revision, lease, value.
pub(super) fn encode_record(o: &StoredObject) -> Vec<u8> {
    let mut buf = Vec::with_capacity(24 + o.value.len());
    buf.extend_from_slice(&o.create_revision.to_le_bytes());
    buf.extend_from_slice(&o.revision.to_le_bytes());
    buf.extend_from_slice(&o.lease.to_le_bytes());
    buf.extend_from_slice(&o.value);
    buf
}

pub(super) fn decode_record(key: &str, buf: &[u8]) -> Result<StoredObject, StoreError> {
    if buf.len() < 24 {
        return Err(storage_err(format!("corrupt record for {key}")));
    }
    let int = |i: usize| i64::from_le_bytes(buf[i..i + 8].try_into().expect("8 bytes"));
    Ok(StoredObject {
        key: key.to_string(),
        create_revision: int(0),
        revision: int(8),
        lease: int(16),
        value: buf[24..].to_vec(),
    })
}

/// Change-log record: change kind, key length, key, then the key-table record.
pub(super) fn encode_event(e: &StoreEvent) -> Vec<u8> {
    let mut buf = vec![match e.change {
        ChangeKind::Put => 0u8,
        ChangeKind::Delete => 1u8,
    }];
    buf.extend_from_slice(&(e.object.key.len() as u32).to_le_bytes());
    buf.extend_from_slice(e.object.key.as_bytes());
    buf.extend_from_slice(&encode_record(&e.object));
    buf
}

pub(super) fn decode_event(buf: &[u8]) -> Result<StoreEvent, StoreError> {
    let corrupt = || storage_err("corrupt change-log record");
    let change = match buf.first() {
        Some(0) => ChangeKind::Put,
        Some(1) => ChangeKind::Delete,
        _ => return Err(corrupt()),
    };
    let len =
        u32::from_le_bytes(buf.get(1..5).ok_or_else(corrupt)?.try_into().expect("4")) as usize;
    let key =
        std::str::from_utf8(buf.get(5..5 + len).ok_or_else(corrupt)?).map_err(|_| corrupt())?;
    let object = decode_record(key, &buf[5 + len..])?;
    Ok(StoreEvent { change, object })
}

pub(super) fn meta(txn: &WriteTransaction, name: &str) -> Result<i64, StoreError> {
    let table = txn.open_table(META).map_err(storage_err)?;
    let value = table.get(name).map_err(storage_err)?.map(|v| v.value());
    Ok(value.unwrap_or(0))
}

pub(super) fn set_meta(txn: &WriteTransaction, name: &str, value: i64) -> Result<(), StoreError> {
    let mut table = txn.open_table(META).map_err(storage_err)?;
    table.insert(name, value).map_err(storage_err)?;
    Ok(())
}

pub(super) fn read_key(
    txn: &WriteTransaction,
    key: &str,
) -> Result<Option<StoredObject>, StoreError> {
    let table = txn.open_table(KV).map_err(storage_err)?;
    let found = table.get(key).map_err(storage_err)?;
    found.map(|v| decode_record(key, v.value())).transpose()
}

/// Drops the change log before `revision` and records the compaction.
pub(super) fn compact_log(txn: &WriteTransaction, revision: i64) -> Result<(), StoreError> {
    let mut log = txn.open_table(LOG).map_err(storage_err)?;
    log.retain_in(..(revision as u64, 0), |_, _| false)
        .map_err(storage_err)?;
    drop(log);
    set_meta(txn, META_COMPACT, revision)
}
