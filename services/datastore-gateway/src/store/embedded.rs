//! The `embedded` backend: one redb file on local disk, etcd's revision model on top.
//!
//! Every write is one redb transaction committed durably (fsync) that bumps the global
//! revision, updates the key table and appends to an on-disk change log. Watchers replay the
//! log from their start revision and then follow live commits; the log is what makes a watch
//! resumable across a gateway restart. A single writer lock orders commits and their
//! notifications, so watchers always see revisions in order.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use super::{
    ChangeKind, EventStream, Lease, ListPage, Store, StoreError, StoreEvent, StoreStatus,
    StoredObject,
};

const BACKEND: &str = "embedded";
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const LOG: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
const LEASES: TableDefinition<i64, (i64, i64)> = TableDefinition::new("leases");
const LEASE_KEYS: TableDefinition<(i64, &str), ()> = TableDefinition::new("lease_keys");

const META_REVISION: &str = "revision";
const META_COMPACT: &str = "compact_revision";
const META_LEASE_SEQ: &str = "lease_seq";

/// Options of the embedded backend.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// Path of the database file (created if missing).
    pub path: PathBuf,
    /// Revisions of change history kept for watchers; older ones are compacted automatically.
    pub history_revisions: i64,
    /// How often expired leases are looked for.
    pub lease_check_interval: Duration,
}

impl EmbeddedOptions {
    /// Defaults for a file path: 100 000 revisions of history, lease check every 200 ms.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        EmbeddedOptions {
            path: path.into(),
            history_revisions: 100_000,
            lease_check_interval: Duration::from_millis(200),
        }
    }
}

/// The embedded store. Cloning shares the same database.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    path: PathBuf,
    /// Held from each commit until its changes are broadcast, so a watcher that subscribes
    /// under it sees every revision exactly once.
    writer: Arc<Mutex<()>>,
    live: broadcast::Sender<Arc<Vec<StoreEvent>>>,
    /// Writes go to the group-commit thread.
    ops: std::sync::mpsc::Sender<WriteOp>,
}

/// Called once the transaction holding a write committed (or failed to).
type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// What a write does inside the shared transaction.
enum Step {
    /// Wrote its changes; reply after the commit.
    Wrote(Completion),
    /// Refused before writing anything (and already replied).
    Refused,
    /// The storage failed mid-write: the whole group must be rolled back.
    Failed(StoreError, Completion),
}

type WriteOp = Box<dyn FnOnce(&WriteTransaction, &mut Batch) -> Step + Send>;

/// Writes waiting at most this many per group commit.
const MAX_GROUP: usize = 256;

fn storage_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::unavailable(BACKEND, e)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Key-table record: create revision, mod revision, lease, value.
fn encode_record(o: &StoredObject) -> Vec<u8> {
    let mut buf = Vec::with_capacity(24 + o.value.len());
    buf.extend_from_slice(&o.create_revision.to_le_bytes());
    buf.extend_from_slice(&o.revision.to_le_bytes());
    buf.extend_from_slice(&o.lease.to_le_bytes());
    buf.extend_from_slice(&o.value);
    buf
}

fn decode_record(key: &str, buf: &[u8]) -> Result<StoredObject, StoreError> {
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
fn encode_event(e: &StoreEvent) -> Vec<u8> {
    let mut buf = vec![match e.change {
        ChangeKind::Put => 0u8,
        ChangeKind::Delete => 1u8,
    }];
    buf.extend_from_slice(&(e.object.key.len() as u32).to_le_bytes());
    buf.extend_from_slice(e.object.key.as_bytes());
    buf.extend_from_slice(&encode_record(&e.object));
    buf
}

fn decode_event(buf: &[u8]) -> Result<StoreEvent, StoreError> {
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

fn meta(txn: &WriteTransaction, name: &str) -> Result<i64, StoreError> {
    let table = txn.open_table(META).map_err(storage_err)?;
    let value = table.get(name).map_err(storage_err)?.map(|v| v.value());
    Ok(value.unwrap_or(0))
}

fn set_meta(txn: &WriteTransaction, name: &str, value: i64) -> Result<(), StoreError> {
    let mut table = txn.open_table(META).map_err(storage_err)?;
    table.insert(name, value).map_err(storage_err)?;
    Ok(())
}

fn read_key(txn: &WriteTransaction, key: &str) -> Result<Option<StoredObject>, StoreError> {
    let table = txn.open_table(KV).map_err(storage_err)?;
    let found = table.get(key).map_err(storage_err)?;
    found.map(|v| decode_record(key, v.value())).transpose()
}

/// The changes of one write transaction, all at `revision`.
struct Batch {
    revision: i64,
    events: Vec<StoreEvent>,
}

impl Batch {
    fn put(
        &mut self,
        txn: &WriteTransaction,
        object: StoredObject,
        old_lease: i64,
    ) -> Result<(), StoreError> {
        let mut kv = txn.open_table(KV).map_err(storage_err)?;
        kv.insert(object.key.as_str(), encode_record(&object).as_slice())
            .map_err(storage_err)?;
        if old_lease != object.lease {
            let mut lk = txn.open_table(LEASE_KEYS).map_err(storage_err)?;
            if old_lease != 0 {
                lk.remove((old_lease, object.key.as_str()))
                    .map_err(storage_err)?;
            }
            if object.lease != 0 {
                lk.insert((object.lease, object.key.as_str()), ())
                    .map_err(storage_err)?;
            }
        }
        self.events.push(StoreEvent {
            change: ChangeKind::Put,
            object,
        });
        Ok(())
    }

    fn delete(&mut self, txn: &WriteTransaction, mut prev: StoredObject) -> Result<(), StoreError> {
        let mut kv = txn.open_table(KV).map_err(storage_err)?;
        kv.remove(prev.key.as_str()).map_err(storage_err)?;
        if prev.lease != 0 {
            let mut lk = txn.open_table(LEASE_KEYS).map_err(storage_err)?;
            lk.remove((prev.lease, prev.key.as_str()))
                .map_err(storage_err)?;
        }
        prev.revision = self.revision;
        self.events.push(StoreEvent {
            change: ChangeKind::Delete,
            object: prev,
        });
        Ok(())
    }

    /// Appends the batch to the change log and advances the revision counter.
    fn finish(&self, txn: &WriteTransaction) -> Result<(), StoreError> {
        if self.events.is_empty() {
            return Ok(());
        }
        let mut log = txn.open_table(LOG).map_err(storage_err)?;
        for (seq, event) in self.events.iter().enumerate() {
            log.insert(
                (self.revision as u64, seq as u32),
                encode_event(event).as_slice(),
            )
            .map_err(storage_err)?;
        }
        drop(log);
        set_meta(txn, META_REVISION, self.revision)
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the database file and starts lease expiry. Fails if another process
    /// holds the file open.
    pub async fn open(options: EmbeddedOptions) -> Result<Self, StoreError> {
        let path = options.path.clone();
        let interval = options.lease_check_interval;
        let inner = tokio::task::spawn_blocking(move || Inner::open(options))
            .await
            .map_err(storage_err)??;
        let inner = Arc::new(inner);
        tracing::info!(path = %path.display(), "embedded datastore opened");
        tokio::spawn(expire_leases(Arc::downgrade(&inner), interval));
        Ok(EmbeddedStore { inner })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(storage_err)?
    }
}

impl Inner {
    fn open(options: EmbeddedOptions) -> Result<Inner, StoreError> {
        if let Some(dir) = options.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                storage_err(format!("cannot create directory {}: {e}", dir.display()))
            })?;
        }
        let db = Database::create(&options.path).map_err(|e| {
            storage_err(format!(
                "cannot open {} ({e}); is another kino-datastore-gateway using it?",
                options.path.display()
            ))
        })?;
        // Create every table, and give every lease a fresh TTL as etcd does when a new leader
        // takes over: time spent down must not expire the cluster's leases.
        let txn = db.begin_write().map_err(storage_err)?;
        {
            txn.open_table(KV).map_err(storage_err)?;
            txn.open_table(LOG).map_err(storage_err)?;
            txn.open_table(META).map_err(storage_err)?;
            txn.open_table(LEASE_KEYS).map_err(storage_err)?;
            let mut leases = txn.open_table(LEASES).map_err(storage_err)?;
            let all: Vec<(i64, i64)> = leases
                .iter()
                .map_err(storage_err)?
                .map(|r| r.map(|(k, v)| (k.value(), v.value().0)))
                .collect::<Result<_, _>>()
                .map_err(storage_err)?;
            for (id, ttl) in all {
                leases
                    .insert(id, (ttl, now_ms() + ttl * 1000))
                    .map_err(storage_err)?;
            }
        }
        txn.commit().map_err(storage_err)?;
        let (live, _) = broadcast::channel(4096);
        let db = Arc::new(db);
        let writer = Arc::new(Mutex::new(()));
        let (ops, queue) = std::sync::mpsc::channel();
        let group = GroupWriter {
            db: db.clone(),
            order: writer.clone(),
            live: live.clone(),
            history_revisions: options.history_revisions.max(1),
        };
        std::thread::Builder::new()
            .name("kino-store-writer".into())
            .spawn(move || group.run(queue))
            .map_err(storage_err)?;
        Ok(Inner {
            db,
            path: options.path,
            writer,
            live,
            ops,
        })
    }

    /// Queues a write; its changes get the next revision. `f` must return an error only
    /// before it wrote anything, or a storage error (which rolls back the whole group).
    fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce(&WriteTransaction, &mut Batch) -> Result<T, StoreError> + Send + 'static,
    ) -> oneshot::Receiver<Result<T, StoreError>> {
        let (reply, rx) = oneshot::channel();
        let op: WriteOp = Box::new(move |txn, batch| match f(txn, batch) {
            Ok(value) => Step::Wrote(Box::new(move |committed| {
                let _ = reply.send(committed.map(|()| value));
            })),
            Err(e @ StoreError::Unavailable { .. }) => Step::Failed(
                e,
                Box::new(move |committed| {
                    let _ =
                        reply.send(committed.map(|()| unreachable!("failed writes never commit")));
                }),
            ),
            Err(e) => {
                let _ = reply.send(Err(e));
                Step::Refused
            }
        });
        if let Err(std::sync::mpsc::SendError(op)) = self.ops.send(op) {
            drop(op);
        }
        rx
    }

    /// `submit` for callers on a blocking thread.
    fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&WriteTransaction, &mut Batch) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.submit(f)
            .blocking_recv()
            .map_err(|_| storage_err("the store writer stopped"))?
    }

    fn read_revisions(&self) -> Result<(i64, i64), StoreError> {
        let txn = self.db.begin_read().map_err(storage_err)?;
        let table = txn.open_table(META).map_err(storage_err)?;
        let get = |name| -> Result<i64, StoreError> {
            Ok(table
                .get(name)
                .map_err(storage_err)?
                .map(|v| v.value())
                .unwrap_or(0))
        };
        Ok((get(META_REVISION)?, get(META_COMPACT)?))
    }

    /// Change-log entries for keys under `prefix` with revision in `from..=to`, batched by
    /// revision.
    fn history(
        &self,
        prefix: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<Vec<StoreEvent>>, StoreError> {
        let txn = self.db.begin_read().map_err(storage_err)?;
        let log = txn.open_table(LOG).map_err(storage_err)?;
        let mut batches: Vec<Vec<StoreEvent>> = Vec::new();
        let mut current = -1;
        let range = log
            .range((from.max(0) as u64, 0)..=(to.max(0) as u64, u32::MAX))
            .map_err(storage_err)?;
        for entry in range {
            let (k, v) = entry.map_err(storage_err)?;
            let event = decode_event(v.value())?;
            if !event.object.key.starts_with(prefix) {
                continue;
            }
            let revision = k.value().0 as i64;
            if revision != current {
                batches.push(Vec::new());
                current = revision;
            }
            batches.last_mut().expect("pushed").push(event);
        }
        Ok(batches)
    }

    fn revoke(&self, lease: i64) -> Result<(), StoreError> {
        self.write(move |txn, batch| revoke_in(txn, batch, lease))
    }
}

/// Deletes every key attached to `lease` (one revision) and forgets the lease.
fn revoke_in(txn: &WriteTransaction, batch: &mut Batch, lease: i64) -> Result<(), StoreError> {
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

fn compact_log(txn: &WriteTransaction, revision: i64) -> Result<(), StoreError> {
    let mut log = txn.open_table(LOG).map_err(storage_err)?;
    log.retain_in(..(revision as u64, 0), |_, _| false)
        .map_err(storage_err)?;
    drop(log);
    set_meta(txn, META_COMPACT, revision)
}

/// The single writer thread: drains queued writes into one transaction per group, gives each
/// write its own revision, commits durably once (one fsync for the group), then broadcasts
/// and replies in order.
struct GroupWriter {
    db: Arc<Database>,
    order: Arc<Mutex<()>>,
    live: broadcast::Sender<Arc<Vec<StoreEvent>>>,
    history_revisions: i64,
}

impl GroupWriter {
    fn run(self, queue: std::sync::mpsc::Receiver<WriteOp>) {
        while let Ok(first) = queue.recv() {
            let mut ops = vec![first];
            while ops.len() < MAX_GROUP {
                match queue.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(_) => break,
                }
            }
            self.commit_group(ops);
        }
    }

    fn commit_group(&self, ops: Vec<WriteOp>) {
        let txn = match self.db.begin_write() {
            Ok(txn) => txn,
            Err(e) => {
                // Each op's reply is inside its closure: run them against nothing by failing
                // the group through a poisoned transaction is impossible, so report directly.
                let e = storage_err(e);
                for op in ops {
                    fail_without_txn(op, &e);
                }
                return;
            }
        };
        let mut revision = match meta(&txn, META_REVISION) {
            Ok(r) => r,
            Err(e) => {
                for op in ops {
                    fail_without_txn(op, &e);
                }
                return;
            }
        };
        let mut done: Vec<Completion> = Vec::new();
        let mut batches: Vec<Vec<StoreEvent>> = Vec::new();
        let mut failure: Option<StoreError> = None;
        for op in ops {
            if failure.is_some() {
                // Still reply: the op never ran.
                done.push(Box::new(move |_| drop(op)));
                continue;
            }
            let mut batch = Batch {
                revision: revision + 1,
                events: Vec::new(),
            };
            match op(&txn, &mut batch) {
                Step::Wrote(reply) => {
                    if let Err(e) = batch.finish(&txn) {
                        failure = Some(e);
                    } else if !batch.events.is_empty() {
                        revision += 1;
                        batches.push(batch.events);
                    }
                    done.push(reply);
                }
                Step::Refused => {}
                Step::Failed(e, reply) => {
                    failure = Some(e);
                    done.push(reply);
                }
            }
        }
        let compact_to = revision - self.history_revisions;
        if failure.is_none() && compact_to > 0 && batches.iter().any(|_| true) {
            let last_compaction = meta(&txn, META_COMPACT).unwrap_or(0);
            if compact_to - last_compaction >= 1024
                && let Err(e) = compact_log(&txn, compact_to)
            {
                failure = Some(e);
            }
        }
        let _order = self.order.lock().unwrap_or_else(|p| p.into_inner());
        let result = match failure {
            // Dropping the transaction without commit rolls every write of the group back.
            Some(e) => Err(e),
            None => txn.commit().map_err(storage_err),
        };
        if result.is_ok() {
            for batch in batches {
                // No receivers is fine.
                let _ = self.live.send(Arc::new(batch));
            }
        }
        drop(_order);
        for reply in done {
            reply(result.clone());
        }
    }
}

/// Drops a queued write whose transaction could not even begin; its caller sees the reply
/// channel close ("the store writer stopped") and reports the store as unavailable.
fn fail_without_txn(op: WriteOp, e: &StoreError) {
    tracing::error!(error = %e, "embedded store cannot begin a write transaction");
    drop(op);
}

fn check_lease(txn: &WriteTransaction, lease: i64) -> Result<(), StoreError> {
    if lease == 0 {
        return Ok(());
    }
    let leases = txn.open_table(LEASES).map_err(storage_err)?;
    match leases.get(lease).map_err(storage_err)? {
        Some(_) => Ok(()),
        None => Err(StoreError::LeaseNotFound { lease }),
    }
}

async fn expire_leases(inner: Weak<Inner>, interval: Duration) {
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

/// Waits for a queued write's reply.
async fn written<T>(pending: oneshot::Receiver<Result<T, StoreError>>) -> Result<T, StoreError> {
    pending
        .await
        .map_err(|_| storage_err("the store writer stopped before committing"))?
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<StoredObject>, StoreError> {
        let key = key.to_string();
        self.blocking(move |inner| {
            let txn = inner.db.begin_read().map_err(storage_err)?;
            let table = txn.open_table(KV).map_err(storage_err)?;
            let found = table.get(key.as_str()).map_err(storage_err)?;
            found.map(|v| decode_record(&key, v.value())).transpose()
        })
        .await
    }

    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ListPage, StoreError> {
        let prefix = prefix.to_string();
        let after = after.map(str::to_string);
        self.blocking(move |inner| {
            // One read transaction: the page and its revision are one snapshot.
            let txn = inner.db.begin_read().map_err(storage_err)?;
            let meta = txn.open_table(META).map_err(storage_err)?;
            let revision = meta
                .get(META_REVISION)
                .map_err(storage_err)?
                .map(|v| v.value())
                .unwrap_or(0);
            let table = txn.open_table(KV).map_err(storage_err)?;
            let start = match &after {
                Some(a) if a.as_str() >= prefix.as_str() => a.as_str(),
                _ => prefix.as_str(),
            };
            let mut page = ListPage {
                revision,
                ..ListPage::default()
            };
            for entry in table.range(start..).map_err(storage_err)? {
                let (k, v) = entry.map_err(storage_err)?;
                let key = k.value();
                if !key.starts_with(prefix.as_str()) {
                    break;
                }
                if after.as_deref() == Some(key) {
                    continue;
                }
                if page.objects.len() == limit {
                    page.more = true;
                    break;
                }
                page.objects.push(decode_record(key, v.value())?);
            }
            Ok(page)
        })
        .await
    }

    async fn count(&self, prefix: &str) -> Result<u64, StoreError> {
        let prefix = prefix.to_string();
        self.blocking(move |inner| {
            let txn = inner.db.begin_read().map_err(storage_err)?;
            let table = txn.open_table(KV).map_err(storage_err)?;
            let mut count = 0;
            for entry in table.range(prefix.as_str()..).map_err(storage_err)? {
                let (k, _) = entry.map_err(storage_err)?;
                if !k.value().starts_with(prefix.as_str()) {
                    break;
                }
                count += 1;
            }
            Ok(count)
        })
        .await
    }

    async fn create(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: i64,
    ) -> Result<StoredObject, StoreError> {
        let key = key.to_string();
        let pending = self.inner.submit(move |txn, batch| {
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
        });
        written(pending).await
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: i64,
        expected_revision: i64,
    ) -> Result<StoredObject, StoreError> {
        let key = key.to_string();
        let pending = self.inner.submit(move |txn, batch| {
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
        });
        written(pending).await
    }

    async fn delete(
        &self,
        key: &str,
        expected_revision: Option<i64>,
    ) -> Result<StoredObject, StoreError> {
        let key = key.to_string();
        let pending = self.inner.submit(move |txn, batch| {
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
        });
        written(pending).await
    }

    async fn watch(&self, prefix: &str, start_revision: i64) -> Result<EventStream, StoreError> {
        if start_revision < 0 {
            return Err(StoreError::InvalidArgument {
                field: "start_revision",
                reason: format!("{start_revision} is negative"),
            });
        }
        // Subscribe and read the revision under the writer lock: nothing commits in between,
        // so the history read below and the live feed meet exactly.
        let (live, revision, compact) = {
            let _order = self.inner.writer.lock().unwrap_or_else(|p| p.into_inner());
            let live = self.inner.live.subscribe();
            let (revision, compact) = self.inner.read_revisions()?;
            (live, revision, compact)
        };
        if start_revision > 0 && start_revision < compact {
            return Err(StoreError::Compacted {
                requested: start_revision,
                compact_revision: compact,
            });
        }
        let (tx, rx) = mpsc::channel(64);
        let next = if start_revision == 0 {
            revision + 1
        } else {
            start_revision
        };
        tokio::spawn(follow(
            self.inner.clone(),
            prefix.to_string(),
            next,
            revision,
            live,
            tx,
        ));
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn grant_lease(&self, ttl_seconds: i64) -> Result<Lease, StoreError> {
        if ttl_seconds <= 0 {
            return Err(StoreError::InvalidArgument {
                field: "ttl_seconds",
                reason: format!("{ttl_seconds} must be positive"),
            });
        }
        // Lease bookkeeping does not bump the revision (as in etcd).
        let pending = self.inner.submit(move |txn, _batch| {
            let id = meta(txn, META_LEASE_SEQ)? + 1;
            set_meta(txn, META_LEASE_SEQ, id)?;
            txn.open_table(LEASES)
                .map_err(storage_err)?
                .insert(id, (ttl_seconds, now_ms() + ttl_seconds * 1000))
                .map_err(storage_err)?;
            Ok(Lease { id, ttl_seconds })
        });
        written(pending).await
    }

    async fn keep_alive(&self, lease: i64) -> Result<Lease, StoreError> {
        let pending = self.inner.submit(move |txn, _batch| {
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
        });
        written(pending).await
    }

    async fn revoke_lease(&self, lease: i64) -> Result<(), StoreError> {
        written(
            self.inner
                .submit(move |txn, batch| revoke_in(txn, batch, lease)),
        )
        .await
    }

    async fn compact(&self, revision: i64) -> Result<i64, StoreError> {
        let pending = self.inner.submit(move |txn, _batch| {
            let current = meta(txn, META_REVISION)?;
            let compacted = meta(txn, META_COMPACT)?;
            if revision <= 0 || revision > current {
                return Err(StoreError::InvalidArgument {
                    field: "revision",
                    reason: format!(
                        "{revision} is not between 1 and the current revision {current}"
                    ),
                });
            }
            if revision <= compacted {
                return Ok(compacted);
            }
            compact_log(txn, revision)?;
            Ok(revision)
        });
        written(pending).await
    }

    async fn status(&self) -> Result<StoreStatus, StoreError> {
        let (revision, compact_revision) = self.blocking(|inner| inner.read_revisions()).await?;
        Ok(StoreStatus {
            backend: BACKEND,
            location: self.inner.path.display().to_string(),
            revision,
            compact_revision,
        })
    }
}

/// Feeds one watcher: history from `next` up to `synced`, then live batches. A watcher that
/// falls behind the live feed catches up from the on-disk log instead of losing events.
async fn follow(
    inner: Arc<Inner>,
    prefix: String,
    mut next: i64,
    mut synced: i64,
    mut live: broadcast::Receiver<Arc<Vec<StoreEvent>>>,
    tx: mpsc::Sender<Result<Vec<StoreEvent>, StoreError>>,
) {
    loop {
        if next <= synced {
            let (p, from, to) = (prefix.clone(), next, synced);
            let reader = inner.clone();
            let history = tokio::task::spawn_blocking(move || reader.history(&p, from, to))
                .await
                .map_err(storage_err)
                .and_then(|r| r);
            match history {
                Ok(batches) => {
                    for batch in batches {
                        if tx.send(Ok(batch)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
            next = synced + 1;
        }
        let received = tokio::select! {
            r = live.recv() => r,
            _ = tx.closed() => return,
        };
        match received {
            Ok(batch) => {
                let revision = batch.first().map(StoreEvent::revision).unwrap_or(0);
                if revision < next {
                    continue;
                }
                let mine: Vec<StoreEvent> = batch
                    .iter()
                    .filter(|e| e.object.key.starts_with(prefix.as_str()))
                    .cloned()
                    .collect();
                next = revision + 1;
                synced = revision;
                if !mine.is_empty() && tx.send(Ok(mine)).await.is_err() {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                // Re-read what was missed from the log, then continue live.
                match inner.read_revisions() {
                    Ok((revision, compact)) if next >= compact => synced = revision,
                    Ok((_, compact)) => {
                        let _ = tx
                            .send(Err(StoreError::Compacted {
                                requested: next,
                                compact_revision: compact,
                            }))
                            .await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
