//! service-kit's typed records (`kino_service_kit::records::Records`, what ipam, the
//! policy-compiler and the agent store their state with) against a real gateway over gRPC, on
//! both backends: compare-and-swap answers, unreadable records named, create-or-replace
//! (`put`) with its refusal, and a lost lease told apart from a lost record.

use kino_api::datastore::{GrantLeaseRequest, Resource, RevokeLeaseRequest};
use kino_api::types::{Node, NodeHealth};
use kino_datastore_gateway::testing::{Backend, ServedGateway, serve_gateway};
use kino_service_kit::ClientTlsArgs;
use kino_service_kit::records::{RecordError, Records, Spec, WriteError, decode};

/// A gateway over a fresh backend, and typed records through it.
pub struct World {
    _backend: Backend,
    gateway: ServedGateway,
    records: Records<RecordError>,
}

async fn world(backend: Backend) -> World {
    let gateway = serve_gateway(backend.store.clone()).await;
    let channel = kino_service_kit::connect_lazy(&gateway.address, &ClientTlsArgs::default())
        .expect("a channel to the gateway");
    World {
        _backend: backend,
        gateway,
        records: Records::new(channel),
    }
}

fn node(name: &str, version: &str) -> Node {
    Node {
        name: name.to_owned(),
        agent_version: version.to_owned(),
        ..Node::default()
    }
}

/// A Node record whose spec is some other message.
fn not_a_node(name: &str) -> Resource {
    let mut resource = kino_service_kit::records::to_resource(
        "",
        name,
        &NodeHealth {
            name: name.to_owned(),
            ..NodeHealth::default()
        },
        0,
    );
    resource.kind = Node::KIND.to_owned();
    resource
}

mod cases {
    use super::*;

    pub async fn writes_compare_and_swap_on_revisions(w: World) {
        let r = &w.records;
        assert!(r.get::<Node>("", "n1").await.unwrap().is_none());

        let created = r.create("", "n1", &node("n1", "1"), 0).await.unwrap();
        assert!(created.revision > 0);
        assert_eq!(created.create_revision, created.revision);
        assert_eq!(
            (created.namespace.as_str(), created.name.as_str()),
            ("", "n1")
        );
        assert_eq!(created.lease, 0);
        let read = r.get::<Node>("", "n1").await.unwrap().expect("created");
        assert_eq!(read.value, node("n1", "1"));
        assert_eq!(read.revision, created.revision);
        assert!(matches!(
            r.create("", "n1", &node("n1", "other"), 0).await,
            Err(WriteError::Exists)
        ));

        let updated = r
            .update("", "n1", &node("n1", "2"), 0, created.revision)
            .await
            .unwrap();
        assert!(updated.revision > created.revision);
        assert_eq!(updated.create_revision, created.create_revision);
        assert!(
            matches!(
                r.update("", "n1", &node("n1", "stale"), 0, created.revision)
                    .await,
                Err(WriteError::Conflict)
            ),
            "an update at a past revision is refused"
        );
        let read = r.get::<Node>("", "n1").await.unwrap().expect("kept");
        assert_eq!(
            read.value.agent_version, "2",
            "the stale update wrote nothing"
        );

        assert!(matches!(
            r.delete(Node::KIND, "", "n1", created.revision).await,
            Err(WriteError::Conflict)
        ));
        let (deleted, revision) = r
            .delete(Node::KIND, "", "n1", updated.revision)
            .await
            .unwrap();
        assert!(revision > updated.revision);
        assert_eq!(decode::<Node>(&deleted).unwrap().value, node("n1", "2"));
        assert!(r.get::<Node>("", "n1").await.unwrap().is_none());
        assert!(matches!(
            r.delete(Node::KIND, "", "n1", 0).await,
            Err(WriteError::NotFound)
        ));
        assert!(matches!(
            r.update("", "n1", &node("n1", "3"), 0, updated.revision)
                .await,
            Err(WriteError::NotFound)
        ));
    }

    pub async fn unreadable_records_are_named(w: World) {
        w.records.client().create(not_a_node("odd")).await.unwrap();
        let err = w.records.get::<Node>("", "odd").await.unwrap_err();
        assert!(matches!(err, RecordError::Unreadable(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "stored Node /odd is unreadable: its spec is a kino.types.v1.NodeHealth, expected a kino.types.v1.Node"
        );
    }

    pub async fn put_creates_or_replaces_what_it_may(w: World) {
        let r = &w.records;
        let first = r
            .put("", "n", &node("n", "1"), 0, |_| {
                panic!("nothing is stored yet: there is nothing to replace")
            })
            .await
            .unwrap();
        assert_eq!(
            r.get::<Node>("", "n").await.unwrap().unwrap().value,
            node("n", "1")
        );

        let second = r
            .put("", "n", &node("n", "2"), 0, |held| {
                assert_eq!(held, Some(&node("n", "1")), "sees what it replaces");
                Ok(())
            })
            .await
            .unwrap();
        assert!(second.revision > first.revision);

        let refused = r
            .put("", "n", &node("n", "3"), 0, |_| {
                Err(RecordError::Raced("not now".into()))
            })
            .await
            .unwrap_err();
        assert_eq!(refused.to_string(), "not now");
        let kept = r.get::<Node>("", "n").await.unwrap().unwrap();
        assert_eq!(kept.value, node("n", "2"), "a refused put writes nothing");
        assert_eq!(kept.revision, second.revision);

        // What is stored may be unreadable as the spec: the writer decides, seeing None.
        r.client().create(not_a_node("odd")).await.unwrap();
        r.put("", "odd", &node("odd", "1"), 0, |held| {
            assert!(held.is_none());
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(
            r.get::<Node>("", "odd").await.unwrap().unwrap().value,
            node("odd", "1")
        );
    }

    pub async fn a_lost_lease_is_told_from_a_lost_record(w: World) {
        let r = &w.records;
        let health = NodeHealth {
            name: "h".into(),
            ..NodeHealth::default()
        };
        let mut gateway = w.gateway.client.clone();
        let lease = gateway
            .grant_lease(GrantLeaseRequest { ttl_seconds: 60 })
            .await
            .unwrap()
            .into_inner()
            .lease_id;
        let on_lease = r.create("", "h", &health, lease).await.unwrap();
        assert_eq!(on_lease.lease, lease);
        let free = r.create("", "free", &health, 0).await.unwrap();
        gateway
            .revoke_lease(RevokeLeaseRequest { lease_id: lease })
            .await
            .unwrap();
        assert!(
            r.get::<NodeHealth>("", "h").await.unwrap().is_none(),
            "revoking the lease deleted its record"
        );

        assert!(matches!(
            r.create("", "h", &health, lease).await,
            Err(WriteError::LeaseGone)
        ));
        assert!(matches!(
            r.update("", "free", &health, lease, free.revision).await,
            Err(WriteError::LeaseGone)
        ));
        let err = r
            .put("", "free", &health, lease, |_| Ok(()))
            .await
            .unwrap_err();
        assert!(matches!(err, RecordError::LeaseGone { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "NodeHealth /free: the datastore lease it hangs on expired or was revoked"
        );
        // A delete attaches no lease: what is missing is the record.
        assert!(matches!(
            r.delete(NodeHealth::KIND, "", "h", 0).await,
            Err(WriteError::NotFound)
        ));
    }
}

kino_datastore_gateway::testing::suite!("records", |backend| crate::world(backend).await;
    writes_compare_and_swap_on_revisions,
    unreadable_records_are_named,
    put_creates_or_replaces_what_it_may,
    a_lost_lease_is_told_from_a_lost_record,
);
