//! `GetFlows` with follow: the nodes' new flows as they come, merged by time within the
//! reorder window ([`Reorder`]), for as long as the client reads.
//!
//! Start: on each node the relay first opens the follow (`number` 0: new flows only) and,
//! once the node has accepted it (it is subscribed), reads the node's ring with the
//! request's `number` as a finite request. The rings are merged and cut to the last
//! `number` of the cluster; that is sent first. A flow published between the subscription
//! and the ring read comes in both: the live copy is dropped (compared with the ring's
//! flows, byte for byte). In the rare case that more than `number` flows land in that gap,
//! the older of them are shown after the ring (never twice, none lost).
//!
//! While following: a node whose stream fails is retried with exponential backoff
//! (`retry_initial` doubling to `retry_max`) and followed again from its new flows (what it
//! saw while unreachable is not replayed); nodes that join (the peer set changes and the
//! request asks them) are followed from their new flows; nodes that leave are dropped. With
//! `until`, the stream ends once every node has reached it (a node ends its stream there),
//! and nodes are no longer retried after it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use futures::{Stream, StreamExt, stream};
use kino_api::flow::{GetFlowsRequest, GetFlowsResponse};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use tokio_stream::StreamMap;
use tokio_stream::wrappers::ReceiverStream;

use super::fetch::ring_of;
use super::{NodeError, NodeFlows, NodeStream, RelayOptions, RelayStream, Unavailable};
use crate::error::RelayError;
use crate::merge::{Reorder, merge_sorted, trim};
use crate::peers::{Peer, Peers};
use crate::selection;

/// Merged flows queued for the client; when it reads slower, the relay stops reading the
/// nodes, and their observers report what the relay missed as lost events.
const OUTPUT_BUFFER: usize = 1024;

/// A node's stream, ending with `None` so that its end is seen.
type Marked = Pin<Box<dyn Stream<Item = Option<Result<GetFlowsResponse, NodeError>>> + Send>>;

/// A started follow.
pub(super) struct Started {
    /// Nodes that could not be followed at the start (retried in the background).
    pub unavailable: Vec<Unavailable>,
    /// The ring's flows, then the new ones.
    pub stream: RelayStream,
}

/// Opens the follow on `asked` and spawns the merge that feeds the returned stream.
pub(super) async fn start(
    nodes: Arc<dyn NodeFlows>,
    peers: watch::Receiver<Peers>,
    asked: Vec<Peer>,
    request: GetFlowsRequest,
    options: RelayOptions,
) -> Result<Started, RelayError> {
    let live_request = GetFlowsRequest {
        number: 0,
        first: false,
        follow: true,
        ..request.clone()
    };
    let ring_request = (request.number > 0).then(|| GetFlowsRequest {
        follow: false,
        ..request.clone()
    });
    let opened = futures::future::join_all(asked.iter().map(|peer| {
        open(
            &nodes,
            peer,
            live_request.clone(),
            ring_request.clone(),
            &options,
        )
    }))
    .await;
    let mut follower = Follower::new(nodes, peers, request.clone(), live_request, options);
    let mut rings = Vec::new();
    let mut unavailable = Vec::new();
    for (peer, result) in asked.into_iter().zip(opened) {
        match result {
            Ok((live, ring)) => {
                follower.follow(&peer, live, &ring);
                rings.push((peer.name, ring));
            }
            Err(NodeError::InvalidRequest(message)) => {
                return Err(RelayError::RefusedByNode {
                    node: peer.name,
                    message,
                });
            }
            Err(NodeError::Unavailable(reason)) => {
                let node = Unavailable {
                    node: peer.name.clone(),
                    reason,
                };
                super::log_unavailable(&node, "GetFlows follow (retrying)");
                unavailable.push(node);
                follower.connect(peer, 1);
            }
        }
    }
    let head = trim(merge_sorted(rings), request.number, false);
    let (tx, rx) = mpsc::channel(OUTPUT_BUFFER);
    tokio::spawn(follower.run(tx));
    Ok(Started {
        unavailable,
        stream: Box::pin(stream::iter(head).chain(ReceiverStream::new(rx))),
    })
}

/// Subscribes to a node's new flows, then reads its ring (if asked for).
async fn open(
    nodes: &Arc<dyn NodeFlows>,
    peer: &Peer,
    live_request: GetFlowsRequest,
    ring_request: Option<GetFlowsRequest>,
    options: &RelayOptions,
) -> Result<(NodeStream, Vec<GetFlowsResponse>), NodeError> {
    let live = subscribe(nodes, peer, live_request, options).await?;
    let ring = match ring_request {
        Some(request) => ring_of(nodes, peer, request, options).await?,
        None => Vec::new(),
    };
    Ok((live, ring))
}

async fn subscribe(
    nodes: &Arc<dyn NodeFlows>,
    peer: &Peer,
    live_request: GetFlowsRequest,
    options: &RelayOptions,
) -> Result<NodeStream, NodeError> {
    let timeout = options.peer_timeout;
    tokio::time::timeout(timeout, nodes.get_flows(peer, live_request))
        .await
        .unwrap_or_else(|_| {
            Err(NodeError::Unavailable(format!(
                "it did not accept the follow within {timeout:?}"
            )))
        })
}

/// The ring's flows a node's live stream may repeat (see the module's documentation).
struct RingOverlap {
    seen: HashSet<Vec<u8>>,
    last: Vec<u8>,
}

/// The merge task of one follow.
struct Follower {
    nodes: Arc<dyn NodeFlows>,
    peers: watch::Receiver<Peers>,
    peers_closed: bool,
    request: GetFlowsRequest,
    live_request: GetFlowsRequest,
    options: RelayOptions,
    streams: StreamMap<String, Marked>,
    /// Node → address, for every node followed or being connected.
    addresses: BTreeMap<String, String>,
    connecting: HashMap<String, AbortHandle>,
    connects: JoinSet<(Peer, u32, Result<NodeStream, NodeError>)>,
    /// Nodes done with the request (they reached `until`).
    finished: BTreeSet<String>,
    overlaps: HashMap<String, RingOverlap>,
    merge: Reorder<GetFlowsResponse>,
}

impl Follower {
    fn new(
        nodes: Arc<dyn NodeFlows>,
        peers: watch::Receiver<Peers>,
        request: GetFlowsRequest,
        live_request: GetFlowsRequest,
        options: RelayOptions,
    ) -> Self {
        Follower {
            nodes,
            peers,
            peers_closed: false,
            request,
            live_request,
            streams: StreamMap::new(),
            addresses: BTreeMap::new(),
            connecting: HashMap::new(),
            connects: JoinSet::new(),
            finished: BTreeSet::new(),
            overlaps: HashMap::new(),
            merge: Reorder::new(options.reorder_window),
            options,
        }
    }

    /// Follows `peer`'s stream; `ring` is what its ring read returned.
    fn follow(&mut self, peer: &Peer, live: NodeStream, ring: &[GetFlowsResponse]) {
        if let Some(last) = ring.last() {
            self.overlaps.insert(
                peer.name.clone(),
                RingOverlap {
                    seen: ring.iter().map(Message::encode_to_vec).collect(),
                    last: last.encode_to_vec(),
                },
            );
        }
        let marked: Marked = Box::pin(live.map(Some).chain(stream::once(async { None })));
        self.addresses
            .insert(peer.name.clone(), peer.address.clone());
        self.streams.insert(peer.name.clone(), marked);
        self.merge.open(&peer.name);
    }

    /// Connects `peer` after the backoff of `attempt` (0: now).
    fn connect(&mut self, peer: Peer, attempt: u32) {
        if self
            .request
            .until
            .and_then(|u| SystemTime::try_from(u).ok())
            .is_some_and(|until| SystemTime::now() > until)
        {
            // Nothing it could send now is wanted.
            self.finished.insert(peer.name);
            return;
        }
        let delay = match attempt {
            0 => std::time::Duration::ZERO,
            n => self
                .options
                .retry_initial
                .saturating_mul(1 << (n - 1).min(16))
                .min(self.options.retry_max),
        };
        let (nodes, request, options) =
            (self.nodes.clone(), self.live_request.clone(), self.options);
        self.addresses
            .insert(peer.name.clone(), peer.address.clone());
        let name = peer.name.clone();
        let handle = self.connects.spawn(async move {
            tokio::time::sleep(delay).await;
            let result = subscribe(&nodes, &peer, request, &options).await;
            (peer, attempt, result)
        });
        if let Some(previous) = self.connecting.insert(name, handle) {
            previous.abort();
        }
    }

    /// Stops following `node` (it left the peer set or moved).
    fn drop_node(&mut self, node: &str) {
        self.streams.remove(node);
        self.merge.close(node);
        if let Some(handle) = self.connecting.remove(node) {
            handle.abort();
        }
        self.addresses.remove(node);
        self.overlaps.remove(node);
    }

    /// Follows the nodes that joined, drops those that left.
    fn reconcile(&mut self) {
        let wanted: Peers = self
            .peers
            .borrow_and_update()
            .iter()
            .filter(|(name, _)| selection::asks(&self.request, name))
            .map(|(name, address)| (name.clone(), address.clone()))
            .collect();
        let known: Vec<(String, String)> = self
            .addresses
            .iter()
            .map(|(n, a)| (n.clone(), a.clone()))
            .collect();
        for (node, address) in known {
            if wanted.get(&node) != Some(&address) {
                tracing::info!(node = %node, "follow: node left (or moved); no longer following it");
                self.drop_node(&node);
            }
        }
        for (name, address) in wanted {
            if !self.addresses.contains_key(&name) && !self.finished.contains(&name) {
                tracing::info!(node = %name, address = %address, "follow: node joined; following its new flows");
                self.connect(Peer { name, address }, 0);
            }
        }
    }

    /// Whether `item` of `node` is a copy of one its ring read already gave.
    fn is_ring_copy(&mut self, node: &str, item: &GetFlowsResponse) -> bool {
        let Some(overlap) = self.overlaps.get_mut(node) else {
            return false;
        };
        let bytes = item.encode_to_vec();
        if !overlap.seen.remove(&bytes) {
            return false;
        }
        if bytes == overlap.last {
            self.overlaps.remove(node);
        }
        true
    }

    fn on_item(&mut self, node: String, item: Option<Result<GetFlowsResponse, NodeError>>) {
        match item {
            Some(Ok(response)) => {
                if !self.is_ring_copy(&node, &response) {
                    self.merge.push(&node, Instant::now(), response);
                }
            }
            Some(Err(NodeError::InvalidRequest(reason) | NodeError::Unavailable(reason))) => {
                tracing::warn!(node = %node, reason = %reason, "follow: the node's stream failed; reconnecting with backoff");
                self.lost(&node);
            }
            None if self.request.until.is_some() => {
                tracing::debug!(node = %node, "follow: the node reached until");
                self.streams.remove(&node);
                self.merge.close(&node);
                self.finished.insert(node);
            }
            None => {
                tracing::warn!(node = %node, "follow: the node ended its stream; reconnecting with backoff");
                self.lost(&node);
            }
        }
    }

    /// A node's stream is gone: reconnect it.
    fn lost(&mut self, node: &str) {
        self.streams.remove(node);
        self.merge.close(node);
        self.overlaps.remove(node);
        if let Some(address) = self.addresses.get(node).cloned() {
            self.connect(
                Peer {
                    name: node.to_owned(),
                    address,
                },
                1,
            );
        }
    }

    fn on_connect(&mut self, peer: Peer, attempt: u32, result: Result<NodeStream, NodeError>) {
        self.connecting.remove(&peer.name);
        if self.addresses.get(&peer.name) != Some(&peer.address) {
            return; // it left or moved meanwhile
        }
        match result {
            Ok(live) => {
                tracing::info!(node = %peer.name, attempts = attempt, "follow: following the node's flows");
                self.follow(&peer, live, &[]);
            }
            Err(NodeError::InvalidRequest(reason) | NodeError::Unavailable(reason)) => {
                if attempt <= 1 {
                    tracing::warn!(node = %peer.name, reason = %reason, "follow: node unavailable; retrying with backoff");
                } else {
                    tracing::debug!(node = %peer.name, reason = %reason, attempt, "follow: node still unavailable");
                }
                self.connect(peer, attempt.saturating_add(1));
            }
        }
    }

    /// With `until`: every node reached it (or can no longer be asked).
    fn done(&self) -> bool {
        self.request.until.is_some() && self.streams.is_empty() && self.connecting.is_empty()
    }

    async fn run(mut self, tx: mpsc::Sender<GetFlowsResponse>) {
        // Nodes that changed between the request's start and now.
        self.reconcile();
        loop {
            while let Some(item) = self.merge.pop_ready(Instant::now()) {
                if tx.send(item).await.is_err() {
                    return;
                }
            }
            if self.done() {
                // Nothing is open: whatever waits leaves now, in order.
                while let Some(item) = self.merge.pop_ready(Instant::now()) {
                    if tx.send(item).await.is_err() {
                        return;
                    }
                }
                return;
            }
            let deadline = self.merge.deadline();
            tokio::select! {
                () = tx.closed() => return,
                Some((node, item)) = self.streams.next(), if !self.streams.is_empty() => {
                    self.on_item(node, item);
                }
                Some(Ok((peer, attempt, result))) = self.connects.join_next(), if !self.connects.is_empty() => {
                    self.on_connect(peer, attempt, result);
                }
                changed = self.peers.changed(), if !self.peers_closed => match changed {
                    Ok(()) => self.reconcile(),
                    Err(_) => self.peers_closed = true,
                },
                () = sleep_until(deadline), if deadline.is_some() => {}
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
