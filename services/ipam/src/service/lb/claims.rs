//! Taking and giving back the claims of services' frontends and frontend ids.
//!
//! A claim is taken by creating its record (the datastore's create-if-absent decides between
//! racing requests). An existing claim binds while its holder's Service record lists it or
//! while it is younger than `takeover_after` (see [`Claim::is_held`]); one that does not is
//! taken over by compare-and-swap, so of two requests taking over the same claim one wins.
//! A request remembers every claim it wrote ([`Written`]): it removes them if it fails
//! before its Service record is written, and checks after writing it that none was taken
//! over meanwhile (a request stalled past `takeover_after`). Claims are given back after
//! the record stops listing them, each only if its service holds it at a revision older
//! than that change, so a newer claim of a re-created service is never removed.

use std::collections::BTreeSet;
use std::time::SystemTime;

use kino_api::service as pb;
use kino_service_kit::records::Spec;

use super::super::{Ipam, MAX_ATTEMPTS, lock};
use crate::error::{IpamError, Result};
use crate::lb::claims::{Claim, ClaimRecord, FrontendClaim, IdClaim, MAX_FRONTEND_ID, id_of_name};
use crate::lb::model::ServiceName;
use crate::persistence::{Stored, WriteError, decode};

/// The outcome of taking a claim.
pub(super) enum Take {
    /// Ours, at this revision.
    Taken(i64),
    /// Another service (or our own record) holds it.
    Held(ServiceName),
}

/// Which kind of claim a written record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ClaimKind {
    /// `ServiceFrontend`.
    Frontend,
    /// `ServiceFrontendId`.
    Id,
}

/// The claims one request wrote: (kind, record name, revision written).
#[derive(Debug, Default)]
pub(super) struct Written(pub Vec<(ClaimKind, String, i64)>);

impl Ipam {
    /// Takes the claim `name` of kind `C` for `us`.
    pub(super) async fn take_claim<C: ClaimRecord>(
        &self,
        name: &str,
        us: &ServiceName,
    ) -> Result<Take> {
        for _ in 0..MAX_ATTEMPTS {
            match self
                .store
                .create("", name, &C::wrap(Claim::now(us)), 0)
                .await
            {
                Ok(created) => return Ok(Take::Taken(created.revision)),
                Err(WriteError::Exists) => {}
                Err(WriteError::Failed(e)) => return Err(e),
                Err(_) => continue,
            }
            let Some(current) = self.store.get::<C>("", name).await? else {
                continue;
            };
            let claim = current.value.claim();
            let listed = self.holder_lists::<C>(&claim.holder, name).await?;
            if claim.holder == *us && listed {
                // Our own record lists it: the service changed under this request.
                return Ok(Take::Held(us.clone()));
            }
            if claim.holder != *us {
                if claim.is_held(listed, self.options.takeover_after, SystemTime::now()) {
                    return Ok(Take::Held(claim.holder.clone()));
                }
                tracing::warn!(claim = %C::describe(name), holder = %claim.holder, service = %us,
                    "taking over a claim its service does not list (left by a kino-ipam that stopped between its writes)");
            }
            match self
                .store
                .update("", name, &C::wrap(Claim::now(us)), 0, current.revision)
                .await
            {
                Ok(taken) => return Ok(Take::Taken(taken.revision)),
                Err(WriteError::Failed(e)) => return Err(e),
                Err(_) => continue,
            }
        }
        Err(IpamError::Aborted(format!(
            "{}: other requests kept changing it; retry",
            C::describe(name)
        )))
    }

    /// Whether `holder`'s Service record lists the claim `name` of kind `C`.
    async fn holder_lists<C: ClaimRecord>(&self, holder: &ServiceName, name: &str) -> Result<bool> {
        let record = self
            .store
            .get::<pb::Service>(&holder.namespace, &holder.name)
            .await?;
        Ok(record.is_some_and(|r| C::listed_in(&r.value, name)))
    }

    /// A free frontend id for `us`, its claim recorded in `written`: the lowest id this
    /// replica believes free (ids given back are reused), taken as any claim.
    pub(super) async fn take_frontend_id(
        &self,
        us: &ServiceName,
        written: &mut Written,
    ) -> Result<u16> {
        let mut reloaded = false;
        for _ in 0..(usize::from(MAX_FRONTEND_ID) + MAX_ATTEMPTS) {
            let Some(id) = self.propose_id().await? else {
                if reloaded {
                    break;
                }
                reloaded = true;
                *lock(&self.frontend_ids) = None;
                continue;
            };
            match self.take_claim::<IdClaim>(&id.to_string(), us).await? {
                Take::Taken(revision) => {
                    written.0.push((ClaimKind::Id, id.to_string(), revision));
                    return Ok(id);
                }
                // Taken in the cache by propose_id: the next proposal is another id.
                Take::Held(_) => continue,
            }
        }
        Err(IpamError::NoFreeFrontendId(format!(
            "every frontend id (1..{MAX_FRONTEND_ID}) is held by a service frontend; delete services (or frontends) you do not need"
        )))
    }

    /// The lowest id not believed taken, marked taken; `None` when all are.
    async fn propose_id(&self) -> Result<Option<u16>> {
        if lock(&self.frontend_ids).is_none() {
            let (records, _) = self.store.list_all(IdClaim::KIND, "").await?;
            let taken: BTreeSet<u16> = records.iter().filter_map(|r| id_of_name(&r.name)).collect();
            lock(&self.frontend_ids).get_or_insert(taken);
        }
        let mut ids = lock(&self.frontend_ids);
        let taken = ids.get_or_insert_with(BTreeSet::new);
        let mut candidate: u16 = 1;
        for id in taken.iter() {
            if *id > candidate {
                break;
            }
            if *id == candidate {
                if candidate == MAX_FRONTEND_ID {
                    return Ok(None);
                }
                candidate += 1;
            }
        }
        taken.insert(candidate);
        Ok(Some(candidate))
    }

    fn forget_id(&self, name: &str) {
        if let (Some(id), Some(ids)) = (id_of_name(name), lock(&self.frontend_ids).as_mut()) {
            ids.remove(&id);
        }
    }

    /// Removes the claims a failed request wrote (each only while still at the revision it
    /// wrote: a claim taken over since is someone else's).
    pub(super) async fn roll_back(&self, written: &Written) {
        for (kind, name, revision) in written.0.iter().rev() {
            let kind_name = match kind {
                ClaimKind::Frontend => FrontendClaim::KIND,
                ClaimKind::Id => IdClaim::KIND,
            };
            match self.store.delete(kind_name, "", name, *revision).await {
                Ok(_) | Err(WriteError::NotFound) | Err(WriteError::Conflict) => {
                    if *kind == ClaimKind::Id {
                        self.forget_id(name);
                    }
                }
                Err(e) => {
                    let e = e.into_error(&format!("{kind_name} {name}"));
                    tracing::warn!(error = %e, "cannot remove a claim of a failed service request; it is taken over once it is old");
                }
            }
        }
    }

    /// Whether every claim in `written` is still `us`'s (after the Service record was
    /// written); the first that is not, for the message.
    pub(super) async fn lost_claim(
        &self,
        us: &ServiceName,
        written: &Written,
    ) -> Result<Option<String>> {
        for (kind, name, _) in &written.0 {
            let holder = match kind {
                ClaimKind::Frontend => self
                    .store
                    .get::<FrontendClaim>("", name)
                    .await?
                    .map(|c| c.value.0.holder),
                ClaimKind::Id => self
                    .store
                    .get::<IdClaim>("", name)
                    .await?
                    .map(|c| c.value.0.holder),
            };
            if holder.as_ref() != Some(us) {
                return Ok(Some(match kind {
                    ClaimKind::Frontend => FrontendClaim::describe(name),
                    ClaimKind::Id => IdClaim::describe(name),
                }));
            }
        }
        Ok(None)
    }

    /// Gives back the claim `name` of kind `C` if `us` holds it at a revision below
    /// `before` (the revision of the change that stopped listing it).
    pub(super) async fn give_back<C: ClaimRecord>(
        &self,
        name: &str,
        us: &ServiceName,
        before: i64,
    ) -> Result<()> {
        let Some(current) = self.store.get::<C>("", name).await? else {
            return Ok(());
        };
        if current.value.claim().holder != *us || current.revision >= before {
            return Ok(());
        }
        match self.store.delete(C::KIND, "", name, current.revision).await {
            Ok(_) | Err(WriteError::NotFound) | Err(WriteError::Conflict) => {
                if C::IS_ID {
                    self.forget_id(name);
                }
                Ok(())
            }
            Err(e) => Err(e.into_error(&C::describe(name))),
        }
    }

    /// Removes every claim that does not bind (its service does not list it and it is
    /// older than `takeover_after`): what a kino-ipam that stopped between its writes left.
    /// Run at start-up; a request that needs such a claim takes it over anyway. Returns how
    /// many it removed.
    pub async fn collect_service_claims(&self) -> Result<usize> {
        Ok(self.collect::<FrontendClaim>().await? + self.collect::<IdClaim>().await?)
    }

    async fn collect<C: ClaimRecord>(&self) -> Result<usize> {
        let (records, _) = self.store.list_all(C::KIND, "").await?;
        let mut removed = 0;
        for resource in &records {
            let claim: Stored<C> = decode(resource)?;
            let holder = &claim.value.claim().holder;
            let listed = self.holder_lists::<C>(holder, &claim.name).await?;
            if claim
                .value
                .claim()
                .is_held(listed, self.options.takeover_after, SystemTime::now())
            {
                continue;
            }
            match self
                .store
                .delete(C::KIND, "", &claim.name, claim.revision)
                .await
            {
                Ok(_) => {
                    tracing::info!(claim = %C::describe(&claim.name), holder = %holder,
                        "removed a claim its service does not list (left by a kino-ipam that stopped between its writes)");
                    if C::IS_ID {
                        self.forget_id(&claim.name);
                    }
                    removed += 1;
                }
                Err(WriteError::NotFound | WriteError::Conflict) => {}
                Err(e) => return Err(e.into_error(&C::describe(&claim.name))),
            }
        }
        Ok(removed)
    }
}
