//! Gives back the blocks (and addresses) of nodes whose Node resource is deleted: every
//! replica watches kind Node and releases, with force, the blocks of a deleted node in every
//! pool (idempotent, so replicas doing it together is fine).
//!
//! A node whose lease ends needs no watch: its node record, block claims, addresses and
//! owner claims hang on that lease and go with it. A Node deleted while no replica runs
//! keeps its blocks until ReleaseNodeCidrs or its lease ends.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kino_api::datastore::EventType;
use tonic::Code;

use crate::pool::validate_node_name;
use crate::service::Ipam;

/// Watches Node deletions until the task is dropped; resumes after errors.
pub async fn release_deleted_nodes(ipam: Arc<Ipam>) {
    let mut next_revision = 0i64;
    loop {
        match ipam.store().watch("Node", next_revision).await {
            Ok(mut stream) => {
                tracing::debug!(from = next_revision, "watching Node deletions");
                while let Some(item) = stream.next().await {
                    match item {
                        Ok(response) => {
                            for event in response.events {
                                let Some(resource) = event.resource else {
                                    continue;
                                };
                                next_revision = resource.revision + 1;
                                if event.r#type == EventType::Deleted as i32 {
                                    spawn_release(ipam.clone(), resource.name);
                                }
                            }
                        }
                        Err(status) => {
                            if status.code() == Code::OutOfRange {
                                next_revision = 0;
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
                    tracing::warn!(
                        message = status.message(),
                        "Node deletions between the last one seen and now were compacted away; watching from now"
                    );
                    next_revision = 0;
                } else {
                    tracing::debug!(code = ?status.code(), message = status.message(),
                        "cannot watch Node deletions yet; retrying");
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn spawn_release(ipam: Arc<Ipam>, node: String) {
    if validate_node_name("node", &node).is_err() {
        return;
    }
    tokio::spawn(async move {
        for attempt in 0..10u32 {
            match ipam.release_node_cidrs(&node, None, true).await {
                Ok((released, freed)) => {
                    if !released.is_empty() {
                        tracing::info!(node = %node, pools = released.len(), freed = freed.len(),
                            "node deleted: gave its blocks and addresses back");
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(node = %node, error = %e, attempt,
                        "node deleted but its blocks could not be released yet; retrying");
                    tokio::time::sleep(Duration::from_secs(1 << attempt.min(5))).await;
                }
            }
        }
    });
}
