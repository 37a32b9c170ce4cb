//! The ONE conformance suite every `Store` backend must pass: the same cases run against the
//! embedded redb file and against a real etcd (`KINO_TEST_ETCD_ENDPOINTS`, default
//! http://127.0.0.1:2379; `./integration-tests/run.sh` starts one). Without etcd the etcd
//! half skips loudly, except under CI=true where it fails.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kino_datastore_gateway::store::{ChangeKind, EventStream, Store, StoreError, StoreEvent};

const WAIT: Duration = Duration::from_secs(15);

/// Next batch of a watch, failing the test after `WAIT`.
async fn next_batch(stream: &mut EventStream) -> Result<Vec<StoreEvent>, StoreError> {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("no watch event within 15 s")
        .expect("watch stream ended")
}

/// Collects `n` events from a watch.
async fn collect(stream: &mut EventStream, n: usize) -> Vec<StoreEvent> {
    let mut out = Vec::new();
    while out.len() < n {
        out.extend(next_batch(stream).await.expect("watch error"));
    }
    assert_eq!(out.len(), n, "more events than expected: {out:?}");
    out
}

mod cases {
    use super::*;

    pub async fn crud_with_compare_and_swap(s: Arc<dyn Store>) {
        let created = s.create("Node//n1", b"v1".to_vec(), 0).await.unwrap();
        assert!(created.revision > 0);
        assert_eq!(created.create_revision, created.revision);
        assert_eq!(s.get("Node//n1").await.unwrap().unwrap(), created);

        let again = s
            .create("Node//n1", b"other".to_vec(), 0)
            .await
            .unwrap_err();
        assert_eq!(
            again,
            StoreError::AlreadyExists {
                key: "Node//n1".into(),
                revision: created.revision
            }
        );

        let stale = s
            .update("Node//n1", b"v2".to_vec(), 0, created.revision + 1000)
            .await
            .unwrap_err();
        assert_eq!(
            stale,
            StoreError::Conflict {
                key: "Node//n1".into(),
                expected: created.revision + 1000,
                current: created.revision
            }
        );
        assert_eq!(
            s.get("Node//n1").await.unwrap().unwrap().value,
            b"v1",
            "no partial write"
        );

        let updated = s
            .update("Node//n1", b"v2".to_vec(), 0, created.revision)
            .await
            .unwrap();
        assert!(updated.revision > created.revision);
        assert_eq!(updated.create_revision, created.create_revision);
        assert_eq!(updated.value, b"v2");

        // The old revision no longer wins a CAS.
        assert!(matches!(
            s.update("Node//n1", b"v3".to_vec(), 0, created.revision).await,
            Err(StoreError::Conflict { current, .. }) if current == updated.revision
        ));
        assert!(matches!(
            s.delete("Node//n1", Some(created.revision)).await,
            Err(StoreError::Conflict { current, .. }) if current == updated.revision
        ));

        let deleted = s.delete("Node//n1", Some(updated.revision)).await.unwrap();
        assert_eq!(deleted.value, b"v2");
        assert!(
            deleted.revision > updated.revision,
            "delete gets its own revision"
        );
        assert_eq!(s.get("Node//n1").await.unwrap(), None);
        assert!(matches!(
            s.delete("Node//n1", None).await,
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(
            s.update("Node//n1", b"x".to_vec(), 0, deleted.revision)
                .await,
            Err(StoreError::NotFound { .. })
        ));
        // Re-created: a new create_revision.
        let recreated = s.create("Node//n1", b"v4".to_vec(), 0).await.unwrap();
        assert!(recreated.create_revision > deleted.revision);
    }

    pub async fn list_pages_in_key_order(s: Arc<dyn Store>) {
        for i in (0..25).rev() {
            s.create(&format!("IPPool//p{i:02}"), vec![i as u8], 0)
                .await
                .unwrap();
        }
        s.create("IPPoolX//p00", vec![], 0).await.unwrap();
        s.create("Node//p00", vec![], 0).await.unwrap();

        let first = s.list("IPPool/", None, 10).await.unwrap();
        assert_eq!(first.objects.len(), 10);
        assert!(first.more);
        assert!(first.revision >= first.objects.iter().map(|o| o.revision).max().unwrap());
        let names: Vec<_> = first.objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(names[0], "IPPool//p00");
        assert_eq!(names[9], "IPPool//p09");

        let second = s
            .list("IPPool/", Some(&first.objects[9].key), 10)
            .await
            .unwrap();
        assert_eq!(second.objects[0].key, "IPPool//p10");
        assert!(second.more);
        let third = s
            .list("IPPool/", Some(&second.objects[9].key), 10)
            .await
            .unwrap();
        assert_eq!(third.objects.len(), 5);
        assert_eq!(third.objects[4].key, "IPPool//p24");
        assert!(!third.more);
        assert_eq!(third.objects[4].value, vec![24u8]);
        // Counting reads the same key range, without the values.
        assert_eq!(s.count("IPPool/").await.unwrap(), 25);
        assert_eq!(s.count("IPPoolX/").await.unwrap(), 1);
        assert_eq!(s.count("Policy/").await.unwrap(), 0);

        let exact = s.list("IPPool/", None, 25).await.unwrap();
        assert_eq!(exact.objects.len(), 25);
        assert!(!exact.more);
        let empty = s.list("Identity/", None, 10).await.unwrap();
        assert!(empty.objects.is_empty() && !empty.more);
    }

    pub async fn watch_replays_history_and_resumes(s: Arc<dyn Store>) {
        let a = s.create("Endpoint/ns/a", b"1".to_vec(), 0).await.unwrap();
        s.create("Node//unrelated", b"x".to_vec(), 0).await.unwrap();
        let a2 = s
            .update("Endpoint/ns/a", b"2".to_vec(), 0, a.revision)
            .await
            .unwrap();
        let gone = s.delete("Endpoint/ns/a", None).await.unwrap();

        let mut w = s.watch("Endpoint/", a.revision).await.unwrap();
        let events = collect(&mut w, 3).await;
        assert_eq!(events[0].change, ChangeKind::Put);
        assert_eq!(events[0].object.revision, a.revision);
        assert_eq!(events[0].object.create_revision, a.revision);
        assert_eq!(events[1].object.revision, a2.revision);
        assert_eq!(events[1].object.value, b"2");
        assert_eq!(events[2].change, ChangeKind::Delete);
        assert_eq!(events[2].object.revision, gone.revision);
        assert_eq!(events[2].object.key, "Endpoint/ns/a");

        // Resume after a disconnect: only what is at or after the resume revision.
        drop(w);
        let mut resumed = s.watch("Endpoint/", gone.revision).await.unwrap();
        let events = collect(&mut resumed, 1).await;
        assert_eq!(events[0].change, ChangeKind::Delete);

        // Live changes follow the history on the same stream, in order.
        let b = s.create("Endpoint/ns/b", b"b".to_vec(), 0).await.unwrap();
        let events = collect(&mut resumed, 1).await;
        assert_eq!(events[0].object.key, "Endpoint/ns/b");
        assert_eq!(events[0].object.revision, b.revision);
    }

    pub async fn watch_from_now_sees_only_new_changes(s: Arc<dyn Store>) {
        s.create("Identity//old", b"o".to_vec(), 0).await.unwrap();
        let mut w = s.watch("Identity/", 0).await.unwrap();
        let mut revisions = Vec::new();
        for i in 0..20 {
            revisions.push(
                s.create(&format!("Identity//n{i}"), vec![i], 0)
                    .await
                    .unwrap()
                    .revision,
            );
        }
        let events = collect(&mut w, 20).await;
        let seen: Vec<i64> = events.iter().map(|e| e.object.revision).collect();
        assert_eq!(
            seen, revisions,
            "every new change once, in order, none of the old"
        );
    }

    pub async fn leases_expire_and_delete_their_resources(s: Arc<dyn Store>) {
        let lease = s.grant_lease(2).await.unwrap();
        assert!(lease.id > 0);
        assert!(lease.ttl_seconds >= 2);
        let mut w = s.watch("Endpoint/", 0).await.unwrap();
        s.create("Endpoint/n1/e1", b"e".to_vec(), lease.id)
            .await
            .unwrap();
        let kept = s
            .create("Endpoint/n1/kept", b"k".to_vec(), 0)
            .await
            .unwrap();
        assert_eq!(
            s.get("Endpoint/n1/e1").await.unwrap().unwrap().lease,
            lease.id
        );
        let puts = collect(&mut w, 2).await;
        assert!(puts.iter().all(|e| e.change == ChangeKind::Put));
        // Expiry is the store's job: no keep-alive, the resource must vanish on its own.
        let deleted = collect(&mut w, 1).await;
        assert_eq!(deleted[0].change, ChangeKind::Delete);
        assert_eq!(deleted[0].object.key, "Endpoint/n1/e1");
        assert_eq!(s.get("Endpoint/n1/e1").await.unwrap(), None);
        assert_eq!(s.get("Endpoint/n1/kept").await.unwrap().unwrap(), kept);
        let renewed = s.keep_alive(lease.id).await;
        assert!(
            matches!(renewed, Err(StoreError::LeaseNotFound { .. })),
            "{renewed:?}"
        );
    }

    pub async fn keep_alive_holds_a_lease(s: Arc<dyn Store>) {
        let lease = s.grant_lease(2).await.unwrap();
        s.create("Node//held", b"h".to_vec(), lease.id)
            .await
            .unwrap();
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let renewed = s.keep_alive(lease.id).await.unwrap();
            assert_eq!(renewed.id, lease.id);
            assert!(renewed.ttl_seconds > 0);
        }
        assert!(
            s.get("Node//held").await.unwrap().is_some(),
            "kept alive for 5 s"
        );
        s.revoke_lease(lease.id).await.unwrap();
    }

    pub async fn revoke_deletes_attached_resources(s: Arc<dyn Store>) {
        let lease = s.grant_lease(60).await.unwrap();
        let mut w = s.watch("Endpoint/", 0).await.unwrap();
        s.create("Endpoint/n2/a", b"a".to_vec(), lease.id)
            .await
            .unwrap();
        let b = s.create("Endpoint/n2/b", b"b".to_vec(), 0).await.unwrap();
        // Attach b through an update; detach nothing else.
        s.update("Endpoint/n2/b", b"b2".to_vec(), lease.id, b.revision)
            .await
            .unwrap();
        collect(&mut w, 3).await;
        s.revoke_lease(lease.id).await.unwrap();
        let deletes = collect(&mut w, 2).await;
        let mut keys: Vec<_> = deletes.iter().map(|e| e.object.key.clone()).collect();
        keys.sort();
        assert_eq!(keys, ["Endpoint/n2/a", "Endpoint/n2/b"]);
        assert!(deletes.iter().all(|e| e.change == ChangeKind::Delete));
        assert!(
            s.list("Endpoint/n2/", None, 10)
                .await
                .unwrap()
                .objects
                .is_empty()
        );

        s.revoke_lease(lease.id)
            .await
            .expect("revoking twice is fine");
        let renewed = s.keep_alive(lease.id).await;
        assert!(
            matches!(renewed, Err(StoreError::LeaseNotFound { .. })),
            "{renewed:?}"
        );
        assert!(matches!(
            s.create("Endpoint/n2/c", vec![], lease.id).await,
            Err(StoreError::LeaseNotFound { .. })
        ));
        assert_eq!(
            s.get("Endpoint/n2/c").await.unwrap(),
            None,
            "no partial write"
        );

        // Detaching a key from its lease keeps it alive after a revoke.
        let other = s.grant_lease(60).await.unwrap();
        let d = s
            .create("Endpoint/n2/d", b"d".to_vec(), other.id)
            .await
            .unwrap();
        s.update("Endpoint/n2/d", b"d".to_vec(), 0, d.revision)
            .await
            .unwrap();
        s.revoke_lease(other.id).await.unwrap();
        assert!(s.get("Endpoint/n2/d").await.unwrap().is_some());
    }

    pub async fn compacted_history_is_refused(s: Arc<dyn Store>) {
        let first = s.create("Policy/ns/p", b"0".to_vec(), 0).await.unwrap();
        let mut rev = first.revision;
        for i in 1..4u8 {
            rev = s
                .update("Policy/ns/p", vec![i], 0, rev)
                .await
                .unwrap()
                .revision;
        }
        let compacted = s.compact(rev).await.unwrap();
        assert!(compacted >= rev);
        match s.watch("Policy/", first.revision).await {
            Err(StoreError::Compacted {
                compact_revision, ..
            }) => assert!(compact_revision >= rev),
            Ok(mut stream) => match next_batch(&mut stream).await {
                Err(StoreError::Compacted {
                    compact_revision, ..
                }) => assert!(compact_revision >= rev),
                other => panic!("expected a compacted error, got {other:?}"),
            },
            Err(other) => panic!("expected a compacted error, got {other:?}"),
        }
        // Watching from the compaction revision itself still works (etcd semantics).
        let mut w = s.watch("Policy/", rev).await.unwrap();
        let events = collect(&mut w, 1).await;
        assert_eq!(events[0].object.revision, rev);
        assert!(s.status().await.unwrap().compact_revision >= rev);
        assert!(matches!(
            s.compact(rev + 1_000_000).await,
            Err(StoreError::InvalidArgument { .. })
        ));
    }

    pub async fn concurrent_compare_and_swap_loses_no_update(s: Arc<dyn Store>) {
        s.create("IPAllocation//counter", 0u32.to_le_bytes().to_vec(), 0)
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let mut conflicts = 0;
                for _ in 0..10 {
                    loop {
                        let cur = s.get("IPAllocation//counter").await.unwrap().unwrap();
                        let n = u32::from_le_bytes(cur.value[..4].try_into().unwrap());
                        match s
                            .update(
                                "IPAllocation//counter",
                                (n + 1).to_le_bytes().to_vec(),
                                0,
                                cur.revision,
                            )
                            .await
                        {
                            Ok(_) => break,
                            Err(StoreError::Conflict { .. }) => conflicts += 1,
                            Err(e) => panic!("unexpected {e}"),
                        }
                    }
                }
                conflicts
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let end = s.get("IPAllocation//counter").await.unwrap().unwrap();
        assert_eq!(u32::from_le_bytes(end.value[..4].try_into().unwrap()), 80);
    }

    pub async fn revisions_only_grow(s: Arc<dyn Store>) {
        let before = s.status().await.unwrap();
        let o = s.create("Node//r", vec![], 0).await.unwrap();
        let after = s.status().await.unwrap();
        assert!(o.revision > before.revision);
        assert!(after.revision >= o.revision);
        // A failed write does not move the revision of the key.
        let _ = s.create("Node//r", vec![1], 0).await.unwrap_err();
        assert_eq!(
            s.get("Node//r").await.unwrap().unwrap().revision,
            o.revision
        );
    }
}

kino_datastore_gateway::testing::suite!("gateway", |backend| backend.store.clone();
    crud_with_compare_and_swap,
    list_pages_in_key_order,
    watch_replays_history_and_resumes,
    watch_from_now_sees_only_new_changes,
    leases_expire_and_delete_their_resources,
    keep_alive_holds_a_lease,
    revoke_deletes_attached_resources,
    compacted_history_is_refused,
    concurrent_compare_and_swap_loses_no_update,
    revisions_only_grow,
);
