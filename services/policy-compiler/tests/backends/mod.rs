//! The world of a policy-compiler API test: a datastore gateway served in-process over a
//! fresh backend (an embedded file, or a unique key prefix in a real etcd), and compiler
//! replicas served in-process against it, each with its own view as separate processes
//! would have.

use std::sync::Arc;
use std::time::Duration;

use kino_api::datastore::datastore_service_client::DatastoreServiceClient;
use kino_api::policy::policy_service_client::PolicyServiceClient;
use kino_policy_compiler::grpc::PolicyGrpc;
use kino_policy_compiler::service::{PolicyService, ServiceOptions};
use kino_policy_compiler::store::Store;
use kino_service_kit::ClientTlsArgs;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Channel;

use kino_datastore_gateway::testing::serve_gateway;
pub use kino_datastore_gateway::testing::{Backend, embedded};

/// The etcd store under a unique prefix, or None (skip) outside CI without an etcd.
#[allow(dead_code)]
pub async fn etcd() -> Option<Backend> {
    kino_datastore_gateway::testing::etcd("policy").await
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
        let gateway = serve_gateway(backend.store.clone()).await;
        World {
            backend,
            gateway: gateway.address,
            datastore: gateway.client,
            tasks: vec![gateway.task],
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
