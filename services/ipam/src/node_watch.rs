//! Finishes node deletions that were interrupted: every replica watches kind Node and, for a
//! record marked for deletion (`deletion_time`) for longer than
//! [`FINISH_DELETION_AFTER`](crate::service::FINISH_DELETION_AFTER), completes the deletion
//! (idempotent, so replicas doing it together is fine). At start-up it looks at the marked
//! records already there.
//!
//! A Node record that simply disappears, or a node whose lease ends, frees nothing here: the
//! node's pods may still run (DESIGN §3). Only an explicit deletion gives a node's blocks
//! and addresses back.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use kino_api::datastore::EventType;
use kino_service_kit::records::Spec;
use tonic::Code;

use crate::persistence::decode;
use crate::pool::validate_node_name;
use crate::service::{FINISH_DELETION_AFTER, Ipam};

/// Watches Node records until the task is dropped; resumes after errors.
pub async fn finish_interrupted_deletions(ipam: Arc<Ipam>) {
    let pending: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut next_revision = 0i64;
    let mut listed = false;
    loop {
        match ipam
            .store()
            .watch(kino_api::types::Node::KIND, next_revision)
            .await
        {
            Ok(mut stream) => {
                tracing::debug!(from = next_revision, "watching Node deletion marks");
                // Watching first, then listing: a mark made in between is in one or both.
                if !listed {
                    match ipam.marked_nodes().await {
                        Ok(marked) => {
                            listed = true;
                            for (name, at) in marked {
                                schedule(&ipam, &pending, name, at);
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "cannot list Node records yet"),
                    }
                }
                while let Some(item) = stream.next().await {
                    match item {
                        Ok(response) => {
                            for event in response.events {
                                let Some(resource) = event.resource else {
                                    continue;
                                };
                                next_revision = resource.revision + 1;
                                if event.r#type == EventType::Deleted as i32 {
                                    continue;
                                }
                                let Ok(node) = decode::<kino_api::types::Node>(&resource) else {
                                    continue;
                                };
                                if let Some(at) = node
                                    .value
                                    .deletion_time
                                    .and_then(|t| SystemTime::try_from(t).ok())
                                {
                                    schedule(&ipam, &pending, resource.name, at);
                                }
                            }
                        }
                        Err(status) => {
                            if status.code() == Code::OutOfRange {
                                next_revision = 0;
                                listed = false;
                            }
                            tracing::warn!(code = ?status.code(), message = status.message(),
                                "the Node watch ended; resuming");
                            break;
                        }
                    }
                }
            }
            Err(status) => {
                if status.code() == Code::OutOfRange {
                    next_revision = 0;
                    listed = false;
                } else {
                    tracing::debug!(code = ?status.code(), message = status.message(),
                        "cannot watch Node records yet; retrying");
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Finishes `node`'s deletion once its mark is old enough, unless already scheduled.
fn schedule(ipam: &Arc<Ipam>, pending: &Arc<Mutex<HashSet<String>>>, node: String, at: SystemTime) {
    if validate_node_name("node", &node).is_err() {
        return;
    }
    if !lock(pending).insert(node.clone()) {
        return;
    }
    let (ipam, pending) = (ipam.clone(), pending.clone());
    tokio::spawn(async move {
        let age = at.elapsed().unwrap_or_default();
        tokio::time::sleep(FINISH_DELETION_AFTER.saturating_sub(age) + Duration::from_millis(100))
            .await;
        for attempt in 0..10u32 {
            match ipam.finish_deletion(&node).await {
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(node = %node, error = %e, attempt,
                        "cannot finish the node's deletion yet; retrying");
                    tokio::time::sleep(Duration::from_secs(1 << attempt.min(5))).await;
                }
            }
        }
        lock(&pending).remove(&node);
    });
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
