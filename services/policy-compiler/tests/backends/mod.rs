//! The world of a policy-compiler API test: a datastore gateway served in-process over a
//! fresh backend (an embedded file, or a unique key prefix in a real etcd), and compiler
//! replicas served in-process against it, each with its own view as separate processes
//! would have.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kino_api::datastore::datastore_service_client::DatastoreServiceClient;
use kino_api::policy::policy_service_client::PolicyServiceClient;
use kino_datastore_gateway::grpc::DatastoreGrpc;
use kino_datastore_gateway::store::Store as GatewayStore;
use kino_datastore_gateway::store::embedded::{EmbeddedOptions, EmbeddedStore};
use kino_datastore_gateway::store::etcd::{EtcdOptions, EtcdStore};
use kino_datastore_gateway::{Gateway, Limits};
use kino_policy_compiler::grpc::PolicyGrpc;
use kino_policy_compiler::service::{PolicyService, ServiceOptions};
use kino_policy_compiler::store::Store;
use kino_service_kit::ClientTlsArgs;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Channel;

/// A store under test and what must live as long as it.
pub struct Backend {
    pub store: Arc<dyn GatewayStore>,
    _dir: Option<tempfile::TempDir>,
    etcd: Option<(Vec<String>, String)>,
}

impl Backend {
    /// Removes what an etcd test wrote (its unique prefix).
    pub async fn cleanup(&self) {
        if let Some((endpoints, prefix)) = &self.etcd {
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

/// A fresh embedded store in a temporary directory.
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

/// The etcd store under a unique prefix, or None (skip, loudly) when no etcd answers
/// outside CI. Under CI=true a missing etcd fails the test: the suite must run there.
pub async fn etcd() -> Option<Backend> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let endpoints: Vec<String> = std::env::var("KINO_TEST_ETCD_ENDPOINTS")
        .unwrap_or_else(|_| "http://127.0.0.1:2379".into())
        .split(',')
        .map(str::to_string)
        .collect();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let prefix = format!(
        "/kino-policy-test-{}-{nanos}-{}/",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
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

/// A gateway over a backend, and the compilers started against it.
pub struct World {
    pub backend: Backend,
    /// The gateway's address, `127.0.0.1:port`.
    pub gateway: String,
    /// A raw datastore client, to write Endpoint / Node records as agents do.
    pub datastore: DatastoreServiceClient<Channel>,
    tasks: Vec<JoinHandle<()>>,
}

/// One compiler replica: its gRPC client and its service.
pub struct Replica {
    pub client: PolicyServiceClient<Channel>,
    pub service: Arc<PolicyService>,
}

impl World {
    /// Serves a gateway over `backend` on loopback.
    pub async fn new(backend: Backend) -> World {
        let gateway = Arc::new(Gateway::new(backend.store.clone(), Limits::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(DatastoreGrpc::new(gateway).into_server())
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        let datastore = DatastoreServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        World {
            backend,
            gateway: addr.to_string(),
            datastore,
            tasks: vec![task],
        }
    }

    /// Starts a compiler replica, as kino-policy-compiler runs it.
    pub async fn replica_with(&mut self, options: ServiceOptions) -> Replica {
        let channel =
            kino_service_kit::connect_lazy(&self.gateway, &ClientTlsArgs::default()).unwrap();
        let service = Arc::new(PolicyService::new(Store::new(channel), options));
        let mut tasks: Vec<JoinHandle<()>> = vec![
            tokio::spawn(kino_policy_compiler::sync::follow_datastore(
                service.clone(),
            )),
            tokio::spawn(kino_policy_compiler::sync::collect_identities(
                service.clone(),
            )),
        ];
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = PolicyGrpc::new(service.clone()).into_server();
        tasks.push(tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(server)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        }));
        let client = PolicyServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        for _ in 0..200 {
            if service.is_ready() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(service.is_ready(), "the replica did not load the datastore");
        self.tasks.extend(
            tasks
                .iter()
                .map(|t| tokio::spawn(watch_abort(t.abort_handle()))),
        );
        Replica { client, service }
    }

    /// A replica with the default options.
    pub async fn replica(&mut self) -> Replica {
        self.replica_with(ServiceOptions::default()).await
    }

    /// Stops every server task, and removes an etcd test's keys.
    pub async fn finish(self) {
        for task in &self.tasks {
            task.abort();
        }
        self.backend.cleanup().await;
    }
}

/// Parks a handle so World::finish can abort replica tasks too.
async fn watch_abort(handle: tokio::task::AbortHandle) {
    struct Abort(tokio::task::AbortHandle);
    impl Drop for Abort {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _abort = Abort(handle);
    std::future::pending::<()>().await;
}
