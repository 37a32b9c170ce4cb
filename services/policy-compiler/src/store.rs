//! The compiler's records in the datastore, through the gateway's `kino.datastore.v1` API:
//! typed get / create / compare-and-swap update / delete / list / watch of protobuf specs.

use kino_api::datastore::datastore_service_client::DatastoreServiceClient;
use kino_api::datastore::{Resource, StatusRequest, WatchResponse};
use kino_service_kit::TracedChannel;
use kino_service_kit::records::{
    RecordClient, RecordFailure, WriteOutcome, new_resource, spec_bytes,
};
use prost::Message;
use tonic::{Code, Status};

use crate::error::PolicyError;

/// Kind of policy records.
pub const KIND_POLICY: &str = "Policy";
/// Kind of identity records.
pub const KIND_IDENTITY: &str = "Identity";
/// Kind of endpoint records (written by agents).
pub const KIND_ENDPOINT: &str = "Endpoint";
/// Kind of node records (written by agents).
pub const KIND_NODE: &str = "Node";
/// Kind of the agents' realization reports (read on demand, never watched).
pub const KIND_REALIZATION: &str = "PolicyRealization";
/// Largest page the gateway serves.
pub use kino_service_kit::records::MAX_PAGE;

/// A protobuf message stored as a resource spec.
pub trait Spec: Message + Default + Clone {
    /// Its fully-qualified protobuf name.
    const MESSAGE: &'static str;
}

impl Spec for kino_api::policy::Policy {
    const MESSAGE: &'static str = "kino.policy.v1.Policy";
}

impl Spec for kino_api::policy::Identity {
    const MESSAGE: &'static str = "kino.policy.v1.Identity";
}

impl Spec for kino_api::agent::Endpoint {
    const MESSAGE: &'static str = "kino.agent.v1.Endpoint";
}

impl Spec for kino_api::types::Node {
    const MESSAGE: &'static str = "kino.types.v1.Node";
}

impl Spec for kino_api::policy::PolicyRealization {
    const MESSAGE: &'static str = "kino.policy.v1.PolicyRealization";
}

/// A record with its datastore metadata.
#[derive(Clone, Debug)]
pub struct Stored<T> {
    /// The spec.
    pub value: T,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Revision of its last change.
    pub revision: i64,
}

/// Why a write did not happen.
#[derive(Debug)]
pub enum WriteError {
    /// Create: the name is taken.
    Exists,
    /// Update / delete: the record changed since it was read.
    Conflict,
    /// Update / delete: the record is gone.
    NotFound,
    /// The datastore failed or refused.
    Failed(PolicyError),
}

impl From<PolicyError> for WriteError {
    fn from(e: PolicyError) -> Self {
        WriteError::Failed(e)
    }
}

impl WriteError {
    /// As an error for callers that treat every outcome but success as a failure.
    pub fn into_error(self, what: &str) -> PolicyError {
        match self {
            WriteError::Failed(e) => e,
            WriteError::Exists => {
                PolicyError::Aborted(format!("{what}: created concurrently; retry"))
            }
            WriteError::Conflict => {
                PolicyError::Aborted(format!("{what}: changed concurrently; retry"))
            }
            WriteError::NotFound => {
                PolicyError::Aborted(format!("{what}: deleted concurrently; retry"))
            }
        }
    }
}

/// The datastore client.
#[derive(Clone, Debug)]
pub struct Store {
    records: RecordClient,
    gateway: DatastoreServiceClient<TracedChannel>,
}

impl Store {
    /// Uses `channel` to the gateway.
    pub fn new(channel: TracedChannel) -> Store {
        Store {
            records: RecordClient::new(channel.clone()),
            gateway: DatastoreServiceClient::new(channel),
        }
    }

    /// The largest encoded record the gateway stores, as it reports it (a gateway from
    /// before the report stores up to the default).
    pub async fn max_value_bytes(&self) -> Result<usize, PolicyError> {
        let status = self
            .gateway
            .clone()
            .status(StatusRequest {})
            .await
            .map_err(|status| {
                failed(RecordFailure {
                    what: "the datastore's status".into(),
                    status,
                })
            })?
            .into_inner();
        Ok(match usize::try_from(status.max_value_bytes) {
            Ok(0) | Err(_) => kino_api::limits::DEFAULT_MAX_VALUE_BYTES,
            Ok(limit) => limit,
        })
    }

    /// Reads one record; `None` if it does not exist.
    pub async fn get<T: Spec>(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Stored<T>>, PolicyError> {
        match self.records.get(kind, namespace, name).await {
            Ok(Some(resource)) => decode(&resource).map(Some),
            Ok(None) => Ok(None),
            Err(failure) => Err(failed(failure)),
        }
    }

    /// Creates a record.
    pub async fn create<T: Spec>(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        value: &T,
    ) -> Result<Stored<T>, WriteError> {
        self.records
            .create(resource(kind, namespace, name, value))
            .await
            .map(|stored| with_value(stored, value))
            .map_err(WriteError::from)
    }

    /// Replaces a record if it is still at `expected_revision`.
    pub async fn update<T: Spec>(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        value: &T,
        expected_revision: i64,
    ) -> Result<Stored<T>, WriteError> {
        self.records
            .update(resource(kind, namespace, name, value), expected_revision)
            .await
            .map(|stored| with_value(stored, value))
            .map_err(WriteError::from)
    }

    /// Deletes a record (only at `expected_revision` when > 0); returns it as it was and
    /// the revision of the deletion.
    pub async fn delete(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        expected_revision: i64,
    ) -> Result<(Resource, i64), WriteError> {
        self.records
            .delete(kind, namespace, name, expected_revision)
            .await
            .map_err(WriteError::from)
    }

    /// Every resource of `kind` in `namespace` ("" = every namespace), and the revision
    /// the first page was read at.
    pub async fn list_all(
        &self,
        kind: &str,
        namespace: &str,
    ) -> Result<(Vec<Resource>, i64), PolicyError> {
        self.records
            .list_all(kind, namespace, "", |_| false)
            .await
            .map_err(failed)
    }

    /// Streams changes of `kind` from `start_revision` (0 = from now).
    pub async fn watch(
        &self,
        kind: &str,
        start_revision: i64,
    ) -> Result<tonic::Streaming<WatchResponse>, Status> {
        self.records.watch(kind, start_revision).await
    }
}

impl From<WriteOutcome> for WriteError {
    fn from(outcome: WriteOutcome) -> Self {
        match outcome {
            WriteOutcome::Exists => WriteError::Exists,
            WriteOutcome::Conflict => WriteError::Conflict,
            // The compiler writes no record on a lease.
            WriteOutcome::NotFound | WriteOutcome::LeaseGone => WriteError::NotFound,
            WriteOutcome::Failed(failure) => WriteError::Failed(failed(failure)),
        }
    }
}

fn resource<T: Spec>(kind: &str, namespace: &str, name: &str, value: &T) -> Resource {
    new_resource(kind, namespace, name, T::MESSAGE, value.encode_to_vec(), 0)
}

fn with_value<T: Spec>(resource: Resource, value: &T) -> Stored<T> {
    Stored {
        value: value.clone(),
        namespace: resource.namespace,
        name: resource.name,
        revision: resource.revision,
    }
}

/// Decodes a stored resource's spec as `T`, checking its message type.
pub fn decode<T: Spec>(resource: &Resource) -> Result<Stored<T>, PolicyError> {
    let bytes = spec_bytes(resource, T::MESSAGE).map_err(PolicyError::Corrupt)?;
    let value = T::decode(bytes).map_err(|e| {
        PolicyError::Corrupt(format!(
            "stored {} {}/{} is unreadable: {e}",
            resource.kind, resource.namespace, resource.name
        ))
    })?;
    Ok(Stored {
        value,
        namespace: resource.namespace.clone(),
        name: resource.name.clone(),
        revision: resource.revision,
    })
}

/// A datastore failure as an error naming the record.
fn failed(failure: RecordFailure) -> PolicyError {
    if failure.is_unavailable() {
        PolicyError::Unavailable(failure.unavailable_message())
    } else if matches!(
        failure.status.code(),
        Code::InvalidArgument | Code::OutOfRange
    ) {
        // A record the gateway refuses (too large, say) is the request's fault.
        PolicyError::invalid(failure.what, failure.status.message().to_owned())
    } else {
        PolicyError::Internal(failure.refused_message())
    }
}
