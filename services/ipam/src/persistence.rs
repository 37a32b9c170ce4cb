//! kino-ipam's records in the datastore, through the gateway's `kino.datastore.v1` API: typed
//! get / create / compare-and-swap update / delete / list, and the datastore names of every
//! record (see the key conventions at the top of `proto/kino/ipam/v1/ipam.proto`).

use std::net::IpAddr;

use kino_api::datastore::{Resource, WatchResponse};
use kino_service_kit::TracedChannel;
use kino_service_kit::records::{
    RecordClient, RecordFailure, WriteOutcome, new_resource, spec_bytes,
};
use prost::Message;
use tonic::Status;

use crate::error::IpamError;
use crate::owner::CLAIM_PREFIX;
use crate::prefix::{IpPrefix, address_name};
use crate::records::{Allocation, Claim, NodeBlocks, Pool, Spec};

/// Name prefix of block-claim records (NodeAllocation kind, namespace = pool).
pub const BLOCK_PREFIX: &str = "block:";
/// Largest page the gateway serves.
pub use kino_service_kit::records::MAX_PAGE;

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
    records: RecordClient,
}

impl Datastore {
    /// Uses `channel` to the gateway.
    pub fn new(channel: TracedChannel) -> Self {
        Datastore {
            records: RecordClient::new(channel),
        }
    }

    /// Reads one record; `None` if it does not exist.
    pub async fn get<T: Spec>(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Versioned<T>>, IpamError> {
        match self.records.get(T::KIND, namespace, name).await {
            Ok(Some(resource)) => decode(&resource).map(Some),
            Ok(None) => Ok(None),
            Err(failure) => Err(failed(failure)),
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
        self.records
            .create(resource(namespace, name, value, lease))
            .await
            .map(|stored| with_value(stored, value))
            .map_err(WriteError::from)
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
        self.records
            .update(resource(namespace, name, value, lease), expected_revision)
            .await
            .map(|stored| with_value(stored, value))
            .map_err(WriteError::from)
    }

    /// Deletes a record, only at `expected_revision` when it is > 0.
    pub async fn delete(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        expected_revision: i64,
    ) -> Result<(), WriteError> {
        match self
            .records
            .delete(kind, namespace, name, expected_revision)
            .await
        {
            Ok(_) => Ok(()),
            // A delete attaches no lease: a "lease" NotFound is the record being gone.
            Err(WriteOutcome::LeaseGone) => Err(WriteError::NotFound),
            Err(outcome) => Err(outcome.into()),
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
        self.records
            .list_page(kind, namespace, prefix, limit, page_token)
            .await
            .map(|page| (page.resources, page.next_page_token))
            .map_err(failed)
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
        self.records
            .list_all(kind, namespace, prefix, stop)
            .await
            .map(|(resources, _)| resources)
            .map_err(failed)
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
        self.records.watch(kind, start_revision).await
    }
}

impl From<WriteOutcome> for WriteError {
    fn from(outcome: WriteOutcome) -> Self {
        match outcome {
            WriteOutcome::Exists => WriteError::Exists,
            WriteOutcome::Conflict => WriteError::Conflict,
            WriteOutcome::NotFound => WriteError::NotFound,
            WriteOutcome::LeaseGone => WriteError::LeaseGone,
            WriteOutcome::Failed(failure) => WriteError::Failed(failed(failure)),
        }
    }
}

fn resource<T: Spec>(namespace: &str, name: &str, value: &T, lease: i64) -> Resource {
    new_resource(
        T::KIND,
        namespace,
        name,
        T::MESSAGE,
        value.to_proto().encode_to_vec(),
        lease,
    )
}

/// The stored record after a write: metadata from the gateway, value as written.
fn with_value<T: Spec>(resource: Resource, value: &T) -> Versioned<T> {
    Versioned {
        value: value.clone(),
        name: resource.name,
        revision: resource.revision,
        create_revision: resource.create_revision,
        lease: resource.lease_id,
    }
}

/// Decodes a stored resource as `T`, checking its message type.
pub fn decode<T: Spec>(resource: &Resource) -> Result<Versioned<T>, IpamError> {
    let unreadable = |why: String| {
        IpamError::Corrupt(format!(
            "{why}; was it written by something other than kino-ipam?"
        ))
    };
    let bytes = spec_bytes(resource, T::MESSAGE).map_err(unreadable)?;
    let named = |why: String| {
        unreadable(format!(
            "stored {} {}/{} is unreadable: {why}",
            resource.kind, resource.namespace, resource.name
        ))
    };
    let proto = T::Proto::decode(bytes).map_err(|e| named(e.to_string()))?;
    let value = T::from_proto(proto).map_err(named)?;
    Ok(Versioned {
        value,
        name: resource.name.clone(),
        revision: resource.revision,
        create_revision: resource.create_revision,
        lease: resource.lease_id,
    })
}

/// A datastore failure as an error naming the record.
fn failed(failure: RecordFailure) -> IpamError {
    if failure.is_unavailable() {
        IpamError::Unavailable(failure.unavailable_message())
    } else {
        IpamError::Internal(failure.refused_message())
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
