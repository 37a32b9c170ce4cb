//! kino-ipam's records in the datastore: service-kit's typed records failing with
//! [`IpamError`], the queries kino-ipam makes over its records, and the datastore names of
//! every record (see the key conventions at the top of `proto/kino/ipam/v1/ipam.proto`).

use std::net::IpAddr;

use kino_api::datastore::{Resource, WatchResponse};
use kino_service_kit::TracedChannel;
use kino_service_kit::records::{self, RecordError, Records, Spec};
use tonic::Status;

use crate::error::IpamError;
use crate::owner::CLAIM_PREFIX;
use crate::prefix::{IpPrefix, address_name};
use crate::records::{Allocation, Claim, NodeBlocks, Pool};

/// Name prefix of block-claim records (NodeAllocation kind, namespace = pool).
pub const BLOCK_PREFIX: &str = "block:";
/// Largest page the gateway serves.
pub use kino_service_kit::records::MAX_PAGE;
/// A record with its datastore metadata.
pub use kino_service_kit::records::Stored;

/// Why a write did not happen (besides the datastore failing, as an [`IpamError`]).
pub type WriteError = records::WriteError<IpamError>;

/// How the datastore's failures read for kino-ipam's callers.
impl From<RecordError> for IpamError {
    fn from(e: RecordError) -> Self {
        match e {
            RecordError::Datastore(failure) if failure.is_unavailable() => {
                IpamError::Unavailable(failure.unavailable_message())
            }
            RecordError::Datastore(failure) => IpamError::Internal(failure.refused_message()),
            RecordError::Unreadable(why) => IpamError::Corrupt(format!(
                "{why}; was it written by something other than kino-ipam?"
            )),
            RecordError::Raced(message) => IpamError::Aborted(message),
            RecordError::LeaseGone { what } => IpamError::FailedPrecondition(format!(
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

/// The datastore client of kino-ipam: the typed records, and its queries over them.
#[derive(Clone, Debug)]
pub struct Datastore {
    records: Records<IpamError>,
}

impl Datastore {
    /// Uses `channel` to the gateway.
    pub fn new(channel: TracedChannel) -> Self {
        Datastore {
            records: Records::new(channel),
        }
    }

    /// Reads one record; `None` if it does not exist.
    pub async fn get<T: Spec>(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Stored<T>>, IpamError> {
        self.records.get(namespace, name).await
    }

    /// Creates a record; `Exists` when the name is taken.
    pub async fn create<T: Spec>(
        &self,
        namespace: &str,
        name: &str,
        value: &T,
        lease: i64,
    ) -> Result<Stored<T>, WriteError> {
        self.records.create(namespace, name, value, lease).await
    }

    /// Replaces a record if it is still at `expected_revision`.
    pub async fn update<T: Spec>(
        &self,
        namespace: &str,
        name: &str,
        value: &T,
        lease: i64,
        expected_revision: i64,
    ) -> Result<Stored<T>, WriteError> {
        self.records
            .update(namespace, name, value, lease, expected_revision)
            .await
    }

    /// Deletes a record, only at `expected_revision` when it is > 0.
    pub async fn delete(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        expected_revision: i64,
    ) -> Result<(), WriteError> {
        self.records
            .delete(kind, namespace, name, expected_revision)
            .await
            .map(drop)
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
        let page = self
            .records
            .list_page(kind, namespace, prefix, limit, page_token)
            .await?;
        Ok((page.resources, page.next_page_token))
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
        let (resources, _) = self.records.scan(kind, namespace, prefix, stop).await?;
        Ok(resources)
    }

    /// Every pool, sorted by name.
    pub async fn pools(&self) -> Result<Vec<Stored<Pool>>, IpamError> {
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
    ) -> Result<(Vec<Stored<NodeBlocks>>, Vec<Stored<NodeBlocks>>), IpamError> {
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
    pub async fn block_claims(&self, pool: &str) -> Result<Vec<Stored<NodeBlocks>>, IpamError> {
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
    ) -> Result<(Vec<Stored<Allocation>>, Vec<Stored<Claim>>), IpamError> {
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
            let allocation: Stored<Allocation> = decode(resource)?;
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

/// Reads a stored resource as `T`, checking its message type.
pub fn decode<T: Spec>(resource: &Resource) -> Result<Stored<T>, IpamError> {
    Ok(records::decode(resource)?)
}

#[cfg(test)]
mod tests {
    use kino_service_kit::records::RecordFailure;

    use super::*;

    #[test]
    fn datastore_failures_read_as_ipam_errors() {
        let failure = |status| {
            IpamError::from(RecordError::Datastore(RecordFailure {
                what: "IPPool /p".into(),
                status,
            }))
        };
        assert!(
            matches!(failure(Status::unavailable("down")), IpamError::Unavailable(m)
                if m.contains("is kino-datastore-gateway running"))
        );
        assert!(matches!(
            failure(Status::invalid_argument("no")),
            IpamError::Internal(_)
        ));
        assert!(matches!(
            IpamError::from(RecordError::Unreadable("stored IPPool /p is unreadable: x".into())),
            IpamError::Corrupt(m)
                if m == "stored IPPool /p is unreadable: x; was it written by something other than kino-ipam?"
        ));
        assert!(matches!(
            WriteError::Conflict.into_error("pool p"),
            IpamError::Aborted(m) if m == "pool p: changed concurrently; retry"
        ));
        assert!(matches!(
            WriteError::LeaseGone.into_error("block 10.0.1.0/24"),
            IpamError::FailedPrecondition(m)
                if m == "block 10.0.1.0/24: the node's datastore lease expired or was revoked; register the node again"
        ));
    }

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
