//! The relay's client of the nodes' flow observers ([`NodeFlows`] over tonic): one lazily
//! connected channel per address, mTLS with the relay's own certificate (Subject O
//! `flow-relay`), and the nodes' gRPC failures classified for the relay: a request the node
//! finds invalid fails the request, anything else makes the node unavailable.

use std::collections::HashMap;
use std::sync::Mutex;

use futures::StreamExt;
use kino_api::flow::flow_service_client::FlowServiceClient;
use kino_api::flow::{GetFlowsRequest, ServerStatusRequest, ServerStatusResponse};
use kino_service_kit::{ClientTlsArgs, TracedChannel};
use tonic::{Code, Status};

use crate::peers::Peer;
use crate::relay::{NodeError, NodeFlows, NodeStream};

/// The nodes' flow observers over gRPC.
#[derive(Debug)]
pub struct TonicNodes {
    tls: ClientTlsArgs,
    channels: Mutex<HashMap<String, TracedChannel>>,
}

impl TonicNodes {
    /// Dials the nodes with `tls` (the relay's client certificate and the cluster CA).
    pub fn new(tls: ClientTlsArgs) -> Self {
        TonicNodes {
            tls,
            channels: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self, peer: &Peer) -> Result<FlowServiceClient<TracedChannel>, NodeError> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let channel = match channels.get(&peer.address) {
            Some(channel) => channel.clone(),
            None => {
                let channel = kino_service_kit::connect_lazy(&peer.address, &self.tls)
                    .map_err(|e| NodeError::Unavailable(e.to_string()))?;
                channels.insert(peer.address.clone(), channel.clone());
                channel
            }
        };
        Ok(FlowServiceClient::new(channel))
    }
}

/// A node's gRPC failure as the relay sees it.
pub fn classify(peer: &Peer, status: &Status) -> NodeError {
    let message = status.message();
    let address = &peer.address;
    match status.code() {
        Code::InvalidArgument => NodeError::InvalidRequest(message.to_owned()),
        Code::PermissionDenied | Code::Unauthenticated => NodeError::Unavailable(format!(
            "its flow observer at {address} refused the relay ({message}); it must admit role flow-relay, and the relay needs a flow-relay certificate of the cluster CA"
        )),
        code => NodeError::Unavailable(format!("{address}: {code:?}: {message}")),
    }
}

#[async_trait::async_trait]
impl NodeFlows for TonicNodes {
    async fn get_flows(
        &self,
        peer: &Peer,
        request: GetFlowsRequest,
    ) -> Result<NodeStream, NodeError> {
        let stream = self
            .client(peer)?
            .get_flows(request)
            .await
            .map_err(|status| classify(peer, &status))?
            .into_inner();
        let peer = peer.clone();
        Ok(Box::pin(stream.map(move |item| {
            item.map_err(|status| classify(&peer, &status))
        })))
    }

    async fn server_status(&self, peer: &Peer) -> Result<ServerStatusResponse, NodeError> {
        self.client(peer)?
            .server_status(ServerStatusRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| classify(peer, &status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_requests_fail_and_refusals_say_what_to_fix() {
        let peer = Peer {
            name: "n1".into(),
            address: "192.0.2.1:7404".into(),
        };
        assert_eq!(
            classify(&peer, &Status::invalid_argument("filter source_ip \"x\"")),
            NodeError::InvalidRequest("filter source_ip \"x\"".into())
        );
        let NodeError::Unavailable(reason) =
            classify(&peer, &Status::permission_denied("caller \"flow-relay\" …"))
        else {
            panic!("a refusal makes the node unavailable");
        };
        assert!(
            reason.contains("flow-relay") && reason.contains("192.0.2.1:7404"),
            "{reason}"
        );
        assert!(matches!(
            classify(&peer, &Status::unavailable("connection refused")),
            NodeError::Unavailable(_)
        ));
    }
}
