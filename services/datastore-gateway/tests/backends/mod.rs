//! Test backends: a fresh embedded file per test, or a unique key prefix in a real etcd.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kino_datastore_gateway::store::Store;
use kino_datastore_gateway::store::embedded::{EmbeddedOptions, EmbeddedStore};
use kino_datastore_gateway::store::etcd::{EtcdOptions, EtcdStore};

/// A store under test and what must live as long as it.
pub struct Backend {
    pub store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
    etcd: Option<(Vec<String>, String)>,
}

/// Removes what a test wrote to etcd, usable after the backend was moved.
pub struct Cleanup(Option<(Vec<String>, String)>);

impl Cleanup {
    /// Deletes the test's unique etcd prefix.
    pub async fn run(&self) {
        if let Some((endpoints, prefix)) = &self.0 {
            let mut client = etcd_client::Client::connect(endpoints, None).await.unwrap();
            client
                .delete(
                    prefix.as_str(),
                    Some(etcd_client::DeleteOptions::new().with_prefix()),
                )
                .await
                .unwrap();
        }
    }
}

impl Backend {
    /// A handle that removes the keys an etcd test wrote.
    pub fn cleanup_handle(&self) -> Cleanup {
        Cleanup(self.etcd.clone())
    }

    /// Removes the keys an etcd test wrote (its unique prefix).
    #[allow(dead_code)]
    pub async fn cleanup(&self) {
        self.cleanup_handle().run().await
    }
}

/// A fresh embedded store in a temporary directory.
#[allow(dead_code)]
pub async fn embedded() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(EmbeddedOptions::new(dir.path().join("kino.redb")))
        .await
        .unwrap();
    Backend {
        store: Arc::new(store),
        _dir: Some(dir),
        etcd: None,
    }
}

/// Endpoints of the test etcd.
pub fn etcd_endpoints() -> Vec<String> {
    std::env::var("KINO_TEST_ETCD_ENDPOINTS")
        .unwrap_or_else(|_| "http://127.0.0.1:2379".into())
        .split(',')
        .map(str::to_string)
        .collect()
}

/// A unique prefix so parallel tests never see each other's keys.
pub fn unique_prefix() -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "/kino-test-{}-{nanos}-{}/",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// The etcd store, or None (skip) when no etcd answers outside CI. Under CI=true a missing
/// etcd fails the test: the suite must run there.
pub async fn etcd() -> Option<Backend> {
    let endpoints = etcd_endpoints();
    let prefix = unique_prefix();
    let options = EtcdOptions {
        endpoints: endpoints.clone(),
        prefix: prefix.clone(),
        request_timeout: Duration::from_secs(10),
    };
    match EtcdStore::connect(options).await {
        Ok(store) => Some(Backend {
            store: Arc::new(store),
            _dir: None,
            etcd: Some((endpoints, prefix)),
        }),
        Err(e) if std::env::var("CI").is_err() => {
            eprintln!(
                "SKIPPED: no etcd at {endpoints:?} ({e}); run ./integration-tests/run.sh or set KINO_TEST_ETCD_ENDPOINTS"
            );
            None
        }
        Err(e) => panic!("CI=true but no etcd at {endpoints:?}: {e}"),
    }
}
