//! The compiler's records in the datastore, through the gateway's `kino.datastore.v1` API:
//! typed get / create / compare-and-swap update / delete / list / watch of protobuf specs.

use kino_api::datastore::datastore_service_client::DatastoreServiceClient;
use kino_api::datastore::{
    CreateRequest, DeleteRequest, GetRequest, ListRequest, Resource, ResourceKey, UpdateRequest,
    WatchRequest, WatchResponse,
};
use kino_service_kit::TracedChannel;
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
/// Largest page the gateway serves.
pub const MAX_PAGE: i32 = 5000;

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
    client: DatastoreServiceClient<TracedChannel>,
}

impl Store {
    /// Uses `channel` to the gateway.
    pub fn new(channel: TracedChannel) -> Store {
        Store {
            client: DatastoreServiceClient::new(channel)
                .max_decoding_message_size(64 * 1024 * 1024),
        }
    }

    /// Reads one record; `None` if it does not exist.
    pub async fn get<T: Spec>(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Stored<T>>, PolicyError> {
        let request = GetRequest {
            key: Some(key(kind, namespace, name)),
        };
        match self.client.clone().get(request).await {
            Ok(response) => decode(&response.into_inner().resource.unwrap_or_default()).map(Some),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(failed(kind, namespace, name, &status)),
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
        let request = CreateRequest {
            resource: Some(resource(kind, namespace, name, value)),
        };
        match self.client.clone().create(request).await {
            Ok(response) => Ok(stored(response.into_inner().resource, value)),
            Err(status) => Err(write_error(kind, namespace, name, status)),
        }
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
        let request = UpdateRequest {
            resource: Some(resource(kind, namespace, name, value)),
            expected_revision,
        };
        match self.client.clone().update(request).await {
            Ok(response) => Ok(stored(response.into_inner().resource, value)),
            Err(status) => Err(write_error(kind, namespace, name, status)),
        }
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
        let request = DeleteRequest {
            key: Some(key(kind, namespace, name)),
            expected_revision,
        };
        match self.client.clone().delete(request).await {
            Ok(response) => {
                let response = response.into_inner();
                Ok((response.resource.unwrap_or_default(), response.revision))
            }
            Err(status) => Err(write_error(kind, namespace, name, status)),
        }
    }

    /// Every resource of `kind` in `namespace` ("" = every namespace), and the revision
    /// the first page was read at.
    pub async fn list_all(
        &self,
        kind: &str,
        namespace: &str,
    ) -> Result<(Vec<Resource>, i64), PolicyError> {
        let mut out = Vec::new();
        let mut token = String::new();
        let mut revision = 0;
        loop {
            let request = ListRequest {
                kind: kind.to_owned(),
                namespace: namespace.to_owned(),
                name_prefix: String::new(),
                limit: MAX_PAGE,
                page_token: token.clone(),
            };
            let response = self
                .client
                .clone()
                .list(request)
                .await
                .map_err(|s| failed(kind, namespace, "*", &s))?
                .into_inner();
            if revision == 0 {
                revision = response.revision;
            }
            out.extend(response.resources);
            if response.next_page_token.is_empty() {
                return Ok((out, revision));
            }
            token = response.next_page_token;
        }
    }

    /// Streams changes of `kind` from `start_revision` (0 = from now).
    pub async fn watch(
        &self,
        kind: &str,
        start_revision: i64,
    ) -> Result<tonic::Streaming<WatchResponse>, Status> {
        let request = WatchRequest {
            kind: kind.to_owned(),
            start_revision,
            ..WatchRequest::default()
        };
        Ok(self.client.clone().watch(request).await?.into_inner())
    }
}

fn key(kind: &str, namespace: &str, name: &str) -> ResourceKey {
    ResourceKey {
        kind: kind.to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }
}

fn resource<T: Spec>(kind: &str, namespace: &str, name: &str, value: &T) -> Resource {
    Resource {
        kind: kind.to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        spec: Some(prost_types::Any {
            type_url: format!("type.googleapis.com/{}", T::MESSAGE),
            value: value.encode_to_vec(),
        }),
        ..Resource::default()
    }
}

fn stored<T: Spec>(resource: Option<Resource>, value: &T) -> Stored<T> {
    let resource = resource.unwrap_or_default();
    Stored {
        value: value.clone(),
        namespace: resource.namespace,
        name: resource.name,
        revision: resource.revision,
    }
}

/// Decodes a stored resource's spec as `T`, checking its message type.
pub fn decode<T: Spec>(resource: &Resource) -> Result<Stored<T>, PolicyError> {
    let unreadable = |why: String| {
        PolicyError::Internal(format!(
            "stored {} {}/{} is unreadable: {why}",
            resource.kind, resource.namespace, resource.name
        ))
    };
    let spec = resource
        .spec
        .as_ref()
        .ok_or_else(|| unreadable("it has no spec".into()))?;
    let message = spec.type_url.rsplit('/').next().unwrap_or_default();
    if message != T::MESSAGE {
        return Err(unreadable(format!(
            "its spec is a {message}, expected a {}",
            T::MESSAGE
        )));
    }
    let value = T::decode(spec.value.as_slice()).map_err(|e| unreadable(e.to_string()))?;
    Ok(Stored {
        value,
        namespace: resource.namespace.clone(),
        name: resource.name.clone(),
        revision: resource.revision,
    })
}

fn write_error(kind: &str, namespace: &str, name: &str, status: Status) -> WriteError {
    match status.code() {
        Code::AlreadyExists => WriteError::Exists,
        Code::Aborted => WriteError::Conflict,
        Code::NotFound => WriteError::NotFound,
        _ => WriteError::Failed(failed(kind, namespace, name, &status)),
    }
}

/// A datastore failure as an error naming the record.
fn failed(kind: &str, namespace: &str, name: &str, status: &Status) -> PolicyError {
    let what = format!("{kind} {namespace}/{name}");
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            PolicyError::Unavailable(format!(
                "{what}: {:?}: {} (is kino-datastore-gateway running and reachable at --datastore?)",
                status.code(),
                status.message()
            ))
        }
        Code::InvalidArgument => PolicyError::invalid(what, status.message().to_owned()),
        code => PolicyError::Internal(format!(
            "the datastore refused {what}: {code:?}: {}",
            status.message()
        )),
    }
}
