//! Test support for every crate whose tests need a datastore (feature `testing`): a fresh
//! backend per test — an embedded file in a temporary directory, or a unique key prefix in a
//! real etcd (`KINO_TEST_ETCD_ENDPOINTS`) — a gateway served over it on loopback, and
//! [`suite!`], which runs a list of test cases against both backends.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kino_api::datastore::datastore_service_client::DatastoreServiceClient;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Channel;

use crate::grpc::DatastoreGrpc;
use crate::store::Store;
use crate::store::embedded::{EmbeddedOptions, EmbeddedStore};
use crate::store::etcd::{EtcdOptions, EtcdStore};
use crate::{Gateway, Limits};

/// A store under test and what must live as long as it.
pub struct Backend {
    /// The store.
    pub store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
    etcd: Option<(Vec<String>, String)>,
}

/// Removes what a test wrote to etcd, usable after the backend was moved.
pub struct Cleanup(Option<(Vec<String>, String)>);

impl Cleanup {
    /// Deletes the test's unique etcd prefix (nothing for an embedded store).
    pub async fn run(&self) {
        if let Some((endpoints, prefix)) = &self.0 {
            let mut client = etcd_client::Client::connect(endpoints, None)
                .await
                .expect("the test etcd answers");
            client
                .delete(
                    prefix.as_str(),
                    Some(etcd_client::DeleteOptions::new().with_prefix()),
                )
                .await
                .expect("the test's keys are deleted");
        }
    }
}

impl Backend {
    /// A handle that removes the keys an etcd test wrote.
    pub fn cleanup_handle(&self) -> Cleanup {
        Cleanup(self.etcd.clone())
    }

    /// Removes the keys an etcd test wrote (its unique prefix).
    pub async fn cleanup(&self) {
        self.cleanup_handle().run().await
    }
}

/// A fresh embedded store in a temporary directory.
pub async fn embedded() -> Backend {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = EmbeddedStore::open(EmbeddedOptions::new(dir.path().join("kino.redb")))
        .await
        .expect("the embedded store opens");
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

/// A unique key prefix (`/kino-<what>-test-<pid>-<nanos>-<seq>/`) so parallel tests never
/// see each other's keys.
pub fn unique_prefix(what: &str) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_nanos();
    format!(
        "/kino-{what}-test-{}-{nanos}-{}/",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// The etcd store under a unique prefix named after `what`, or None (skip, loudly) when no
/// etcd answers outside CI. Under CI=true a missing etcd fails the test: the suite must run
/// there.
pub async fn etcd(what: &str) -> Option<Backend> {
    let endpoints = etcd_endpoints();
    let prefix = unique_prefix(what);
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

/// A gateway served in-process over a store, on a loopback port.
pub struct ServedGateway {
    /// Its address, `127.0.0.1:port`.
    pub address: String,
    /// A client of it.
    pub client: DatastoreServiceClient<Channel>,
    /// The server task (abort it to stop the gateway).
    pub task: JoinHandle<()>,
}

/// Serves a gateway (default limits) over `store` on loopback.
pub async fn serve_gateway(store: Arc<dyn Store>) -> ServedGateway {
    let gateway = Arc::new(Gateway::new(store, Limits::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("a bound address");
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(DatastoreGrpc::new(gateway).into_server())
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await;
    });
    let client = DatastoreServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("the gateway answers");
    ServedGateway {
        address: addr.to_string(),
        client,
        task,
    }
}

/// Runs every listed case against both backends: one `#[tokio::test]` per case in a module
/// `embedded` (a fresh file) and one in a module `etcd` (a fresh prefix in the test etcd, or
/// a loud skip outside CI; its keys removed when the case returns). Each case is the async fn
/// `cases::<name>` in the module that invokes the macro; `|backend| arg` turns the fresh
/// [`Backend`] into what the cases take (the store, the backend itself, a whole world);
/// `"what"` names the etcd prefix (`/kino-<what>-test-…`).
///
/// ```ignore
/// kino_datastore_gateway::testing::suite!("gateway", |backend| backend.store.clone();
///     crud_with_compare_and_swap,
///     list_pages_in_key_order,
/// );
/// ```
#[doc(hidden)]
#[macro_export]
macro_rules! __datastore_backend_suite {
    ($what:literal, |$backend:ident| $arg:expr; $($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let $backend = $crate::testing::embedded().await;
                    super::cases::$case($arg).await;
                }
            )*
        }
        mod etcd {
            $(
                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some($backend) = $crate::testing::etcd($what).await else {
                        return;
                    };
                    let cleanup = $backend.cleanup_handle();
                    super::cases::$case($arg).await;
                    cleanup.run().await;
                }
            )*
        }
    };
}

#[doc(inline)]
pub use crate::__datastore_backend_suite as suite;
