//! The world of an IPAM test: a datastore gateway served in-process over a fresh backend
//! (an embedded file, or a unique key prefix in a real etcd), and IPAM replicas served
//! in-process against it (serving `kino.ipam.v1`, `kino.node.v1` and `kino.service.v1`),
//! each with its own caches as separate processes would have.

use std::sync::Arc;
use std::time::Duration;

use kino_api::datastore::datastore_service_client::DatastoreServiceClient;
use kino_api::ipam::ipam_service_client::IpamServiceClient;
use kino_api::node::node_service_client::NodeServiceClient;
use kino_api::service::load_balancing_service_client::LoadBalancingServiceClient;
use kino_ipam::grpc::IpamGrpc;
use kino_ipam::lb_grpc::LoadBalancingGrpc;
use kino_ipam::node_grpc::NodeGrpc;
use kino_ipam::persistence::Datastore;
use kino_ipam::pool::{DEFAULT_POOL, PoolConfig, RawFamily};
use kino_ipam::{Ipam, IpamOptions};
use kino_service_kit::ClientTlsArgs;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Channel;

use kino_datastore_gateway::testing::serve_gateway;
#[allow(unused_imports)] // not every test file names a backend itself
pub use kino_datastore_gateway::testing::{Backend, embedded};

/// A gateway over a backend, and the replicas started against it.
pub struct World {
    pub backend: Backend,
    /// The gateway's address, `127.0.0.1:port`.
    pub gateway: String,
    /// A raw datastore client, to look at (and tamper with) the records.
    pub datastore: DatastoreServiceClient<Channel>,
    tasks: Vec<JoinHandle<()>>,
}

/// One IPAM replica: its gRPC clients and its logic (for what the API does not expose).
pub struct Replica {
    pub client: IpamServiceClient<Channel>,
    /// Its `kino.node.v1` service.
    #[allow(dead_code)]
    pub nodes: NodeServiceClient<Channel>,
    /// Its `kino.service.v1` service.
    #[allow(dead_code)]
    pub services: LoadBalancingServiceClient<Channel>,
    pub ipam: Arc<Ipam>,
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

    /// Starts a replica (with the watcher that finishes interrupted node deletions, as
    /// kino-ipam runs it).
    pub async fn replica_with(&mut self, options: IpamOptions) -> Replica {
        let channel =
            kino_service_kit::connect_lazy(&self.gateway, &ClientTlsArgs::default()).unwrap();
        let ipam = Arc::new(Ipam::new(Datastore::new(channel), options));
        self.tasks.push(tokio::spawn(
            kino_ipam::node_watch::finish_interrupted_deletions(ipam.clone()),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = IpamGrpc::new(ipam.clone()).into_server();
        let nodes = NodeGrpc::new(ipam.clone()).into_server();
        let services = LoadBalancingGrpc::new(ipam.clone()).into_server();
        self.tasks.push(tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .add_service(nodes)
                .add_service(services)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        }));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Replica {
            client: IpamServiceClient::new(channel.clone()),
            nodes: NodeServiceClient::new(channel.clone()),
            services: LoadBalancingServiceClient::new(channel),
            ipam,
        }
    }

    /// A replica with the default options, but a short claim takeover.
    #[allow(dead_code)] // services.rs wants a long one
    pub async fn replica(&mut self) -> Replica {
        self.replica_with(IpamOptions {
            takeover_after: Duration::from_millis(300),
            ..IpamOptions::default()
        })
        .await
    }

    /// Stops every server and replica task, and removes an etcd test's keys.
    pub async fn finish(self) {
        for task in &self.tasks {
            task.abort();
        }
        self.backend.cleanup().await;
    }
}

/// The default pool, as kino-ipam creates it at start-up.
pub fn default_pool() -> PoolConfig {
    PoolConfig::validate(
        "pool",
        DEFAULT_POOL,
        Some(&RawFamily {
            cidrs: vec!["10.0.0.0/8".into()],
            node_mask_size: 24,
        }),
        Some(&RawFamily {
            cidrs: vec!["fd00::/104".into()],
            node_mask_size: 120,
        }),
    )
    .unwrap()
}

/// Asserts `result` failed with `code` and a message mentioning every one of `words`.
#[allow(dead_code)] // not every test file checks refusals
pub fn assert_status<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    words: &[&str],
) {
    let status = result.expect_err("the request must fail");
    assert_eq!(status.code(), code, "{status:?}");
    for word in words {
        assert!(
            status.message().contains(word),
            "the message must mention {word:?}: {}",
            status.message()
        );
    }
}
