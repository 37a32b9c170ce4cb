//! Records in the datastore, for services that keep their state there: a client of the
//! gateway's `kino.datastore.v1` API with the plumbing every such service needs — get,
//! create, compare-and-swap update, delete, paged and full listing, watch — and the
//! classification of its answers ([`WriteOutcome`], [`RecordFailure`]). Typing the specs
//! (domain ↔ protobuf) and wording errors for their callers stays with each service.

use kino_api::datastore::datastore_service_client::DatastoreServiceClient;
use kino_api::datastore::{
    CreateRequest, DeleteRequest, GetRequest, ListRequest, Resource, ResourceKey, UpdateRequest,
    WatchRequest, WatchResponse,
};
use kino_telemetry::TracedChannel;
use tonic::{Code, Status};

/// Largest page the gateway serves.
pub const MAX_PAGE: i32 = 5000;

/// The datastore failed or refused a call about one record (or a listing).
#[derive(Debug, Clone)]
pub struct RecordFailure {
    /// `Kind namespace/name` of what the call was about.
    pub what: String,
    /// The gateway's answer.
    pub status: Status,
}

impl RecordFailure {
    fn new(kind: &str, namespace: &str, name: &str, status: Status) -> Self {
        RecordFailure {
            what: format!("{kind} {namespace}/{name}"),
            status,
        }
    }

    /// Whether the gateway could not be reached or did not answer in time (worth a retry
    /// once it is back), as opposed to refusing the call.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self.status.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
        )
    }

    /// The message for an unavailable gateway, naming the record and the flag to check.
    pub fn unavailable_message(&self) -> String {
        format!(
            "{}: {:?}: {} (is kino-datastore-gateway running and reachable at --datastore?)",
            self.what,
            self.status.code(),
            self.status.message()
        )
    }

    /// The message for a refused call.
    pub fn refused_message(&self) -> String {
        format!(
            "the datastore refused {}: {:?}: {}",
            self.what,
            self.status.code(),
            self.status.message()
        )
    }
}

/// Why a write did not happen.
#[derive(Debug, Clone)]
pub enum WriteOutcome {
    /// Create: the name is taken.
    Exists,
    /// Update / delete: the record changed since it was read.
    Conflict,
    /// Update / delete: the record is gone.
    NotFound,
    /// The lease to attach no longer exists (expired or revoked).
    LeaseGone,
    /// The datastore failed or refused.
    Failed(RecordFailure),
}

impl WriteOutcome {
    fn from_status(kind: &str, namespace: &str, name: &str, status: Status) -> Self {
        match status.code() {
            Code::AlreadyExists => WriteOutcome::Exists,
            Code::Aborted => WriteOutcome::Conflict,
            Code::NotFound if status.message().starts_with("lease ") => WriteOutcome::LeaseGone,
            Code::NotFound => WriteOutcome::NotFound,
            _ => WriteOutcome::Failed(RecordFailure::new(kind, namespace, name, status)),
        }
    }
}

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

/// A record to write: `value` (an encoded `message`) under `kind namespace/name`, on
/// `lease` (0 for none).
pub fn new_resource(
    kind: &str,
    namespace: &str,
    name: &str,
    message: &str,
    value: Vec<u8>,
    lease: i64,
) -> Resource {
    Resource {
        kind: kind.to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        spec: Some(prost_types::Any {
            type_url: format!("type.googleapis.com/{message}"),
            value,
        }),
        lease_id: lease,
        ..Resource::default()
    }
}

/// The encoded spec of a stored record, checked to be a `message`; the error says why it
/// is unreadable, naming the record.
pub fn spec_bytes<'a>(resource: &'a Resource, message: &str) -> Result<&'a [u8], String> {
    let unreadable = |why: String| {
        format!(
            "stored {} {}/{} is unreadable: {why}",
            resource.kind, resource.namespace, resource.name
        )
    };
    let spec = resource
        .spec
        .as_ref()
        .ok_or_else(|| unreadable("it has no spec".into()))?;
    let found = spec.type_url.rsplit('/').next().unwrap_or_default();
    if found != message {
        return Err(unreadable(format!(
            "its spec is a {found}, expected a {message}"
        )));
    }
    Ok(spec.value.as_slice())
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
    pub async fn create(&self, resource: Resource) -> Result<Resource, WriteOutcome> {
        let (kind, namespace, name) = names(&resource);
        let request = CreateRequest {
            resource: Some(resource),
        };
        match self.client.clone().create(request).await {
            Ok(response) => stored(response.into_inner().resource, &kind, &namespace, &name),
            Err(status) => Err(WriteOutcome::from_status(&kind, &namespace, &name, status)),
        }
    }

    /// Replaces a record if it is still at `expected_revision`.
    pub async fn update(
        &self,
        resource: Resource,
        expected_revision: i64,
    ) -> Result<Resource, WriteOutcome> {
        let (kind, namespace, name) = names(&resource);
        let request = UpdateRequest {
            resource: Some(resource),
            expected_revision,
        };
        match self.client.clone().update(request).await {
            Ok(response) => stored(response.into_inner().resource, &kind, &namespace, &name),
            Err(status) => Err(WriteOutcome::from_status(&kind, &namespace, &name, status)),
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
    ) -> Result<(Resource, i64), WriteOutcome> {
        let request = DeleteRequest {
            key: Some(resource_key(kind, namespace, name)),
            expected_revision,
        };
        match self.client.clone().delete(request).await {
            Ok(response) => {
                let response = response.into_inner();
                Ok((response.resource.unwrap_or_default(), response.revision))
            }
            Err(status) => Err(WriteOutcome::from_status(kind, namespace, name, status)),
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
) -> Result<Resource, WriteOutcome> {
    resource.ok_or_else(|| {
        WriteOutcome::Failed(RecordFailure::new(
            kind,
            namespace,
            name,
            Status::internal("the datastore answered a write without the resource"),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_answers_are_classified() {
        let outcome = |status| WriteOutcome::from_status("Pool", "", "p", status);
        assert!(matches!(
            outcome(Status::already_exists("x")),
            WriteOutcome::Exists
        ));
        assert!(matches!(
            outcome(Status::aborted("x")),
            WriteOutcome::Conflict
        ));
        assert!(matches!(
            outcome(Status::not_found("gone")),
            WriteOutcome::NotFound
        ));
        assert!(matches!(
            outcome(Status::not_found("lease 42 not found")),
            WriteOutcome::LeaseGone
        ));
        match outcome(Status::unavailable("down")) {
            WriteOutcome::Failed(f) => {
                assert!(f.is_unavailable());
                assert!(
                    f.unavailable_message()
                        .starts_with("Pool /p: Unavailable: down")
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn specs_are_checked_by_message() {
        let resource = new_resource(
            "Identity",
            "",
            "256",
            "kino.policy.v1.Identity",
            vec![1, 2],
            0,
        );
        assert_eq!(
            spec_bytes(&resource, "kino.policy.v1.Identity").unwrap(),
            &[1, 2]
        );
        let err = spec_bytes(&resource, "kino.policy.v1.Policy").unwrap_err();
        assert_eq!(
            err,
            "stored Identity /256 is unreadable: its spec is a kino.policy.v1.Identity, expected a kino.policy.v1.Policy"
        );
        let empty = Resource::default();
        assert!(
            spec_bytes(&empty, "x")
                .unwrap_err()
                .contains("it has no spec")
        );
    }
}
