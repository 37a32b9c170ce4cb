//! Who may write what in the datastore, over real mTLS: the gateway served by the service
//! kit (as the binary serves it) on an embedded store, clients presenting certificates of a
//! throw-away PKI. Per-kind rules (an agent writes only its own node's records; IPAM and
//! the compiler their kinds; IPAM deletes a node's records), method rules (Compact is
//! admin's, the operator writes nothing) and leases kept alive or revoked only by their
//! granter.

use std::sync::Arc;

use kino_api::datastore::datastore_service_client::DatastoreServiceClient;
use kino_api::datastore::{
    CompactRequest, CreateRequest, DeleteRequest, GrantLeaseRequest, KeepAliveLeaseRequest,
    Resource, ResourceKey, RevokeLeaseRequest,
};
use kino_datastore_gateway::grpc::DatastoreGrpc;
use kino_datastore_gateway::{Gateway, Limits};
use kino_service_kit::pki::{Issue, Pki, Subject};
use kino_service_kit::principal::Role;
use kino_service_kit::{ClientTlsArgs, Listener, ServeSpec, TlsArgs, TracedChannel, serve};
use tonic::Code;

type Client = DatastoreServiceClient<TracedChannel>;

struct World {
    _dir: tempfile::TempDir,
    pki: Pki,
    target: String,
}

impl World {
    async fn start() -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let (pki, _) = Pki::open_or_create(&dir.path().join("pki")).expect("CA");
        let issue = |subject: Subject, stem: &str| {
            pki.issue(&Issue::local(subject, &[]).with_stem(stem))
                .expect("certificate");
        };
        issue(Subject::role(Role::DatastoreGateway), "datastore-gateway");
        issue(Subject::agent("n1"), "agent-n1");
        issue(Subject::agent("n2"), "agent-n2");
        for role in [
            Role::Ipam,
            Role::PolicyCompiler,
            Role::Operator,
            Role::Admin,
        ] {
            issue(Subject::role(role), role.as_str());
        }
        let store = kino_datastore_gateway::store::embedded::EmbeddedStore::open(
            kino_datastore_gateway::store::embedded::EmbeddedOptions::new(
                dir.path().join("ds.redb"),
            ),
        )
        .await
        .expect("store");
        let gateway = Arc::new(Gateway::new(Arc::new(store), Limits::default()));
        let listener = Listener::bind(&"127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind");
        let target = listener.local_addr().to_string();
        let tls = TlsArgs::mtls(
            pki.cert_path("datastore-gateway"),
            pki.key_path("datastore-gateway"),
            pki.ca_path(),
        );
        tokio::spawn(serve(
            ServeSpec::on_listener("kino-datastore-gateway", listener)
                .with_tls(tls)
                .with_authorization(kino_datastore_gateway::authorization::AUTHORIZATION)
                .add_service(DatastoreGrpc::new(gateway).into_server()),
        ));
        World {
            _dir: dir,
            pki,
            target,
        }
    }

    async fn client(&self, stem: &str) -> Client {
        let tls = ClientTlsArgs::mtls(
            self.pki.ca_path(),
            self.pki.cert_path(stem),
            self.pki.key_path(stem),
        );
        DatastoreServiceClient::new(
            kino_service_kit::connect(&self.target, &tls)
                .await
                .expect("mTLS connect"),
        )
    }
}

fn resource(kind: &str, namespace: &str, name: &str) -> CreateRequest {
    CreateRequest {
        resource: Some(Resource {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
            ..Default::default()
        }),
    }
}

fn delete(kind: &str, namespace: &str, name: &str) -> DeleteRequest {
    DeleteRequest {
        key: Some(ResourceKey {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
        }),
        expected_revision: 0,
    }
}

fn assert_denied<T: std::fmt::Debug>(result: Result<T, tonic::Status>, parts: &[&str]) {
    let status = result.expect_err("denied");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    for part in parts {
        assert!(status.message().contains(part), "{part}: {status:?}");
    }
}

#[tokio::test]
async fn each_kind_is_written_by_its_owner_and_agents_only_for_their_node() {
    let world = World::start().await;
    let mut n1 = world.client("agent-n1").await;
    n1.create(resource("Node", "", "n1"))
        .await
        .expect("own Node");
    n1.create(resource("Endpoint", "n1", "1"))
        .await
        .expect("own Endpoint");
    assert_denied(
        n1.create(resource("Endpoint", "n2", "1")).await,
        &[
            "\"kino-agent:n1\"",
            "create Endpoint n2/1",
            "own node's (\"n1\")",
        ],
    );
    assert_denied(
        n1.create(resource("Node", "", "n2")).await,
        &["Node \"n2\""],
    );
    assert_denied(
        n1.create(resource("Identity", "", "256")).await,
        &["written by policy-compiler"],
    );
    assert_denied(
        world
            .client("agent-n2")
            .await
            .delete(delete("Endpoint", "n1", "1"))
            .await,
        &["delete Endpoint n1/1"],
    );

    let mut ipam = world.client("ipam").await;
    ipam.create(resource("IPPool", "", "p1"))
        .await
        .expect("ipam's kind");
    assert_denied(
        ipam.create(resource("NodeHealth", "", "n3")).await,
        &["(role ipam)"],
    );
    assert_denied(
        ipam.create(resource("Endpoint", "n3", "1")).await,
        &["(role ipam)"],
    );
    // Explicit node deletion: IPAM marks the Node (deletion_time), then removes the node's
    // records.
    ipam.create(resource("Node", "", "n3"))
        .await
        .expect("ipam marks a node it deletes");
    ipam.delete(delete("Endpoint", "n1", "1"))
        .await
        .expect("ipam deletes a node's endpoint");
    ipam.delete(delete("Node", "", "n1"))
        .await
        .expect("ipam deletes a node");

    let mut compiler = world.client("policy-compiler").await;
    compiler
        .create(resource("Identity", "", "256"))
        .await
        .expect("the compiler writes identities");
    assert_denied(
        compiler
            .create(resource("IPAllocation", "p1", "10.0.0.2"))
            .await,
        &["written by ipam"],
    );

    // The operator writes through the services' APIs, never the datastore.
    assert_denied(
        world
            .client("operator")
            .await
            .create(resource("Policy", "shop", "web"))
            .await,
        &["/kino.datastore.v1.DatastoreService/Create"],
    );
    // Compact is admin's.
    assert_denied(
        n1.compact(CompactRequest { revision: 1 }).await,
        &["Compact", "roles admin"],
    );
    let mut admin = world.client("admin").await;
    admin
        .create(resource("Policy", "shop", "web"))
        .await
        .expect("admin may write anything");
    admin
        .compact(CompactRequest { revision: 1 })
        .await
        .expect("admin compacts");
}

#[tokio::test]
async fn a_lease_is_kept_alive_and_revoked_only_by_its_granter() {
    let world = World::start().await;
    let mut n1 = world.client("agent-n1").await;
    let mut n2 = world.client("agent-n2").await;
    let lease = n1
        .grant_lease(GrantLeaseRequest { ttl_seconds: 60 })
        .await
        .expect("grant")
        .into_inner()
        .lease_id;
    n1.create(CreateRequest {
        resource: Some(Resource {
            kind: "Node".into(),
            name: "n1".into(),
            lease_id: lease,
            ..Default::default()
        }),
    })
    .await
    .expect("on the lease");

    assert_denied(
        n2.keep_alive_lease(KeepAliveLeaseRequest { lease_id: lease })
            .await,
        &[
            "\"kino-agent:n2\"",
            &format!("lease {lease}"),
            "granted by \"kino-agent:n1\"",
        ],
    );
    assert_denied(
        n2.revoke_lease(RevokeLeaseRequest { lease_id: lease })
            .await,
        &["granted by \"kino-agent:n1\""],
    );
    n1.keep_alive_lease(KeepAliveLeaseRequest { lease_id: lease })
        .await
        .expect("its granter");
    world
        .client("admin")
        .await
        .keep_alive_lease(KeepAliveLeaseRequest { lease_id: lease })
        .await
        .expect("admin");
    n1.revoke_lease(RevokeLeaseRequest { lease_id: lease })
        .await
        .expect("its granter revokes");
    let gone = n1
        .keep_alive_lease(KeepAliveLeaseRequest { lease_id: lease })
        .await
        .expect_err("revoked");
    assert_eq!(gone.code(), Code::NotFound, "{gone:?}");
    // The granter's record went with the lease; a lease nobody holds revokes as a no-op.
    n2.revoke_lease(RevokeLeaseRequest { lease_id: lease })
        .await
        .expect("idempotent");
}
