//! The relay's `kino.flow.v1.FlowService` adapter: requests go to the [`Relay`], its errors
//! become gRPC statuses, and the nodes it could not read are named in the response headers
//! (the flow messages themselves are the nodes', untouched):
//!
//! - `kino-relay-nodes`: the nodes asked, comma-separated;
//! - `kino-relay-unavailable-node`: one value per node that did not answer, `NAME: reason`
//!   (for a follow: at its start; later failures are logged and retried);
//! - ServerStatus also has `kino-relay-nodes-connected` and `kino-relay-nodes-unavailable`
//!   (counts); its counters are the sums over the nodes that answered.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kino_api::flow::flow_service_server::{FlowService, FlowServiceServer};
use kino_api::flow::{
    GetFlowsRequest, GetFlowsResponse, ServerStatusRequest, ServerStatusResponse,
};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status};

use crate::error::RelayError;
use crate::relay::{Relay, Unavailable};

/// Header naming the nodes a request asked.
pub const NODES_HEADER: &str = "kino-relay-nodes";
/// Header (one value per node) naming a node that did not answer, and why.
pub const UNAVAILABLE_HEADER: &str = "kino-relay-unavailable-node";
/// ServerStatus header: how many nodes answered.
pub const CONNECTED_COUNT_HEADER: &str = "kino-relay-nodes-connected";
/// ServerStatus header: how many nodes did not.
pub const UNAVAILABLE_COUNT_HEADER: &str = "kino-relay-nodes-unavailable";

/// Longest header value the relay writes (reasons are cut).
const MAX_HEADER_VALUE: usize = 512;

/// The stream of one `GetFlows` client.
pub type FlowStream = Pin<Box<dyn Stream<Item = Result<GetFlowsResponse, Status>> + Send>>;

/// The relay's `kino.flow.v1.FlowService`.
#[derive(Clone)]
pub struct RelayGrpc {
    relay: Arc<Relay>,
}

impl RelayGrpc {
    /// The service over a relay.
    pub fn new(relay: Arc<Relay>) -> Self {
        RelayGrpc { relay }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> FlowServiceServer<Self> {
        FlowServiceServer::new(self)
    }
}

fn to_status(error: RelayError) -> Status {
    match error {
        RelayError::InvalidRequest(_) | RelayError::RefusedByNode { .. } => {
            Status::invalid_argument(error.to_string())
        }
        RelayError::InvalidPeer { .. } => Status::internal(error.to_string()),
    }
}

/// A header value of visible ASCII (anything else becomes '?'), cut to a sane length.
fn header_value(text: &str) -> MetadataValue<tonic::metadata::Ascii> {
    let clean: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(MAX_HEADER_VALUE)
        .collect();
    MetadataValue::try_from(clean.as_str()).unwrap_or_else(|_| MetadataValue::from_static("?"))
}

fn name_unavailable(metadata: &mut MetadataMap, unavailable: &[Unavailable]) {
    for node in unavailable {
        metadata.append(
            UNAVAILABLE_HEADER,
            header_value(&format!("{}: {}", node.node, node.reason)),
        );
    }
}

#[tonic::async_trait]
impl FlowService for RelayGrpc {
    type GetFlowsStream = FlowStream;

    async fn get_flows(
        &self,
        request: Request<GetFlowsRequest>,
    ) -> Result<Response<Self::GetFlowsStream>, Status> {
        let request = request.into_inner();
        tracing::debug!(follow = request.follow, number = request.number, "GetFlows");
        let flows = self.relay.get_flows(request).await.map_err(to_status)?;
        let mut response = Response::new(Box::pin(flows.stream.map(Ok)) as FlowStream);
        let metadata = response.metadata_mut();
        metadata.insert(NODES_HEADER, header_value(&flows.asked.join(",")));
        name_unavailable(metadata, &flows.unavailable);
        Ok(response)
    }

    async fn server_status(
        &self,
        _request: Request<ServerStatusRequest>,
    ) -> Result<Response<ServerStatusResponse>, Status> {
        let status = self.relay.server_status().await;
        let mut response = Response::new(status.total);
        let metadata = response.metadata_mut();
        metadata.insert(
            CONNECTED_COUNT_HEADER,
            header_value(&status.connected.len().to_string()),
        );
        metadata.insert(
            UNAVAILABLE_COUNT_HEADER,
            header_value(&status.unavailable.len().to_string()),
        );
        metadata.insert(NODES_HEADER, header_value(&status.connected.join(",")));
        name_unavailable(metadata, &status.unavailable);
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_visible_ascii_and_bounded() {
        let value = header_value("n3: caf\u{e9}\nrefused");
        assert_eq!(value.to_str().unwrap(), "n3: caf??refused");
        assert_eq!(header_value(&"x".repeat(2000)).len(), MAX_HEADER_VALUE);
    }

    #[test]
    fn request_errors_are_invalid_arguments() {
        let status = to_status(RelayError::RefusedByNode {
            node: "n1".into(),
            message: "filter source_ip \"x\"".into(),
        });
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("n1"), "{}", status.message());
    }
}
