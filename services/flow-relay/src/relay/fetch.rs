//! A finite `GetFlows` on every node asked, concurrently: each node's answer as a list in
//! its order, and the nodes that could not answer. A node refusing the request as invalid
//! fails the whole request (with its message), since every node would refuse it.

use std::sync::Arc;

use kino_api::flow::{GetFlowsRequest, GetFlowsResponse};

use super::{NodeError, NodeFlows, RelayOptions, Unavailable, collect_within, log_unavailable};
use crate::error::RelayError;
use crate::peers::Peer;

/// The nodes' finite answers.
pub(super) struct Answers {
    /// Node name → its flows, in its order.
    pub lists: Vec<(String, Vec<GetFlowsResponse>)>,
    /// The nodes that did not answer.
    pub unavailable: Vec<Unavailable>,
}

/// Runs `request` (not a follow) on one node and collects its answer.
pub(super) async fn ring_of(
    nodes: &Arc<dyn NodeFlows>,
    peer: &Peer,
    request: GetFlowsRequest,
    options: &RelayOptions,
) -> Result<Vec<GetFlowsResponse>, NodeError> {
    let timeout = options.peer_timeout;
    let stream = tokio::time::timeout(timeout, nodes.get_flows(peer, request))
        .await
        .unwrap_or_else(|_| {
            Err(NodeError::Unavailable(format!(
                "it did not accept the request within {timeout:?}"
            )))
        })?;
    collect_within(stream, timeout).await
}

/// Runs `request` (not a follow) on every node of `peers`.
pub(super) async fn ring_of_each(
    nodes: &Arc<dyn NodeFlows>,
    peers: &[Peer],
    request: &GetFlowsRequest,
    options: &RelayOptions,
) -> Result<Answers, RelayError> {
    let results = futures::future::join_all(
        peers
            .iter()
            .map(|peer| ring_of(nodes, peer, request.clone(), options)),
    )
    .await;
    let mut answers = Answers {
        lists: Vec::with_capacity(peers.len()),
        unavailable: Vec::new(),
    };
    for (peer, result) in peers.iter().zip(results) {
        match result {
            Ok(list) => answers.lists.push((peer.name.clone(), list)),
            Err(NodeError::InvalidRequest(message)) => {
                return Err(RelayError::RefusedByNode {
                    node: peer.name.clone(),
                    message,
                });
            }
            Err(NodeError::Unavailable(reason)) => {
                let unavailable = Unavailable {
                    node: peer.name.clone(),
                    reason,
                };
                log_unavailable(&unavailable, "GetFlows");
                answers.unavailable.push(unavailable);
            }
        }
    }
    Ok(answers)
}
