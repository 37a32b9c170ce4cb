//! Keeps the compiler's view current: lists Policy, Identity, Endpoint and Node, then
//! watches each kind from the list's revision + 1 and applies the events in arrival order.
//! A watch that falls behind the store's compacted history re-lists its kind and applies
//! the difference. Also runs identity garbage collection.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use kino_api::datastore::{EventType, Resource};
use kino_api::policy as pb;
use tokio::sync::mpsc;
use tonic::Code;

use crate::convert::{labels_from_proto, policy_from_proto};
use crate::identity::is_endpoint_range;
use crate::ipcache::EndpointRef;
use crate::policy::PolicyKey;
use crate::service::PolicyService;
use crate::store::{KIND_ENDPOINT, KIND_IDENTITY, KIND_NODE, KIND_POLICY, Store, decode};
use crate::view::{Change, EndpointRecord, NodeRecord, View};

/// The kinds the compiler follows.
pub const KINDS: [&str; 4] = [KIND_POLICY, KIND_IDENTITY, KIND_ENDPOINT, KIND_NODE];

enum Batch {
    Events(Vec<(bool, Resource)>),
    Relist(&'static str, Vec<Resource>, i64),
}

/// The change a stored (or deleted) resource means for the view; `None` for resources the
/// view ignores. Unreadable resources are logged and read as deleted.
pub fn resource_change(resource: &Resource, deleted: bool) -> Option<Change> {
    match resource.kind.as_str() {
        KIND_POLICY => {
            let key = PolicyKey {
                namespace: resource.namespace.clone(),
                name: resource.name.clone(),
            };
            if deleted {
                return Some(Change::DeletePolicy(key));
            }
            match decode::<pb::Policy>(resource)
                .map_err(|e| e.to_string())
                .and_then(|s| policy_from_proto(&s.value))
            {
                Ok(policy) if policy.key == key => Some(Change::UpsertPolicy(Box::new(policy))),
                Ok(_) => {
                    tracing::warn!(policy = %key, "ignoring a stored policy whose spec names another policy");
                    Some(Change::DeletePolicy(key))
                }
                Err(e) => {
                    tracing::warn!(policy = %key, error = %e, "ignoring an unreadable stored policy");
                    Some(Change::DeletePolicy(key))
                }
            }
        }
        KIND_IDENTITY => {
            if !resource.namespace.is_empty() {
                return None;
            }
            let id: u32 = resource
                .name
                .parse()
                .ok()
                .filter(|id| is_endpoint_range(*id))?;
            if deleted {
                return Some(Change::DeleteIdentity(id));
            }
            match decode::<pb::Identity>(resource) {
                Ok(stored) if stored.value.id == id => Some(Change::UpsertIdentity(
                    id,
                    stored
                        .value
                        .labels
                        .as_ref()
                        .map(labels_from_proto)
                        .unwrap_or_default(),
                )),
                Ok(_) | Err(_) => {
                    tracing::warn!(identity = id, "ignoring an unreadable identity record");
                    Some(Change::DeleteIdentity(id))
                }
            }
        }
        KIND_ENDPOINT => {
            let id: u32 = resource.name.parse().ok()?;
            let node = resource.namespace.clone();
            if deleted {
                return Some(Change::DeleteEndpoint(node, id));
            }
            match decode::<kino_api::agent::Endpoint>(resource) {
                Ok(stored) => Some(Change::UpsertEndpoint(endpoint_record(
                    &node,
                    id,
                    &stored.value,
                ))),
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring an unreadable endpoint");
                    Some(Change::DeleteEndpoint(node, id))
                }
            }
        }
        KIND_NODE => {
            if deleted {
                return Some(Change::DeleteNode(resource.name.clone()));
            }
            match decode::<kino_api::types::Node>(resource) {
                Ok(stored) => Some(Change::UpsertNode(node_record(
                    &resource.name,
                    &stored.value,
                ))),
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring an unreadable node");
                    Some(Change::DeleteNode(resource.name.clone()))
                }
            }
        }
        _ => None,
    }
}

/// What the view needs of an agent's Endpoint record.
pub fn endpoint_record(
    node: &str,
    id: u32,
    endpoint: &kino_api::agent::Endpoint,
) -> EndpointRecord {
    let networking = endpoint.networking.clone().unwrap_or_default();
    let addressing = networking.addressing.unwrap_or_default();
    let addresses = [addressing.ipv4, addressing.ipv6]
        .iter()
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .collect();
    EndpointRecord {
        key: EndpointRef {
            node_name: node.to_owned(),
            endpoint_id: id,
            container_id: endpoint.container_id.clone(),
            ifname: networking.container_interface_name,
            pod: endpoint
                .pod
                .as_ref()
                .map(|p| (p.namespace.clone(), p.name.clone())),
        },
        identity: endpoint.identity,
        addresses,
    }
}

/// What the view needs of a Node record.
pub fn node_record(name: &str, node: &kino_api::types::Node) -> NodeRecord {
    let addresses: Vec<IpAddr> = node
        .addresses
        .iter()
        .filter_map(|a| a.address.parse().ok())
        .collect();
    let routing = node.routing.clone().unwrap_or_default();
    let internal = node
        .addresses
        .iter()
        .find(|a| a.r#type == kino_api::types::NodeAddressType::InternalIp as i32)
        .and_then(|a| a.address.parse().ok());
    let tunnel = routing
        .tunnel_endpoint
        .parse()
        .ok()
        .or_else(|| routing.next_hop.parse().ok())
        .or(internal);
    NodeRecord {
        name: name.to_owned(),
        addresses,
        tunnel,
        pod_cidrs: node
            .pod_cidrs
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect(),
    }
}

/// The changes that turn the view's `kind` into exactly `resources`.
fn relist_changes(view: &View, kind: &str, resources: &[Resource]) -> Vec<Change> {
    let mut changes: Vec<Change> = resources
        .iter()
        .filter_map(|r| resource_change(r, false))
        .collect();
    match kind {
        KIND_POLICY => {
            let listed: BTreeSet<(String, String)> = resources
                .iter()
                .map(|r| (r.namespace.clone(), r.name.clone()))
                .collect();
            for key in view.compiler().policies().keys() {
                if !listed.contains(&(key.namespace.clone(), key.name.clone())) {
                    changes.push(Change::DeletePolicy(key.clone()));
                }
            }
        }
        KIND_IDENTITY => {
            let listed: BTreeSet<String> = resources
                .iter()
                .filter(|r| r.namespace.is_empty())
                .map(|r| r.name.clone())
                .collect();
            for (id, info) in view.compiler().identities() {
                if info.is_endpoint() && !listed.contains(&id.to_string()) {
                    changes.push(Change::DeleteIdentity(*id));
                }
            }
        }
        KIND_ENDPOINT => {
            let listed: BTreeSet<(String, String)> = resources
                .iter()
                .map(|r| (r.namespace.clone(), r.name.clone()))
                .collect();
            for e in view.endpoints() {
                if !listed.contains(&(e.key.node_name.clone(), e.key.endpoint_id.to_string())) {
                    changes.push(Change::DeleteEndpoint(
                        e.key.node_name.clone(),
                        e.key.endpoint_id,
                    ));
                }
            }
        }
        KIND_NODE => {
            let listed: BTreeSet<String> = resources.iter().map(|r| r.name.clone()).collect();
            for name in view.node_names() {
                if !listed.contains(&name) {
                    changes.push(Change::DeleteNode(name));
                }
            }
        }
        _ => {}
    }
    changes
}

/// Loads the view and follows the datastore until the task is dropped.
pub async fn follow_datastore(service: Arc<PolicyService>) {
    let store = service.store().clone();
    // Initial load, retried until the datastore answers.
    let mut attempt = 0u32;
    let starts: Vec<(&'static str, i64)> = loop {
        let mut lists = Vec::new();
        let mut failed = None;
        for kind in KINDS {
            match store.list_all(kind, "").await {
                Ok(list) => lists.push((kind, list)),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            // Loud at first, then every 30 attempts; retry every 0.2 s growing to 5 s.
            if attempt.is_multiple_of(30) {
                tracing::warn!(error = %e, attempt, "cannot load the datastore yet; retrying");
            }
            let delay = Duration::from_millis(200u64.saturating_mul(1 << attempt.min(5)).min(5000));
            attempt += 1;
            tokio::time::sleep(delay).await;
            continue;
        }
        let revision = lists.iter().map(|(_, (_, r))| *r).max().unwrap_or(0);
        service.update_view(|view| {
            for (kind, (resources, _)) in &lists {
                let changes = relist_changes(view, kind, resources);
                view.apply(revision, changes);
            }
            view.reset_history();
        });
        break lists.iter().map(|(kind, (_, r))| (*kind, *r)).collect();
    };
    service.set_ready(true);
    {
        let view = service.view();
        tracing::info!(
            revision = view.revision(),
            policies = view.compiler().policies().len(),
            identities = view.compiler().compiled().len(),
            "policy view loaded"
        );
    }
    let (tx, mut rx) = mpsc::channel::<Batch>(1024);
    let mut tasks = Vec::new();
    for (kind, revision) in starts {
        tasks.push(tokio::spawn(watch_kind(
            store.clone(),
            kind,
            revision + 1,
            tx.clone(),
        )));
    }
    drop(tx);
    let _guard = AbortOnDrop(tasks);
    while let Some(first) = rx.recv().await {
        let mut batches = vec![first];
        while batches.len() < 256 {
            match rx.try_recv() {
                Ok(batch) => batches.push(batch),
                Err(_) => break,
            }
        }
        service.update_view(|view| {
            for batch in batches {
                match batch {
                    Batch::Events(events) => {
                        let revision = events.iter().map(|(_, r)| r.revision).max().unwrap_or(0);
                        let changes: Vec<Change> = events
                            .iter()
                            .filter_map(|(deleted, r)| resource_change(r, *deleted))
                            .collect();
                        if changes.is_empty() {
                            view.advance(revision);
                        } else {
                            view.apply(revision, changes);
                        }
                    }
                    Batch::Relist(kind, resources, revision) => {
                        let changes = relist_changes(view, kind, &resources);
                        view.apply(revision, changes);
                    }
                }
            }
        });
    }
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

async fn watch_kind(store: Store, kind: &'static str, mut next: i64, tx: mpsc::Sender<Batch>) {
    loop {
        let mut relist = false;
        match store.watch(kind, next).await {
            Ok(mut stream) => {
                while let Some(item) = stream.next().await {
                    match item {
                        Ok(response) => {
                            let mut events = Vec::new();
                            for event in response.events {
                                let Some(resource) = event.resource else {
                                    continue;
                                };
                                next = next.max(resource.revision + 1);
                                events.push((event.r#type == EventType::Deleted as i32, resource));
                            }
                            if !events.is_empty() && tx.send(Batch::Events(events)).await.is_err() {
                                return;
                            }
                        }
                        Err(status) => {
                            relist = status.code() == Code::OutOfRange;
                            tracing::warn!(kind, code = ?status.code(), message = status.message(), "datastore watch ended; resuming");
                            break;
                        }
                    }
                }
            }
            Err(status) => {
                relist = status.code() == Code::OutOfRange;
                tracing::debug!(kind, code = ?status.code(), message = status.message(), "cannot watch yet; retrying");
            }
        }
        if relist {
            match store.list_all(kind, "").await {
                Ok((resources, revision)) => {
                    tracing::warn!(kind, revision, "changes were compacted away; re-listed");
                    next = revision + 1;
                    if tx
                        .send(Batch::Relist(kind, resources, revision))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    continue;
                }
                Err(e) => tracing::warn!(kind, error = %e, "cannot re-list; retrying"),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Garbage-collects unused identities every interval, once the view is loaded.
pub async fn collect_identities(service: Arc<PolicyService>) {
    let interval = service.options().gc_interval;
    loop {
        tokio::time::sleep(interval).await;
        if !service.is_ready() {
            continue;
        }
        let used: BTreeSet<u32> = {
            let view = service.view();
            view.endpoints().map(|e| e.identity).collect()
        };
        let in_use = |id: u32| used.contains(&id);
        match service
            .allocator()
            .collect_garbage(&in_use, SystemTime::now())
            .await
        {
            Ok(report) => {
                if !report.deleted.is_empty() || !report.marked.is_empty() {
                    tracing::info!(marked = ?report.marked, deleted = ?report.deleted, "identity garbage collection");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "identity garbage collection failed; next pass retries")
            }
        }
    }
}
