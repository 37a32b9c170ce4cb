//! The `kino.datastore.v1` gRPC adapter: proto ↔ domain, errors → status codes.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kino_api::datastore::datastore_service_server::{DatastoreService, DatastoreServiceServer};
use kino_api::datastore::{
    CompactRequest, CompactResponse, CreateRequest, CreateResponse, DeleteRequest, DeleteResponse,
    Event, EventType, GetRequest, GetResponse, GrantLeaseRequest, GrantLeaseResponse,
    KeepAliveLeaseRequest, KeepAliveLeaseResponse, ListRequest, ListResponse, Resource,
    ResourceKey as PbKey, RevokeLeaseRequest, RevokeLeaseResponse, StatusRequest, StatusResponse,
    UpdateRequest, UpdateResponse, WatchFanout, WatchRequest, WatchResponse,
};
use kino_service_kit::principal::Caller;
use prost::Message;
use tonic::{Request, Response, Status};

use crate::authorization::{Write, authorize_write};
use crate::resource::{InvalidField, ResourceKey, Selector};
use crate::store::{ChangeKind, StoreError, StoreEvent, StoredObject};
use crate::{Gateway, GatewayError};

/// Fully-qualified gRPC service name, for health reporting.
pub const SERVICE_NAME: &str = "kino.datastore.v1.DatastoreService";

/// Metadata key carrying the current revision on an ABORTED (CAS conflict) status.
pub const CURRENT_REVISION_HEADER: &str = "kino-current-revision";
/// Metadata key carrying the compacted revision on an OUT_OF_RANGE watch status.
pub const COMPACT_REVISION_HEADER: &str = "kino-compact-revision";

/// The gRPC service over a shared [`Gateway`].
#[derive(Clone)]
pub struct DatastoreGrpc {
    gateway: Arc<Gateway>,
}

impl DatastoreGrpc {
    /// Wraps a gateway.
    pub fn new(gateway: Arc<Gateway>) -> Self {
        DatastoreGrpc { gateway }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> DatastoreServiceServer<Self> {
        DatastoreServiceServer::new(self)
            .max_decoding_message_size(8 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024)
    }
}

/// Maps a gateway error to the status code its callers act on.
pub fn to_status(e: GatewayError) -> Status {
    match e {
        GatewayError::Invalid(f) => Status::invalid_argument(f.to_string()),
        GatewayError::Store(s) => store_status(s),
        GatewayError::Denied(message) => Status::permission_denied(message),
    }
}

/// Applies the per-kind write rules ([`crate::authorization::KIND_RULES`]).
fn authorize(caller: &Caller, write: Write, key: &ResourceKey) -> Result<(), Status> {
    authorize_write(caller, write, key).map_err(|denied| Status::permission_denied(denied.0))
}

fn store_status(e: StoreError) -> Status {
    let message = e.to_string();
    match e {
        StoreError::NotFound { .. } | StoreError::LeaseNotFound { .. } => {
            Status::not_found(message)
        }
        StoreError::AlreadyExists { .. } => Status::already_exists(message),
        StoreError::Conflict { current, .. } => {
            let mut status = Status::aborted(message);
            if let Ok(v) = current.to_string().parse() {
                status.metadata_mut().insert(CURRENT_REVISION_HEADER, v);
            }
            status
        }
        StoreError::Compacted {
            compact_revision, ..
        } => {
            let mut status = Status::out_of_range(message);
            if let Ok(v) = compact_revision.to_string().parse() {
                status.metadata_mut().insert(COMPACT_REVISION_HEADER, v);
            }
            status
        }
        StoreError::InvalidArgument { .. } => Status::invalid_argument(message),
        StoreError::Unavailable { .. } => Status::unavailable(message),
    }
}

fn invalid(f: InvalidField) -> Status {
    to_status(GatewayError::Invalid(f))
}

fn key_of(field: &str, key: Option<PbKey>) -> Result<ResourceKey, Status> {
    let key = key.ok_or_else(|| invalid(InvalidField::new(field, "is required")))?;
    ResourceKey::new(field, &key.kind, &key.namespace, &key.name).map_err(invalid)
}

/// Splits a proto resource into its validated key, encoded spec and lease.
fn resource_parts(resource: Option<Resource>) -> Result<(ResourceKey, Vec<u8>, i64), Status> {
    let r = resource.ok_or_else(|| invalid(InvalidField::new("resource", "is required")))?;
    let key = ResourceKey::new("resource", &r.kind, &r.namespace, &r.name).map_err(invalid)?;
    let value = r.spec.map(|s| s.encode_to_vec()).unwrap_or_default();
    Ok((key, value, r.lease_id))
}

/// Rebuilds the proto resource of a stored object.
pub fn to_resource(object: &StoredObject) -> Result<Resource, Status> {
    let key = ResourceKey::from_store_key(&object.key)
        .ok_or_else(|| Status::data_loss(format!("store key {:?} is malformed", object.key)))?;
    let spec = if object.value.is_empty() {
        None
    } else {
        Some(
            prost_types::Any::decode(object.value.as_slice()).map_err(|e| {
                Status::data_loss(format!("stored spec of {key} cannot be decoded: {e}"))
            })?,
        )
    };
    Ok(Resource {
        kind: key.kind().to_string(),
        namespace: key.namespace().to_string(),
        name: key.name().to_string(),
        spec,
        revision: object.revision,
        create_revision: object.create_revision,
        lease_id: object.lease,
    })
}

fn to_event(e: &StoreEvent) -> Result<Event, Status> {
    let kind = match e.change {
        ChangeKind::Put if e.object.create_revision == e.object.revision => EventType::Added,
        ChangeKind::Put => EventType::Modified,
        ChangeKind::Delete => EventType::Deleted,
    };
    Ok(Event {
        r#type: kind as i32,
        resource: Some(to_resource(&e.object)?),
    })
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl DatastoreService for DatastoreGrpc {
    async fn get(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let key = key_of("key", req.into_inner().key)?;
        let object = self.gateway.get(&key).await.map_err(to_status)?;
        Ok(Response::new(GetResponse {
            resource: Some(to_resource(&object)?),
        }))
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let req = req.into_inner();
        let selector =
            Selector::new(&req.kind, &req.namespace, &req.name_prefix).map_err(invalid)?;
        let page = self
            .gateway
            .list(&selector, req.limit, &req.page_token)
            .await
            .map_err(to_status)?;
        Ok(Response::new(ListResponse {
            resources: page
                .objects
                .iter()
                .map(to_resource)
                .collect::<Result<_, _>>()?,
            next_page_token: page.next_page_token,
            revision: page.revision,
        }))
    }

    async fn create(
        &self,
        req: Request<CreateRequest>,
    ) -> Result<Response<CreateResponse>, Status> {
        let caller = Caller::of(req.extensions());
        let (key, value, lease) = resource_parts(req.into_inner().resource)?;
        authorize(&caller, Write::Create, &key)?;
        tracing::debug!(%key, "create");
        let object = self
            .gateway
            .create(&key, value, lease)
            .await
            .map_err(to_status)?;
        Ok(Response::new(CreateResponse {
            resource: Some(to_resource(&object)?),
        }))
    }

    async fn update(
        &self,
        req: Request<UpdateRequest>,
    ) -> Result<Response<UpdateResponse>, Status> {
        let caller = Caller::of(req.extensions());
        let req = req.into_inner();
        let (key, value, lease) = resource_parts(req.resource)?;
        authorize(&caller, Write::Update, &key)?;
        let object = self
            .gateway
            .update(&key, value, lease, req.expected_revision)
            .await
            .map_err(to_status)?;
        Ok(Response::new(UpdateResponse {
            resource: Some(to_resource(&object)?),
        }))
    }

    async fn delete(
        &self,
        req: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let caller = Caller::of(req.extensions());
        let req = req.into_inner();
        let key = key_of("key", req.key)?;
        authorize(&caller, Write::Delete, &key)?;
        let object = self
            .gateway
            .delete(&key, req.expected_revision)
            .await
            .map_err(to_status)?;
        Ok(Response::new(DeleteResponse {
            revision: object.revision,
            resource: Some(to_resource(&object)?),
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<WatchRequest>) -> Result<Response<WatchStream>, Status> {
        let req = req.into_inner();
        let selector =
            Selector::new(&req.kind, &req.namespace, &req.name_prefix).map_err(invalid)?;
        let stream = self
            .gateway
            .watch(selector, req.start_revision)
            .await
            .map_err(to_status)?;
        let responses = stream.map(|batch| {
            let batch = batch.map_err(store_status)?;
            Ok(WatchResponse {
                events: batch.iter().map(to_event).collect::<Result<_, _>>()?,
            })
        });
        Ok(Response::new(Box::pin(responses)))
    }

    async fn grant_lease(
        &self,
        req: Request<GrantLeaseRequest>,
    ) -> Result<Response<GrantLeaseResponse>, Status> {
        let caller = Caller::of(req.extensions());
        let lease = self
            .gateway
            .grant_lease(req.into_inner().ttl_seconds, &caller)
            .await
            .map_err(to_status)?;
        Ok(Response::new(GrantLeaseResponse {
            lease_id: lease.id,
            ttl_seconds: lease.ttl_seconds,
        }))
    }

    async fn keep_alive_lease(
        &self,
        req: Request<KeepAliveLeaseRequest>,
    ) -> Result<Response<KeepAliveLeaseResponse>, Status> {
        let caller = Caller::of(req.extensions());
        let lease = self
            .gateway
            .keep_alive(req.into_inner().lease_id, &caller)
            .await
            .map_err(to_status)?;
        Ok(Response::new(KeepAliveLeaseResponse {
            lease_id: lease.id,
            ttl_seconds: lease.ttl_seconds,
        }))
    }

    async fn revoke_lease(
        &self,
        req: Request<RevokeLeaseRequest>,
    ) -> Result<Response<RevokeLeaseResponse>, Status> {
        let caller = Caller::of(req.extensions());
        self.gateway
            .revoke_lease(req.into_inner().lease_id, &caller)
            .await
            .map_err(to_status)?;
        Ok(Response::new(RevokeLeaseResponse {}))
    }

    async fn compact(
        &self,
        req: Request<CompactRequest>,
    ) -> Result<Response<CompactResponse>, Status> {
        let compact_revision = self
            .gateway
            .compact(req.into_inner().revision)
            .await
            .map_err(to_status)?;
        Ok(Response::new(CompactResponse { compact_revision }))
    }

    async fn status(
        &self,
        _req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let status = self.gateway.status().await.map_err(to_status)?;
        Ok(Response::new(StatusResponse {
            backend: status.store.backend.to_string(),
            location: status.store.location,
            revision: status.store.revision,
            compact_revision: status.store.compact_revision,
            max_value_bytes: self.gateway.max_value_bytes() as i64,
            watches: status
                .watches
                .into_iter()
                .map(|w| WatchFanout {
                    kind: w.kind,
                    subscribers: w.subscribers,
                    backend_watches: w.backend_watches,
                })
                .collect(),
        }))
    }
}
