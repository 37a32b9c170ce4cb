//! Cluster-wide allocation of endpoint identities through the datastore, and their garbage
//! collection.
//!
//! Records (kind Identity, spec `kino.policy.v1.Identity`):
//! - the id record: namespace "", name = the id (`"300"`);
//! - the index record: namespace "labels", name = hex SHA-256 of the canonical label text.
//!
//! Allocation: look the index record up; if it names an existing id record with these
//! labels, that is the identity. Otherwise reserve an id by creating its id record (Create
//! fails if another compiler took the number: try the next), then create the index record.
//! If that Create fails, another compiler won the race for these labels: delete our id
//! record and use the winner's. The index Create is the single point of decision, so two
//! racing compilers end with one id.
//!
//! Garbage collection (every replica may run it; every write is compare-and-swap):
//! an identity is in use while an Endpoint resource carries it. A caller of
//! AllocateIdentity holds a reference for one grace period: allocation (or finding the
//! identity with `unused_since` set) clears `unused_since`, so the identity lives at least
//! a grace period after the call even if no endpoint ever uses it; ReleaseIdentity ends
//! that reference at once (stamps `unused_since` now). A pass marks identities no endpoint
//! uses with `unused_since = now`, clears the mark of used ones, and deletes (id record
//! first, then index record) identities marked for longer than the grace period. A
//! concurrent allocation that clears the mark makes the delete fail (its expected revision
//! is gone); an allocation that finds the id record deleted under a stale index record
//! removes the index and allocates anew.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use kino_api::policy as pb;

use crate::convert::{labels_from_proto, labels_to_proto, time_from_proto, timestamp};
use crate::error::PolicyError;
use crate::identity::{
    self, IdentityInfo, MAX_ENDPOINT_IDENTITY, MIN_ENDPOINT_IDENTITY, is_endpoint_range,
};
use crate::labels::{Labels, SOURCE_CIDR, SOURCE_RESERVED};
use crate::policy_map::NumericIdentity;
use crate::store::{KIND_IDENTITY, Store, Stored, WriteError, decode};

/// Namespace of the index records.
pub const INDEX_NAMESPACE: &str = "labels";
/// Attempts before an allocation gives up under contention.
const MAX_ATTEMPTS: usize = 32;

/// An identity as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityRecord {
    /// The number.
    pub id: NumericIdentity,
    /// Its labels.
    pub labels: Labels,
    /// True for reserved identities (never stored).
    pub reserved: bool,
    /// When it was allocated.
    pub create_time: Option<SystemTime>,
    /// Since when no endpoint uses it (None while in use or held).
    pub unused_since: Option<SystemTime>,
}

impl IdentityRecord {
    /// The proto form.
    pub fn to_proto(&self) -> pb::Identity {
        pb::Identity {
            id: self.id,
            labels: Some(labels_to_proto(&self.labels)),
            reserved: self.reserved,
            create_time: self.create_time.map(timestamp),
            unused_since: self.unused_since.map(timestamp),
        }
    }

    /// From the proto form.
    pub fn from_proto(p: &pb::Identity) -> IdentityRecord {
        IdentityRecord {
            id: p.id,
            labels: p.labels.as_ref().map(labels_from_proto).unwrap_or_default(),
            reserved: p.reserved,
            create_time: p.create_time.as_ref().and_then(time_from_proto),
            unused_since: p.unused_since.as_ref().and_then(time_from_proto),
        }
    }

    /// A reserved identity.
    pub fn reserved(info: &IdentityInfo) -> IdentityRecord {
        IdentityRecord {
            id: info.id,
            labels: info.labels.clone(),
            reserved: true,
            create_time: None,
            unused_since: None,
        }
    }
}

/// The outcome of an allocation.
#[derive(Clone, Debug)]
pub struct Allocation {
    /// The identity.
    pub identity: IdentityRecord,
    /// True when this call allocated it.
    pub created: bool,
}

/// What a release did.
#[derive(Clone, Debug, Default)]
pub struct Release {
    /// An endpoint still uses the identity.
    pub in_use: bool,
    /// When it will be deleted if it stays unused.
    pub expire_time: Option<SystemTime>,
}

/// What a garbage-collection pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Identities newly marked unused.
    pub marked: Vec<NumericIdentity>,
    /// Identities whose mark was cleared (in use again).
    pub revived: Vec<NumericIdentity>,
    /// Identities deleted.
    pub deleted: Vec<NumericIdentity>,
}

/// The index record name of a label set.
pub fn index_name(labels: &Labels) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, labels.canonical().as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks labels given for allocation.
pub fn check_labels(labels: &Labels) -> Result<(), PolicyError> {
    if labels.is_empty() {
        return Err(PolicyError::invalid(
            "labels",
            "at least one label is required",
        ));
    }
    for label in labels.iter() {
        if label.key.is_empty() || label.key.contains('=') {
            return Err(PolicyError::invalid(
                "labels",
                format!("{label}: a label key is non-empty and has no '='"),
            ));
        }
        if label.source == SOURCE_RESERVED || label.source == SOURCE_CIDR {
            return Err(PolicyError::invalid(
                "labels",
                format!(
                    "{label}: source {:?} is kept for reserved and CIDR identities, which are not allocated",
                    label.source
                ),
            ));
        }
    }
    Ok(())
}

/// Allocates, looks up, releases and garbage-collects identities in the datastore.
#[derive(Debug)]
pub struct Allocator {
    store: Store,
    grace: Duration,
    next: Mutex<NumericIdentity>,
}

impl Allocator {
    /// An allocator deleting identities unused for `grace`.
    pub fn new(store: Store, grace: Duration) -> Allocator {
        Allocator {
            store,
            grace,
            next: Mutex::new(0),
        }
    }

    /// The grace period.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// The identity of `labels`, allocated if new.
    pub async fn allocate(&self, labels: &Labels) -> Result<Allocation, PolicyError> {
        if let Some(reserved) = identity::reserved_by_labels(labels) {
            return Ok(Allocation {
                identity: IdentityRecord::reserved(&reserved),
                created: false,
            });
        }
        check_labels(labels)?;
        let index = index_name(labels);
        for _ in 0..MAX_ATTEMPTS {
            if let Some(found) = self.find(labels, &index).await? {
                match found {
                    Found::Live(record) => {
                        if record.value.unused_since.is_none() {
                            return Ok(Allocation {
                                identity: IdentityRecord::from_proto(&record.value),
                                created: false,
                            });
                        }
                        // Held again: clear the unused mark (CAS against a GC delete).
                        let mut value = record.value.clone();
                        value.unused_since = None;
                        match self
                            .store
                            .update("", &record.name, &value, 0, record.revision)
                            .await
                        {
                            Ok(_) => {
                                return Ok(Allocation {
                                    identity: IdentityRecord::from_proto(&value),
                                    created: false,
                                });
                            }
                            Err(WriteError::Conflict | WriteError::NotFound) => continue,
                            Err(e) => return Err(e.into_error("identity")),
                        }
                    }
                    Found::StaleIndex(revision) => {
                        match self
                            .store
                            .delete(KIND_IDENTITY, INDEX_NAMESPACE, &index, revision)
                            .await
                        {
                            Ok(_) | Err(WriteError::Conflict | WriteError::NotFound) => continue,
                            Err(e) => return Err(e.into_error("stale identity index")),
                        }
                    }
                }
            }
            // New labels: reserve a number, then claim the labels.
            let record = IdentityRecord {
                id: 0,
                labels: labels.clone(),
                reserved: false,
                create_time: Some(SystemTime::now()),
                unused_since: None,
            };
            let reserved = self.reserve_id(&record).await?;
            let mut value = record.clone();
            value.id = reserved.value.id;
            match self
                .store
                .create(INDEX_NAMESPACE, &index, &value.to_proto(), 0)
                .await
            {
                Ok(_) => {
                    tracing::info!(identity = value.id, labels = %labels, "allocated identity");
                    return Ok(Allocation {
                        identity: value,
                        created: true,
                    });
                }
                Err(WriteError::Exists) => {
                    // Lost the race for these labels: give the number back, use the winner's.
                    let _ = self
                        .store
                        .delete(KIND_IDENTITY, "", &reserved.name, reserved.revision)
                        .await;
                    continue;
                }
                Err(e) => {
                    let _ = self
                        .store
                        .delete(KIND_IDENTITY, "", &reserved.name, reserved.revision)
                        .await;
                    return Err(e.into_error("identity index"));
                }
            }
        }
        Err(PolicyError::Aborted(format!(
            "allocating an identity for {labels}: too much contention; retry"
        )))
    }

    /// The identity whose labels are exactly `labels`, if allocated.
    pub async fn get_by_labels(
        &self,
        labels: &Labels,
    ) -> Result<Option<IdentityRecord>, PolicyError> {
        if let Some(reserved) = identity::reserved_by_labels(labels) {
            return Ok(Some(IdentityRecord::reserved(&reserved)));
        }
        match self.find(labels, &index_name(labels)).await? {
            Some(Found::Live(record)) => Ok(Some(IdentityRecord::from_proto(&record.value))),
            _ => Ok(None),
        }
    }

    /// The identity `id`, if it exists.
    pub async fn get(&self, id: NumericIdentity) -> Result<Option<IdentityRecord>, PolicyError> {
        if let Some(reserved) = identity::reserved(id) {
            return Ok(Some(IdentityRecord::reserved(&reserved)));
        }
        if !is_endpoint_range(id) {
            return Ok(None);
        }
        Ok(self
            .store
            .get::<pb::Identity>("", &id.to_string())
            .await?
            .map(|r| IdentityRecord::from_proto(&r.value)))
    }

    /// Every stored identity (id records), sorted by id.
    pub async fn list(&self) -> Result<Vec<(IdentityRecord, i64)>, PolicyError> {
        let (resources, _) = self.store.list_all(KIND_IDENTITY, "").await?;
        let mut out = Vec::new();
        for resource in resources.iter().filter(|r| r.namespace.is_empty()) {
            match decode::<pb::Identity>(resource) {
                Ok(stored) => {
                    out.push((IdentityRecord::from_proto(&stored.value), stored.revision))
                }
                Err(e) => tracing::warn!(error = %e, "skipping an unreadable identity record"),
            }
        }
        out.sort_by_key(|(r, _)| r.id);
        Ok(out)
    }

    /// Ends the caller's reference: marks the identity unused now unless an endpoint uses
    /// it (idempotent).
    pub async fn release(&self, id: NumericIdentity, in_use: bool) -> Result<Release, PolicyError> {
        if identity::reserved(id).is_some() || !is_endpoint_range(id) {
            return Ok(Release {
                in_use,
                expire_time: None,
            });
        }
        if in_use {
            return Ok(Release {
                in_use: true,
                expire_time: None,
            });
        }
        for _ in 0..MAX_ATTEMPTS {
            let Some(record) = self.store.get::<pb::Identity>("", &id.to_string()).await? else {
                return Ok(Release::default());
            };
            let current = IdentityRecord::from_proto(&record.value);
            if let Some(since) = current.unused_since {
                return Ok(Release {
                    in_use: false,
                    expire_time: Some(since + self.grace),
                });
            }
            let now = SystemTime::now();
            let mut value = record.value.clone();
            value.unused_since = Some(timestamp(now));
            match self
                .store
                .update("", &record.name, &value, 0, record.revision)
                .await
            {
                Ok(_) => {
                    return Ok(Release {
                        in_use: false,
                        expire_time: Some(now + self.grace),
                    });
                }
                Err(WriteError::Conflict) => continue,
                Err(WriteError::NotFound) => return Ok(Release::default()),
                Err(e) => return Err(e.into_error("identity")),
            }
        }
        Err(PolicyError::Aborted(format!(
            "releasing identity {id}: too much contention; retry"
        )))
    }

    /// One garbage-collection pass; `in_use` says whether an endpoint carries an identity.
    pub async fn collect_garbage(
        &self,
        in_use: &(dyn Fn(NumericIdentity) -> bool + Sync),
        now: SystemTime,
    ) -> Result<GcReport, PolicyError> {
        let (resources, _) = self.store.list_all(KIND_IDENTITY, "").await?;
        let mut ids: Vec<Stored<pb::Identity>> = Vec::new();
        let mut index: BTreeMap<NumericIdentity, Stored<pb::Identity>> = BTreeMap::new();
        let mut stale_index = Vec::new();
        for resource in &resources {
            let Ok(stored) = decode::<pb::Identity>(resource) else {
                continue;
            };
            if resource.namespace.is_empty() {
                ids.push(stored);
            } else if resource.namespace == INDEX_NAMESPACE {
                index.insert(stored.value.id, stored);
            }
        }
        let live: BTreeSet<NumericIdentity> = ids.iter().map(|s| s.value.id).collect();
        for (id, stored) in &index {
            if !live.contains(id) {
                stale_index.push(stored.clone());
            }
        }
        let mut report = GcReport::default();
        for stored in ids {
            let id = stored.value.id;
            let record = IdentityRecord::from_proto(&stored.value);
            if in_use(id) {
                if record.unused_since.is_some() {
                    let mut value = stored.value.clone();
                    value.unused_since = None;
                    if self
                        .store
                        .update("", &stored.name, &value, 0, stored.revision)
                        .await
                        .is_ok()
                    {
                        report.revived.push(id);
                    }
                }
                continue;
            }
            match record.unused_since {
                None => {
                    let mut value = stored.value.clone();
                    value.unused_since = Some(timestamp(now));
                    if self
                        .store
                        .update("", &stored.name, &value, 0, stored.revision)
                        .await
                        .is_ok()
                    {
                        report.marked.push(id);
                    }
                }
                Some(since) if now.duration_since(since).unwrap_or_default() >= self.grace => {
                    match self
                        .store
                        .delete(KIND_IDENTITY, "", &stored.name, stored.revision)
                        .await
                    {
                        Ok(_) => {
                            report.deleted.push(id);
                            tracing::info!(identity = id, labels = %record.labels, "deleted unused identity");
                            if let Some(ix) = index.get(&id)
                                && ix.value.labels == stored.value.labels
                            {
                                let _ = self
                                    .store
                                    .delete(KIND_IDENTITY, INDEX_NAMESPACE, &ix.name, ix.revision)
                                    .await;
                            }
                        }
                        Err(WriteError::Conflict | WriteError::NotFound) => {}
                        Err(e) => return Err(e.into_error("identity")),
                    }
                }
                Some(_) => {}
            }
        }
        for stored in stale_index {
            let _ = self
                .store
                .delete(
                    KIND_IDENTITY,
                    INDEX_NAMESPACE,
                    &stored.name,
                    stored.revision,
                )
                .await;
        }
        Ok(report)
    }

    async fn find(&self, labels: &Labels, index: &str) -> Result<Option<Found>, PolicyError> {
        let Some(ix) = self
            .store
            .get::<pb::Identity>(INDEX_NAMESPACE, index)
            .await?
        else {
            return Ok(None);
        };
        let ix_labels = ix
            .value
            .labels
            .as_ref()
            .map(labels_from_proto)
            .unwrap_or_default();
        if &ix_labels != labels {
            return Err(PolicyError::Corrupt(format!(
                "identity index {index} holds {ix_labels}, not {labels} (a SHA-256 collision, or a record written by something else)"
            )));
        }
        match self
            .store
            .get::<pb::Identity>("", &ix.value.id.to_string())
            .await?
        {
            Some(record)
                if record.value.labels.as_ref().map(labels_from_proto).as_ref() == Some(labels) =>
            {
                Ok(Some(Found::Live(record)))
            }
            _ => Ok(Some(Found::StaleIndex(ix.revision))),
        }
    }

    /// Creates the id record of a free number.
    async fn reserve_id(
        &self,
        record: &IdentityRecord,
    ) -> Result<Stored<pb::Identity>, PolicyError> {
        let mut candidate = *self.next.lock().expect("lock");
        if candidate == 0 {
            candidate = self.first_free(None).await?;
        }
        let mut misses = 0;
        loop {
            if !(MIN_ENDPOINT_IDENTITY..=MAX_ENDPOINT_IDENTITY).contains(&candidate) || misses >= 8
            {
                candidate = self.first_free(Some(candidate)).await?;
                misses = 0;
            }
            let mut value = record.clone();
            value.id = candidate;
            match self
                .store
                .create("", &candidate.to_string(), &value.to_proto(), 0)
                .await
            {
                Ok(stored) => {
                    *self.next.lock().expect("lock") = candidate + 1;
                    return Ok(stored);
                }
                Err(WriteError::Exists) => {
                    candidate += 1;
                    misses += 1;
                }
                Err(e) => return Err(e.into_error("identity")),
            }
        }
    }

    /// The first number not taken: after the highest taken, else the lowest gap.
    async fn first_free(
        &self,
        after: Option<NumericIdentity>,
    ) -> Result<NumericIdentity, PolicyError> {
        let taken: BTreeSet<NumericIdentity> =
            self.list().await?.into_iter().map(|(r, _)| r.id).collect();
        let above = taken
            .iter()
            .next_back()
            .map_or(MIN_ENDPOINT_IDENTITY, |m| m + 1);
        let start = after
            .unwrap_or(MIN_ENDPOINT_IDENTITY)
            .max(MIN_ENDPOINT_IDENTITY);
        if above <= MAX_ENDPOINT_IDENTITY && above >= start {
            return Ok(above);
        }
        (MIN_ENDPOINT_IDENTITY..=MAX_ENDPOINT_IDENTITY)
            .find(|id| !taken.contains(id))
            .ok_or_else(|| {
                PolicyError::Exhausted(format!(
                    "every endpoint identity ({MIN_ENDPOINT_IDENTITY}..={MAX_ENDPOINT_IDENTITY}) is allocated; delete endpoints or wait for unused identities to be collected"
                ))
            })
    }
}

enum Found {
    Live(Stored<pb::Identity>),
    StaleIndex(i64),
}
