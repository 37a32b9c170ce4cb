//! kino-ipam's records in the datastore, through the gateway's `kino.datastore.v1` API: typed
//! get / create / compare-and-swap update / delete / list, and the datastore names of every
//! record (see the key conventions at the top of `proto/kino/ipam/v1/ipam.proto`).

use std::net::IpAddr;

use kino_api::datastore::datastore_service_client::DatastoreServiceClient;
use kino_api::datastore::{
    CreateRequest, DeleteRequest, GetRequest, ListRequest, Resource, ResourceKey, UpdateRequest,
    WatchRequest, WatchResponse,
};
use kino_service_kit::TracedChannel;
use prost::Message;
use tonic::{Code, Status};

use crate::error::IpamError;
use crate::owner::CLAIM_PREFIX;
use crate::prefix::{IpPrefix, address_name};
use crate::records::{Allocation, Claim, NodeBlocks, Pool, Spec};

/// Name prefix of block-claim records (NodeAllocation kind, namespace = pool).
pub const BLOCK_PREFIX: &str = "block:";
/// Largest page the gateway serves.
pub const MAX_PAGE: i32 = 5000;

/// A record with its datastore metadata.
#[derive(Clone, Debug)]
pub struct Versioned<T> {
    /// The record.
    pub value: T,
    /// Its datastore name.
    pub name: String,
    /// Revision of its last change (for compare-and-swap).
    pub revision: i64,
    /// Revision at which it was created.
    pub create_revision: i64,
    /// Lease it hangs on (0 for none).
    pub lease: i64,
}

/// Why a write did not happen (besides the datastore failing).
#[derive(Debug)]
pub enum WriteError {
    /// Create: the name is taken.
    Exists,
    /// Update/Delete: the record changed since it was read.
    Conflict,
    /// Update/Delete: the record is gone.
    NotFound,
    /// The lease to attach no longer exists (expired or revoked).
    LeaseGone,
    /// The datastore failed or refused.
    Failed(IpamError),
}

impl From<IpamError> for WriteError {
    fn from(e: IpamError) -> Self {
        WriteError::Failed(e)
    }
}

impl WriteError {
    /// As an error for callers that treat every outcome but success as a failure.
    pub fn into_error(self, what: &str) -> IpamError {
        match self {
            WriteError::Failed(e) => e,
            WriteError::Exists => {
                IpamError::Aborted(format!("{what}: created concurrently; retry"))
            }
            WriteError::Conflict => {
                IpamError::Aborted(format!("{what}: changed concurrently; retry"))
            }
            WriteError::NotFound => {
                IpamError::Aborted(format!("{what}: deleted concurrently; retry"))
            }
            WriteError::LeaseGone => IpamError::FailedPrecondition(format!(
                "{what}: the node's datastore lease expired or was revoked; register the node again"
            )),
        }
    }
}

/// The datastore name of an address's record.
pub fn address_record_name(addr: IpAddr) -> String {
    address_name(addr)
}

/// The datastore name of a block's claim.
pub fn block_record_name(block: &IpPrefix) -> String {
    format!("{BLOCK_PREFIX}{}", block.name())
}

/// The datastore client of kino-ipam.
#[derive(Clone, Debug)]
pub struct Datastore {
    client: DatastoreServiceClient<TracedChannel>,
}

impl Datastore {
    /// Uses `channel` to the gateway.
    pub fn new(channel: TracedChannel) -> Self {
        Datastore {
            client: DatastoreServiceClient::new(channel)
                .max_decoding_message_size(64 * 1024 * 1024),
        }
    }

    /// Reads one record; `None` if it does not exist.
    pub async fn get<T: Spec>(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Versioned<T>>, IpamError> {
        let request = GetRequest {
            key: Some(key(T::KIND, namespace, name)),
        };
        match self.client.clone().get(request).await {
            Ok(response) => {
                let resource = response.into_inner().resource.unwrap_or_default();
                decode(&resource).map(Some)
            }
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(failed(T::KIND, namespace, name, &status)),
        }
    }

    /// Creates a record; `Exists` when the name is taken.
    pub async fn create<T: Spec>(
        &self,
        namespace: &str,
        name: &str,
        value: &T,
        lease: i64,
    ) -> Result<Versioned<T>, WriteError> {
        let request = CreateRequest {
            resource: Some(resource(namespace, name, value, lease)),
        };
        match self.client.clone().create(request).await {
            Ok(response) => stored(response.into_inner().resource, value),
            Err(status) => Err(write_error::<T>(namespace, name, status)),
        }
    }

    /// Replaces a record if it is still at `expected_revision`.
    pub async fn update<T: Spec>(
        &self,
        namespace: &str,
        name: &str,
        value: &T,
        lease: i64,
        expected_revision: i64,
    ) -> Result<Versioned<T>, WriteError> {
        let request = UpdateRequest {
            resource: Some(resource(namespace, name, value, lease)),
            expected_revision,
        };
        match self.client.clone().update(request).await {
            Ok(response) => stored(response.into_inner().resource, value),
            Err(status) => Err(write_error::<T>(namespace, name, status)),
        }
    }

    /// Deletes a record, only at `expected_revision` when it is > 0.
    pub async fn delete(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        expected_revision: i64,
    ) -> Result<(), WriteError> {
        let request = DeleteRequest {
            key: Some(key(kind, namespace, name)),
            expected_revision,
        };
        match self.client.clone().delete(request).await {
            Ok(_) => Ok(()),
            Err(status) => Err(match status.code() {
                Code::NotFound => WriteError::NotFound,
                Code::Aborted => WriteError::Conflict,
                _ => WriteError::Failed(failed(kind, namespace, name, &status)),
            }),
        }
    }

    /// One page of raw resources of `kind` in `namespace` ("" = every namespace) whose names
    /// start with `prefix`.
    pub async fn list_page(
        &self,
        kind: &str,
        namespace: &str,
        prefix: &str,
        limit: i32,
        page_token: &str,
    ) -> Result<(Vec<Resource>, String), IpamError> {
        let request = ListRequest {
            kind: kind.to_owned(),
            namespace: namespace.to_owned(),
            name_prefix: prefix.to_owned(),
            limit,
            page_token: page_token.to_owned(),
        };
        let response = self
            .client
            .clone()
            .list(request)
            .await
            .map_err(|s| failed(kind, namespace, prefix, &s))?
            .into_inner();
        Ok((response.resources, response.next_page_token))
    }

    /// Every raw resource of `kind` in `namespace` with names starting with `prefix`, until
    /// `stop` says a name ends the scan.
    pub async fn list_all(
        &self,
        kind: &str,
        namespace: &str,
        prefix: &str,
        stop: impl Fn(&str) -> bool,
    ) -> Result<Vec<Resource>, IpamError> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let (page, next) = self
                .list_page(kind, namespace, prefix, MAX_PAGE, &token)
                .await?;
            for resource in page {
                if stop(&resource.name) {
                    return Ok(out);
                }
                out.push(resource);
            }
            if next.is_empty() {
                return Ok(out);
            }
            token = next;
        }
    }

    /// Every pool, sorted by name.
    pub async fn pools(&self) -> Result<Vec<Versioned<Pool>>, IpamError> {
        self.list_all(Pool::KIND, "", "", |_| false)
            .await?
            .iter()
            .filter(|r| r.namespace.is_empty())
            .map(decode)
            .collect()
    }

    /// A pool's node records and block claims.
    pub async fn node_records(
        &self,
        pool: &str,
    ) -> Result<(Vec<Versioned<NodeBlocks>>, Vec<Versioned<NodeBlocks>>), IpamError> {
        let mut nodes = Vec::new();
        let mut blocks = Vec::new();
        for resource in self.list_all(NodeBlocks::KIND, pool, "", |_| false).await? {
            if resource.name.starts_with(BLOCK_PREFIX) {
                blocks.push(decode(&resource)?);
            } else {
                nodes.push(decode(&resource)?);
            }
        }
        Ok((nodes, blocks))
    }

    /// A pool's block claims.
    pub async fn block_claims(&self, pool: &str) -> Result<Vec<Versioned<NodeBlocks>>, IpamError> {
        self.list_all(NodeBlocks::KIND, pool, BLOCK_PREFIX, |_| false)
            .await?
            .iter()
            .map(decode)
            .collect()
    }

    /// A pool's address records and owner claims.
    pub async fn address_records(
        &self,
        pool: &str,
    ) -> Result<(Vec<Versioned<Allocation>>, Vec<Versioned<Claim>>), IpamError> {
        let mut addresses = Vec::new();
        let mut claims = Vec::new();
        for resource in self.list_all(Allocation::KIND, pool, "", |_| false).await? {
            if resource.name.starts_with(CLAIM_PREFIX) {
                claims.push(decode(&resource)?);
            } else {
                addresses.push(decode(&resource)?);
            }
        }
        Ok((addresses, claims))
    }

    /// The addresses taken in `block` of `pool` (from their record names' common prefix).
    pub async fn taken_in_block(
        &self,
        pool: &str,
        block: &IpPrefix,
    ) -> Result<Vec<IpAddr>, IpamError> {
        let resources = self
            .list_all(
                Allocation::KIND,
                pool,
                &block.common_text_prefix(),
                |name| name.starts_with(CLAIM_PREFIX),
            )
            .await?;
        let mut taken = Vec::with_capacity(resources.len());
        for resource in &resources {
            let allocation: Versioned<Allocation> = decode(resource)?;
            if block.contains(allocation.value.address) {
                taken.push(allocation.value.address);
            }
        }
        Ok(taken)
    }

    /// Streams changes to `kind` from `start_revision` (0 = from now).
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

fn resource<T: Spec>(namespace: &str, name: &str, value: &T, lease: i64) -> Resource {
    Resource {
        kind: T::KIND.to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        spec: Some(prost_types::Any {
            type_url: format!("type.googleapis.com/{}", T::MESSAGE),
            value: value.to_proto().encode_to_vec(),
        }),
        lease_id: lease,
        ..Resource::default()
    }
}

/// The stored record after a write: metadata from the gateway, value as written.
fn stored<T: Spec + Clone>(
    resource: Option<Resource>,
    value: &T,
) -> Result<Versioned<T>, WriteError> {
    let resource = resource.ok_or_else(|| {
        WriteError::Failed(IpamError::Internal(
            "the datastore answered a write without the resource".into(),
        ))
    })?;
    Ok(Versioned {
        value: value.clone(),
        name: resource.name,
        revision: resource.revision,
        create_revision: resource.create_revision,
        lease: resource.lease_id,
    })
}

/// Decodes a stored resource as `T`, checking its message type.
pub fn decode<T: Spec>(resource: &Resource) -> Result<Versioned<T>, IpamError> {
    let unreadable = |why: String| {
        IpamError::Internal(format!(
            "stored {} {}/{} is unreadable: {why}; was it written by something other than kino-ipam?",
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
    let proto = T::Proto::decode(spec.value.as_slice()).map_err(|e| unreadable(e.to_string()))?;
    let value = T::from_proto(proto).map_err(unreadable)?;
    Ok(Versioned {
        value,
        name: resource.name.clone(),
        revision: resource.revision,
        create_revision: resource.create_revision,
        lease: resource.lease_id,
    })
}

fn write_error<T: Spec>(namespace: &str, name: &str, status: Status) -> WriteError {
    match status.code() {
        Code::AlreadyExists => WriteError::Exists,
        Code::Aborted => WriteError::Conflict,
        Code::NotFound if status.message().starts_with("lease ") => WriteError::LeaseGone,
        Code::NotFound => WriteError::NotFound,
        _ => WriteError::Failed(failed(T::KIND, namespace, name, &status)),
    }
}

/// A datastore failure as an error naming the record.
fn failed(kind: &str, namespace: &str, name: &str, status: &Status) -> IpamError {
    let what = format!("{kind} {namespace}/{name}");
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            IpamError::Unavailable(format!(
                "{what}: {:?}: {} (is kino-datastore-gateway running and reachable at --datastore?)",
                status.code(),
                status.message()
            ))
        }
        code => IpamError::Internal(format!(
            "the datastore refused {what}: {code:?}: {}",
            status.message()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_names() {
        assert_eq!(
            block_record_name(&"10.0.1.0/24".parse().unwrap()),
            "block:10.0.1.0-24"
        );
        assert_eq!(
            block_record_name(&"fd00::100/120".parse().unwrap()),
            "block:fd00::100-120"
        );
        assert_eq!(
            address_record_name("fd00::102".parse().unwrap()),
            "fd00::102"
        );
    }
}
