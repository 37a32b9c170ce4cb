//! Node registration, in two records (DESIGN §3, §6):
//!
//! - the node's **existence**, its `Node` resource, written on no lease: a node whose agent
//!   is down — a crash loop, an upgrade, an OOM, a partition — keeps it, and keeps its
//!   endpoints and their addresses (cilium#9422). Only an explicit deletion
//!   (`kino node delete`) removes it; while one is under way (`deletion_time` set) the
//!   agent waits instead of writing it;
//! - the node's **liveness**, its `NodeHealth` resource, on a datastore lease of
//!   `--node-lease-ttl` seconds that the agent keeps alive. When the agent has been gone for
//!   longer than that, the record vanishes and the node shows as unreachable; nothing else.
//!
//! When the heartbeat finds its lease or its NodeHealth gone (the datastore was down longer
//! than the TTL, someone revoked the lease, or the node was deleted under the running
//! agent), the agent registers again and calls back so the endpoints' addresses are claimed
//! again and their records rewritten.

use std::time::{Duration, SystemTime};

use kino_api::datastore::datastore_service_client::DatastoreServiceClient;
use kino_api::datastore::{
    CreateRequest, GetRequest, GrantLeaseRequest, KeepAliveLeaseRequest, Resource, ResourceKey,
    UpdateRequest,
};
use kino_api::types::{Node, NodeAddress, NodeHealth, NodeRouting};
use kino_service_kit::TracedChannel;
use prost::Message;
use tonic::{Code, Status};

/// Datastore kind of a node's existence record.
pub const NODE_KIND: &str = "Node";
/// Datastore kind of a node's liveness record.
pub const NODE_HEALTH_KIND: &str = "NodeHealth";

/// What the node's Node record tells the cluster about it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeSpec {
    /// Its pod CIDRs from IPAM, both families.
    pub pod_cidrs: Vec<String>,
    /// Its underlay addresses (InternalIP) and the pods' gateways (KinoInternalIP).
    pub addresses: Vec<NodeAddress>,
    /// How other nodes reach its pods (routing mode, tunnel endpoint or next hop).
    pub routing: NodeRouting,
}

/// The node's registration: its records and the lease its NodeHealth hangs on.
pub struct Registration {
    datastore: DatastoreServiceClient<TracedChannel>,
    node: String,
    ttl_seconds: i64,
    lease: i64,
    published: NodeSpec,
    agent_start_time: prost_types::Timestamp,
}

fn key(kind: &str, node: &str) -> ResourceKey {
    ResourceKey {
        kind: kind.into(),
        namespace: String::new(),
        name: node.to_owned(),
    }
}

fn any<T: Message>(message_name: &str, spec: &T) -> prost_types::Any {
    prost_types::Any {
        type_url: format!("type.googleapis.com/{message_name}"),
        value: spec.encode_to_vec(),
    }
}

impl Registration {
    /// Registers the node: writes its Node record (no lease), then its NodeHealth on its
    /// previous lease if that is still alive (agent restart), else on a new one.
    /// UNAVAILABLE while the node is being deleted: the caller retries.
    pub async fn register(
        datastore: DatastoreServiceClient<TracedChannel>,
        node: &str,
        ttl_seconds: i64,
        published: NodeSpec,
    ) -> Result<Self, Status> {
        let mut registration = Registration {
            datastore,
            node: node.to_owned(),
            ttl_seconds,
            lease: 0,
            published,
            agent_start_time: prost_types::Timestamp::from(SystemTime::now()),
        };
        registration.write_node().await?;
        let previous = registration
            .get(NODE_HEALTH_KIND)
            .await?
            .map(|r| r.lease_id)
            .unwrap_or(0);
        let reused = previous != 0
            && registration
                .datastore
                .clone()
                .keep_alive_lease(KeepAliveLeaseRequest { lease_id: previous })
                .await
                .is_ok();
        registration.lease = if reused {
            previous
        } else {
            registration.grant().await?
        };
        registration.write_health().await?;
        tracing::info!(
            node,
            lease = registration.lease,
            reused,
            "node registered (Node record, NodeHealth on the lease)"
        );
        Ok(registration)
    }

    async fn get(&self, kind: &str) -> Result<Option<Resource>, Status> {
        match self
            .datastore
            .clone()
            .get(GetRequest {
                key: Some(key(kind, &self.node)),
            })
            .await
        {
            Ok(r) => Ok(r.into_inner().resource),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(s),
        }
    }

    async fn grant(&self) -> Result<i64, Status> {
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

    /// Creates or CAS-updates the Node record, on no lease; refuses (UNAVAILABLE) while the
    /// node is being deleted.
    async fn write_node(&self) -> Result<(), Status> {
        let spec = Node {
            name: self.node.clone(),
            addresses: self.published.addresses.clone(),
            pod_cidrs: self.published.pod_cidrs.clone(),
            routing: Some(self.published.routing.clone()),
            labels: None,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            register_time: Some(prost_types::Timestamp::from(SystemTime::now())),
            deletion_time: None,
        };
        let resource = Resource {
            kind: NODE_KIND.into(),
            name: self.node.clone(),
            spec: Some(any("kino.types.v1.Node", &spec)),
            ..Default::default()
        };
        self.upsert(resource, |current| {
            let stored = current
                .spec
                .as_ref()
                .and_then(|s| Node::decode(s.value.as_slice()).ok());
            match stored.and_then(|n| n.deletion_time) {
                Some(_) => Err(Status::unavailable(format!(
                    "node {:?} is being deleted (kino node delete); the agent registers it again once that is done",
                    current.name
                ))),
                None => Ok(()),
            }
        })
        .await
    }

    /// Creates or CAS-updates the NodeHealth record on the current lease.
    async fn write_health(&self) -> Result<(), Status> {
        let spec = NodeHealth {
            name: self.node.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            agent_start_time: Some(self.agent_start_time),
            lease_ttl_seconds: self.ttl_seconds,
            register_time: Some(prost_types::Timestamp::from(SystemTime::now())),
        };
        let resource = Resource {
            kind: NODE_HEALTH_KIND.into(),
            name: self.node.clone(),
            spec: Some(any("kino.types.v1.NodeHealth", &spec)),
            lease_id: self.lease,
            ..Default::default()
        };
        self.upsert(resource, |_| Ok(())).await
    }

    /// Create, or compare-and-swap over what is stored if `may_replace` allows it.
    async fn upsert(
        &self,
        resource: Resource,
        may_replace: impl Fn(&Resource) -> Result<(), Status>,
    ) -> Result<(), Status> {
        let mut client = self.datastore.clone();
        loop {
            match self.get(&resource.kind).await? {
                None => match client
                    .create(CreateRequest {
                        resource: Some(resource.clone()),
                    })
                    .await
                {
                    Ok(_) => return Ok(()),
                    Err(s) if s.code() == Code::AlreadyExists => continue,
                    Err(s) => return Err(s),
                },
                Some(current) => {
                    may_replace(&current)?;
                    match client
                        .update(UpdateRequest {
                            resource: Some(resource.clone()),
                            expected_revision: current.revision,
                        })
                        .await
                    {
                        Ok(_) => return Ok(()),
                        Err(s) if matches!(s.code(), Code::Aborted | Code::NotFound) => continue,
                        Err(s) => return Err(s),
                    }
                }
            }
        }
    }

    /// The heartbeat: keeps the lease alive every TTL/3 and checks that the NodeHealth is
    /// still there. When either is gone, registers again (a new lease, the NodeHealth, the
    /// Node) and calls `on_registered_again`. Runs until the process ends.
    pub async fn keep_alive<F, Fut>(mut self, on_registered_again: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = ()>,
    {
        let period = Duration::from_secs((self.ttl_seconds / 3).max(1) as u64);
        loop {
            tokio::time::sleep(period).await;
            match self.beat().await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::info!(node = %self.node, lease = self.lease, "node registered again");
                    on_registered_again().await;
                }
                Err(s) => {
                    tracing::warn!(node = %self.node, lease = self.lease, code = ?s.code(), error = %s.message(),
                        "node heartbeat failed; retrying")
                }
            }
        }
    }

    /// One heartbeat: `Ok(true)` when all was in place, `Ok(false)` after registering again.
    async fn beat(&mut self) -> Result<bool, Status> {
        let lease_alive = match self
            .datastore
            .clone()
            .keep_alive_lease(KeepAliveLeaseRequest {
                lease_id: self.lease,
            })
            .await
        {
            Ok(_) => true,
            Err(s) if s.code() == Code::NotFound => false,
            Err(s) => return Err(s),
        };
        let health = if lease_alive {
            self.get(NODE_HEALTH_KIND).await?
        } else {
            tracing::warn!(node = %self.node, lease = self.lease,
                "the node's lease has ended (revoked, or the datastore was unreachable longer than the TTL); registering again");
            None
        };
        if health.as_ref().is_some_and(|h| h.lease_id == self.lease) {
            return Ok(true);
        }
        if lease_alive {
            tracing::warn!(node = %self.node, "the node's NodeHealth is gone (the node was deleted under the running agent?); registering again");
        } else {
            self.lease = self.grant().await?;
        }
        // The Node first (refused while a deletion is under way: retried at the next beat),
        // then the liveness that says the node is back.
        self.write_node().await?;
        self.write_health().await?;
        Ok(false)
    }
}
