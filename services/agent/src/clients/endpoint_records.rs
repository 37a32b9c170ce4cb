//! [`EndpointRecords`] over the datastore-gateway, through the suite's shared record client
//! (`kino_service_kit::records`): this node's endpoints as `Endpoint` records
//! (`Endpoint <node>/<id>`, a `kino.agent.v1.Endpoint` without its counters), on no lease —
//! a record outlives its agent's absence (DESIGN §3).

use futures::future::BoxFuture;
use kino_api::agent::Endpoint;
use kino_service_kit::records::{RecordClient, Spec, WriteError, to_resource};

use crate::endpoint::peers::{EndpointRecords, PeerError};

/// The datastore kind of endpoint records.
pub const KIND: &str = <Endpoint as Spec>::KIND;
/// How many times a publish re-reads a stale record and tries again before giving up.
const ATTEMPTS: usize = 5;

/// The endpoint records of node `node`, in the datastore at `target`.
#[derive(Clone)]
pub struct EndpointRecordClient {
    records: RecordClient,
    node: String,
    target: String,
}

impl EndpointRecordClient {
    /// Records of `node` through `records`, a client of the gateway at `target` (its address,
    /// for messages).
    pub fn new(records: RecordClient, node: impl Into<String>, target: impl Into<String>) -> Self {
        EndpointRecordClient {
            records,
            node: node.into(),
            target: target.into(),
        }
    }

    fn failed(&self, status: tonic::Status) -> PeerError {
        PeerError::Datastore {
            target: self.target.clone(),
            status,
        }
    }

    /// A write the gateway did not carry out, where the caller has no use for it.
    fn refused(&self, outcome: WriteError) -> PeerError {
        let status = match outcome {
            WriteError::Failed(failure) => failure.status,
            WriteError::Exists => tonic::Status::already_exists("the record exists"),
            WriteError::Conflict => tonic::Status::aborted("the record changed meanwhile"),
            WriteError::NotFound => tonic::Status::not_found("the record is gone"),
            WriteError::LeaseGone => tonic::Status::not_found("the record's lease is gone"),
        };
        self.failed(status)
    }
}

impl EndpointRecords for EndpointRecordClient {
    /// Creates the record, or compare-and-swaps a stale one (left by an earlier run, or a
    /// previous state of the endpoint) to the endpoint as it is now.
    fn publish<'a>(&'a self, endpoint: &'a Endpoint) -> BoxFuture<'a, Result<(), PeerError>> {
        Box::pin(async move {
            let mut stored = endpoint.clone();
            stored.counters = None;
            let name = endpoint.id.to_string();
            let resource = to_resource(&self.node, &name, &stored, 0);
            for _ in 0..ATTEMPTS {
                match self.records.create(resource.clone()).await {
                    Ok(_) => return Ok(()),
                    Err(WriteError::Exists) => {}
                    Err(other) => return Err(self.refused(other)),
                }
                let current = match self.records.get(KIND, &self.node, &name).await {
                    Ok(Some(record)) => record.revision,
                    Ok(None) => continue,
                    Err(failure) => return Err(self.failed(failure.status)),
                };
                match self.records.update(resource.clone(), current).await {
                    Ok(_) => return Ok(()),
                    Err(WriteError::Conflict | WriteError::NotFound) => {}
                    Err(other) => return Err(self.refused(other)),
                }
            }
            Err(PeerError::Conflict(format!(
                "endpoint {} record keeps changing in the datastore; retry",
                endpoint.id
            )))
        })
    }

    fn unpublish(&self, id: u32) -> BoxFuture<'_, Result<(), PeerError>> {
        Box::pin(async move {
            match self
                .records
                .delete(KIND, &self.node, &id.to_string(), 0)
                .await
            {
                Ok(_) | Err(WriteError::NotFound) => Ok(()),
                Err(other) => Err(self.refused(other)),
            }
        })
    }
}
