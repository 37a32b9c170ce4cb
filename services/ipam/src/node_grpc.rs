//! The `kino.node.v1` gRPC adapter: validates the node name, runs the [`Ipam`] node
//! operation (see `service/nodes.rs`), converts the result, and maps errors to status codes
//! as the `kino.ipam.v1` adapter does.

use std::sync::Arc;

use kino_api::node as pb;
use kino_api::node::node_service_server::{NodeService, NodeServiceServer};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::grpc::to_status;
use crate::pool::validate_node_name;
use crate::records::family_to_proto;
use crate::service::{Ipam, Liveness, NodeView};

/// Fully-qualified gRPC service name, for health checks.
pub const SERVICE_NAME: &str = kino_api::node::node_service_server::SERVICE_NAME;

/// The `kino.node.v1.NodeService` implementation.
#[derive(Debug, Clone)]
pub struct NodeGrpc {
    ipam: Arc<Ipam>,
}

impl NodeGrpc {
    /// Serves the nodes `ipam` knows of.
    pub fn new(ipam: Arc<Ipam>) -> Self {
        NodeGrpc { ipam }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> NodeServiceServer<Self> {
        NodeServiceServer::new(self).max_encoding_message_size(64 * 1024 * 1024)
    }
}

fn node_name(name: &str) -> Result<(), Status> {
    validate_node_name("name", name).map_err(|e| to_status(e.into()))
}

/// A node as the API shows it.
pub fn node_status(view: &NodeView) -> pb::NodeStatus {
    pb::NodeStatus {
        name: view.name.clone(),
        health: match view.liveness() {
            Liveness::Live => pb::NodeHealthState::Live,
            Liveness::Unreachable => pb::NodeHealthState::Unreachable,
            Liveness::Deleting => pb::NodeHealthState::Deleting,
        } as i32,
        node: view.node.as_ref().map(|n| n.value.clone()),
        heartbeat: view.health.as_ref().map(|h| h.value.clone()),
        pod_cidrs: view
            .blocks
            .iter()
            .map(|b| pb::PodCidr {
                pool: b.pool.clone(),
                cidr: b.cidr.to_string(),
                family: family_to_proto(b.cidr.family()) as i32,
                allocated: b.allocated,
            })
            .collect(),
        endpoints: u32::try_from(view.endpoints.len()).unwrap_or(u32::MAX),
    }
}

#[tonic::async_trait]
impl NodeService for NodeGrpc {
    async fn list_nodes(
        &self,
        _request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let nodes = self.ipam.list_nodes().await.map_err(to_status)?;
        Ok(Response::new(pb::ListNodesResponse {
            nodes: nodes.iter().map(node_status).collect(),
        }))
    }

    async fn get_node(
        &self,
        request: Request<pb::GetNodeRequest>,
    ) -> Result<Response<pb::GetNodeResponse>, Status> {
        let name = request.into_inner().name;
        node_name(&name)?;
        let view = self.ipam.get_node(&name).await.map_err(to_status)?;
        Ok(Response::new(pb::GetNodeResponse {
            node: Some(node_status(&view)),
        }))
    }

    async fn delete_node(
        &self,
        request: Request<pb::DeleteNodeRequest>,
    ) -> Result<Response<pb::DeleteNodeResponse>, Status> {
        let request = request.into_inner();
        node_name(&request.name)?;
        // Its own task: a client that gives up half-way does not leave the node half
        // deleted (its retry, or kino-ipam's finisher, sees the mark and completes it).
        let ipam = self.ipam.clone();
        let deleted = tokio::spawn(
            async move { ipam.delete_node(&request.name, request.force).await }.in_current_span(),
        )
        .await
        .map_err(|e| Status::internal(format!("the deletion's task failed: {e}")))?
        .map_err(to_status)?;
        Ok(Response::new(pb::DeleteNodeResponse {
            node: Some(node_status(&deleted.before)),
            released_cidrs: deleted.released.iter().map(ToString::to_string).collect(),
            freed_addresses: deleted
                .freed
                .iter()
                .map(|a| a.address.to_string())
                .collect(),
            deleted_endpoints: u32::try_from(deleted.deleted_endpoints).unwrap_or(u32::MAX),
            deletion_time: Some(deleted.deletion_time.into()),
        }))
    }
}
