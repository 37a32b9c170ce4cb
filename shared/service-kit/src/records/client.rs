//! The untyped client of the gateway's `kino.datastore.v1` API for records: get, create,
//! compare-and-swap update, delete, paged and full listing, watch, the gateway's record size
//! limit — with its answers classified ([`WriteError`], [`RecordFailure`]). [`Records`] types
//! the specs on top of it.
//!
//! [`Records`]: super::Records

use kino_api::datastore::datastore_service_client::DatastoreServiceClient;
use kino_api::datastore::{
    CreateRequest, DeleteRequest, GetRequest, ListRequest, Resource, ResourceKey, StatusRequest,
    UpdateRequest, WatchRequest, WatchResponse,
};
use kino_telemetry::TracedChannel;
use tonic::{Code, Status};

use super::error::{RecordFailure, WriteError};

/// Largest page the gateway serves.
pub const MAX_PAGE: i32 = 5000;

/// One page of a listing.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// The resources, in name order.
    pub resources: Vec<Resource>,
    /// Token of the next page; empty on the last.
    pub next_page_token: String,
    /// Revision the page was read at.
    pub revision: i64,
}

/// The key of a record.
pub fn resource_key(kind: &str, namespace: &str, name: &str) -> ResourceKey {
    ResourceKey {
        kind: kind.to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }
}

/// A client of the datastore gateway for records.
#[derive(Clone, Debug)]
pub struct RecordClient {
    client: DatastoreServiceClient<TracedChannel>,
}

impl RecordClient {
    /// Uses `channel` to the gateway (responses up to 64 MiB: full pages of large records).
    pub fn new(channel: TracedChannel) -> Self {
        RecordClient {
            client: DatastoreServiceClient::new(channel)
                .max_decoding_message_size(64 * 1024 * 1024),
        }
    }

    /// Reads one record; `None` if it does not exist.
    pub async fn get(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Resource>, RecordFailure> {
        let request = GetRequest {
            key: Some(resource_key(kind, namespace, name)),
        };
        match self.client.clone().get(request).await {
            Ok(response) => Ok(Some(response.into_inner().resource.unwrap_or_default())),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(RecordFailure::new(kind, namespace, name, status)),
        }
    }

    /// Creates a record; returns it as stored (revisions set).
    pub async fn create(&self, resource: Resource) -> Result<Resource, WriteError> {
        let (kind, namespace, name) = names(&resource);
        let on_lease = resource.lease_id != 0;
        let request = CreateRequest {
            resource: Some(resource),
        };
        match self.client.clone().create(request).await {
            Ok(response) => stored(response.into_inner().resource, &kind, &namespace, &name),
            Err(status) => Err(WriteError::from_status(
                &kind, &namespace, &name, status, on_lease,
            )),
        }
    }

    /// Replaces a record if it is still at `expected_revision`.
    pub async fn update(
        &self,
        resource: Resource,
        expected_revision: i64,
    ) -> Result<Resource, WriteError> {
        let (kind, namespace, name) = names(&resource);
        let on_lease = resource.lease_id != 0;
        let request = UpdateRequest {
            resource: Some(resource),
            expected_revision,
        };
        match self.client.clone().update(request).await {
            Ok(response) => stored(response.into_inner().resource, &kind, &namespace, &name),
            Err(status) => Err(WriteError::from_status(
                &kind, &namespace, &name, status, on_lease,
            )),
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
            key: Some(resource_key(kind, namespace, name)),
            expected_revision,
        };
        match self.client.clone().delete(request).await {
            Ok(response) => {
                let response = response.into_inner();
                Ok((response.resource.unwrap_or_default(), response.revision))
            }
            // A delete attaches no lease: a "lease" NotFound is the record being gone.
            Err(status) => Err(WriteError::from_status(
                kind, namespace, name, status, false,
            )),
        }
    }

    /// One page of the records of `kind` in `namespace` ("" = every namespace) whose names
    /// start with `prefix`.
    pub async fn list_page(
        &self,
        kind: &str,
        namespace: &str,
        prefix: &str,
        limit: i32,
        page_token: &str,
    ) -> Result<Page, RecordFailure> {
        let request = ListRequest {
            kind: kind.to_owned(),
            namespace: namespace.to_owned(),
            name_prefix: prefix.to_owned(),
            limit,
            page_token: page_token.to_owned(),
        };
        let listed = if prefix.is_empty() { "*" } else { prefix };
        let response = self
            .client
            .clone()
            .list(request)
            .await
            .map_err(|s| RecordFailure::new(kind, namespace, listed, s))?
            .into_inner();
        Ok(Page {
            resources: response.resources,
            next_page_token: response.next_page_token,
            revision: response.revision,
        })
    }

    /// Every record of `kind` in `namespace` whose name starts with `prefix`, page by page,
    /// until `stop` says a name ends the scan; and the revision the first page was read at.
    pub async fn list_all(
        &self,
        kind: &str,
        namespace: &str,
        prefix: &str,
        stop: impl Fn(&str) -> bool,
    ) -> Result<(Vec<Resource>, i64), RecordFailure> {
        let mut out = Vec::new();
        let mut token = String::new();
        let mut revision = 0;
        loop {
            let page = self
                .list_page(kind, namespace, prefix, MAX_PAGE, &token)
                .await?;
            if revision == 0 {
                revision = page.revision;
            }
            for resource in page.resources {
                if stop(&resource.name) {
                    return Ok((out, revision));
                }
                out.push(resource);
            }
            if page.next_page_token.is_empty() {
                return Ok((out, revision));
            }
            token = page.next_page_token;
        }
    }

    /// The largest encoded record the gateway stores, as it reports it (a gateway from
    /// before the report stores up to the default).
    pub async fn max_value_bytes(&self) -> Result<usize, RecordFailure> {
        let status = self
            .client
            .clone()
            .status(StatusRequest {})
            .await
            .map_err(|status| RecordFailure {
                what: "the datastore's status".into(),
                status,
            })?
            .into_inner();
        Ok(match usize::try_from(status.max_value_bytes) {
            Ok(0) | Err(_) => kino_api::limits::DEFAULT_MAX_VALUE_BYTES,
            Ok(limit) => limit,
        })
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

fn names(resource: &Resource) -> (String, String, String) {
    (
        resource.kind.clone(),
        resource.namespace.clone(),
        resource.name.clone(),
    )
}

fn stored(
    resource: Option<Resource>,
    kind: &str,
    namespace: &str,
    name: &str,
) -> Result<Resource, WriteError> {
    resource.ok_or_else(|| {
        WriteError::Failed(RecordFailure::new(
            kind,
            namespace,
            name,
            Status::internal("the datastore answered a write without the resource"),
        ))
    })
}
