//! Node registration: the node's lease and its `Node` resource in the datastore, kept alive
//! while the agent runs. The node's endpoints hang on the same lease, so a node that is gone
//! for longer than the TTL disappears from the cluster's view (DESIGN §3).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use kino_api::datastore::datastore_service_client::DatastoreServiceClient;
use kino_api::datastore::{
    CreateRequest, GetRequest, GrantLeaseRequest, KeepAliveLeaseRequest, Resource, ResourceKey,
    UpdateRequest,
};
use kino_api::types::{Node, NodeRouting, RoutingMode};
use kino_service_kit::TracedChannel;
use prost::Message;

/// The node's registration: its lease, shared with whoever writes lease-bound records.
#[derive(Clone)]
pub struct Registration {
    datastore: DatastoreServiceClient<TracedChannel>,
    node: String,
    ttl_seconds: i64,
    lease: Arc<AtomicI64>,
    pod_cidrs: Vec<String>,
}

fn node_key(node: &str) -> ResourceKey {
    ResourceKey {
        kind: "Node".into(),
        namespace: String::new(),
        name: node.to_owned(),
    }
}

impl Registration {
    /// Registers the node: reuses its lease if still alive (agent restart), else grants a
    /// new one, and writes the `Node` resource on it.
    pub async fn register(
        datastore: DatastoreServiceClient<TracedChannel>,
        node: &str,
        ttl_seconds: i64,
        pod_cidrs: Vec<String>,
    ) -> Result<Self, tonic::Status> {
        let registration = Registration {
            datastore,
            node: node.to_owned(),
            ttl_seconds,
            lease: Arc::new(AtomicI64::new(0)),
            pod_cidrs,
        };
        let mut client = registration.datastore.clone();
        let existing = match client
            .get(GetRequest {
                key: Some(node_key(node)),
            })
            .await
        {
            Ok(r) => r.into_inner().resource,
            Err(s) if s.code() == tonic::Code::NotFound => None,
            Err(s) => return Err(s),
        };
        let previous = existing.as_ref().map(|r| r.lease_id).unwrap_or(0);
        let lease = if previous != 0
            && client
                .keep_alive_lease(KeepAliveLeaseRequest { lease_id: previous })
                .await
                .is_ok()
        {
            previous
        } else {
            registration.grant().await?
        };
        registration.lease.store(lease, Ordering::Relaxed);
        registration.write_node().await?;
        tracing::info!(node, lease, reused = lease == previous, "node registered");
        Ok(registration)
    }

    /// The lease id, shared (it changes if the lease had to be granted again).
    pub fn lease(&self) -> Arc<AtomicI64> {
        self.lease.clone()
    }

    async fn grant(&self) -> Result<i64, tonic::Status> {
        Ok(self
            .datastore
            .clone()
            .grant_lease(GrantLeaseRequest {
                ttl_seconds: self.ttl_seconds,
            })
            .await?
            .into_inner()
            .lease_id)
    }

    /// Creates or CAS-updates the Node resource on the current lease.
    async fn write_node(&self) -> Result<(), tonic::Status> {
        let spec = Node {
            name: self.node.clone(),
            addresses: Vec::new(),
            pod_cidrs: self.pod_cidrs.clone(),
            routing: Some(NodeRouting {
                mode: RoutingMode::Unspecified as i32,
                ..Default::default()
            }),
            labels: None,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            register_time: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
        };
        let resource = Resource {
            kind: "Node".into(),
            name: self.node.clone(),
            spec: Some(prost_types::Any {
                type_url: "type.googleapis.com/kino.types.v1.Node".into(),
                value: spec.encode_to_vec(),
            }),
            lease_id: self.lease.load(Ordering::Relaxed),
            ..Default::default()
        };
        let mut client = self.datastore.clone();
        loop {
            match client
                .get(GetRequest {
                    key: Some(node_key(&self.node)),
                })
                .await
            {
                Err(s) if s.code() == tonic::Code::NotFound => {
                    match client
                        .create(CreateRequest {
                            resource: Some(resource.clone()),
                        })
                        .await
                    {
                        Ok(_) => return Ok(()),
                        Err(s) if s.code() == tonic::Code::AlreadyExists => continue,
                        Err(s) => return Err(s),
                    }
                }
                Err(s) => return Err(s),
                Ok(current) => {
                    let revision = current
                        .into_inner()
                        .resource
                        .map(|r| r.revision)
                        .unwrap_or(0);
                    match client
                        .update(UpdateRequest {
                            resource: Some(resource.clone()),
                            expected_revision: revision,
                        })
                        .await
                    {
                        Ok(_) => return Ok(()),
                        Err(s)
                            if matches!(s.code(), tonic::Code::Aborted | tonic::Code::NotFound) =>
                        {
                            continue;
                        }
                        Err(s) => return Err(s),
                    }
                }
            }
        }
    }

    /// Keeps the lease alive every TTL/3. When the lease is lost (datastore down longer than
    /// the TTL), grants a new one, rewrites the Node and calls `on_new_lease` so lease-bound
    /// records are written again. Runs until the process ends.
    pub async fn keep_alive<F, Fut>(self, on_new_lease: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = ()>,
    {
        let period = Duration::from_secs((self.ttl_seconds / 3).max(1) as u64);
        let mut client = self.datastore.clone();
        loop {
            tokio::time::sleep(period).await;
            let lease = self.lease.load(Ordering::Relaxed);
            match client
                .keep_alive_lease(KeepAliveLeaseRequest { lease_id: lease })
                .await
            {
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::NotFound => {
                    tracing::warn!(lease, "node lease expired; registering again");
                    match self.grant().await {
                        Ok(new) => {
                            self.lease.store(new, Ordering::Relaxed);
                            if let Err(e) = self.write_node().await {
                                tracing::warn!(error = %e, "rewriting the Node resource");
                            }
                            on_new_lease().await;
                        }
                        Err(e) => tracing::warn!(error = %e, "granting a node lease"),
                    }
                }
                Err(s) => {
                    tracing::warn!(lease, error = %s, "node lease keep-alive failed; retrying")
                }
            }
        }
    }
}
