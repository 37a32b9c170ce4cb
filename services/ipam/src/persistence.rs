//! kino-ipam's records in the datastore: service-kit's typed records failing with
//! [`IpamError`] ([`Datastore`]), the queries kino-ipam makes over its records
//! ([`IpamQueries`]), and the datastore names of every record (see the key conventions at
//! the top of `proto/kino/ipam/v1/ipam.proto`).

use std::future::Future;
use std::net::IpAddr;

use kino_api::datastore::Resource;
use kino_service_kit::records::{self, RecordError, Records, Spec};

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

/// The datastore client of kino-ipam: service-kit's typed records (get, create,
/// compare-and-swap update, delete, list, watch), with [`IpamQueries`] over them.
pub type Datastore = Records<IpamError>;

/// kino-ipam's queries over its records.
pub trait IpamQueries {
    /// Every pool, sorted by name.
    fn pools(&self) -> impl Future<Output = Result<Vec<Stored<Pool>>, IpamError>> + Send;

    /// A pool's node records and block claims.
    fn node_records(
        &self,
        pool: &str,
    ) -> impl Future<Output = Result<NodeRecords, IpamError>> + Send;

    /// A pool's block claims.
    fn block_claims(
        &self,
        pool: &str,
    ) -> impl Future<Output = Result<Vec<Stored<NodeBlocks>>, IpamError>> + Send;

    /// A pool's address records and owner claims.
    fn address_records(
        &self,
        pool: &str,
    ) -> impl Future<Output = Result<AddressRecords, IpamError>> + Send;

    /// The addresses taken in `block` of `pool` (from their record names' common prefix).
    fn taken_in_block(
        &self,
        pool: &str,
        block: &IpPrefix,
    ) -> impl Future<Output = Result<Vec<IpAddr>, IpamError>> + Send;
}

/// A pool's node records, and its block claims.
pub type NodeRecords = (Vec<Stored<NodeBlocks>>, Vec<Stored<NodeBlocks>>);
/// A pool's address records, and its owner claims.
pub type AddressRecords = (Vec<Stored<Allocation>>, Vec<Stored<Claim>>);

impl IpamQueries for Datastore {
    async fn pools(&self) -> Result<Vec<Stored<Pool>>, IpamError> {
        let (resources, _) = self.list_all(Pool::KIND, "").await?;
        resources
            .iter()
            .filter(|r| r.namespace.is_empty())
            .map(decode)
            .collect()
    }

    async fn node_records(&self, pool: &str) -> Result<NodeRecords, IpamError> {
        let mut nodes = Vec::new();
        let mut blocks = Vec::new();
        for resource in self.list_all(NodeBlocks::KIND, pool).await?.0 {
            if resource.name.starts_with(BLOCK_PREFIX) {
                blocks.push(decode(&resource)?);
            } else {
                nodes.push(decode(&resource)?);
            }
        }
        Ok((nodes, blocks))
    }

    async fn block_claims(&self, pool: &str) -> Result<Vec<Stored<NodeBlocks>>, IpamError> {
        let (resources, _) = self
            .scan(NodeBlocks::KIND, pool, BLOCK_PREFIX, |_| false)
            .await?;
        resources.iter().map(decode).collect()
    }

    async fn address_records(&self, pool: &str) -> Result<AddressRecords, IpamError> {
        let mut addresses = Vec::new();
        let mut claims = Vec::new();
        for resource in self.list_all(Allocation::KIND, pool).await?.0 {
            if resource.name.starts_with(CLAIM_PREFIX) {
                claims.push(decode(&resource)?);
            } else {
                addresses.push(decode(&resource)?);
            }
        }
        Ok((addresses, claims))
    }

    async fn taken_in_block(&self, pool: &str, block: &IpPrefix) -> Result<Vec<IpAddr>, IpamError> {
        let (resources, _) = self
            .scan(
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
}

/// Reads a stored resource as `T`, checking its message type.
pub fn decode<T: Spec>(resource: &Resource) -> Result<Stored<T>, IpamError> {
    Ok(records::decode(resource)?)
}

#[cfg(test)]
mod tests {
    use kino_service_kit::records::RecordFailure;
    use tonic::Status;

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
