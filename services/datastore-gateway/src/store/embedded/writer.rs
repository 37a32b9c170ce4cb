//! The embedded store's single writer: every write is queued to one thread that groups the
//! writes waiting into one redb transaction, gives each its own revision, commits durably
//! once (one fsync per group) and then broadcasts the changes and replies, in order. Grouping
//! is what keeps durable writes fast under concurrency; one thread is what keeps revisions
//! and their notifications in order.

use std::sync::{Arc, Mutex};

use redb::{Database, WriteTransaction};
use tokio::sync::{broadcast, oneshot};

use super::super::{ChangeKind, StoreError, StoreEvent, StoredObject};
use super::Inner;
use super::tables::{
    KV, LEASE_KEYS, LOG, META_COMPACT, META_REVISION, compact_log, encode_event, encode_record,
    meta, set_meta, storage_err,
};

/// Called once the transaction holding a write committed (or failed to).
pub(super) type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// What a write does inside the shared transaction.
pub(super) enum Step {
    /// Wrote its changes; reply after the commit.
    Wrote(Completion),
    /// Refused before writing anything (and already replied).
    Refused,
    /// The storage failed mid-write: the whole group must be rolled back.
    Failed(StoreError, Completion),
}

pub(super) type WriteOp = Box<dyn FnOnce(&WriteTransaction, &mut Batch) -> Step + Send>;

/// Writes waiting at most this many per group commit.
const MAX_GROUP: usize = 256;

/// The changes of one write transaction, all at `revision`.
pub(super) struct Batch {
    pub(super) revision: i64,
    pub(super) events: Vec<StoreEvent>,
}

impl Batch {
    pub(super) fn put(
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

    pub(super) fn delete(
        &mut self,
        txn: &WriteTransaction,
        mut prev: StoredObject,
    ) -> Result<(), StoreError> {
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
    pub(super) fn finish(&self, txn: &WriteTransaction) -> Result<(), StoreError> {
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

impl Inner {
    /// Queues a write; its changes get the next revision. `f` must return an error only
    /// before it wrote anything, or a storage error (which rolls back the whole group).
    pub(super) fn submit<T: Send + 'static>(
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
    pub(super) fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&WriteTransaction, &mut Batch) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.submit(f)
            .blocking_recv()
            .map_err(|_| storage_err("the store writer stopped"))?
    }
}

/// The single writer thread: drains queued writes into one transaction per group, gives each
/// write its own revision, commits durably once (one fsync for the group), then broadcasts
/// and replies in order.
pub(super) struct GroupWriter {
    pub(super) db: Arc<Database>,
    pub(super) order: Arc<Mutex<()>>,
    pub(super) live: broadcast::Sender<Arc<Vec<StoreEvent>>>,
    pub(super) history_revisions: i64,
}

impl GroupWriter {
    /// Starts the writer thread; writes sent to the returned queue are committed in order.
    pub(super) fn start(self) -> Result<std::sync::mpsc::Sender<WriteOp>, StoreError> {
        let (ops, queue) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("kino-store-writer".into())
            .spawn(move || self.run(queue))
            .map_err(storage_err)?;
        Ok(ops)
    }

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

/// Waits for a queued write's reply.
pub(super) async fn written<T>(
    pending: oneshot::Receiver<Result<T, StoreError>>,
) -> Result<T, StoreError> {
    pending
        .await
        .map_err(|_| storage_err("the store writer stopped before committing"))?
}
