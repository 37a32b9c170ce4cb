//! Nodes as operators see them (kino.node.v1): which exist, whether their agents are alive,
//! what they hold — and the explicit deletion, the only way a node's blocks and its pods'
//! addresses go back without their owners releasing them.
//!
//! A node's existence is its Node record (no lease); its liveness is its NodeHealth record
//! (on the agent's lease). Neither a lapsed nor a revoked lease frees anything: the agent
//! may be restarting, upgrading or cut off while its pods run on (cilium#9422). Deleting a
//! node goes: mark the Node record (`deletion_time`, so the node's agent waits and an
//! interrupted deletion is finished by [`Ipam::finish_deletion`]), delete its Endpoint
//! records (its pods leave every ipcache), give back its blocks and addresses in every pool,
//! delete its NodeHealth and PolicyRealization, and last its Node record.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use kino_api::types::{Node, NodeHealth};
use kino_service_kit::records::Spec;

use super::{Ipam, MAX_ATTEMPTS};
use crate::error::{IpamError, Result};
use crate::persistence::{IpamQueries, Stored, WriteError, decode};
use crate::prefix::IpPrefix;
use crate::records::{Allocation, NodeBlocks};

/// Datastore kind of the agents' endpoint records (namespace = node name).
pub const ENDPOINT_KIND: &str = kino_api::agent::Endpoint::KIND;
/// The kind of what a node's datapath enforces (written by its agent, `kino.policy.v1`);
/// it goes with the node.
pub const POLICY_REALIZATION_KIND: &str = kino_api::policy::PolicyRealization::KIND;

/// How long a marked Node may stay before another replica (or this one, after a restart)
/// finishes its deletion: a deletion in progress takes well under this, so the finisher does
/// not race the deleter.
pub const FINISH_DELETION_AFTER: Duration = Duration::from_secs(30);

/// Whether a node's agent is alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// Its NodeHealth exists: the agent keeps its lease alive.
    Live,
    /// No NodeHealth: the agent is down or cut off for longer than its lease TTL, or its
    /// lease was revoked.
    Unreachable,
    /// An explicit deletion has begun.
    Deleting,
}

/// One pod CIDR of a node and how much of it is used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockUsage {
    /// Pool of the block.
    pub pool: String,
    /// The block.
    pub cidr: IpPrefix,
    /// Addresses allocated from it.
    pub allocated: u64,
}

/// What the cluster knows of one node.
#[derive(Clone, Debug)]
pub struct NodeView {
    /// Node name.
    pub name: String,
    /// Its Node record.
    pub node: Option<Stored<Node>>,
    /// Its NodeHealth record (present while its agent is alive).
    pub health: Option<Stored<NodeHealth>>,
    /// Its blocks in every pool.
    pub blocks: Vec<BlockUsage>,
    /// Names of its Endpoint records.
    pub endpoints: Vec<String>,
}

impl NodeView {
    fn new(name: &str) -> Self {
        NodeView {
            name: name.to_owned(),
            node: None,
            health: None,
            blocks: Vec::new(),
            endpoints: Vec::new(),
        }
    }

    /// Whether its agent is alive.
    pub fn liveness(&self) -> Liveness {
        if self
            .node
            .as_ref()
            .is_some_and(|n| n.value.deletion_time.is_some())
        {
            Liveness::Deleting
        } else if self.health.is_some() {
            Liveness::Live
        } else {
            Liveness::Unreachable
        }
    }

    fn is_empty(&self) -> bool {
        self.node.is_none()
            && self.health.is_none()
            && self.blocks.is_empty()
            && self.endpoints.is_empty()
    }
}

/// What a node deletion removed.
#[derive(Clone, Debug)]
pub struct DeletedNode {
    /// The node as it was before.
    pub before: NodeView,
    /// Blocks given back.
    pub released: Vec<IpPrefix>,
    /// Addresses freed.
    pub freed: Vec<Allocation>,
    /// Endpoint records deleted.
    pub deleted_endpoints: usize,
    /// When the deletion began (the mark on the Node record).
    pub deletion_time: SystemTime,
}

impl Ipam {
    /// Every node with a Node record, a NodeHealth record, blocks, or Endpoint records,
    /// sorted by name (ListNodes).
    pub async fn list_nodes(&self) -> Result<Vec<NodeView>> {
        let mut views: BTreeMap<String, NodeView> = BTreeMap::new();
        fn view<'a>(views: &'a mut BTreeMap<String, NodeView>, name: &str) -> &'a mut NodeView {
            views
                .entry(name.to_owned())
                .or_insert_with(|| NodeView::new(name))
        }
        for resource in self.store.list_all(Node::KIND, "").await?.0 {
            view(&mut views, &resource.name).node = Some(decode(&resource)?);
        }
        for resource in self.store.list_all(NodeHealth::KIND, "").await?.0 {
            view(&mut views, &resource.name).health = Some(decode(&resource)?);
        }
        for pool in self.store.pools().await? {
            let pool = pool.value.config.name;
            let (nodes, _) = self.store.node_records(&pool).await?;
            let (addresses, _) = self.store.address_records(&pool).await?;
            let mut allocated: BTreeMap<(String, IpPrefix), u64> = BTreeMap::new();
            for address in &addresses {
                *allocated
                    .entry((address.value.node.clone(), address.value.block))
                    .or_default() += 1;
            }
            for record in nodes {
                let node = &record.value.node;
                for block in &record.value.blocks {
                    let used = allocated
                        .get(&(node.clone(), block.cidr))
                        .copied()
                        .unwrap_or(0);
                    view(&mut views, node).blocks.push(BlockUsage {
                        pool: pool.clone(),
                        cidr: block.cidr,
                        allocated: used,
                    });
                }
            }
        }
        for resource in self.store.list_all(ENDPOINT_KIND, "").await?.0 {
            view(&mut views, &resource.namespace)
                .endpoints
                .push(resource.name);
        }
        Ok(views.into_values().collect())
    }

    /// One node (GetNode); NOT_FOUND when the cluster knows nothing of it.
    pub async fn get_node(&self, name: &str) -> Result<NodeView> {
        let view = self.node_view(name).await?;
        if view.is_empty() {
            return Err(unknown_node(name));
        }
        Ok(view)
    }

    async fn node_view(&self, name: &str) -> Result<NodeView> {
        let mut view = NodeView::new(name);
        view.node = self.store.get::<Node>("", name).await?;
        view.health = self.store.get::<NodeHealth>("", name).await?;
        for pool in self.store.pools().await? {
            let pool = pool.value.config.name;
            let Some(record) = self.store.get::<NodeBlocks>(&pool, name).await? else {
                continue;
            };
            for block in &record.value.blocks {
                let taken = self.store.taken_in_block(&pool, &block.cidr).await?;
                view.blocks.push(BlockUsage {
                    pool: pool.clone(),
                    cidr: block.cidr,
                    allocated: taken.len() as u64,
                });
            }
        }
        view.endpoints = self
            .store
            .list_all(ENDPOINT_KIND, name)
            .await?
            .0
            .into_iter()
            .map(|r| r.name)
            .collect();
        Ok(view)
    }

    /// Deletes a node for good (DeleteNode): refuses while its agent is alive unless
    /// `force`; see the module comment for the order.
    pub async fn delete_node(&self, name: &str, force: bool) -> Result<DeletedNode> {
        let before = self.node_view(name).await?;
        if before.is_empty() {
            return Err(unknown_node(name));
        }
        if let (Some(health), false) = (&before.health, force) {
            return Err(IpamError::FailedPrecondition(format!(
                "node {name:?} is live: its agent (kino-agent {}) keeps its NodeHealth lease alive (TTL {} s); stop the agent first, or delete with force (its running pods' addresses are then freed and may be handed out again)",
                health.value.agent_version, health.value.lease_ttl_seconds
            )));
        }
        let marked = self.mark_deleting(name).await?;
        let deletion_time = marked
            .value
            .deletion_time
            .and_then(|t| SystemTime::try_from(t).ok())
            .unwrap_or_else(SystemTime::now);
        tracing::info!(node = %name, force, live = before.health.is_some(), "deleting node");

        let mut deleted_endpoints = 0;
        for resource in self.store.list_all(ENDPOINT_KIND, name).await?.0 {
            match self
                .store
                .delete(ENDPOINT_KIND, name, &resource.name, 0)
                .await
            {
                Ok(_) => deleted_endpoints += 1,
                Err(WriteError::NotFound) => {}
                Err(e) => {
                    return Err(
                        e.into_error(&format!("deleting Endpoint {name}/{}", resource.name))
                    );
                }
            }
        }
        let (released, freed) = self.release_node_cidrs(name, None, true).await?;
        let released: Vec<IpPrefix> = released
            .iter()
            .flat_map(|r| r.blocks.iter().map(|b| b.cidr))
            .collect();
        for kind in [NodeHealth::KIND, POLICY_REALIZATION_KIND] {
            match self.store.delete(kind, "", name, 0).await {
                Ok(_) | Err(WriteError::NotFound) => {}
                Err(e) => return Err(e.into_error(&format!("deleting {kind} {name}"))),
            }
        }
        self.delete_marked(name, marked).await?;
        tracing::info!(node = %name, endpoints = deleted_endpoints, blocks = released.len(), addresses = freed.len(),
            "node deleted: its endpoints are gone and its blocks and addresses are back in their pools");
        Ok(DeletedNode {
            before,
            released,
            freed,
            deleted_endpoints,
            deletion_time,
        })
    }

    /// Sets `deletion_time` on the node's record (creating a marked record if it has none),
    /// off any lease; returns the marked record (an existing mark is kept).
    async fn mark_deleting(&self, name: &str) -> Result<Stored<Node>> {
        for _ in 0..MAX_ATTEMPTS {
            let now = prost_types::Timestamp::from(SystemTime::now());
            let written = match self.store.get::<Node>("", name).await? {
                Some(current) if current.value.deletion_time.is_some() && current.lease == 0 => {
                    return Ok(current);
                }
                Some(current) => {
                    let mut marked = current.value.clone();
                    marked.deletion_time.get_or_insert(now);
                    self.store
                        .update("", name, &marked, 0, current.revision)
                        .await
                }
                None => {
                    let tombstone = Node {
                        name: name.to_owned(),
                        deletion_time: Some(now),
                        ..Default::default()
                    };
                    self.store.create("", name, &tombstone, 0).await
                }
            };
            match written {
                Ok(marked) => return Ok(marked),
                Err(WriteError::Failed(e)) => return Err(e),
                Err(_) => continue,
            }
        }
        Err(IpamError::Aborted(format!(
            "node {name:?}: its Node record kept changing while marking it for deletion; retry"
        )))
    }

    /// Deletes the marked Node record (at the marked revision, re-reading if it changed).
    async fn delete_marked(&self, name: &str, mut marked: Stored<Node>) -> Result<()> {
        for _ in 0..MAX_ATTEMPTS {
            match self
                .store
                .delete(Node::KIND, "", name, marked.revision)
                .await
            {
                Ok(_) | Err(WriteError::NotFound) => return Ok(()),
                Err(WriteError::Failed(e)) => return Err(e),
                Err(_) => match self.store.get::<Node>("", name).await? {
                    Some(now) => marked = now,
                    None => return Ok(()),
                },
            }
        }
        Err(IpamError::Aborted(format!(
            "node {name:?}: its Node record kept changing while deleting it; retry"
        )))
    }

    /// Finishes the deletion of a node whose Node record has been marked for at least
    /// [`FINISH_DELETION_AFTER`] (its deleter died half-way). Returns whether it did.
    pub async fn finish_deletion(&self, name: &str) -> Result<bool> {
        let Some(node) = self.store.get::<Node>("", name).await? else {
            return Ok(false);
        };
        let Some(marked_at) = node
            .value
            .deletion_time
            .and_then(|t| SystemTime::try_from(t).ok())
        else {
            return Ok(false);
        };
        if marked_at.elapsed().unwrap_or_default() < FINISH_DELETION_AFTER {
            return Ok(false);
        }
        tracing::warn!(node = %name, "finishing a node deletion that was interrupted");
        self.delete_node(name, true).await?;
        Ok(true)
    }

    /// Names of the nodes marked for deletion, with when they were marked.
    pub async fn marked_nodes(&self) -> Result<Vec<(String, SystemTime)>> {
        let mut marked = Vec::new();
        for resource in self.store.list_all(Node::KIND, "").await?.0 {
            let node: Stored<Node> = decode(&resource)?;
            if let Some(at) = node
                .value
                .deletion_time
                .and_then(|t| SystemTime::try_from(t).ok())
            {
                marked.push((resource.name, at));
            }
        }
        Ok(marked)
    }
}

fn unknown_node(name: &str) -> IpamError {
    IpamError::not_found(
        "name",
        format!("node {name:?}"),
        "the cluster has no Node, NodeHealth, pod CIDR or Endpoint record of it (`kino node list` shows the nodes)",
    )
}
