//! The real kino-datastore-gateway binary on the embedded backend: killed with SIGKILL in the
//! middle of its life and started again on the same file, it loses nothing — resources,
//! revisions, leases and the watchable history all survive.

use std::time::Duration;

use futures::StreamExt;
use kino_api::datastore::datastore_service_client::DatastoreServiceClient;
use kino_api::datastore::{
    CreateRequest, DeleteRequest, EventType, GrantLeaseRequest, KeepAliveLeaseRequest, ListRequest,
    Resource, ResourceKey, StatusRequest, UpdateRequest, WatchRequest,
};
use kino_integration_tests::pki::TestPki;
use kino_integration_tests::process::{ServiceProcess, wait_for_port};
use kino_integration_tests::{binary, free_port};
use kino_service_kit::TracedChannel;

type Client = DatastoreServiceClient<TracedChannel>;

/// The gateway with mTLS from the test's PKI (as deployed); its log in `dir`.
fn gateway(dir: &std::path::Path, port: u16) -> ServiceProcess {
    let args = vec![
        "--listen".to_string(),
        format!("127.0.0.1:{port}"),
        "--data-file".into(),
        dir.join("datastore.redb").display().to_string(),
    ];
    let pki = dir.join("pki").display().to_string();
    ServiceProcess::start(
        &binary("kino-datastore-gateway"),
        &args,
        &[("KINO_PKI_DIR", pki.as_str())],
        dir,
    )
    .unwrap()
}

/// A client presenting `<stem>.crt` of the test's PKI in `dir`.
async fn client_as(
    dir: &std::path::Path,
    stem: &str,
    port: u16,
    process: &ServiceProcess,
) -> Client {
    if let Err(e) = wait_for_port(&format!("127.0.0.1:{port}"), Duration::from_secs(20)).await {
        panic!("{e}\n--- gateway log ---\n{}", process.log_text());
    }
    let pki = TestPki::open(&dir.join("pki"));
    let channel = kino_service_kit::connect(&format!("127.0.0.1:{port}"), &pki.client(stem))
        .await
        .unwrap();
    DatastoreServiceClient::new(channel)
}

/// The agent of node-1: it writes the test's Endpoint records (namespace node-1) and the
/// lease.
async fn client(dir: &std::path::Path, port: u16, process: &ServiceProcess) -> Client {
    client_as(dir, "agent", port, process).await
}

fn spec(n: u32) -> Option<prost_types::Any> {
    Some(prost_types::Any {
        type_url: "type.googleapis.com/kino.test.Counter".into(),
        value: n.to_le_bytes().to_vec(),
    })
}

async fn list_all(c: &mut Client) -> Vec<Resource> {
    c.list(ListRequest {
        kind: "Endpoint".into(),
        limit: 5000,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .resources
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart_loses_nothing() {
    let dir = tempfile::Builder::new()
        .prefix("kino-gw-restart-")
        .tempdir()
        .unwrap();
    let port = free_port();
    TestPki::create(&dir.path().join("pki"), "node-1");
    let mut first = gateway(dir.path(), port);
    let mut c = client(dir.path(), port, &first).await;

    let mut writes = 0;
    for i in 0..40u32 {
        c.create(CreateRequest {
            resource: Some(Resource {
                kind: "Endpoint".into(),
                namespace: "node-1".into(),
                name: format!("ep-{i:02}"),
                spec: spec(i),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
        writes += 1;
    }
    for r in list_all(&mut c).await.iter().take(10) {
        let mut r = r.clone();
        r.spec = spec(1000);
        let expected_revision = r.revision;
        c.update(UpdateRequest {
            resource: Some(r),
            expected_revision,
        })
        .await
        .unwrap();
        writes += 1;
    }
    for i in 30..40 {
        c.delete(DeleteRequest {
            key: Some(ResourceKey {
                kind: "Endpoint".into(),
                namespace: "node-1".into(),
                name: format!("ep-{i:02}"),
            }),
            expected_revision: 0,
        })
        .await
        .unwrap();
        writes += 1;
    }
    let lease = c
        .grant_lease(GrantLeaseRequest { ttl_seconds: 120 })
        .await
        .unwrap()
        .into_inner()
        .lease_id;
    let before = list_all(&mut c).await;
    let status_before = c.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(before.len(), 30);

    // No graceful shutdown: whatever was acknowledged must already be on disk.
    first.signal_and_wait("KILL").unwrap();
    let second = gateway(dir.path(), port);
    let mut c = client(dir.path(), port, &second).await;

    let after = list_all(&mut c).await;
    assert_eq!(after, before, "resources, specs and revisions survive");
    let status_after = c.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status_after.revision, status_before.revision);

    // The full history is still watchable from the first revision (the lease's granter
    // record, written with the lease, took the last revision before the crash).
    let first_revision = status_before.revision - (writes + 1) + 1;
    let mut w = c
        .watch(WatchRequest {
            kind: "Endpoint".into(),
            start_revision: first_revision,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut events = Vec::new();
    while events.len() < writes as usize {
        let resp = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("history replay stalled")
            .unwrap()
            .unwrap();
        events.extend(resp.events);
    }
    assert_eq!(events.len(), writes as usize);
    let deleted = events
        .iter()
        .filter(|e| e.r#type == EventType::Deleted as i32)
        .count();
    assert_eq!(deleted, 10);

    // The lease survived, and so did who granted it: another node's agent may not keep it
    // alive, its granter and admin may.
    TestPki::open(&dir.path().join("pki")).issue_agent("node-2");
    let denied = client_as(dir.path(), "agent-node-2", port, &second)
        .await
        .keep_alive_lease(KeepAliveLeaseRequest { lease_id: lease })
        .await
        .expect_err("not node-2's lease");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    assert!(
        denied
            .message()
            .contains("granted by \"kino-agent:node-1\""),
        "{denied:?}"
    );
    c.keep_alive_lease(KeepAliveLeaseRequest { lease_id: lease })
        .await
        .expect("lease survives a restart");
    client_as(dir.path(), "admin", port, &second)
        .await
        .keep_alive_lease(KeepAliveLeaseRequest { lease_id: lease })
        .await
        .expect("admin may keep any lease alive");
    let next = c
        .create(CreateRequest {
            resource: Some(Resource {
                kind: "Endpoint".into(),
                namespace: "node-1".into(),
                name: "after-restart".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .resource
        .unwrap();
    assert_eq!(next.revision, status_before.revision + 1);

    // A graceful stop exits 0.
    let mut second = second;
    let status = second.signal_and_wait("TERM").unwrap();
    assert!(
        status.success(),
        "SIGTERM exit: {status:?}\n{}",
        second.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_gateway_on_the_same_file_is_refused_with_a_clear_error() {
    let dir = tempfile::Builder::new()
        .prefix("kino-gw-lock-")
        .tempdir()
        .unwrap();
    let port = free_port();
    TestPki::create(&dir.path().join("pki"), "node-1");
    let first = gateway(dir.path(), port);
    let _c = client(dir.path(), port, &first).await;
    let other_port = free_port();
    let out = std::process::Command::new(binary("kino-datastore-gateway"))
        .env("KINO_PKI_DIR", dir.path().join("pki"))
        .args([
            "--listen",
            &format!("127.0.0.1:{other_port}"),
            "--data-file",
        ])
        .arg(dir.path().join("datastore.redb"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("datastore.redb") && stderr.contains("another kino-datastore-gateway"),
        "{stderr}"
    );
}
