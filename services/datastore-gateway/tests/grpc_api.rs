//! The `kino.datastore.v1` API over real gRPC (tonic on loopback), on both backends: status
//! codes and field names of bad input, CAS conflicts, watch fan-out and resume.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kino_api::datastore::datastore_service_client::DatastoreServiceClient;
use kino_api::datastore::{
    CompactRequest, CreateRequest, DeleteRequest, EventType, GetRequest, GrantLeaseRequest,
    ListRequest, Resource, ResourceKey, StatusRequest, UpdateRequest, WatchRequest, WatchResponse,
};
use kino_datastore_gateway::grpc::{CURRENT_REVISION_HEADER, DatastoreGrpc};
use kino_datastore_gateway::testing::{Backend, embedded};
use kino_datastore_gateway::{Gateway, Limits};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

type Client = DatastoreServiceClient<Channel>;

/// Serves a gateway over `backend` on 127.0.0.1:0; the server stops when the test ends.
async fn serve(backend: &Backend) -> Client {
    let limits = Limits {
        max_value_bytes: 4096,
        watch_buffer_events: 10_000,
    };
    let gateway = Arc::new(Gateway::new(backend.store.clone(), limits));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DatastoreGrpc::new(gateway).into_server())
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    DatastoreServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

fn spec(bytes: usize) -> prost_types::Any {
    prost_types::Any {
        type_url: "type.googleapis.com/kino.test.Blob".into(),
        value: vec![7; bytes],
    }
}

fn resource(kind: &str, ns: &str, name: &str) -> Resource {
    Resource {
        kind: kind.into(),
        namespace: ns.into(),
        name: name.into(),
        spec: Some(spec(16)),
        ..Resource::default()
    }
}

fn key(kind: &str, ns: &str, name: &str) -> Option<ResourceKey> {
    Some(ResourceKey {
        kind: kind.into(),
        namespace: ns.into(),
        name: name.into(),
    })
}

async fn create(c: &mut Client, r: Resource) -> Resource {
    c.create(CreateRequest { resource: Some(r) })
        .await
        .unwrap()
        .into_inner()
        .resource
        .unwrap()
}

async fn next(stream: &mut Streaming<WatchResponse>) -> Result<WatchResponse, tonic::Status> {
    tokio::time::timeout(Duration::from_secs(15), stream.next())
        .await
        .expect("no watch response within 15 s")
        .expect("watch stream ended")
}

fn assert_invalid(result: Result<impl std::fmt::Debug, tonic::Status>, field: &str) {
    let status = result.expect_err("bad input must be refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains(field),
        "the error must name {field}: {}",
        status.message()
    );
}

mod cases {
    use super::*;

    pub async fn bad_input_names_the_field_and_writes_nothing(b: Backend) {
        let mut c = serve(&b).await;
        let r = c
            .create(CreateRequest {
                resource: Some(resource("Pod", "", "x")),
            })
            .await;
        assert_invalid(r, "resource.kind");
        assert!(
            c.create(CreateRequest {
                resource: Some(resource("Pod", "", "x"))
            })
            .await
            .unwrap_err()
            .message()
            .contains("IPPool"),
            "lists the known kinds"
        );
        let r = c
            .create(CreateRequest {
                resource: Some(resource("Node", "", "10.0.0.0/24")),
            })
            .await;
        assert_invalid(r, "resource.name");
        let r = c
            .create(CreateRequest {
                resource: Some(resource("Node", "Bad_NS!", "n")),
            })
            .await;
        assert_invalid(r, "resource.namespace");
        let mut big = resource("Node", "", "big");
        big.spec = Some(spec(5000));
        let r = c
            .create(CreateRequest {
                resource: Some(big),
            })
            .await;
        assert_invalid(r, "resource.spec");
        let r = c.create(CreateRequest { resource: None }).await;
        assert_invalid(r, "resource");
        let r = c
            .watch(WatchRequest {
                kind: "Node".into(),
                start_revision: -1,
                ..Default::default()
            })
            .await;
        assert_invalid(r, "start_revision");
        let r = c
            .delete(DeleteRequest {
                key: key("Node", "", "n"),
                expected_revision: -5,
            })
            .await;
        assert_invalid(r, "expected_revision");
        let r = c
            .update(UpdateRequest {
                resource: Some(resource("Node", "", "n")),
                expected_revision: 0,
            })
            .await;
        assert_invalid(r, "expected_revision");
        let r = c.grant_lease(GrantLeaseRequest { ttl_seconds: 0 }).await;
        assert_invalid(r, "ttl_seconds");
        let r = c
            .list(ListRequest {
                kind: "Node".into(),
                limit: 6000,
                ..Default::default()
            })
            .await;
        assert_invalid(r, "limit");
        let r = c
            .list(ListRequest {
                kind: "Nodes".into(),
                ..Default::default()
            })
            .await;
        assert_invalid(r, "kind");
        let r = c.get(GetRequest { key: None }).await;
        assert_invalid(r, "key");
        let mut leased = resource("Node", "", "leased");
        leased.lease_id = 987_654_321;
        let status = c
            .create(CreateRequest {
                resource: Some(leased),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        assert!(status.message().contains("lease 987654321"), "{status:?}");

        let nodes = c
            .list(ListRequest {
                kind: "Node".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(nodes.resources.is_empty(), "nothing written: {nodes:?}");
        let missing = c
            .get(GetRequest {
                key: key("Node", "", "n"),
            })
            .await
            .unwrap_err();
        assert_eq!(missing.code(), Code::NotFound);
        assert!(missing.message().contains("Node \"n\""), "{missing:?}");
    }

    pub async fn conflicts_are_aborted_with_the_current_revision(b: Backend) {
        let mut c = serve(&b).await;
        let r = create(&mut c, resource("IPPool", "", "default")).await;
        assert!(r.revision > 0);
        assert_eq!(r.spec, Some(spec(16)), "spec round-trips");
        let dup = c
            .create(CreateRequest {
                resource: Some(resource("IPPool", "", "default")),
            })
            .await
            .unwrap_err();
        assert_eq!(dup.code(), Code::AlreadyExists);

        let ok = c
            .update(UpdateRequest {
                resource: Some(resource("IPPool", "", "default")),
                expected_revision: r.revision,
            })
            .await
            .unwrap()
            .into_inner()
            .resource
            .unwrap();
        let conflict = c
            .update(UpdateRequest {
                resource: Some(resource("IPPool", "", "default")),
                expected_revision: r.revision,
            })
            .await
            .unwrap_err();
        assert_eq!(conflict.code(), Code::Aborted);
        assert!(
            conflict
                .message()
                .contains(&format!("current revision is {}", ok.revision)),
            "{conflict:?}"
        );
        assert_eq!(
            conflict
                .metadata()
                .get(CURRENT_REVISION_HEADER)
                .unwrap()
                .to_str()
                .unwrap(),
            ok.revision.to_string()
        );
        let deleted = c
            .delete(DeleteRequest {
                key: key("IPPool", "", "default"),
                expected_revision: ok.revision,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(deleted.revision > ok.revision);
        assert_eq!(deleted.resource.unwrap().spec, Some(spec(16)));
    }

    pub async fn many_watchers_share_one_backend_watch(b: Backend) {
        let mut c = serve(&b).await;
        let mut watchers = Vec::new();
        for _ in 0..50 {
            let stream = c
                .watch(WatchRequest {
                    kind: "Endpoint".into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            watchers.push(stream);
        }
        let fanout = c
            .status(StatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .watches;
        let endpoint = fanout.iter().find(|w| w.kind == "Endpoint").unwrap();
        assert_eq!(endpoint.subscribers, 50);
        assert_eq!(
            endpoint.backend_watches, 1,
            "one backend watch for 50 clients"
        );

        let created = create(&mut c, resource("Endpoint", "default", "web")).await;
        for w in &mut watchers {
            let resp = next(w).await.unwrap();
            assert_eq!(resp.events.len(), 1);
            assert_eq!(resp.events[0].r#type, EventType::Added as i32);
            assert_eq!(
                resp.events[0].resource.as_ref().unwrap().revision,
                created.revision
            );
        }
        drop(watchers);
        // The server notices closed streams shortly after.
        for _ in 0..100 {
            let status = c.status(StatusRequest {}).await.unwrap().into_inner();
            let w = status
                .watches
                .iter()
                .find(|w| w.kind == "Endpoint")
                .unwrap();
            if w.subscribers == 0 {
                assert_eq!(w.backend_watches, 1);
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("subscribers were not released");
    }

    pub async fn watch_resumes_and_filters(b: Backend) {
        let mut c = serve(&b).await;
        let mut w = c
            .watch(WatchRequest {
                kind: "Endpoint".into(),
                namespace: "a".into(),
                name_prefix: "web".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        create(&mut c, resource("Endpoint", "b", "web")).await;
        create(&mut c, resource("Endpoint", "a", "db")).await;
        let first = create(&mut c, resource("Endpoint", "a", "web-1")).await;
        let got = next(&mut w).await.unwrap();
        assert_eq!(got.events.len(), 1);
        assert_eq!(got.events[0].resource.as_ref().unwrap().name, "web-1");
        drop(w);

        // Changes while disconnected arrive after a resume from the last revision + 1.
        let second = create(&mut c, resource("Endpoint", "a", "web-2")).await;
        c.delete(DeleteRequest {
            key: key("Endpoint", "a", "web-1"),
            expected_revision: 0,
        })
        .await
        .unwrap();
        let mut resumed = c
            .watch(WatchRequest {
                kind: "Endpoint".into(),
                namespace: "a".into(),
                name_prefix: "web".into(),
                start_revision: first.revision + 1,
            })
            .await
            .unwrap()
            .into_inner();
        let mut events = Vec::new();
        while events.len() < 2 {
            events.extend(next(&mut resumed).await.unwrap().events);
        }
        assert_eq!(events[0].r#type, EventType::Added as i32);
        assert_eq!(
            events[0].resource.as_ref().unwrap().revision,
            second.revision
        );
        assert_eq!(events[1].r#type, EventType::Deleted as i32);
        assert_eq!(events[1].resource.as_ref().unwrap().name, "web-1");
        assert_eq!(
            events[1].resource.as_ref().unwrap().spec,
            Some(spec(16)),
            "a delete carries the last state"
        );
    }

    pub async fn deletes_carry_the_last_state_of_keys_older_than_the_watch(b: Backend) {
        let mut c = serve(&b).await;
        let old = create(&mut c, resource("Node", "", "node-a")).await;
        // The first watch of the kind starts the shared backend watch after `old` exists.
        let mut w = c
            .watch(WatchRequest {
                kind: "Node".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        c.delete(DeleteRequest {
            key: key("Node", "", "node-a"),
            expected_revision: 0,
        })
        .await
        .unwrap();
        let got = next(&mut w).await.unwrap();
        assert_eq!(got.events[0].r#type, EventType::Deleted as i32);
        let last = got.events[0].resource.as_ref().unwrap();
        assert_eq!(last.spec, Some(spec(16)));
        assert_eq!(last.create_revision, old.create_revision);
        assert!(last.revision > old.revision);
    }

    pub async fn compacted_start_is_out_of_range(b: Backend) {
        let mut c = serve(&b).await;
        let first = create(&mut c, resource("Identity", "", "256")).await;
        let later = create(&mut c, resource("Identity", "", "257")).await;
        c.compact(CompactRequest {
            revision: later.revision,
        })
        .await
        .unwrap();
        let result = c
            .watch(WatchRequest {
                kind: "Identity".into(),
                start_revision: first.revision,
                ..Default::default()
            })
            .await;
        let status = match result {
            Err(status) => status,
            Ok(resp) => next(&mut resp.into_inner()).await.unwrap_err(),
        };
        assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
        assert!(status.message().contains("re-list"), "{status:?}");
    }

    pub async fn list_pages_with_a_name_prefix(b: Backend) {
        let mut c = serve(&b).await;
        for ns in ["a", "b", "c"] {
            for i in 0..4 {
                create(&mut c, resource("Policy", ns, &format!("allow-{i}"))).await;
                create(&mut c, resource("Policy", ns, &format!("deny-{i}"))).await;
            }
        }
        let mut names = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        loop {
            let page = c
                .list(ListRequest {
                    kind: "Policy".into(),
                    name_prefix: "allow".into(),
                    limit: 5,
                    page_token: token.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            pages += 1;
            assert!(page.revision > 0);
            names.extend(
                page.resources
                    .iter()
                    .map(|r| format!("{}/{}", r.namespace, r.name)),
            );
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(names.len(), 12, "{names:?}");
        assert!(names.iter().all(|n| n.contains("/allow-")));
        assert_eq!(names[0], "a/allow-0");
        assert_eq!(names[11], "c/allow-3");
        assert_eq!(pages, 3);
        let bad = c
            .list(ListRequest {
                kind: "Node".into(),
                page_token: token,
                ..Default::default()
            })
            .await;
        assert_invalid(bad, "page_token");
    }
}

/// Issue 11: a 1 MB name, namespace, kind or name prefix is refused naming the field, and
/// the message repeats at most 128 bytes of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_names_are_refused_and_not_echoed() {
    let backend = embedded().await;
    let mut c = serve(&backend).await;
    let huge = "x".repeat(1 << 20);
    let short = |result: Result<(), tonic::Status>, field: &str| {
        let status = result.expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert!(status.message().contains(field), "{field}");
        assert!(
            status.message().len() < 512,
            "{field}: the message is {} bytes",
            status.message().len()
        );
    };
    let created = c
        .create(CreateRequest {
            resource: Some(resource("Node", "", &huge)),
        })
        .await
        .map(drop);
    short(created, "name");
    let created = c
        .create(CreateRequest {
            resource: Some(resource("Endpoint", &huge, "n1")),
        })
        .await
        .map(drop);
    short(created, "namespace");
    let created = c
        .create(CreateRequest {
            resource: Some(resource(&huge, "", "n1")),
        })
        .await
        .map(drop);
    short(created, "kind");
    let listed = c
        .list(ListRequest {
            kind: "Node".into(),
            name_prefix: huge.clone(),
            ..Default::default()
        })
        .await
        .map(drop);
    short(listed, "name_prefix");
}

kino_datastore_gateway::testing::suite!("gateway", |backend| backend;
    bad_input_names_the_field_and_writes_nothing,
    conflicts_are_aborted_with_the_current_revision,
    many_watchers_share_one_backend_watch,
    watch_resumes_and_filters,
    deletes_carry_the_last_state_of_keys_older_than_the_watch,
    compacted_start_is_out_of_range,
    list_pages_with_a_name_prefix,
);
