//! Reports what this node's datapath enforces: the node's `PolicyRealization` record in the
//! datastore (namespace "", name = node), rewritten whenever the policy sync applies a
//! synced step that changes it. `GetPolicyRealization` on the compiler compares these
//! records with a policy revision (`kino policy import --wait`, `kino status`).
//!
//! A kind of its own rather than a field of the Endpoint records: the compiler follows
//! Endpoint resources, so every report would move the policy revision, stream a progress
//! step to every agent and make each of them report again, without end. The compiler does
//! not watch this kind. Writes are coalesced: the writer always sends the latest report
//! and skips the ones that were replaced while it was writing. The record has no lease:
//! after the agent stops, its last report stays true (the pinned maps keep enforcing it).

use std::time::Duration;

use kino_api::datastore::datastore_service_client::DatastoreServiceClient;
use kino_api::datastore::{CreateRequest, GetRequest, Resource, ResourceKey, UpdateRequest};
use kino_api::policy::{PolicyRealization, RealizedEndpoint};
use kino_service_kit::TracedChannel;
use prost::Message as _;
use tokio::sync::watch;

use crate::endpoint::manager::Realization;

/// The datastore kind of the reports.
pub const KIND: &str = "PolicyRealization";

/// First delay before a failed write is retried.
const MIN_BACKOFF: Duration = Duration::from_millis(200);
/// Longest delay between retries of a failed write.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// One report: what the datapath realizes, and the epoch of the stream it follows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The realization.
    pub realization: Realization,
    /// The compiler epoch of the stream.
    pub epoch: String,
}

/// Writes the node's report: what `reports` holds, each time it changes (the latest value
/// only), until the sender is dropped.
pub async fn run(
    mut datastore: DatastoreServiceClient<TracedChannel>,
    datastore_target: String,
    node: String,
    mut reports: watch::Receiver<Option<Report>>,
) {
    let mut backoff = MIN_BACKOFF;
    while reports.changed().await.is_ok() {
        loop {
            let Some(report) = reports.borrow_and_update().clone() else {
                break;
            };
            let spec = report_spec(&node, &report);
            match write(&mut datastore, &node, spec).await {
                Ok(()) => {
                    tracing::debug!(
                        revision = report.realization.revision,
                        "policy realization reported"
                    );
                    backoff = MIN_BACKOFF;
                    break;
                }
                Err(status) => {
                    tracing::warn!(
                        datastore = %datastore_target,
                        code = ?status.code(),
                        error = status.message(),
                        retry_in = ?backoff,
                        "cannot write this node's PolicyRealization record (`kino policy import --wait` will not see this node catch up until it is written)"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// The record's spec for a report.
pub fn report_spec(node: &str, report: &Report) -> PolicyRealization {
    PolicyRealization {
        node_name: node.to_owned(),
        revision: report.realization.revision,
        epoch: report.epoch.clone(),
        endpoints: report
            .realization
            .endpoints
            .iter()
            .map(|e| RealizedEndpoint {
                endpoint_id: e.id,
                identity: e.identity,
                realized_revision: e.revision,
            })
            .collect(),
        update_time: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
    }
}

/// Creates the record, or replaces it (compare-and-swap on the revision just read).
async fn write(
    datastore: &mut DatastoreServiceClient<TracedChannel>,
    node: &str,
    spec: PolicyRealization,
) -> Result<(), tonic::Status> {
    let key = ResourceKey {
        kind: KIND.into(),
        namespace: String::new(),
        name: node.to_owned(),
    };
    let resource = Resource {
        kind: key.kind.clone(),
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        spec: Some(prost_types::Any {
            type_url: "type.googleapis.com/kino.policy.v1.PolicyRealization".into(),
            value: spec.encode_to_vec(),
        }),
        ..Default::default()
    };
    // Only this agent writes its node's record; a conflict means a write of ours raced a
    // read (or an operator's edit): read again.
    for _ in 0..5 {
        let current = match datastore
            .get(GetRequest {
                key: Some(key.clone()),
            })
            .await
        {
            Ok(r) => r.into_inner().resource.map(|r| r.revision),
            Err(s) if s.code() == tonic::Code::NotFound => None,
            Err(s) => return Err(s),
        };
        let written = match current {
            None => datastore
                .create(CreateRequest {
                    resource: Some(resource.clone()),
                })
                .await
                .map(|_| ()),
            Some(revision) => datastore
                .update(UpdateRequest {
                    resource: Some(resource.clone()),
                    expected_revision: revision,
                })
                .await
                .map(|_| ()),
        };
        match written {
            Ok(()) => return Ok(()),
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::AlreadyExists | tonic::Code::Aborted | tonic::Code::NotFound
                ) => {}
            Err(s) => return Err(s),
        }
    }
    Err(tonic::Status::aborted(format!(
        "{KIND} {node} kept changing while this agent wrote it"
    )))
}
