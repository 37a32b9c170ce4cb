//! Services (`kino.service.v1`): create, update, delete, get, list over the datastore.
//!
//! A service is its claims and its Service record. Create: check what needs the datastore
//! (an external IP outside the pod pools, every backend known to IPAM), take a frontend
//! claim and a frontend id per frontend, then create the Service record — the record that
//! every agent watches, written last so an agent never sees a frontend that is not the
//! service's. Update diffs the frontends: kept ones keep their claims and ids, new ones are
//! claimed before the record is replaced (compare-and-swap), dropped ones given back after.
//! Delete removes the record, then gives its claims back. A request that fails before its
//! record is written removes the claims it took; see `claims.rs` for how claims left by a
//! kino-ipam that stopped half-way are taken over.

mod backends;
mod claims;

use std::collections::HashMap;
use std::time::SystemTime;

use kino_api::service as pb;
use kino_service_kit::records::Spec;

use self::claims::{ClaimKind, Take, Written};
use super::{Ipam, MAX_ATTEMPTS};
use crate::error::{InvalidField, IpamError, Result};
use crate::lb::claims::{FrontendClaim, IdClaim};
use crate::lb::model::{FrontendKey, ServiceName, ServiceSpec};
use crate::lb::network::ServiceNetwork;
use crate::persistence::{Stored, WriteError, decode};
use crate::records::system_time;

impl Ipam {
    /// The service CIDRs and NodePort range requests are checked against.
    pub fn service_network(&self) -> &ServiceNetwork {
        &self.options.service_network
    }

    /// Creates a service (CreateService): ALREADY_EXISTS if its name is taken; nothing is
    /// left of a refused one.
    pub async fn create_service(&self, spec: ServiceSpec) -> Result<pb::Service> {
        let name = spec.name.clone();
        if self.stored_service(&name).await?.is_some() {
            return Err(exists(&name));
        }
        self.check_external_ips(&spec).await?;
        let nodes = self.backend_nodes(&spec).await?;
        let mut written = Written::default();
        let result = async {
            let ids = self
                .claim_frontends(&spec, &HashMap::new(), &mut written)
                .await?;
            let now = SystemTime::now();
            let record = spec.to_record(&ids, &nodes, now, now);
            let created = match self
                .store
                .create(&name.namespace, &name.name, &record, 0)
                .await
            {
                Ok(created) => created,
                Err(WriteError::Exists) => return Err(exists(&name)),
                Err(e) => return Err(e.into_error(&format!("Service {name}"))),
            };
            if let Some(lost) = self.lost_claim(&name, &written).await? {
                let _ = self
                    .store
                    .delete(
                        pb::Service::KIND,
                        &name.namespace,
                        &name.name,
                        created.revision,
                    )
                    .await;
                return Err(stalled(&name, &lost));
            }
            Ok(with_revision(created))
        }
        .await;
        if result.is_err() {
            self.roll_back(&written).await;
        } else {
            tracing::info!(service = %name, frontends = spec.frontends.len(), backends = spec.backends.len(), "service created");
        }
        result
    }

    /// Replaces a service's spec (UpdateService); with `expected_revision` > 0 only if the
    /// service is still at that revision. Frontends kept keep their ids.
    pub async fn update_service(
        &self,
        spec: ServiceSpec,
        expected_revision: i64,
    ) -> Result<pb::Service> {
        let name = spec.name.clone();
        self.check_external_ips(&spec).await?;
        let nodes = self.backend_nodes(&spec).await?;
        for _ in 0..MAX_ATTEMPTS {
            let Some(current) = self.stored_service(&name).await? else {
                return Err(unknown(&name));
            };
            if expected_revision > 0 && current.revision != expected_revision {
                return Err(changed(&name, expected_revision, Some(current.revision)));
            }
            let kept: HashMap<FrontendKey, u16> = current
                .value
                .frontends
                .iter()
                .filter_map(|f| Some((FrontendKey::of_record(f)?, u16::try_from(f.id).ok()?)))
                .collect();
            let mut written = Written::default();
            let ids = match self.claim_frontends(&spec, &kept, &mut written).await {
                Ok(ids) => ids,
                Err(IpamError::Aborted(_)) => {
                    // Our own record lists a frontend this request saw as new: re-read.
                    self.roll_back(&written).await;
                    continue;
                }
                Err(e) => {
                    self.roll_back(&written).await;
                    return Err(e);
                }
            };
            let create_time = current
                .value
                .create_time
                .map_or_else(SystemTime::now, |t| system_time(Some(t)));
            let record = spec.to_record(&ids, &nodes, create_time, SystemTime::now());
            let updated = match self
                .store
                .update(&name.namespace, &name.name, &record, 0, current.revision)
                .await
            {
                Ok(updated) => updated,
                Err(WriteError::Conflict) if expected_revision == 0 => {
                    self.roll_back(&written).await;
                    continue;
                }
                Err(WriteError::Conflict) => {
                    self.roll_back(&written).await;
                    return Err(changed(&name, expected_revision, None));
                }
                Err(WriteError::NotFound) => {
                    self.roll_back(&written).await;
                    return Err(unknown(&name));
                }
                Err(e) => {
                    self.roll_back(&written).await;
                    return Err(e.into_error(&format!("Service {name}")));
                }
            };
            if let Some(lost) = self.lost_claim(&name, &written).await? {
                let _ = self
                    .store
                    .update(
                        &name.namespace,
                        &name.name,
                        &current.value,
                        0,
                        updated.revision,
                    )
                    .await;
                self.roll_back(&written).await;
                return Err(stalled(&name, &lost));
            }
            self.give_back_dropped(&name, &current.value, &record, updated.revision)
                .await?;
            tracing::info!(service = %name, frontends = spec.frontends.len(), backends = spec.backends.len(), "service updated");
            return Ok(with_revision(updated));
        }
        Err(IpamError::Aborted(format!(
            "service {name}: other requests kept changing it; retry"
        )))
    }

    /// Deletes a service (DeleteService) and gives back its frontends and ids; returns it as
    /// it was.
    pub async fn delete_service(&self, name: &ServiceName) -> Result<pb::Service> {
        for _ in 0..MAX_ATTEMPTS {
            let Some(current) = self.stored_service(name).await? else {
                return Err(unknown(name));
            };
            match self
                .store
                .delete(
                    pb::Service::KIND,
                    &name.namespace,
                    &name.name,
                    current.revision,
                )
                .await
            {
                Ok((_, deleted_at)) => {
                    self.give_back_dropped(
                        name,
                        &current.value,
                        &pb::Service::default(),
                        deleted_at,
                    )
                    .await?;
                    tracing::info!(service = %name, "service deleted");
                    return Ok(with_revision(current));
                }
                Err(WriteError::Conflict) => continue,
                Err(WriteError::NotFound) => return Err(unknown(name)),
                Err(e) => return Err(e.into_error(&format!("Service {name}"))),
            }
        }
        Err(IpamError::Aborted(format!(
            "service {name}: other requests kept changing it while deleting it; retry"
        )))
    }

    /// One service (GetService).
    pub async fn get_service(&self, name: &ServiceName) -> Result<pb::Service> {
        self.stored_service(name)
            .await?
            .map(with_revision)
            .ok_or_else(|| unknown(name))
    }

    /// Every service, of `namespace` when given, sorted by namespace and name
    /// (ListServices).
    pub async fn list_services(&self, namespace: Option<&str>) -> Result<Vec<pb::Service>> {
        let (resources, _) = self
            .store
            .list_all(pb::Service::KIND, namespace.unwrap_or(""))
            .await?;
        let mut services = resources
            .iter()
            .map(|r| decode::<pb::Service>(r).map(with_revision))
            .collect::<Result<Vec<_>, _>>()?;
        services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        Ok(services)
    }

    async fn stored_service(&self, name: &ServiceName) -> Result<Option<Stored<pb::Service>>> {
        self.store.get(&name.namespace, &name.name).await
    }

    /// The id of every frontend of `spec`: kept ones' from `kept`, new ones claimed (with
    /// a new id) into `written`. A frontend another service holds is INVALID_ARGUMENT
    /// naming it; one our own record holds (the service changed meanwhile) is ABORTED.
    async fn claim_frontends(
        &self,
        spec: &ServiceSpec,
        kept: &HashMap<FrontendKey, u16>,
        written: &mut Written,
    ) -> Result<Vec<u16>> {
        let us = &spec.name;
        let mut ids = Vec::with_capacity(spec.frontends.len());
        for (i, frontend) in spec.frontends.iter().enumerate() {
            if let Some(id) = kept.get(&frontend.key) {
                ids.push(*id);
                continue;
            }
            let claim = frontend.key.record_name();
            match self.take_claim::<FrontendClaim>(&claim, us).await? {
                Take::Taken(revision) => written.0.push((ClaimKind::Frontend, claim, revision)),
                Take::Held(holder) if holder == *us => {
                    return Err(IpamError::Aborted(format!(
                        "service {us} changed while this request ran; retry"
                    )));
                }
                Take::Held(holder) => {
                    return Err(InvalidField::new(
                        format!("service.frontends[{i}]"),
                        format!(
                            "{} is held by service {holder}; a frontend belongs to one service: choose another address or port, or remove it from {holder} first",
                            frontend.key
                        ),
                    )
                    .into());
                }
            }
            ids.push(self.take_frontend_id(us, written).await?);
        }
        Ok(ids)
    }

    /// Gives back the claims of the frontends `before` lists and `after` does not, changed
    /// at revision `changed_at`.
    async fn give_back_dropped(
        &self,
        us: &ServiceName,
        before: &pb::Service,
        after: &pb::Service,
        changed_at: i64,
    ) -> Result<()> {
        let remaining: Vec<FrontendKey> = after
            .frontends
            .iter()
            .filter_map(FrontendKey::of_record)
            .collect();
        for frontend in &before.frontends {
            let Some(key) = FrontendKey::of_record(frontend) else {
                continue;
            };
            if remaining.contains(&key) {
                continue;
            }
            self.give_back::<FrontendClaim>(&key.record_name(), us, changed_at)
                .await?;
            self.give_back::<IdClaim>(&frontend.id.to_string(), us, changed_at)
                .await?;
        }
        Ok(())
    }
}

/// The stored spec with its revision (output only, the store's).
fn with_revision(stored: Stored<pb::Service>) -> pb::Service {
    let mut service = stored.value;
    service.revision = stored.revision;
    service
}

fn exists(name: &ServiceName) -> IpamError {
    IpamError::AlreadyExists(format!(
        "service {name} already exists; change it with UpdateService (`kino service update`) or delete it first"
    ))
}

fn unknown(name: &ServiceName) -> IpamError {
    IpamError::not_found(
        "name",
        format!("service {name}"),
        "`kino service list` shows the services",
    )
}

fn changed(name: &ServiceName, expected: i64, now: Option<i64>) -> IpamError {
    let now = now.map_or_else(
        || "a newer revision".to_owned(),
        |r| format!("revision {r}"),
    );
    IpamError::FailedPrecondition(format!(
        "service {name} is at {now}, not the expected revision {expected}: it changed since you read it; read it again and retry"
    ))
}

fn stalled(name: &ServiceName, lost: &str) -> IpamError {
    IpamError::Aborted(format!(
        "service {name}: its {lost} was taken over while this request was stalled longer than the claim takeover time (--claim-takeover-seconds); nothing was changed, retry"
    ))
}
