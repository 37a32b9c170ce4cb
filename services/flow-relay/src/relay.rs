//! The relay itself, transport-free: a `GetFlows` over the nodes a request asks
//! ([`crate::selection`]), their answers merged by time ([`crate::merge`]), and a
//! `ServerStatus` that sums the nodes'. The nodes are reached through [`NodeFlows`] (a tonic
//! client in `crate::upstream`; the tests serve the agent's real flow observer).
//!
//! The relay forwards the nodes' `kino.flow.v1` messages untouched, so those messages are
//! its payload type: it reads only their time (to merge) and never rewrites a flow.
//!
//! A node that cannot be reached does not fail a request: it is named in the answer
//! ([`Flows::unavailable`], [`ClusterStatus::unavailable`]) and logged; a follow retries
//! it with backoff ([`follow`]). Only a node refusing the request as invalid fails it,
//! since every node would.

mod fetch;
mod follow;

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt, stream};
use kino_api::flow::{GetFlowsRequest, GetFlowsResponse, LostEventCounter, ServerStatusResponse};

use crate::error::RelayError;
use crate::merge::{merge_sorted, trim};
use crate::peers::{Peer, PeerSet};
use crate::selection;

/// Why a node could not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeError {
    /// It refused the request as invalid (INVALID_ARGUMENT): the request is at fault.
    InvalidRequest(String),
    /// It could not be reached, refused the relay, or failed.
    Unavailable(String),
}

/// A node's `GetFlows` answer.
pub type NodeStream = Pin<Box<dyn Stream<Item = Result<GetFlowsResponse, NodeError>> + Send>>;

/// How the relay reaches the nodes' flow observers.
#[async_trait::async_trait]
pub trait NodeFlows: Send + Sync + 'static {
    /// Starts `request` on `peer`; resolves once the node accepted it (for a follow: once
    /// it is subscribed to new flows).
    async fn get_flows(
        &self,
        peer: &Peer,
        request: GetFlowsRequest,
    ) -> Result<NodeStream, NodeError>;

    /// The node's status.
    async fn server_status(&self, peer: &Peer) -> Result<ServerStatusResponse, NodeError>;
}

/// Timing of the relay (flags of `kino-flow-relay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayOptions {
    /// Follow: how long a flow may wait for earlier flows of idle nodes.
    pub reorder_window: Duration,
    /// How long a node may take to accept a request or send its next message of a finite
    /// answer before it counts as unavailable.
    pub peer_timeout: Duration,
    /// Follow: first delay before reconnecting a node whose stream failed; doubles per
    /// failed attempt.
    pub retry_initial: Duration,
    /// Follow: longest delay between reconnection attempts.
    pub retry_max: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            reorder_window: Duration::from_millis(500),
            // Below `kino observe`'s default --timeout (2 s): a node that does not answer
            // must not make the whole cluster's answer miss it.
            peer_timeout: Duration::from_secs(1),
            retry_initial: Duration::from_millis(250),
            retry_max: Duration::from_secs(10),
        }
    }
}

/// A node that did not answer, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    /// Node name.
    pub node: String,
    /// What went wrong.
    pub reason: String,
}

/// The merged stream of a `GetFlows`.
pub type RelayStream = Pin<Box<dyn Stream<Item = GetFlowsResponse> + Send>>;

/// The answer to a `GetFlows`.
pub struct Flows {
    /// The nodes asked.
    pub asked: Vec<String>,
    /// The nodes asked that did not answer (at the start, for a follow).
    pub unavailable: Vec<Unavailable>,
    /// The flows, merged by time.
    pub stream: RelayStream,
}

/// The nodes' status, summed.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterStatus {
    /// Counters summed over the nodes that answered; uptime and version are the relay's.
    pub total: ServerStatusResponse,
    /// The nodes that answered.
    pub connected: Vec<String>,
    /// The nodes that did not.
    pub unavailable: Vec<Unavailable>,
}

/// The cluster's flow relay.
pub struct Relay {
    peers: Arc<PeerSet>,
    nodes: Arc<dyn NodeFlows>,
    options: RelayOptions,
    started: Instant,
}

impl Relay {
    /// A relay over the nodes of `peers`, reached through `nodes`.
    pub fn new(peers: Arc<PeerSet>, nodes: Arc<dyn NodeFlows>, options: RelayOptions) -> Self {
        Relay {
            peers,
            nodes,
            options,
            started: Instant::now(),
        }
    }

    /// Refuses a request that contradicts itself, as a node's observer would (so no node
    /// is asked in vain).
    pub fn validate(request: &GetFlowsRequest) -> Result<(), RelayError> {
        if request.first && request.follow {
            return Err(RelayError::InvalidRequest(
                "first takes the oldest flows of the ring; it cannot be combined with follow"
                    .into(),
            ));
        }
        if request.number != 0 && (request.since.is_some() || request.until.is_some()) {
            return Err(RelayError::InvalidRequest(
                "number cannot be combined with since/until: give either a count or a time window"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The nodes `request` asks, now.
    fn asked(&self, request: &GetFlowsRequest) -> Vec<Peer> {
        self.peers
            .current()
            .into_iter()
            .filter(|(name, _)| selection::asks(request, name))
            .map(|(name, address)| Peer { name, address })
            .collect()
    }

    /// Runs `request` on the nodes it asks. Without follow: every node's answer, merged,
    /// then the request's `number` of the merge. With follow: the same for the nodes' rings
    /// (when `number` > 0), then their new flows as they come, merged within the reorder
    /// window, with nodes joining, leaving and coming back picked up.
    pub async fn get_flows(&self, request: GetFlowsRequest) -> Result<Flows, RelayError> {
        Self::validate(&request)?;
        let peers = self.asked(&request);
        let asked = peers.iter().map(|p| p.name.clone()).collect();
        if request.follow {
            let started = follow::start(
                self.nodes.clone(),
                self.peers.subscribe(),
                peers,
                request,
                self.options,
            )
            .await?;
            return Ok(Flows {
                asked,
                unavailable: started.unavailable,
                stream: started.stream,
            });
        }
        let answers = fetch::ring_of_each(&self.nodes, &peers, &request, &self.options).await?;
        let merged = trim(merge_sorted(answers.lists), request.number, request.first);
        Ok(Flows {
            asked,
            unavailable: answers.unavailable,
            stream: Box::pin(stream::iter(merged)),
        })
    }

    /// Every node's status, summed; the nodes that did not answer are named.
    pub async fn server_status(&self) -> ClusterStatus {
        let peers: Vec<Peer> = self
            .peers
            .current()
            .into_iter()
            .map(|(name, address)| Peer { name, address })
            .collect();
        let timeout = self.options.peer_timeout;
        let answers = futures::future::join_all(peers.iter().map(|peer| async move {
            let answer = tokio::time::timeout(timeout, self.nodes.server_status(peer)).await;
            let answer = answer.unwrap_or_else(|_| {
                Err(NodeError::Unavailable(format!(
                    "no answer within {timeout:?}"
                )))
            });
            (peer.name.clone(), answer)
        }))
        .await;
        let mut status = ClusterStatus {
            total: ServerStatusResponse {
                uptime: prost_types::Duration::try_from(self.started.elapsed()).ok(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                ..ServerStatusResponse::default()
            },
            connected: Vec::new(),
            unavailable: Vec::new(),
        };
        let mut lost = std::collections::BTreeMap::<i32, u64>::new();
        for (node, answer) in answers {
            match answer {
                Ok(node_status) => {
                    let total = &mut status.total;
                    total.num_flows += node_status.num_flows;
                    total.max_flows += node_status.max_flows;
                    total.seen_flows += node_status.seen_flows;
                    total.lost_events += node_status.lost_events;
                    total.evicted_flows += node_status.evicted_flows;
                    total.datapath_events += node_status.datapath_events;
                    for counter in node_status.lost_by_source {
                        *lost.entry(counter.source).or_default() += counter.count;
                    }
                    status.connected.push(node);
                }
                Err(NodeError::InvalidRequest(reason) | NodeError::Unavailable(reason)) => {
                    tracing::warn!(node = %node, reason = %reason, "ServerStatus: node unavailable");
                    status.unavailable.push(Unavailable { node, reason });
                }
            }
        }
        status.total.lost_by_source = lost
            .into_iter()
            .map(|(source, count)| LostEventCounter { source, count })
            .collect();
        status
    }
}

/// Logs a node the relay could not use for a request.
fn log_unavailable(unavailable: &Unavailable, what: &str) {
    tracing::warn!(node = %unavailable.node, reason = %unavailable.reason, "{what}: node unavailable");
}

/// Collects a node's finite answer, each message within `timeout` of the previous.
async fn collect_within(
    mut stream: NodeStream,
    timeout: Duration,
) -> Result<Vec<GetFlowsResponse>, NodeError> {
    let mut items = Vec::new();
    loop {
        match tokio::time::timeout(timeout, stream.next()).await {
            Ok(Some(Ok(item))) => items.push(item),
            Ok(Some(Err(e))) => return Err(e),
            Ok(None) => return Ok(items),
            Err(_) => {
                return Err(NodeError::Unavailable(format!(
                    "its answer stalled for {timeout:?} after {} flows",
                    items.len()
                )));
            }
        }
    }
}
