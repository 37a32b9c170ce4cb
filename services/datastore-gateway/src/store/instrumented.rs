//! A [`Store`] decorator that makes every store operation a span (a child of the request's
//! span, so a trace shows the etcd or embedded-file call under the gateway's RPC) and times it
//! into `kino_datastore_store_operation_seconds`.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use tracing::Instrument;

use super::{EventStream, Lease, ListPage, Store, StoreError, StoreStatus, StoredObject};
use crate::metrics::STORE;

/// Wraps a backend; `backend` ("embedded", "etcd") labels its spans and metrics.
pub struct InstrumentedStore {
    inner: Arc<dyn Store>,
    backend: &'static str,
}

impl InstrumentedStore {
    /// Instruments `inner`.
    pub fn new(inner: Arc<dyn Store>, backend: &'static str) -> Self {
        InstrumentedStore { inner, backend }
    }

    async fn observe<T>(
        &self,
        operation: &'static str,
        key: &str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let span = tracing::info_span!(
            "store",
            otel.name = format!("{} {operation}", self.backend),
            // etcd is a remote call; the embedded file is this process's own work.
            otel.kind = if self.backend == "etcd" {
                "client"
            } else {
                "internal"
            },
            db.system = self.backend,
            db.operation = operation,
            db.key = key,
            store.error = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        );
        let started = Instant::now();
        let result = call.instrument(span.clone()).await;
        STORE
            .latency
            .with_label_values(&[self.backend, operation])
            .observe(started.elapsed().as_secs_f64());
        if let Err(error) = &result {
            let message = error.to_string();
            span.record("store.error", message.as_str());
            // NotFound, AlreadyExists, CAS conflicts … are answers, not failures.
            if matches!(error, StoreError::Unavailable { .. }) {
                span.record("otel.status_description", message.as_str());
                STORE
                    .errors
                    .with_label_values(&[self.backend, operation])
                    .inc();
            }
        }
        result
    }
}

#[async_trait]
impl Store for InstrumentedStore {
    async fn get(&self, key: &str) -> Result<Option<StoredObject>, StoreError> {
        self.observe("get", key, self.inner.get(key)).await
    }

    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ListPage, StoreError> {
        self.observe("list", prefix, self.inner.list(prefix, after, limit))
            .await
    }

    async fn count(&self, prefix: &str) -> Result<u64, StoreError> {
        self.observe("count", prefix, self.inner.count(prefix))
            .await
    }

    async fn create(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: i64,
    ) -> Result<StoredObject, StoreError> {
        self.observe("create", key, self.inner.create(key, value, lease))
            .await
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: i64,
        expected_revision: i64,
    ) -> Result<StoredObject, StoreError> {
        self.observe(
            "update",
            key,
            self.inner.update(key, value, lease, expected_revision),
        )
        .await
    }

    async fn delete(
        &self,
        key: &str,
        expected_revision: Option<i64>,
    ) -> Result<StoredObject, StoreError> {
        self.observe("delete", key, self.inner.delete(key, expected_revision))
            .await
    }

    async fn watch(&self, prefix: &str, start_revision: i64) -> Result<EventStream, StoreError> {
        self.observe("watch", prefix, self.inner.watch(prefix, start_revision))
            .await
    }

    async fn grant_lease(&self, ttl_seconds: i64) -> Result<Lease, StoreError> {
        self.observe("grant_lease", "", self.inner.grant_lease(ttl_seconds))
            .await
    }

    async fn keep_alive(&self, lease: i64) -> Result<Lease, StoreError> {
        self.observe("keep_alive", "", self.inner.keep_alive(lease))
            .await
    }

    async fn revoke_lease(&self, lease: i64) -> Result<(), StoreError> {
        self.observe("revoke_lease", "", self.inner.revoke_lease(lease))
            .await
    }

    async fn compact(&self, revision: i64) -> Result<i64, StoreError> {
        self.observe("compact", "", self.inner.compact(revision))
            .await
    }

    async fn status(&self) -> Result<StoreStatus, StoreError> {
        self.observe("status", "", self.inner.status()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::{EmbeddedOptions, EmbeddedStore};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passes_through_and_times_each_operation() {
        let dir = tempfile::tempdir().unwrap();
        let embedded = EmbeddedStore::open(EmbeddedOptions::new(dir.path().join("s.redb")))
            .await
            .unwrap();
        let store = InstrumentedStore::new(Arc::new(embedded), "embedded");
        let timed = |operation: &str| {
            STORE
                .latency
                .with_label_values(&["embedded", operation])
                .get_sample_count()
        };
        let before = timed("create");
        let created = store.create("Node//a", b"x".to_vec(), 0).await.unwrap();
        assert_eq!(store.get("Node//a").await.unwrap(), Some(created));
        assert_eq!(store.count("Node/").await.unwrap(), 1);
        assert!(matches!(
            store.create("Node//a", vec![], 0).await,
            Err(StoreError::AlreadyExists { .. })
        ));
        assert_eq!(timed("create") - before, 2);
        assert!(timed("count") >= 1);
    }
}
