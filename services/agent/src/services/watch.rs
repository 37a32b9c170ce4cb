//! Every `Service` record of the cluster, followed as `cluster/nodes.rs` follows Node
//! records — list, then watch from the listed revision, list again when the watch cannot
//! resume (compacted) — and applied to the load balancer's maps as it changes: one service's
//! change is one [`LbState::upsert`] per frontend (a few map writes), a deleted service
//! removes its frontends. After each complete list, frontends no listed service has (a
//! previous agent's, for services deleted while it was down) are removed. A service whose
//! maps could not be written is retried every second.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kino_api::datastore::{EventType, Resource};
use kino_api::service::Service;
use kino_service_kit::records::{RecordClient, spec_bytes};
use prost::Message;
use tokio::sync::{Mutex, watch};
use tonic::Code;

use super::model::{ServiceKey, frontends_of};
use crate::datapath::lb::{FrontendSpec, L4Addr, LbState};

/// Datastore kind of service records.
pub const SERVICE_KIND: &str = "Service";
/// The message a Service record's spec is.
pub const SERVICE_MESSAGE: &str = "kino.service.v1.Service";

/// A service record's spec, decoded; the error names the record.
pub fn decode_service(resource: &Resource) -> Result<Service, String> {
    let bytes = spec_bytes(resource, SERVICE_MESSAGE)?;
    Service::decode(bytes).map_err(|e| {
        format!(
            "stored Service {}/{} is unreadable: {e}",
            resource.namespace, resource.name
        )
    })
}

/// What the follower programmed, by service.
#[derive(Default)]
pub struct Applied {
    /// Each service's frontends as last asked for.
    wanted: BTreeMap<ServiceKey, Vec<FrontendSpec>>,
    /// Services whose maps could not be (fully) written: retried.
    pending: BTreeSet<ServiceKey>,
}

impl Applied {
    /// The frontends of every service, as the last list and events say.
    pub fn frontends(&self) -> BTreeMap<L4Addr, ServiceKey> {
        self.wanted
            .iter()
            .flat_map(|(key, specs)| specs.iter().map(move |s| (s.address, key.clone())))
            .collect()
    }

    /// Makes service `key` what `service` says (None: deleted) in `lb`.
    pub fn apply(&mut self, lb: &mut LbState, key: ServiceKey, service: Option<&Service>) {
        let specs = match service.map(frontends_of).transpose() {
            Ok(specs) => specs.unwrap_or_default(),
            Err(error) => {
                tracing::error!(%error, "ignoring a service record the load balancer cannot program");
                return;
            }
        };
        let old = self.wanted.remove(&key).unwrap_or_default();
        let others: BTreeMap<L4Addr, ServiceKey> = self.frontends();
        let mut failed = false;
        for gone in old
            .iter()
            .filter(|o| !specs.iter().any(|s| s.address == o.address))
        {
            // Another service may hold the address now (moved in one update): not removed.
            if others.contains_key(&gone.address) {
                continue;
            }
            if let Err(error) = lb.remove(&gone.address) {
                tracing::warn!(service = %format!("{}/{}", key.0, key.1), %error, "removing a frontend; retrying");
                failed = true;
            }
        }
        for spec in &specs {
            match lb.upsert(spec) {
                Ok(writes) => tracing::debug!(
                    service = %format!("{}/{}", key.0, key.1),
                    frontend = %spec.address,
                    written = writes.written,
                    removed = writes.removed,
                    "frontend programmed"
                ),
                Err(error) => {
                    tracing::warn!(service = %format!("{}/{}", key.0, key.1), %error, "programming a frontend; retrying");
                    failed = true;
                }
            }
        }
        if failed {
            self.pending.insert(key.clone());
        } else {
            self.pending.remove(&key);
        }
        // A deleted service wants nothing; a failed removal is retried by `retry`'s
        // retain, which removes every frontend no service wants.
        if service.is_some() {
            self.wanted.insert(key, specs);
        }
    }

    /// Retries the services whose writes failed.
    pub fn retry(&mut self, lb: &mut LbState) {
        for key in std::mem::take(&mut self.pending) {
            let specs = self.wanted.get(&key).cloned().unwrap_or_default();
            for spec in &specs {
                if let Err(error) = lb.upsert(spec) {
                    tracing::warn!(%error, "programming a frontend again; retrying");
                    self.pending.insert(key.clone());
                }
            }
        }
        let wanted = self.frontends();
        let (_, errors) = lb.retain(|address| wanted.contains_key(address));
        for error in errors {
            tracing::warn!(%error, "removing a frontend no service has; retrying");
        }
    }

    /// After a complete list: the services listed are exactly `listed`; every frontend
    /// of another (or no) service is removed.
    pub fn resync(&mut self, lb: &mut LbState, listed: Vec<(ServiceKey, Service)>) {
        let keys: BTreeSet<ServiceKey> = listed.iter().map(|(k, _)| k.clone()).collect();
        self.wanted.retain(|k, _| keys.contains(k));
        for (key, service) in &listed {
            self.apply(lb, key.clone(), Some(service));
        }
        let wanted = self.frontends();
        let (writes, errors) = lb.retain(|address| wanted.contains_key(address));
        if writes.removed > 0 {
            tracing::info!(
                removed = writes.removed,
                "frontends of services that are gone removed"
            );
        }
        for error in errors {
            tracing::warn!(%error, "removing a frontend no service has; retrying");
        }
    }
}

fn key_of(resource: &Resource) -> ServiceKey {
    (resource.namespace.clone(), resource.name.clone())
}

/// Follows the Service records until the task is dropped, programming `lb`. `synced` turns
/// true after the first complete list is applied.
pub async fn follow(records: RecordClient, lb: Arc<Mutex<LbState>>, synced: watch::Sender<bool>) {
    let mut applied = Applied::default();
    let mut next_revision: Option<i64> = None;
    let mut retry_tick = tokio::time::interval(Duration::from_secs(1));
    retry_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let from = match next_revision {
            Some(revision) => revision,
            None => match records.list_all(SERVICE_KIND, "", "", |_| false).await {
                Ok((resources, revision)) => {
                    let listed: Vec<(ServiceKey, Service)> = resources
                        .iter()
                        .filter_map(|r| match decode_service(r) {
                            Ok(service) => Some((key_of(r), service)),
                            Err(error) => {
                                tracing::warn!(%error, "ignoring an unreadable Service record");
                                None
                            }
                        })
                        .collect();
                    let count = listed.len();
                    applied.resync(&mut *lb.lock().await, listed);
                    tracing::info!(services = count, "services listed and programmed");
                    synced.send_replace(true);
                    revision + 1
                }
                Err(e) => {
                    tracing::debug!(error = %e.message(), "cannot list Service records yet; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        next_revision = Some(from);
        let mut stream = match records.watch(SERVICE_KIND, from).await {
            Ok(stream) => stream,
            Err(status) => {
                if status.code() == Code::OutOfRange {
                    next_revision = None;
                }
                tracing::debug!(code = ?status.code(), message = status.message(), "cannot watch Service records; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            let item = tokio::select! {
                item = stream.next() => item,
                _ = retry_tick.tick() => {
                    applied.retry(&mut *lb.lock().await);
                    continue;
                }
            };
            let Some(item) = item else { break };
            match item {
                Ok(response) => {
                    let mut lb = lb.lock().await;
                    for event in response.events {
                        let Some(resource) = event.resource else {
                            continue;
                        };
                        next_revision = Some(resource.revision + 1);
                        let key = key_of(&resource);
                        if event.r#type == EventType::Deleted as i32 {
                            applied.apply(&mut lb, key, None);
                            continue;
                        }
                        match decode_service(&resource) {
                            Ok(service) => applied.apply(&mut lb, key, Some(&service)),
                            Err(error) => {
                                tracing::warn!(%error, "ignoring an unreadable Service record")
                            }
                        }
                    }
                }
                Err(status) => {
                    if status.code() == Code::OutOfRange {
                        next_revision = None;
                    }
                    tracing::warn!(code = ?status.code(), message = status.message(), "the Service watch ended; resuming");
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
