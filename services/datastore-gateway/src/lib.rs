//! kino-datastore-gateway: the only client of the backing store.
//!
//! [`Gateway`] validates requests, maps resources onto store keys and shares watches between
//! clients; [`store::Store`] is the backend (embedded redb file or etcd); `grpc` adapts the
//! `kino.datastore.v1` API onto the gateway; [`authorization`] says who may call and write
//! what; [`metrics`] describes it to Prometheus.

pub mod authorization;
pub mod grpc;
pub mod metrics;
pub mod resource;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod watch_hub;

use std::sync::Arc;

use futures::StreamExt;
use kino_service_kit::principal::Caller;

use resource::{InvalidField, ResourceKey, Selector};
use store::{EventStream, Lease, Store, StoreError, StoreStatus, StoredObject};
use watch_hub::{WatchFanout, WatchHub};

/// Default page size of List.
pub const DEFAULT_PAGE: usize = 500;
/// Largest page size of List.
pub const MAX_PAGE: usize = 5000;
/// Longest lease TTL accepted, in seconds.
pub const MAX_LEASE_TTL: i64 = 86_400;
/// Store-key prefix of the records naming each lease's granter: outside every kind, so no
/// client can read or write them through the API.
const LEASE_GRANTER_PREFIX: &str = "lease-granter//";

/// Errors of the gateway: bad requests or store failures.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A request field is invalid; nothing was written.
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The caller may not do this (e.g. keep alive a lease another identity granted).
    #[error("{0}")]
    Denied(String),
}

/// Limits applied to requests.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest encoded spec accepted, in bytes.
    pub max_value_bytes: usize,
    /// Recent events per kind kept for watchers that resume.
    pub watch_buffer_events: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_value_bytes: kino_api::limits::DEFAULT_MAX_VALUE_BYTES,
            watch_buffer_events: 10_000,
        }
    }
}

/// A page of List results.
#[derive(Debug, Default)]
pub struct ListResult {
    /// The objects, in key order.
    pub objects: Vec<StoredObject>,
    /// Token for the next page, empty when done.
    pub next_page_token: String,
    /// Store revision of the (first) read.
    pub revision: i64,
}

/// Status of the gateway and its store.
#[derive(Debug)]
pub struct GatewayStatus {
    /// The store's revisions and location.
    pub store: StoreStatus,
    /// Watch fan-out per kind.
    pub watches: Vec<WatchFanout>,
}

/// The datastore gateway's logic, independent of the transport.
pub struct Gateway {
    store: Arc<dyn Store>,
    hub: WatchHub,
    limits: Limits,
}

impl Gateway {
    /// A gateway over `store`.
    pub fn new(store: Arc<dyn Store>, limits: Limits) -> Self {
        let hub = WatchHub::new(store.clone(), limits.watch_buffer_events);
        Gateway { store, hub, limits }
    }

    /// Reads one resource; `StoreError::NotFound` if missing.
    pub async fn get(&self, key: &ResourceKey) -> Result<StoredObject, GatewayError> {
        let store_key = key.store_key();
        self.store.get(&store_key).await?.ok_or_else(|| {
            StoreError::NotFound {
                key: key.to_string(),
            }
            .into()
        })
    }

    /// Lists one page of the selected resources.
    pub async fn list(
        &self,
        selector: &Selector,
        limit: i32,
        page_token: &str,
    ) -> Result<ListResult, GatewayError> {
        let limit = match limit {
            0 => DEFAULT_PAGE,
            n if n < 0 => {
                return Err(InvalidField::new("limit", format!("{n} is negative")).into());
            }
            n if n as usize > MAX_PAGE => {
                return Err(InvalidField::new("limit", format!("{n} is above {MAX_PAGE}")).into());
            }
            n => n as usize,
        };
        let prefix = selector.store_prefix();
        if !page_token.is_empty() && !page_token.starts_with(&prefix) {
            return Err(InvalidField::new(
                "page_token",
                "does not belong to this list; pass the next_page_token of the same query",
            )
            .into());
        }
        let mut after = (!page_token.is_empty()).then(|| page_token.to_string());
        let mut result = ListResult::default();
        // A name-prefix filter across namespaces is applied here, so a store page may yield
        // fewer matches: keep reading until the page is full or the keys run out.
        loop {
            let page = self.store.list(&prefix, after.as_deref(), limit).await?;
            if result.revision == 0 {
                result.revision = page.revision;
            }
            let scanned = page.objects.len();
            after = page.objects.last().map(|o| o.key.clone());
            let mut consumed = 0;
            for object in page.objects {
                consumed += 1;
                if selector.matches(&object.key) {
                    result.objects.push(object);
                    if result.objects.len() == limit {
                        break;
                    }
                }
            }
            let exhausted = consumed == scanned && !page.more;
            if result.objects.len() == limit {
                if !exhausted {
                    let last = result.objects.last().map(|o| o.key.clone());
                    result.next_page_token = last.unwrap_or_default();
                }
                return Ok(result);
            }
            if exhausted || scanned == 0 {
                return Ok(result);
            }
        }
    }

    /// Creates a resource.
    pub async fn create(
        &self,
        key: &ResourceKey,
        value: Vec<u8>,
        lease: i64,
    ) -> Result<StoredObject, GatewayError> {
        self.check_value(&value)?;
        check_lease_id("resource.lease_id", lease)?;
        Ok(self.store.create(&key.store_key(), value, lease).await?)
    }

    /// Updates a resource if it is still at `expected_revision`.
    pub async fn update(
        &self,
        key: &ResourceKey,
        value: Vec<u8>,
        lease: i64,
        expected_revision: i64,
    ) -> Result<StoredObject, GatewayError> {
        if expected_revision <= 0 {
            return Err(InvalidField::new(
                "expected_revision",
                format!(
                    "{expected_revision} is not a revision; pass the revision you read (Get returns it)"
                ),
            )
            .into());
        }
        self.check_value(&value)?;
        check_lease_id("resource.lease_id", lease)?;
        Ok(self
            .store
            .update(&key.store_key(), value, lease, expected_revision)
            .await?)
    }

    /// Deletes a resource (only at `expected_revision` when > 0).
    pub async fn delete(
        &self,
        key: &ResourceKey,
        expected_revision: i64,
    ) -> Result<StoredObject, GatewayError> {
        if expected_revision < 0 {
            return Err(InvalidField::new(
                "expected_revision",
                format!("{expected_revision} is negative; use 0 to delete any revision"),
            )
            .into());
        }
        Ok(self
            .store
            .delete(
                &key.store_key(),
                (expected_revision > 0).then_some(expected_revision),
            )
            .await?)
    }

    /// Watches the selected resources from `start_revision` (0 = after now).
    pub async fn watch(
        &self,
        selector: Selector,
        start_revision: i64,
    ) -> Result<EventStream, GatewayError> {
        if start_revision < 0 {
            return Err(InvalidField::new(
                "start_revision",
                format!("{start_revision} is negative; use 0 to watch from now"),
            )
            .into());
        }
        let stream = self.hub.watch(selector, start_revision).await?;
        Ok(stream.boxed())
    }

    /// Grants a lease and remembers who granted it (on the lease itself: the record goes
    /// when the lease does, and survives a gateway restart with it).
    pub async fn grant_lease(
        &self,
        ttl_seconds: i64,
        granter: &Caller,
    ) -> Result<Lease, GatewayError> {
        if !(1..=MAX_LEASE_TTL).contains(&ttl_seconds) {
            return Err(InvalidField::new(
                "ttl_seconds",
                format!("{ttl_seconds} is not between 1 and {MAX_LEASE_TTL}"),
            )
            .into());
        }
        let lease = self.store.grant_lease(ttl_seconds).await?;
        let record = self
            .store
            .create(
                &granter_key(lease.id),
                granter.name().into_bytes(),
                lease.id,
            )
            .await;
        if let Err(e) = record {
            // A lease nobody may keep alive is useless: take it back.
            let _ = self.store.revoke_lease(lease.id).await;
            return Err(e.into());
        }
        Ok(lease)
    }

    /// Renews a lease; only its granter (or admin) may.
    pub async fn keep_alive(&self, lease: i64, caller: &Caller) -> Result<Lease, GatewayError> {
        check_lease_id("lease_id", lease)?;
        if lease == 0 {
            return Err(InvalidField::new("lease_id", "is required").into());
        }
        if !caller.is_admin() && !self.granted_by(lease, caller, "keep alive").await? {
            // No granter record: the lease is gone (the record goes with it).
            return Err(StoreError::LeaseNotFound { lease }.into());
        }
        Ok(self.store.keep_alive(lease).await?)
    }

    /// Revokes a lease and deletes its resources; only its granter (or admin) may. A lease
    /// that does not exist (for this caller) is already revoked: success.
    pub async fn revoke_lease(&self, lease: i64, caller: &Caller) -> Result<(), GatewayError> {
        check_lease_id("lease_id", lease)?;
        if !caller.is_admin() && !self.granted_by(lease, caller, "revoke").await? {
            return Ok(());
        }
        Ok(self.store.revoke_lease(lease).await?)
    }

    /// Whether `caller` granted `lease`: `Ok(false)` when no granter is recorded (the lease
    /// ended), `Denied` when another identity granted it.
    async fn granted_by(
        &self,
        lease: i64,
        caller: &Caller,
        verb: &str,
    ) -> Result<bool, GatewayError> {
        let Some(record) = self.store.get(&granter_key(lease)).await? else {
            return Ok(false);
        };
        let granter = String::from_utf8_lossy(&record.value);
        if granter == caller.name() {
            return Ok(true);
        }
        Err(GatewayError::Denied(format!(
            "{caller} may not {verb} lease {lease}: it was granted by {granter:?}, and only its granter (or admin) may"
        )))
    }

    /// Discards history before `revision`.
    pub async fn compact(&self, revision: i64) -> Result<i64, GatewayError> {
        if revision <= 0 {
            return Err(
                InvalidField::new("revision", format!("{revision} must be positive")).into(),
            );
        }
        Ok(self.store.compact(revision).await?)
    }

    /// Number of resources of every kind (for metrics).
    pub async fn resource_counts(&self) -> Result<Vec<(&'static str, u64)>, GatewayError> {
        let mut counts = Vec::with_capacity(resource::KINDS.len());
        for kind in resource::KINDS {
            counts.push((*kind, self.store.count(&format!("{kind}/")).await?));
        }
        Ok(counts)
    }

    /// The largest encoded spec stored, in bytes.
    pub fn max_value_bytes(&self) -> usize {
        self.limits.max_value_bytes
    }

    /// Store status and watch fan-out.
    pub async fn status(&self) -> Result<GatewayStatus, GatewayError> {
        Ok(GatewayStatus {
            store: self.store.status().await?,
            watches: self.hub.fanout(),
        })
    }

    fn check_value(&self, value: &[u8]) -> Result<(), InvalidField> {
        if value.len() > self.limits.max_value_bytes {
            return Err(InvalidField::new(
                "resource.spec",
                format!(
                    "{} bytes encoded, above the limit of {} bytes (--max-value-bytes)",
                    value.len(),
                    self.limits.max_value_bytes
                ),
            ));
        }
        Ok(())
    }
}

fn granter_key(lease: i64) -> String {
    format!("{LEASE_GRANTER_PREFIX}{lease}")
}

fn check_lease_id(field: &str, lease: i64) -> Result<(), InvalidField> {
    if lease < 0 {
        return Err(InvalidField::new(field, format!("{lease} is negative")));
    }
    Ok(())
}
