//! The `embedded` backend: one redb file on local disk, etcd's revision model on top.
//!
//! Every write is one redb transaction committed durably (fsync) that bumps the global
//! revision, updates the key table and appends to an on-disk change log. Watchers replay the
//! log from their start revision and then follow live commits; the log is what makes a watch
//! resumable across a gateway restart. A single writer lock orders commits and their
//! notifications, so watchers always see revisions in order.
//!
//! Here: the options, opening the file, reads, and the [`Store`] implementation. The rest by
//! concern: `tables` (the on-disk layout and its encoding), `writer` (the group-commit
//! thread), `keys` (create / compare-and-swap update / delete), `leases` (grant, keep-alive,
//! expiry) and `watch` (change-log replay, then live commits).

mod keys;
mod leases;
mod tables;
mod watch;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use redb::{Database, ReadableTable};
use tokio::sync::broadcast;

use super::{
    EventStream, Lease, ListPage, Store, StoreError, StoreEvent, StoreStatus, StoredObject,
};
use tables::{
    BACKEND, KV, LEASE_KEYS, LEASES, LOG, META, META_COMPACT, META_REVISION, compact_log,
    decode_record, meta, now_ms, storage_err,
};
use writer::{GroupWriter, WriteOp, written};

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
        tokio::spawn(leases::expire_leases(Arc::downgrade(&inner), interval));
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
        let ops = GroupWriter {
            db: db.clone(),
            order: writer.clone(),
            live: live.clone(),
            history_revisions: options.history_revisions.max(1),
        }
        .start()?;
        Ok(Inner {
            db,
            path: options.path,
            writer,
            live,
            ops,
        })
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
        written(
            self.inner
                .submit(move |txn, batch| keys::create(txn, batch, key, value, lease)),
        )
        .await
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: i64,
        expected_revision: i64,
    ) -> Result<StoredObject, StoreError> {
        let key = key.to_string();
        written(self.inner.submit(move |txn, batch| {
            keys::update(txn, batch, key, value, lease, expected_revision)
        }))
        .await
    }

    async fn delete(
        &self,
        key: &str,
        expected_revision: Option<i64>,
    ) -> Result<StoredObject, StoreError> {
        let key = key.to_string();
        written(
            self.inner
                .submit(move |txn, batch| keys::delete(txn, batch, key, expected_revision)),
        )
        .await
    }

    async fn watch(&self, prefix: &str, start_revision: i64) -> Result<EventStream, StoreError> {
        watch::start(&self.inner, prefix, start_revision)
    }

    async fn grant_lease(&self, ttl_seconds: i64) -> Result<Lease, StoreError> {
        if ttl_seconds <= 0 {
            return Err(StoreError::InvalidArgument {
                field: "ttl_seconds",
                reason: format!("{ttl_seconds} must be positive"),
            });
        }
        written(
            self.inner
                .submit(move |txn, _batch| leases::grant(txn, ttl_seconds)),
        )
        .await
    }

    async fn keep_alive(&self, lease: i64) -> Result<Lease, StoreError> {
        written(
            self.inner
                .submit(move |txn, _batch| leases::keep_alive(txn, lease)),
        )
        .await
    }

    async fn revoke_lease(&self, lease: i64) -> Result<(), StoreError> {
        written(
            self.inner
                .submit(move |txn, batch| leases::revoke_in(txn, batch, lease)),
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
